"""The generated prompt set (`csdistill data prompts`) and the teacher's answers (`csdistill data respond`)."""

from __future__ import annotations

import json
import re

import pytest

from csdistill.cli import main
from csdistill.data import load_records
from csdistill.data.prompts import CATEGORIES, DEFAULT_SIZES, chat_prompt, generate_prompt_splits
from csdistill.responses import respond
from csdistill.tasks.registry import get_task
from helpers import tiny_model, tiny_tokenizer

SIZES = {"train": 300, "validation": 40, "test": 40}


def test_splits_are_disjoint_sized_and_reproducible():
    splits = generate_prompt_splits(3, SIZES)
    assert {k: len(v) for k, v in splits.items()} == SIZES
    texts = {k: [r["instruction"] for r in v] for k, v in splits.items()}
    assert all(len(set(t)) == len(t) for t in texts.values())
    assert not set(texts["test"]) & (set(texts["train"]) | set(texts["validation"]))
    assert not set(texts["validation"]) & set(texts["train"])
    assert splits == generate_prompt_splits(3, SIZES)
    assert splits != generate_prompt_splits(4, SIZES)
    assert {r["category"] for r in splits["train"]} == set(CATEGORIES)
    # the held-out splits do not depend on the train size (calibration draws a small train split)
    assert generate_prompt_splits(3, {**SIZES, "train": 5})["test"] == splits["test"]


def test_arithmetic_answers_are_right_and_most_prompts_open_ended():
    records = generate_prompt_splits(0, DEFAULT_SIZES)["train"]
    arithmetic = [r for r in records if r["category"] == "arithmetic"]
    assert 0.2 < len(arithmetic) / len(records) < 0.4
    gsm8k = get_task("gsm8k")
    for record in arithmetic:
        assert record["task"] == "gsm8k" and record["response"].endswith(f"#### {record['answer']}")
        assert gsm8k.check(record["response"], record) and not gsm8k.check("#### 100000", record)
        for left, op, right, result in re.findall(r"(\d+) ([-+x]) (\d+) = (\d+)", record["response"]):
            value = {"+": int(left) + int(right), "-": int(left) - int(right), "x": int(left) * int(right)}[op]
            assert value == int(result), record
        assert int(record["answer"]) >= 0
    assert all(r["task"] == "open" and r["response"] == "" for r in records if r["category"] != "arithmetic")


def test_unknown_category_and_exhausted_category_are_clear_errors():
    with pytest.raises(ValueError, match="unknown categories"):
        generate_prompt_splits(0, SIZES, ["poetry"])
    with pytest.raises(ValueError, match="ran out of distinct prompts"):
        generate_prompt_splits(0, {"train": 5000}, ["define"])


def test_prompts_command_writes_loadable_files_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "prompts"
    args = ["data", "prompts", "--out", str(out), "--seed", "1", "--n-train", "30", "--n-validation", "8",
            "--n-test", "8"]
    assert main(args) == 0
    assert main(args) == 0  # the same files again: nothing changes
    for split, n in (("train", 30), ("validation", 8), ("test", 8)):
        assert len(load_records(out / f"{split}.jsonl", require_response=False).records) == n
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert main(args[:5] + ["2"] + args[6:]) == 2
    assert "already exists" in capsys.readouterr().err


def test_chat_prompt_uses_the_tokenizer_template():
    tokenizer = tiny_tokenizer()
    record = {"instruction": "Say hi.", "input": ""}
    assert chat_prompt(record, tokenizer).endswith("### Response:\n")  # no chat template: alpaca
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    assert chat_prompt(record, tokenizer) == "<user>Say hi.<assistant>"


# ----------------------------------------------------------------------------- teacher responses


@pytest.fixture()
def teacher_and_prompts(tmp_path):
    teacher = tmp_path / "teacher"
    tiny_model("tiny-llama", seed=1).save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    assert main(["data", "prompts", "--out", str(tmp_path / "prompts"), "--n-train", "7", "--n-validation", "3",
                 "--n-test", "3"]) == 0
    return str(teacher), str(tmp_path / "prompts")


def test_respond_writes_chat_records_and_reuses_them(teacher_and_prompts, tmp_path):
    teacher, prompts = teacher_and_prompts
    summary = respond(teacher, prompts, str(tmp_path / "out"), max_new_tokens=6, batch_size=3)
    assert summary == {"train": (7, 0), "validation": (3, 0), "test": (3, 0)}
    raw = [json.loads(line) for line in (tmp_path / "out" / "test.jsonl").read_text().splitlines()]
    source = [json.loads(line) for line in open(f"{prompts}/test.jsonl")]
    for row, prompt in zip(raw, source):
        assert row["instruction"] == prompt["instruction"] and row["prompt"].endswith("### Response:\n")
        assert row["references"] == [row["response"]] and row["id"] == prompt["id"]
        assert row["task"] == prompt["task"] and row.get("answer") == prompt.get("answer")
    assert respond(teacher, prompts, str(tmp_path / "out"), max_new_tokens=6, batch_size=3)["test"] == (0, 3)
    with pytest.raises(ValueError, match="never overwritten"):
        respond(teacher, prompts, str(tmp_path / "out"), max_new_tokens=7, batch_size=3, splits=["test"])


def test_an_interrupted_respond_resumes_to_the_same_file(teacher_and_prompts, tmp_path):
    teacher, prompts = teacher_and_prompts
    respond(teacher, prompts, str(tmp_path / "full"), splits=["train"], max_new_tokens=5, batch_size=2, sample=True)
    full = (tmp_path / "full" / "train.jsonl").read_text().splitlines()
    partial = tmp_path / "cut" / "train.jsonl.partial"
    partial.parent.mkdir()
    partial.write_text("\n".join(full[:3]) + "\n" + full[3][:10])  # three whole lines and a torn one
    summary = respond(teacher, prompts, str(tmp_path / "cut"), splits=["train"], max_new_tokens=5, batch_size=2,
                      sample=True)
    assert summary == {"train": (5, 2)}  # resumes at a batch boundary, so the batches (and draws) are the same
    assert (tmp_path / "cut" / "train.jsonl").read_text().splitlines() == full
    assert not partial.exists()


def test_respond_records_give_the_teacher_prompt_under_the_prompt_template(teacher_and_prompts, tmp_path):
    from csdistill.data import build_prompt

    teacher, prompts = teacher_and_prompts
    respond(teacher, prompts, str(tmp_path / "out"), splits=["validation"], max_new_tokens=4, batch_size=4)
    records = load_records(tmp_path / "out" / "validation.jsonl", require_response=False).records
    tokenizer = tiny_tokenizer()
    assert all(build_prompt(r, "prompt") == chat_prompt(r, tokenizer) for r in records)


def test_prompts_respond_student_init_and_train_chain(teacher_and_prompts, tmp_path):
    """The real-model recipe on a tiny teacher: prompts -> teacher answers -> pruned student -> kd steps."""
    teacher, prompts = teacher_and_prompts
    respond(teacher, prompts, str(tmp_path / "answers"), splits=["train", "validation"], max_new_tokens=8,
            batch_size=4)
    assert main(["student", "init", "--teacher", teacher, "--out", str(tmp_path / "student"), "--layers", "1",
                 "--calibration", str(tmp_path / "answers" / "train.jsonl")]) == 0
    assert main(["train", f"model.name_or_path={tmp_path / 'student'}", f"teacher.name_or_path={teacher}",
                 "data.template=prompt", f"data.train_file={tmp_path / 'answers' / 'train.jsonl'}",
                 f"data.validation_file={tmp_path / 'answers' / 'validation.jsonl'}", "data.max_prompt_length=256",
                 "data.max_length=280", "data.skip_bad_records=true", f"train.output_dir={tmp_path / 'run'}",
                 "train.max_steps=2", "train.batch_size=2", "train.progress=false", "train.num_threads=1"]) == 0
    assert any((tmp_path / "run").glob("checkpoint-*"))
