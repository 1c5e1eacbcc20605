"""A pruned SmolLM2-135M-Instruct student exported to GGUF and run back: transformers' GGUF loader and
llama.cpp (llama-cpp-python) against the student folder, per dtype.

    python benchmarks/gguf_export.py [--teacher DIR] [--out DIR] [--dtypes f32,f16,bf16,q8_0]

Prints per dtype: export seconds, file size, max |logit difference| on the chat prompt (and the largest
logit, for scale), the share of prompt positions with the same top token, and whether the 12 greedy
tokens equal the folder's; then the same for llama.cpp (one thread) on the f32 file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from transformers import AutoModelForCausalLM

    from csdistill.data.prompts import chat_prompt
    from csdistill.gguf_export import export_gguf, run_in_llama_cpp
    from csdistill.model_files import cache_dir
    from csdistill.models import load_tokenizer
    from csdistill.student import init_student

    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", default=str(cache_dir() / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--out", default="/tmp/csdistill-gguf-bench")
    parser.add_argument("--dtypes", default="f32,f16,bf16,q8_0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    student = out / "student"
    if not student.is_dir():
        init_student(args.teacher, str(student), layers=24, mlp=1024, heads=6, calibration_samples=8, max_length=64)
    tokenizer = load_tokenizer(str(student))
    prompt = chat_prompt({"instruction": "What is the capital of France?", "input": ""}, tokenizer)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    folder = AutoModelForCausalLM.from_pretrained(student).eval()
    with torch.no_grad():
        reference = folder(ids).logits[0]
        answer = folder.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
    print(f"student: {student}; prompt {ids.shape[1]} tokens; largest |logit| {reference.abs().max():.1f}; "
          f"answer {tokenizer.decode(answer)!r}")
    print("| reader | dtype | export s | MB | max abs logit diff | same top token | same 12 greedy tokens |")
    print("|---|---|---:|---:|---:|---:|---|")
    for dtype in args.dtypes.split(","):
        path = out / f"student-{dtype}.gguf"
        path.unlink(missing_ok=True)
        start = time.perf_counter()
        export_gguf(student, path, dtype)
        seconds = time.perf_counter() - start
        copy = AutoModelForCausalLM.from_pretrained(out, gguf_file=path.name).eval()
        with torch.no_grad():
            logits = copy(ids).logits[0]
            tokens = copy.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
        print(row("transformers", dtype, seconds, path, logits.numpy(), reference.numpy(), tokens == answer))
        if dtype == "f32":
            tokens, logits = run_in_llama_cpp(path, ids[0].tolist(), 12)
            print(row("llama.cpp", dtype, seconds, path, logits, reference.numpy(), tokens == answer))


def row(reader, dtype, seconds, path, logits, reference, same) -> str:
    difference = np.abs(logits - reference).max()
    agreement = (logits.argmax(-1) == reference.argmax(-1)).mean()
    return (f"| {reader} | {dtype} | {seconds:.1f} | {path.stat().st_size / 1e6:.0f} | {difference:.2e} | "
            f"{agreement:.0%} | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
