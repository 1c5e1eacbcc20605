"""`csdistill evaluate` end to end on a tiny saved model: results JSON, generations, resume, report."""

import json

import pytest

import csdistill.generation
from csdistill.cli import main
from csdistill.config import load_config
from csdistill.evaluate import evaluate_model
from csdistill.evaluate.runner import load_sets
from csdistill.report import build_report
from helpers import tiny_model, tiny_tokenizer, write_jsonl

RECORDS = [
    {"instruction": "rev: cat dog", "input": "", "response": "dog cat", "task": "reverse", "answer": "dog cat"},
    {"instruction": "pick: pink cyan gold lime", "input": "", "response": "pink", "task": "choice"},
    {"instruction": "What is 3 + 4?", "input": "", "response": "3 + 4 = 7\n#### 7", "task": "gsm8k"},
    {"instruction": "Describe a cat.", "input": "", "response": "a cat is small", "references": ["a cat is small", "cats purr"]},
]
FAST = ["eval.seeds=[10,20]", "generation.max_new_tokens=6", "generation.batch_size=4", "train.progress=false"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("evale2e")
    tok = tiny_tokenizer()
    model = tiny_model(seed=0)
    model.save_pretrained(root / "student")
    tok.save_pretrained(root / "student")
    teacher = tiny_model(seed=1)
    teacher.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    write_jsonl(root / "mixed.jsonl", RECORDS)
    return root


def _evaluate(saved, out, *extra):
    return main(["evaluate", *FAST, *extra, "--model", str(saved / "student"), "--teacher", str(saved / "teacher"),
                 "--sets", str(saved / "mixed.jsonl"), "--out", str(out)])


def _count_generate_calls(monkeypatch):
    calls = []
    real = csdistill.generation.generate_seed_texts

    def counting(model, tokenizer, prompts, gen, seeds, *args, **kwargs):
        calls.append(list(seeds))
        return real(model, tokenizer, prompts, gen, seeds, *args, **kwargs)

    monkeypatch.setattr(csdistill.generation, "generate_seed_texts", counting)
    return calls


def test_cli_evaluate_writes_results_generations_and_resumes(saved, tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval"
    calls = _count_generate_calls(monkeypatch)
    assert _evaluate(saved, out) == 0
    assert calls == [[10, 20]]  # both seeds in one batched decoding
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == str(saved / "student") and results["teacher"] == str(saved / "teacher")
    assert {"config_hash", "command", "date", "machine"} <= set(results)
    assert results["command"].startswith("csdistill evaluate 'eval.seeds=[10,20]' generation.max_new_tokens=6")
    r = results["sets"]["mixed"]
    assert r["n_examples"] == 4 and r["seeds"] == [10, 20] and len(r["rouge_l"]["per_seed"]) == 2
    assert 0.0 <= r["rouge_l"]["mean"] <= 100.0
    assert r["exact_match"]["n"] == 2  # reverse + gsm8k; the choice record is a distribution task
    assert r["distribution"]["n_prompts"] == 1 and 0.0 <= r["distribution"]["valid"] <= 1.0
    assert r["self_bleu"]["per_prompt"] is not None and 0 <= r["distinct_2"]["mean"] <= 1
    assert set(r["fidelity"]) >= {"forward_kl", "reverse_kl", "csd_ss", "top1_agreement", "student_nll"}
    assert r["fidelity"]["forward_kl"] > 0 and 0 <= r["calibration"]["ece"] <= 1
    for name in r["generations"]:
        rows = [json.loads(line) for line in (out / name).read_text().splitlines()]
        assert len(rows) == 4 and rows[3]["references"] == ["a cat is small", "cats purr"]
    assert "mixed (n=4)" in capsys.readouterr().out

    # Rerun: the finished set is reused, nothing is generated.
    calls.clear()
    assert _evaluate(saved, out) == 0
    assert calls == [] and json.loads((out / "results.json").read_text())["sets"]["mixed"] == r
    # Interrupted after the generations: the set is recomputed from the saved passes.
    (out / "sets" / "mixed.json").unlink()
    assert _evaluate(saved, out) == 0
    assert calls == [] and json.loads((out / "sets" / "mixed.json").read_text())["rouge_l"] == r["rouge_l"]
    # A changed evaluation setting recomputes the set but reuses the passes.
    assert _evaluate(saved, out, "eval.fidelity=false") == 0
    fidelity = json.loads((out / "sets" / "mixed.json").read_text())["fidelity"]
    assert calls == [] and "forward_kl" not in fidelity and "student_nll" in fidelity
    # A changed generation setting invalidates the saved passes.
    assert _evaluate(saved, out, "generation.max_new_tokens=5") == 0
    assert calls == [[10, 20]]
    # One lost pass: only its seed is decoded again, and it draws what it drew beside the other seed.
    lost = out / "generations" / "mixed.seed20.jsonl"
    before = lost.read_text()
    lost.unlink()
    (out / "sets" / "mixed.json").unlink()
    calls.clear()
    assert _evaluate(saved, out, "generation.max_new_tokens=5") == 0
    assert calls == [[20]] and lost.read_text() == before
    # Decoding under bf16 autocast is another decoder: the saved fp32 passes are not reused for it.
    calls.clear()
    assert _evaluate(saved, out, "generation.max_new_tokens=5", "model.precision=bf16") == 0
    assert calls == [[10, 20]]


def test_cli_errors_are_one_clear_line(saved, tmp_path, capsys):
    rc = main(["evaluate", *FAST, "--model", str(saved / "student"), "--sets", str(tmp_path / "missing.jsonl"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "missing.jsonl' not found" in capsys.readouterr().err
    rc = main(["evaluate", "--model", str(saved / "student"), "--sets", str(saved / "mixed.jsonl"), "eval.greedy=true"])
    assert rc == 2 and "overrides go before --sets" in capsys.readouterr().err
    assert main(["evaluate", *FAST, "--model", str(saved / "student")]) == 2
    assert "no evaluation sets" in capsys.readouterr().err


def test_evaluate_model_in_process_greedy_and_report(saved, tmp_path):
    tok, model = tiny_tokenizer(), tiny_model(seed=0)
    cfg = load_config(None, [*FAST, "eval.greedy=true", "train.mode=sft"])
    results = evaluate_model(model, tok, {"suite": RECORDS[:2], "open": RECORDS[3:]}, cfg, teacher=None,
                             out_dir=tmp_path / "e", progress=False, label="tiny greedy")
    suite = results["sets"]["suite"]
    assert suite["seeds"] == [10] and suite["greedy"] and suite["self_bleu"]["per_prompt"] is None
    assert "forward_kl" not in suite["fidelity"] and "student_nll" in suite["fidelity"]
    assert results["run"]["greedy"] and (tmp_path / "e" / "generations" / "open.greedy.jsonl").is_file()
    report = build_report([tmp_path / "e"], tmp_path / "report")
    assert "| tiny greedy |" in report.read_text()


def test_load_sets_accepts_records_without_a_response_and_keeps_their_fields(tmp_path):
    rows = [{"instruction": "pick: a b", "task": "choice", "distribution": {"a": 0.5, "b": 0.5}},
            {"instruction": "Describe a cat.", "references": ["a cat is small"]},
            {"instruction": "rev: cat dog", "task": "reverse", "answer": "dog cat"}]
    (records,) = load_sets([write_jsonl(tmp_path / "s.jsonl", rows)]).values()
    assert [{k: r[k] for k in row} for r, row in zip(records, rows)] == rows
    assert all(r["response"] == "" and r["input"] == "" for r in records)


def test_prompt_only_records_are_scored_by_their_task(saved, tmp_path, capsys):
    """Records without a response: an exact task's checker scores them; no teacher is needed."""
    prompt_only = [{"instruction": "rev: cat dog", "task": "reverse", "answer": "dog cat"},
                   {"instruction": "What is 3 + 4?", "task": "gsm8k", "answer": "7"}]
    sets = write_jsonl(tmp_path / "prompt_only.jsonl", prompt_only)
    rc = main(["evaluate", *FAST, "--model", str(saved / "student"), "--sets", str(sets), "--out", str(tmp_path / "o")])
    assert rc == 0, capsys.readouterr().err
    r = json.loads((tmp_path / "o" / "results.json").read_text())["sets"]["prompt_only"]
    assert r["exact_match"]["n"] == 2 and 0.0 <= r["exact_match"]["mean"] <= 100.0
    assert r["n_with_references"] == 0 and "rouge_l" not in r and "fidelity" not in r


def test_a_record_with_nothing_to_score_against_is_a_clear_error(saved, tmp_path, capsys):
    sets = write_jsonl(tmp_path / "bare.jsonl", [{"instruction": "say something"}])
    rc = main(["evaluate", *FAST, "--model", str(saved / "student"), "--sets", str(sets), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no record has a 'response' or 'references' and none names a 'task'" in capsys.readouterr().err


def test_a_second_decoding_of_the_same_model_reuses_the_teacher_forced_pass(saved, monkeypatch):
    import csdistill.evaluate.fidelity as fidelity
    from csdistill.models import load_model, load_tokenizer

    calls = []
    real = fidelity.teacher_forced_metrics
    monkeypatch.setattr(fidelity, "teacher_forced_metrics", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, teacher = load_model(str(saved / "student")), load_model(str(saved / "teacher"))
    tok = load_tokenizer(str(saved / "student"))
    sets, forced = {"forced_reuse": RECORDS}, {}  # the caller holds the reuse memo; the library keeps none
    greedy = evaluate_model(model, tok, sets, load_config(None, [*FAST, "train.mode=sft", "eval.greedy=true"]), teacher=teacher, progress=False,
                            teacher_forced=forced)
    sampled = evaluate_model(model, tok, sets, load_config(None, [*FAST, "train.mode=sft"]), teacher=teacher, progress=False,
                             teacher_forced=forced)
    assert len(calls) == 1  # the teacher-forced pass does not depend on the decoding
    assert greedy["sets"]["forced_reuse"]["fidelity"] == sampled["sets"]["forced_reuse"]["fidelity"]
    assert greedy["sets"]["forced_reuse"]["passes"] != sampled["sets"]["forced_reuse"]["passes"]
    longer = evaluate_model(model, tok, sets, load_config(None, [*FAST, "train.mode=sft", "data.max_prompt_length=6", "data.max_length=8"]), teacher=teacher,
                            progress=False, teacher_forced=forced)
    assert len(calls) == 2 and longer["sets"]["forced_reuse"]["fidelity"] != greedy["sets"]["forced_reuse"]["fidelity"]


def test_sets_that_ask_the_same_prompts_decode_once_and_score_against_their_own_references(saved, tmp_path,
                                                                                           monkeypatch):
    calls = _count_generate_calls(monkeypatch)
    human = [{"instruction": "Describe a cat.", "response": "a cat is small"},
             {"instruction": "Name a colour.", "response": "blue"}]
    teacher = [{**r, "response": answer} for r, answer in zip(human, ["cats purr softly", "red and green"])]
    other = [{"instruction": "Describe a dog.", "response": "a dog barks"}, human[1]]
    tok, model = tiny_tokenizer(), tiny_model(seed=0)
    cfg = load_config(None, [*FAST, "train.mode=sft"])
    sets = {"human": human, "teacher": teacher, "other": other}
    results = evaluate_model(model, tok, sets, cfg, out_dir=tmp_path / "e", progress=False)
    assert calls == [[10, 20], [10, 20]]  # human and teacher ask the same prompts: one decoding; other differs
    rows = {name: [json.loads(line) for line in (tmp_path / "e" / "generations" / f"{name}.seed20.jsonl").open()]
            for name in sets}
    assert [r["prediction"] for r in rows["human"]] == [r["prediction"] for r in rows["teacher"]]
    assert [r["references"] for r in rows["teacher"]] == [["cats purr softly"], ["red and green"]]
    nll = {name: results["sets"][name]["fidelity"]["student_nll"] for name in sets}
    assert nll["human"] != nll["teacher"]  # teacher-forced on each set's own responses
    # Shared decodings change nothing: the set evaluated alone decodes once and scores the same.
    calls.clear()
    alone = evaluate_model(model, tok, {"teacher": teacher}, cfg, out_dir=tmp_path / "alone", progress=False)
    assert calls == [[10, 20]] and alone["sets"]["teacher"] == results["sets"]["teacher"]
