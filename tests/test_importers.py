"""Importers on small fixtures in each published layout."""

import json
from pathlib import Path

import pytest

from csdistill.cli import main
from csdistill.evaluate import importers as I

FIX = Path(__file__).parent / "fixtures" / "importers"


def _check_schema(records):
    for r in records:
        assert set(r) >= {"instruction", "input", "response", "references", "source"}
        assert r["response"] == r["references"][0]


def test_dolly_context_becomes_input():
    records = I.import_set("dolly", FIX / "dolly.jsonl")
    _check_schema(records)
    assert len(records) == 3
    assert records[0]["input"].startswith("Virgin Australia commenced") and records[1]["input"] == ""
    assert records[1]["response"] == "Tope" and records[0]["category"] == "closed_qa"


def test_self_instruct_one_record_per_instance():
    records = I.import_set("self-inst", FIX / "self_inst.jsonl")
    _check_schema(records)
    assert [r["response"] for r in records[1:]] == ["Friendly", "Formal"]
    assert records[1]["instruction"] == records[2]["instruction"] and records[2]["input"].startswith("Dear Sir")


def test_vicuna_with_and_without_answers():
    with_refs = I.import_set("vicuna", FIX / "vicuna_question.jsonl", answers=str(FIX / "vicuna_answers.jsonl"))
    _check_schema(with_refs)
    assert with_refs[0]["response"].startswith("Set clear goals") and with_refs[1]["response"].startswith("Exercise")
    bare = I.import_set("vicuna", FIX / "vicuna_question.jsonl")
    assert [r["references"] for r in bare] == [[], []] and bare[0]["instruction"].startswith("How can I")


def test_sni_paper_filter_tasks_file_and_all_references():
    records = I.import_set("sni", FIX / "sni")  # default: references of >= 11 tokens (paper)
    _check_schema(records)
    assert [r["id"] for r in records] == ["task001-1"]
    everything = I.import_set("sni", FIX / "sni", min_ref_tokens=0)
    assert len(everything) == 4 and everything[1]["references"][1].startswith("What is the name")
    assert everything[0]["instruction"].startswith("In this task") and everything[-1]["task_name"] == "task002_sentiment"
    only_listed = I.import_set("sni", FIX / "sni", tasks_file=str(FIX / "sni" / "test_tasks.txt"), min_ref_tokens=0)
    assert {r["task_name"] for r in only_listed} == {"task001_quoref_question_generation"}
    assert len(I.import_set("sni", FIX / "sni", min_ref_tokens=0, max_per_task=1)) == 2


def test_unni_core_and_flat_layouts():
    core = I.import_set("unni", FIX / "unni_core.jsonl", min_ref_tokens=0)
    _check_schema(core)
    assert core[0]["instruction"].endswith("separated by spaces.")  # "None." constraint dropped
    assert core[1]["instruction"].endswith("The output should be lowercase.") and core[1]["response"] == "a b"
    assert len(I.import_set("unni", FIX / "unni_core.jsonl")) == 1  # paper filter: >= 11 tokens
    flat = I.import_set("unni", FIX / "unni_flat.jsonl", min_ref_tokens=0)
    assert flat[0]["instruction"].startswith("Translate") and flat[0]["response"] == "bonjour"


def test_max_examples_and_filter():
    assert len(I.import_set("dolly", FIX / "dolly.jsonl", max_examples=2)) == 2
    assert [r["response"] for r in I.import_set("dolly", FIX / "dolly.jsonl", min_ref_tokens=2)][0].startswith("Virgin")


def test_cli_import_writes_jsonl(tmp_path, capsys):
    out = tmp_path / "sni.jsonl"
    rc = main(["data", "import", "--format", "sni", "--src", str(FIX / "sni"), "--out", str(out),
               "--min-ref-tokens", "0", "--max-examples", "3"])
    assert rc == 0 and "wrote 3 sni examples" in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3 and lines[0]["source"] == "sni"


def test_clear_errors(tmp_path, capsys):
    assert main(["data", "import", "--format", "dolly", "--src", str(tmp_path / "nope.jsonl"),
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field 'instruction'.*--format dolly"):
        I.import_set("dolly", bad)
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: not valid JSON"):
        I.import_set("self-inst", bad)
    with pytest.raises(ValueError, match="no task"):
        I.import_set("sni", tmp_path)
