"""Bad data is named with file:line and the fix: encodings, oversized records, chat roles, references,
unknown characters, malformed results files."""

import json

import pytest

from csdistill.cli import main
from csdistill.data import DataError, load_records
from csdistill.data import formats
from csdistill.data.text import encode_long
from csdistill.evaluate.scoring import record_references
from csdistill.report import load_results
from helpers import tiny_model, tiny_tokenizer, write_jsonl

GOOD = {"instruction": "say hi", "input": "", "response": "hi"}


@pytest.mark.parametrize("data, match", [
    ((json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "response": "caf\u00e9"}, ensure_ascii=False)).encode("latin-1"),
     r":2: encoding: byte 0xe9 at column \d+ is not UTF-8; save the file as UTF-8"),
    (json.dumps(GOOD).encode("utf-16"), r"the file is UTF-16"),
    (b"\x00\x01\x02PK\x03\x04" * 10, r"looks binary"),
])
def test_non_utf8_files_name_file_line_and_the_fix(tmp_path, data, match):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(data)
    with pytest.raises(DataError, match=match) as err:
        load_records(path)
    assert str(path) in str(err.value)


def test_utf8_with_bom_is_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    assert load_records(path).records[0]["response"] == "hi"


def test_oversized_record_is_refused_before_tokenising(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "MAX_RECORD_CHARS", 1000)
    path = write_jsonl(tmp_path / "big.jsonl", [GOOD, {**GOOD, "input": "x" * 2000}])
    with pytest.raises(DataError, match=r"big.jsonl:2: record: 2,\d+ characters, over the limit of 1,000"):
        load_records(path)
    assert len(load_records(path, skip_bad=True).records) == 1


def test_long_text_documents_are_tokenised_in_pieces_with_the_same_ids():
    tokenizer = tiny_tokenizer()
    text = "".join(f"line {i} of a long document\n" for i in range(500)) + "tail without newline"
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert encode_long(tokenizer, text, piece_chars=333) == whole
    assert encode_long(tokenizer, "y" * 1000, piece_chars=64) == tokenizer("y" * 1000, add_special_tokens=False)["input_ids"]


def test_chat_roles_are_checked(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "humna", "content": "hi"},
                                                               {"role": "assistant", "content": "hello"}]}])
    with pytest.raises(DataError, match=r"chat.jsonl:1: messages\[0\].role: unknown role 'humna'; valid roles: "
                                        r"system, user, assistant"):
        load_records(path)


def test_references_string_is_one_reference_and_other_types_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "refs.jsonl", [{**GOOD, "references": "abc"}, {**GOOD, "references": ["a", "b"]}])
    records = load_records(path).records
    assert [record_references(r) for r in records] == [["abc"], ["a", "b"]]
    assert record_references({"references": "abc"}) == ["abc"]  # in-memory records too
    bad = write_jsonl(tmp_path / "bad.jsonl", [GOOD, {**GOOD, "references": [1, 2]}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: references: expected a string or a list of strings"):
        load_records(bad)


def test_unknown_characters_give_one_warning_with_a_count(capsys):
    from csdistill.data.collate import encode_example, warn_unknown_tokens

    tokenizer = tiny_tokenizer()
    records = [{"instruction": "caf\u00e9 \u00e9t\u00e9", "input": "", "response": "ok"}, GOOD]
    ids = [encode_example(r, tokenizer, "plain", 32, 64)["input_ids"] for r in records]
    assert warn_unknown_tokens(ids, records, tokenizer, "data.train_file") == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.train_file: 3 tokens in 1 texts became the unknown token '<unk>'" in err
    assert "'é'" in err
    assert warn_unknown_tokens(ids, records, tokenizer, "data.train_file") == 3  # counted again, printed once
    assert capsys.readouterr().err == ""


def test_generation_and_evaluation_prompts_warn_about_unknown_characters_too(capsys):
    from csdistill.config import GenerationConfig
    from csdistill.generation import generate_texts

    prompts = ["na\u00efve \u00fcber", "plain", "\u00fcber"]
    gen = GenerationConfig(do_sample=False, max_new_tokens=2, batch_size=2)
    generate_texts(tiny_model(seed=0), tiny_tokenizer(), prompts, gen, seed=0, what="evaluation set demo")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evaluation set demo: 3 tokens in 2 texts" in err and "'ü'" in err


@pytest.mark.parametrize("content, match", [
    ({"sets": {"a": "oops"}}, r"sets\.a: expected an object of metrics, got str"),
    ({"sets": {"a": {"rouge_l": {"mean": "high"}}}}, r"sets\.a\.rouge_l\.mean: expected a number, got str"),
    ({"sets": {"a": {"rouge_l": [1, 2]}}}, r"sets\.a\.rouge_l: expected an object of numbers, got list"),
    ({"sets": {"a": {"fidelity": {"forward_kl": None, "top1_agreement": {"x": "y"}}}}}, r"top1_agreement\.x"),
    ([1, 2], r"expected a JSON object, got list"),
    ({"sets": []}, r"no 'sets' mapping"),
])
def test_malformed_results_name_the_file_and_the_field(tmp_path, capsys, content, match):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        load_results(path)
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("csdistill: error: ") and str(path) in err and err.count("\n") == 1
