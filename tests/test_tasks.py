"""The built-in task suite: determinism, disjoint splits, exact checkers and closed-form distributions."""

import json
import math
from collections import Counter

import pytest

from csdistill.cli import main
from csdistill.tasks import get_task, task_names
from csdistill.tasks.generators import (GRAMMAR_ANIMALS, MAX_CHARS, TASK_DEFS, grammar_distribution, solve_add,
                                        solve_shift)
from csdistill.tasks.suite import (PRESET_SIZES, SUITE_TASKS, TRAIN_WEIGHTS, make_suite, parse_train_weights,
                                   suite_alphabet, write_suite)

SMALL = dict(n_train=300, n_validation=50, n_test=50, n_warmup=50)


@pytest.fixture(scope="module")
def suite():
    return make_suite(3, **SMALL)


def _all_records(suite):
    return [r for records in suite.values() for r in records]


def test_registry_has_every_suite_task():
    names = task_names()
    assert set(SUITE_TASKS) < set(TASK_DEFS)  # add is registered but opt-in
    for name in TASK_DEFS:
        assert name in names
        spec = get_task(name)
        assert spec.kind == TASK_DEFS[name].kind
        assert (spec.true_distribution is not None) == (spec.kind == "distribution")


def test_sizes_and_fields(suite):
    assert {k: len(v) for k, v in suite.items()} == {"train": 300, "validation": 50, "test": 50, "warmup": 50}
    assert Counter(r["task"] for r in suite["test"]) == {name: 10 for name in SUITE_TASKS}
    for r in _all_records(suite):
        assert r["input"] == ""
        assert ("answer" in r) == (TASK_DEFS[r["task"]].kind == "exact")
    assert all("distribution" in r for r in suite["test"] if r["task"] in ("choice", "grammar"))
    assert "warmup" not in make_suite(3, n_train=10, n_validation=5, n_test=5)


def test_train_shares_follow_weights():
    counts = Counter(r["task"] for r in make_suite(0, n_train=700, n_validation=0, n_test=0)["train"])
    assert counts == {name: 140 for name in SUITE_TASKS}  # the default tasks share evenly
    everything = list(TASK_DEFS)
    counts = Counter(r["task"] for r in make_suite(0, n_train=700, n_validation=0, n_test=0, tasks=everything)["train"])
    assert counts["add"] == 700 * TRAIN_WEIGHTS["add"] / sum(TRAIN_WEIGHTS[name] for name in everything)
    counts = Counter(r["task"] for r in make_suite(0, n_train=12, n_validation=0, n_test=0, tasks=["sort", "add"],
                                                   train_weights={"add": 1, "sort": 2})["train"])
    assert counts == {"sort": 8, "add": 4}
    assert parse_train_weights("add=3, sort=1") == {"add": 3.0, "sort": 1.0}
    with pytest.raises(ValueError, match="train-weights"):
        parse_train_weights("add")
    with pytest.raises(ValueError, match="train_weights"):
        make_suite(0, train_weights={"add": 0})


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a = write_suite(tmp_path / "a", 7, **SMALL)
    b = write_suite(tmp_path / "b", 7, **SMALL)
    c = write_suite(tmp_path / "c", 8, **SMALL)
    for split in a:
        assert a[split].read_bytes() == b[split].read_bytes()
        assert a[split].read_bytes() != c[split].read_bytes()
    assert (tmp_path / "a" / "suite.json").read_bytes() == (tmp_path / "b" / "suite.json").read_bytes()


def test_test_split_independent_of_train_size():
    assert make_suite(5, n_train=50, n_validation=20, n_test=20)["test"] == \
        make_suite(5, n_train=400, n_validation=20, n_test=20)["test"]


def test_splits_disjoint_in_prompts(suite):
    prompts = {split: [r["instruction"] for r in records] for split, records in suite.items()}
    for split in ("test", "validation", "warmup"):
        assert len(set(prompts[split])) == len(prompts[split]), f"{split} repeats a prompt"
    splits = list(prompts)
    for i, first in enumerate(splits):
        for second in splits[i + 1:]:
            assert not set(prompts[first]) & set(prompts[second]), (first, second)


def test_every_record_passes_its_own_checker(suite):
    for r in _all_records(suite):
        spec = get_task(r["task"])
        assert spec.check(r["response"], r), r
        assert spec.check("  " + r["response"] + "\n", r)  # the prediction is stripped
        if spec.kind == "distribution":
            dist = spec.true_distribution(r)
            assert r["response"] in dist and dist[r["response"]] > 0
            assert math.isclose(sum(dist.values()), 1.0, abs_tol=1e-12)
            if "distribution" in r:
                assert r["distribution"] == dist


def test_wrong_answers_fail(suite):
    for r in _all_records(suite):
        spec = get_task(r["task"])
        assert not spec.check(r["response"] + "x", r)
        assert not spec.check("", r)
        if spec.kind == "exact":
            assert not spec.check(r["response"][::-1] + "0", r)
    record = {"instruction": "add: 73+54", "input": "", "response": "28", "answer": "28", "task": "add"}
    assert get_task("add").check("28", record) and not get_task("add").check("82", record)


def test_exact_solutions_by_hand():
    assert solve_add("73+54") == "28"  # 37 + 45 = 82
    assert solve_add("99+1") == "001"  # 99 + 1 = 100, carry into a new digit
    assert solve_add("01+01") == "02"  # 10 + 10 = 20
    assert solve_shift("cazy") == "dbaz"
    r = {"instruction": "rev: cup map pen", "answer": "pen map cup"}
    assert get_task("reverse").check("pen map cup", r) and not get_task("reverse").check("cup map pen", r)
    assert get_task("sort").check("abdj", {"instruction": "sort: dbja", "answer": "abdj"})


def test_closed_form_distributions():
    dist = get_task("choice").true_distribution({"instruction": "pick: red blue gold"})
    assert dist == pytest.approx({"red": 12 / 16, "blue": 1 / 16, "gold": 3 / 16})
    assert not get_task("choice").check("teal", {"instruction": "pick: red blue gold"})
    dist = grammar_distribution("fox hen")
    assert len(dist) == 18 and dist["the fox sees the hen"] == pytest.approx(0.75 * 0.7 * 0.5)
    assert dist["a shy fox naps"] == pytest.approx(0.25 * 0.1 * 0.2)
    entropy = -sum(p * math.log(p) for p in dist.values())
    assert 2.0 < entropy < 2.8  # a long tail: mode-seeking students lose entropy measurably


def test_training_responses_follow_the_true_distribution():
    suite = make_suite(11, n_train=2500, n_validation=0, n_test=0, tasks=["grammar"])
    counts = Counter(" ".join("X" if w in GRAMMAR_ANIMALS else w for w in r["response"].split())
                     for r in suite["train"])
    expected = 2500 * 0.75 * 0.7 * 0.5  # "the X sees the X"
    assert abs(counts["the X sees the X"] - expected) < 4 * math.sqrt(expected)


def test_alphabet_and_length_bound(suite):
    alphabet = set(suite_alphabet())
    assert len(alphabet) == len(suite_alphabet())
    with_add = make_suite(4, n_train=100, n_validation=10, n_test=10, tasks=list(TASK_DEFS))
    for r in _all_records(suite) + _all_records(with_add):
        text = r["instruction"] + r["input"] + r["response"]
        assert set(text) <= alphabet, r
        assert len(r["instruction"]) + len(r["response"]) <= MAX_CHARS, r


def test_user_errors_name_the_field():
    with pytest.raises(ValueError, match="tasks"):
        make_suite(0, tasks=["nope"])
    with pytest.raises(ValueError, match="n_test"):
        make_suite(0, n_test=-1)
    with pytest.raises(ValueError, match="grammar"):
        make_suite(0, n_train=10, n_test=1000, tasks=["grammar"])
    with pytest.raises(ValueError, match="instruction"):
        get_task("choice").true_distribution({"instruction": "rev: red blue gold"})
    with pytest.raises(ValueError, match="unknown colours"):
        get_task("choice").true_distribution({"instruction": "pick: red blue mauve"})


def test_cli_tiny_preset_writes_files(tmp_path, capsys):
    out = tmp_path / "suite"
    assert main(["data", "tasks", "--out", str(out), "--seed", "1", "--preset", "tiny"]) == 0
    for split, key in (("train", "n_train"), ("validation", "n_validation"), ("test", "n_test")):
        lines = (out / f"{split}.jsonl").read_text().splitlines()
        assert len(lines) == PRESET_SIZES["tiny"][key]
        assert all(json.loads(line)["task"] in SUITE_TASKS for line in lines)
    meta = json.loads((out / "suite.json").read_text())
    assert meta["seed"] == 1 and meta["alphabet"] == suite_alphabet()
    assert [t["name"] for t in meta["tasks"]] == SUITE_TASKS
    assert not (out / "warmup.jsonl").exists()
    assert main(["data", "tasks", "--out", str(out), "--preset", "tiny", "--n-warmup", "10", "--tasks", "add,choice",
                 "--train-weights", "add=3"]) == 0
    assert len((out / "warmup.jsonl").read_text().splitlines()) == 10
    assert json.loads((out / "suite.json").read_text())["train_weights"] == {"add": 3.0, "choice": 1.0}
    assert main(["data", "tasks", "--out", str(out), "--tasks", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
