"""Data: the char tokenizer, record formats and their errors, templates, encoding with labels, collation."""

import json
import re

import pytest
import torch

from csdistill.data import (ALPACA, DataError, build_char_tokenizer, build_prompt, collate, encode_example,
                            encode_prompts, encode_response, load_records, load_text_chunks)
from csdistill.data.collate import batches
from csdistill.losses.reduce import IGNORE_INDEX
from csdistill.seeding import make_generator
from helpers import tiny_tokenizer, toy_instruction_records, write_jsonl

# --------------------------------------------------------------------------- tokenizer


def test_char_tokenizer_round_trips_and_saves(tmp_path):
    from transformers import AutoTokenizer

    tok = build_char_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    text = "Hello, World!\n  ~tab\there {x}"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text) and 0 not in ids and 1 not in ids and 2 not in ids  # no BOS/EOS added
    assert tok.decode(ids) == text
    assert tok.decode(ids + [tok.eos_token_id, 0], skip_special_tokens=True) == text
    assert tok.decode(tok("é")["input_ids"]) == "<unk>"
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids and loaded.decode(ids) == text
    assert (loaded.pad_token_id, loaded.eos_token_id, len(loaded)) == (0, 2, len(tok))


def test_char_tokenizer_alphabet_and_extra_tokens():
    tok = build_char_tokenizer("ab", extra_tokens=["<sep>"])
    assert len(tok) == 4 + 2 + 1
    assert tok.decode(tok("a<sep>b")["input_ids"]) == "a<sep>b" and len(tok("a<sep>b")["input_ids"]) == 3
    with pytest.raises(ValueError, match="alphabet"):
        build_char_tokenizer("")


# --------------------------------------------------------------------------- formats


def test_instruction_alpaca_dolly_and_extra_fields(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "a", "input": "x", "response": "r1", "task": "t", "references": ["r1", "r2"]},
        {"instruction": "b", "output": "r2"},  # Alpaca
        {"instruction": "c", "context": "ctx", "response": "r3", "category": "qa"},  # Dolly
    ])
    result = load_records(path)
    assert result.format == "instruction" and result.skipped == 0
    a, b, c = result.records
    assert (a["input"], a["response"], a["task"], a["references"]) == ("x", "r1", "t", ["r1", "r2"])
    assert (b["input"], b["response"]) == ("", "r2")
    assert (c["input"], c["response"], c["category"]) == ("ctx", "r3", "qa")


def test_alpaca_json_array_is_read(tmp_path):
    (tmp_path / "alpaca.json").write_text(json.dumps([{"instruction": "i", "input": "", "output": "o"}]))
    assert load_records(tmp_path / "alpaca.json").records[0]["response"] == "o"


def test_chat_records_use_the_last_assistant_turn(tmp_path):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye?"},
                {"role": "assistant", "content": "bye"}]
    record = load_records(write_jsonl(tmp_path / "c.jsonl", [{"messages": messages}])).records[0]
    assert record["response"] == "bye" and record["instruction"] == "bye?"
    assert "be brief" in record["prompt"] and "hello" in record["prompt"] and "bye\n" not in record["prompt"]
    assert record["prompt"].endswith("<|assistant|>\n")
    assert build_prompt(record, "alpaca") == record["prompt"]  # chat prompts are used verbatim


def test_plain_text_formats(tmp_path):
    (tmp_path / "t.txt").write_text("some text\nmore")
    assert load_records(tmp_path / "t.txt").records == [{"text": "some text\nmore"}]
    result = load_records(write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}]))
    assert result.format == "text" and [r["text"] for r in result.records] == ["a", "b"]


BAD_RECORDS = [
    ('{"instruction": "a", "response": "x"', "json"),  # invalid JSON
    ('{"input": "a", "response": "x"}', "instruction"),  # missing field
    ('{"instruction": 3, "response": "x"}', "instruction"),  # wrong type
    ('{"instruction": "a", "response": "  "}', "response"),  # empty response
    ('{"instruction": "a"}', "response"),  # missing response
    ('{"instruction": "a", "output": ["x"]}', "output"),  # wrong type (Alpaca spelling)
    ('["a", "b"]', "record"),  # not an object
]


@pytest.mark.parametrize("line,field", BAD_RECORDS)
def test_bad_instruction_record_names_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "ok", "response": "fine"}\n\n' + line + "\n")
    with pytest.raises(DataError, match=rf"bad\.jsonl:3: {field}:") as info:
        load_records(path, format="instruction")
    assert (info.value.line, info.value.field) == (3, field) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("messages,field", [
    ("nope", "messages"),
    ([{"role": "user"}], "messages[0]"),
    ([{"role": "user", "content": "hi"}], "messages"),  # no assistant answer
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}], "messages[1].content"),
    ([{"role": "assistant", "content": "x"}], "messages"),  # nothing before the answer
])
def test_bad_chat_record_names_the_field(tmp_path, messages, field):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    with pytest.raises(DataError, match=rf"chat\.jsonl:1: {re.escape(field)}:"):
        load_records(path, format="chat")


def test_skip_bad_counts_and_empty_dataset_errors(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"instruction": "a", "response": "x"}\nnot json\n{"instruction": "b"}\n')
    result = load_records(path, skip_bad=True)
    assert (len(result.records), result.skipped) == (1, 2)
    assert "skipped 2 malformed records" in caplog.text
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty dataset"):
        load_records(tmp_path / "empty.jsonl")
    (tmp_path / "allbad.jsonl").write_text("nope\n")
    with pytest.raises(DataError, match="all 1 records are malformed"):
        load_records(tmp_path / "allbad.jsonl", skip_bad=True)


def test_missing_file_and_prompts_without_response(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_records(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="format"):
        load_records(tmp_path / "x.jsonl", format="csv")
    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "q"}])
    assert load_records(path, require_response=False).records[0]["response"] == ""


# --------------------------------------------------------------------------- templates


def test_templates():
    with_input = build_prompt({"instruction": "Do X.", "input": "data"})
    assert "### Instruction:\nDo X.\n\n### Input:\ndata\n\n### Response:\n" in with_input
    without = build_prompt({"instruction": "Do X.", "input": ""}, "alpaca")
    assert without.endswith("### Instruction:\nDo X.\n\n### Response:\n") and "### Input" not in without
    assert without == ALPACA.without_input.format(instruction="Do X.")
    assert build_prompt({"instruction": "rev: a b"}, "plain") == "rev: a b\n"
    assert build_prompt({"instruction": "q", "input": "i"}, "plain") == "q\ni\n"
    assert build_prompt({"instruction": "q", "task": "t"}, "[{task}] {instruction} =") == "[t] q ="
    with pytest.raises(ValueError, match="field 'question'"):
        build_prompt({"instruction": "q"}, "{question}")
    with pytest.raises(ValueError, match="data.template"):
        build_prompt({"instruction": "q"}, "no-such-template")


# --------------------------------------------------------------------------- encoding and collation


def test_encode_example_labels_only_response_and_eos():
    tok = tiny_tokenizer()
    record = {"instruction": "rev: ab", "input": "", "response": "ba"}
    ex = encode_example(record, tok, "plain", max_prompt_length=32, max_length=64)
    prompt = tok("rev: ab\n")["input_ids"]
    assert ex["input_ids"] == prompt + tok("ba")["input_ids"] + [tok.eos_token_id]
    assert ex["labels"] == [IGNORE_INDEX] * len(prompt) + tok("ba")["input_ids"] + [tok.eos_token_id]
    assert ex["prompt_length"] == len(prompt) == 8


def test_encode_example_truncates_prompt_left_and_total_length():
    tok = tiny_tokenizer()
    record = {"instruction": "0123456789", "input": "", "response": "abcdef"}
    ex = encode_example(record, tok, "{instruction}", max_prompt_length=4, max_length=7)
    assert tok.decode(ex["input_ids"]) == "6789abc"  # prompt keeps its end; the response is cut at max_length
    assert ex["prompt_length"] == 4 and ex["labels"][:4] == [IGNORE_INDEX] * 4 and ex["labels"][4:] == ex["input_ids"][4:]
    with pytest.raises(ValueError, match="max_length"):
        encode_example(record, tok, "plain", max_prompt_length=8, max_length=8)


def test_encode_response_keeps_given_ids():
    ex = encode_response([5, 6, 7], [8, 2], max_length=4)
    assert ex == {"input_ids": [5, 6, 7, 8], "labels": [IGNORE_INDEX] * 3 + [8], "prompt_length": 3}


def test_collate_right_pads_and_prompts_left_pad():
    tok = tiny_tokenizer()
    examples = [encode_example(r, tok, "plain", 16, 32) for r in toy_instruction_records(3, seed=0)]
    batch = collate(examples, tok.pad_token_id)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, max(lengths))
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["labels"].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    prompts = encode_prompts(["abc", "a"], tok, max_prompt_length=2)
    assert prompts["input_ids"].tolist() == [tok("bc")["input_ids"], [0] + tok("a")["input_ids"]]
    assert prompts["attention_mask"].tolist() == [[1, 1], [0, 1]]


def test_batches_are_a_seeded_permutation():
    items = list(range(10))
    first = list(batches(items, 4, make_generator(0, 0, 0, "b")))
    assert [len(b) for b in first] == [4, 4, 2] and sorted(sum(first, [])) == items
    assert first == list(batches(items, 4, make_generator(0, 0, 0, "b")))
    assert first != list(batches(items, 4, make_generator(1, 0, 0, "b")))


def test_text_chunks_are_full_eos_separated_blocks(tmp_path):
    tok = tiny_tokenizer()
    path = write_jsonl(tmp_path / "lm.jsonl", [{"text": "abcde"}, {"text": "fgh"}])
    chunks = load_text_chunks(path, tok, block_size=4)
    stream = tok("abcde")["input_ids"] + [2] + tok("fgh")["input_ids"] + [2]  # 10 ids -> 2 blocks of 4
    assert [c["input_ids"] for c in chunks] == [stream[:4], stream[4:8]]
    assert all(c["labels"] == c["input_ids"] for c in chunks)


def test_hub_dataset_offline_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="HF_DATASETS_OFFLINE") as info:
        load_records("csdistill-test-org/no-such-dataset")
    assert isinstance(info.value, ValueError) and "csdistill-test-org/no-such-dataset" in str(info.value)


def test_auto_format_is_decided_by_the_first_valid_record(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text('oops\n{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    result = load_records(path, skip_bad=True)
    assert (result.format, result.skipped, result.records[0]["response"]) == ("chat", 1, "a")


def test_training_data_renders_chat_records_with_the_tokenizers_chat_template(tmp_path):
    """A chat record trains on the prompt the model's own chat template writes, not the generic role tags."""
    from csdistill.config import load_config
    from csdistill.train.dataset import load_train_data

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    rows = [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
            for w in ("cat", "dog", "sun")]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    cfg = load_config(overrides=[f"data.train_file={path}", f"data.validation_file={path}", "train.mode=sft"])
    data = load_train_data(cfg, tokenizer)
    prompts = {tokenizer.decode([i for i, label in zip(e["input_ids"], e["labels"]) if label == -100])
               for e in data.train}
    assert prompts == {f"<user>say {w}\n<assistant>" for w in ("cat", "dog", "sun")}
