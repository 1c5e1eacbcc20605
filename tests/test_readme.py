"""The README's library example runs as written on tiny models and gives the documented values."""

import re
from pathlib import Path

import torch

from csdistill.data.collate import collate, encode_example
from csdistill.losses import csd, get_loss, shift_labels, token_mean
from helpers import tiny_model, tiny_tokenizer, toy_instruction_records

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_first_lines_are_the_two_commands():
    lines = README.read_text().splitlines()
    commands = [line for line in lines[:8] if line.startswith("python3 -m venv")]
    assert len(commands) == 2 and commands[0].endswith("csdistill quickstart") and commands[1].endswith("pytest")
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci  # CI runs exactly the README's test command


def test_readme_library_example_runs():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    tokenizer = tiny_tokenizer()
    examples = [encode_example(r, tokenizer, "plain", 32, 64) for r in toy_instruction_records(3)]
    batch = collate(examples, tokenizer.pad_token_id)
    student, teacher = tiny_model(seed=0).train(), tiny_model(seed=1)
    scope = {"student": student, "teacher": teacher, "batch": batch}
    exec(compile(code, str(README), "exec"), scope)
    loss = scope["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss) and student.lm_head.weight.grad is not None
    # the fused value is CSD (T,S) on the full logits, token-averaged
    with torch.no_grad():
        s, t = student(**batch).logits, teacher(**batch).logits
        expected = token_mean(csd(s, t, weighting="TS"), shift_labels(batch["labels"]))
    assert torch.allclose(loss.detach(), expected, rtol=1e-4, atol=1e-6)
    assert torch.allclose(scope["s"], s) and get_loss("srkl", lam=0.1)(s, t).shape == s.shape[:2]
