"""`csdistill compare` end to end on tiny models: runs, table, report, reuse on rerun, flag errors."""

import copy
import json
from pathlib import Path

import pytest
import yaml

from csdistill.cli import main
from csdistill.compare import RunSpec, base_overrides, parse_losses, parse_lrs, parse_seeds
from csdistill.config import ConfigError, load_config
from helpers import toy_instruction_records, write_jsonl, write_toy_run


def _base_config(root):
    write_toy_run(root, n_train=16, n_validation=6)
    write_jsonl(root / "test.jsonl", toy_instruction_records(5, seed=3))
    cfg = {"model": {"name_or_path": str(root / "student")}, "teacher": {"name_or_path": str(root / "teacher")},
           "data": {"train_file": str(root / "train.jsonl"), "validation_file": str(root / "validation.jsonl"),
                    "max_prompt_length": 32, "max_length": 64, "template": "plain"},
           "train": {"mode": "kd", "max_steps": 3, "batch_size": 4, "lr": 1e-3, "log_every": 1},
           "generation": {"max_new_tokens": 6},
           "eval": {"sets": [str(root / "test.jsonl")], "seeds": [1, 2]}}
    (root / "base.yaml").write_text(yaml.safe_dump(cfg))
    return root / "base.yaml"


def _compare(config, out, *extra):
    return main(["compare", "--config", str(config), "--losses", "sft,csd:SS", "--seeds", "0,1", "--out", str(out),
                 "--no-progress", "--jobs", "2", *extra])


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    config = _base_config(root)
    assert _compare(config, root / "out", "--decode", "greedy,sampled", "--lr", "csd:SS=3e-3") == 0
    return config, root / "out"


def test_every_loss_and_seed_trains_from_the_same_start_and_is_tabled(compared):
    config, out = compared
    for run in ("sft_seed0", "sft_seed1", "csd_SS_seed0", "csd_SS_seed1"):
        saved = load_config(out / "configs" / f"{run}.yaml")
        assert saved.model.name_or_path == str(config.parent / "student")  # the one student start
        assert (out / "runs" / run / "final" / "config.json").is_file()
    ss = load_config(out / "configs" / "csd_SS_seed1.yaml")
    assert (ss.train.mode, ss.loss.name, ss.loss.weighting, ss.train.seed, ss.train.lr) == ("kd", "csd", "SS", 1, 3e-3)
    sft = load_config(out / "configs" / "sft_seed0.yaml")
    assert (sft.train.mode, sft.train.lr) == ("sft", 1e-3)  # no --lr entry: the base config's train.lr
    numbers = json.loads((out / "report" / "compare.json").read_text())
    assert list(numbers["rows"]) == ["teacher", "student start (no KD)", "SFT on the data's responses (SeqKD)", "CSD (SS)"]
    row = numbers["rows"]["CSD (SS)"]
    assert set(row) >= {"test ROUGE-L ↑ (greedy)", "test ROUGE-L ↑ (sampled)", "Self-BLEU (sampled)", "FKL to teacher ↓", "ECE ↓"}
    per_seed = [json.loads((out / "eval" / "greedy" / f"csd_SS_seed{s}" / "results.json").read_text()) for s in (0, 1)]
    values = [r["sets"]["test"]["rouge_l"]["mean"] for r in per_seed]
    mean, std = row["test ROUGE-L ↑ (greedy)"]
    assert mean == pytest.approx(sum(values) / 2) and std == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    assert numbers["rows"]["teacher"]["FKL to teacher ↓"][0] == pytest.approx(0.0, abs=1e-6)
    report = (out / "report" / "report.md").read_text()
    assert "## Comparison" in report and "| CSD (SS) |" in report and "**" in report
    assert "CSD (SS) · seed 1" in report  # per-seed rows in the full report
    assert (out / "report" / "training_curves.png").is_file()


def test_the_report_says_which_differences_are_outside_the_noise(compared):
    _, out = compared
    numbers = json.loads((out / "report" / "compare.json").read_text())["noise"]
    assert set(numbers) == {"test ROUGE-L (greedy)", "test ROUGE-L (sampled)"}
    column = numbers["test ROUGE-L (sampled)"]
    assert set(column["means"]) == {"start", "sft", "csd_SS"}  # the teacher is no contender
    top = max(column["means"].values())
    assert column["best"] == max(column["means"], key=column["means"].get) if column["best"] else \
        all(column["means"][n] == top for n in column["tied"])
    table = json.loads((out / "report" / "compare.json").read_text())["rows"]
    assert column["means"]["csd_SS"] == pytest.approx(table["CSD (SS)"]["test ROUGE-L ↑ (sampled)"][0])
    pair = column["pairs"]["sft"]["csd_SS"]
    assert pair["delta"] == pytest.approx(column["means"]["sft"] - column["means"]["csd_SS"])
    assert pair["low"] <= pair["delta"] <= pair["high"]
    report = (out / "report" / "report.md").read_text()
    assert "## Which differences are outside the noise" in report and ("best (" in report or "all tied (" in report)


def test_rerun_of_a_finished_comparison_starts_nothing_and_prints_the_same_table(compared, capsys, monkeypatch):
    import csdistill.compare.workers as workers
    import csdistill.models

    config, out = compared
    before = (out / "report" / "report.md").read_text()
    launched = []
    monkeypatch.setattr(workers, "launch_worker", lambda *args: launched.append(args))
    monkeypatch.setattr(csdistill.models, "load_model", lambda *a, **k: launched.append(a))
    capsys.readouterr()
    assert _compare(config, out, "--decode", "greedy,sampled", "--lr", "csd:SS=3e-3") == 0
    printed = capsys.readouterr().out
    assert launched == []  # no evaluation worker, no model loaded
    table = printed.split("\n\nwall time:")[0].strip().split("\n\n")[-1]
    assert table.startswith("| run |") and len(table.splitlines()) == 6  # header, rule, teacher, start, sft, csd
    assert table in before  # the very table of the first run


def test_a_run_killed_mid_training_is_redone_on_rerun(compared, capsys):
    """A killed run leaves its folder without a stamp (and maybe without final/): the rerun redoes it and
    keeps every finished one."""
    import shutil

    config, out = compared
    killed = out / "runs" / "csd_SS_seed1"
    (killed / "stamp.json").unlink()
    final = killed / "final"  # a link to the run's last checkpoint, or a folder
    final.unlink() if final.is_symlink() else shutil.rmtree(final)
    capsys.readouterr()
    assert _compare(config, out, "--decode", "greedy,sampled", "--lr", "csd:SS=3e-3") == 0
    printed = capsys.readouterr().out
    assert "csd_SS_seed1: finished earlier" not in printed
    for run in ("sft_seed0", "sft_seed1", "csd_SS_seed0"):
        assert f"{run}: finished earlier with the same settings" in printed
    assert (killed / "stamp.json").is_file() and (killed / "final" / "config.json").is_file()
    assert "| CSD (SS) |" in printed


def test_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    config = _base_config(tmp_path)
    (tmp_path / "taken").write_text("mine")
    capsys.readouterr()  # what building the toy models printed
    code = main(["compare", "--config", str(config), "--losses", "fkl", "--out", str(tmp_path / "taken")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("csdistill: error: ")
    assert "--out" in err and (tmp_path / "taken").read_text() == "mine"


def test_rerun_reuses_and_a_changed_lr_retrains_only_that_loss(compared, capsys):
    config, out = compared
    capsys.readouterr()
    assert _compare(config, out, "--decode", "greedy,sampled", "--lr", "csd:SS=3e-3") == 0
    printed = capsys.readouterr().out
    for run in ("sft_seed0", "sft_seed1", "csd_SS_seed0", "csd_SS_seed1"):
        assert f"{run}: finished earlier with the same settings" in printed
    assert "| CSD (SS) |" in printed
    assert _compare(config, out, "--decode", "greedy", "--lr", "csd:SS=1e-3") == 0
    printed = capsys.readouterr().out
    assert "sft_seed0: finished earlier" in printed and "sft_seed1: finished earlier" in printed
    assert "csd_SS_seed0: finished earlier" not in printed
    assert load_config(out / "configs" / "csd_SS_seed0.yaml").train.lr == 1e-3
    kept = [p.name for p in (out / "runs").iterdir() if p.name.startswith("csd_SS_seed0.")]
    assert len(kept) == 1  # the earlier run with the other lr is kept, not deleted


@pytest.mark.parametrize("flag,value,message", [
    ("--losses", "sft,nope", "--losses: 'nope'"),
    ("--losses", "fkl:SS", "only csd takes a weighting"),
    ("--losses", "fkl,fkl", "fkl given twice"),
    ("--seeds", "0,x", "--seeds '0,x': not a list of integers; give e.g. --seeds 0,1,2"),
    ("--seeds", "1,1", "distinct integers"),
    ("--lr", "rkl=1e-3", "'rkl' is not in --losses"),
    ("--lr", "fkl=fast", "'fast' is not a number"),
    ("--decode", "beam", "give greedy, sampled or greedy,sampled"),
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flag, value, message):
    config = _base_config(tmp_path)
    capsys.readouterr()  # what building the toy models printed
    args = {"--losses": "sft,fkl", "--seeds": "0", flag: value}
    code = main(["compare", "--config", str(config), "--out", str(tmp_path / "out"), *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing ran


def test_parsers_and_base_overrides():
    assert parse_losses("sft, csd:ts,fkl") == [RunSpec("sft"), RunSpec("csd", "TS"), RunSpec("fkl")]
    assert parse_seeds("2,0") == [2, 0]
    specs = parse_losses("fkl,csd:SS,csd:TS")
    assert parse_lrs("1e-4", specs) == {"fkl": 1e-4, "csd_SS": 1e-4, "csd_TS": 1e-4}
    assert parse_lrs("csd=2e-4,csd:SS=1e-4", specs) == {"csd": 2e-4, "csd_SS": 1e-4}
    cfg = load_config(None, ["teacher.name_or_path=t", 'data.template="{instruction} -> "', "eval.seeds=[1,2]",
                             "loss.lam=0.2", "train.lr=3e-5"])
    assert load_config(None, base_overrides(cfg)) == cfg  # the base config survives the round trip
    with pytest.raises(ConfigError, match="--losses is empty"):
        parse_losses(" , ")


def test_lr_sweep_chooses_on_validation_and_trains_the_table_at_the_choice(tmp_path):
    config = _base_config(tmp_path)
    out = tmp_path / "out"
    assert main(["compare", "--config", str(config), "--losses", "fkl", "--seeds", "0", "--out", str(out),
                 "--lr-sweep", "1e-4,1e-2", "--decode", "greedy", "--baselines", "none", "--no-progress"]) == 0
    sweep = json.loads((out / "sweep" / "sweep.json").read_text())
    scores = sweep["scores"]["fkl"]
    assert set(scores) == {"0.0001", "0.01"} and sweep["best"]["fkl"] == float(max(scores, key=scores.get))
    assert load_config(out / "configs" / "fkl_seed0.yaml").train.lr == sweep["best"]["fkl"]
    assert load_config(out / "sweep" / "lr0.01" / "configs" / "fkl_seed100.yaml").train.seed == 100
    assert list(json.loads((out / "report" / "compare.json").read_text())["rows"]) == ["FKL"]


def test_real_model_config_names_the_pipeline_commands():
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "configs" / "real_smollm2_compare.yaml"
    header = path.read_text().split("\nmodel:")[0]
    for command in ("csdistill model fetch", "csdistill student init --teacher", "--layers 24", "csdistill data prompts",
                    "csdistill teacher cache --config configs/real_smollm2_compare.yaml --top-k 64",
                    "train.teacher_cache=", "csdistill compare --config configs/real_smollm2_compare.yaml",
                    "--losses sft,fkl,rkl,srkl,csd:SS,csd:TS,csd:US", "--decode greedy,sampled"):
        assert command in header
    cfg = load_config(path)
    assert cfg.eval.sets and cfg.data.validation_file and cfg.train.max_steps > 0 and len(cfg.eval.seeds) == 5
    assert parse_losses("sft,fkl,rkl,srkl,csd:SS,csd:TS,csd:US")  # the header's --losses parse


def test_noise_analysis_reads_the_saved_generations_and_marks_a_real_gap(tmp_path):
    """Two rows × two seeds on 30 prompts: one answers every prompt right, one half of them; plus a tie."""
    from csdistill.compare import Row, headline_scores, noise_analysis
    from csdistill.evaluate.runner import write_generations

    records = [{"instruction": f"q{i}", "response": f"alpha beta {i}", "task": "gsm8k", "answer": str(i)}
               for i in range(30)]
    refs = [[r["response"]] for r in records]
    right = [f"#### {i}" for i in range(30)]
    half = [f"#### {i if i % 2 else -1}" for i in range(30)]
    rows = [Row("good", "Good", {0: tmp_path, 1: tmp_path}), Row("half", "Half", {0: tmp_path, 1: tmp_path}),
            Row("twin", "Twin", {0: tmp_path, 1: tmp_path}), Row("teacher", "teacher", {None: tmp_path})]
    for row, preds in zip(rows, (right, half, right, right)):
        for seed in row.models:
            folder = tmp_path / "eval" / "greedy" / row.folder(seed)
            write_generations(folder / "generations" / "test.greedy.jsonl", "k", ["p"] * 30, preds, refs)
            row.results.setdefault("greedy", []).append(
                {"sets": {"test": {"generations": ["generations/test.greedy.jsonl"], "n_examples": 30,
                                   "exact_match": {"n": 30}, "rouge_l": {"mean": 0.0}}}})
    scores = headline_scores(rows, ["greedy"], {"test": records}, tmp_path / "eval")
    assert set(scores) == {("greedy", "test", "exact_match")}  # every record exact-checked: no ROUGE-L column
    assert scores["greedy", "test", "exact_match"]["half"].shape == (2, 30)
    text, numbers = noise_analysis(rows, scores, {"good": "Good", "half": "Half", "twin": "Twin"})
    column = numbers["test EM (greedy)"]
    assert column["means"] == {"good": 100.0, "half": 50.0, "twin": 100.0}
    assert column["best"] is None and column["tied"] == ["good", "twin"]  # two rows share the top: no single best
    assert column["pairs"]["half"]["good"]["separated"] and column["pairs"]["half"]["good"]["delta"] == -50.0
    assert not column["pairs"]["twin"]["good"]["separated"]
    assert "| Good | tied best (100.0) |" in text and "| Twin | tied best (100.0) |" in text
    assert "| Half | **-50.0 [" in text and "teacher" not in text


def _noise_rows(tmp_path, predictions: dict[str, list[str]]):
    """Rows of two seeds each whose saved greedy generations are `predictions` ({row name: 30 answers})."""
    from csdistill.compare import Row
    from csdistill.evaluate.runner import write_generations

    rows = [Row(name, name.title(), {0: tmp_path, 1: tmp_path}) for name in predictions]
    for row in rows:
        for seed in row.models:
            folder = tmp_path / "eval" / "greedy" / row.folder(seed)
            write_generations(folder / "generations" / "test.greedy.jsonl", "k", ["p"] * 30, predictions[row.name],
                              [["ref"]] * 30)
            row.results.setdefault("greedy", []).append(
                {"sets": {"test": {"generations": ["generations/test.greedy.jsonl"], "n_examples": 30,
                                   "exact_match": {"n": 30}}}})
    return rows


def test_noise_table_names_no_best_row_when_every_row_ties(tmp_path):
    """EM 0 everywhere: no row is "best"; the table says all tied, and a unique best is still named."""
    from csdistill.compare import headline_scores, noise_analysis

    records = [{"instruction": f"q{i}", "response": "r", "task": "gsm8k", "answer": str(i)} for i in range(30)]
    wrong = [f"#### {-i - 1}" for i in range(30)]
    rows = _noise_rows(tmp_path, {"a": wrong, "b": wrong, "c": wrong})
    text, numbers = noise_analysis(rows, headline_scores(rows, ["greedy"], {"test": records}, tmp_path / "eval"), {})
    column = numbers["test EM (greedy)"]
    assert column["best"] is None and column["tied"] == ["a", "b", "c"] and set(column["means"].values()) == {0.0}
    assert all(f"| {n} | all tied (0.0) |" in text for n in "abc") and "best (" not in text
    rows = _noise_rows(tmp_path / "unique", {"a": wrong, "b": [f"#### {i}" for i in range(30)]})
    text, numbers = noise_analysis(rows, headline_scores(rows, ["greedy"], {"test": records}, tmp_path / "unique" / "eval"), {})
    assert numbers["test EM (greedy)"]["best"] == "b" and "| b | best (100.0) |" in text and "| a | **-100.0 [" in text


def test_evaluation_workers_fill_what_a_second_pass_only_reads(tmp_path, monkeypatch):
    """Two pinned worker processes evaluate the models; a second pass finds every evaluation finished and
    reads them back without loading any model or starting any worker."""
    import csdistill.compare.workers as workers
    import csdistill.models
    from csdistill.compare import Row, eval_config, evaluate_rows

    config = _base_config(tmp_path)
    cfg = load_config(config)
    snapshot = copy.deepcopy(cfg)
    cfgs = {d: eval_config(cfg, d) for d in ("greedy", "sampled")}
    assert cfgs["sampled"].generation.do_sample and cfgs["greedy"].eval.greedy
    teacher, student = str(tmp_path / "teacher"), tmp_path / "student"
    sets = [str(tmp_path / "test.jsonl")]

    def rows():
        return [Row("teacher", "teacher", {None: Path(teacher)}), Row("start", "start", {0: student, 1: student})]

    first = rows()
    evaluate_rows(first, teacher, sets, cfgs, tmp_path / "eval", 1, False, "test", slots=[[0], [0]])
    logs = [(tmp_path / "eval" / f"worker-{k}.log").read_text() for k in (0, 1)]
    assert [log.count("[worker] done") for log in logs] == [2, 1]  # three models dealt out in turn

    def never(*args, **kwargs):
        raise AssertionError("nothing is missing: nothing may be started or loaded")

    monkeypatch.setattr(workers, "launch_worker", never)
    monkeypatch.setattr(csdistill.models, "load_model", never)
    again = rows()
    evaluate_rows(again, teacher, sets, cfgs, tmp_path / "eval", 1, False, "test", slots=[[0], [0]])
    assert [r.results for r in again] == [r.results for r in first]
    assert len(again[1].results["sampled"]) == 2 and again[0].results["greedy"][0]["sets"]["test"]["rouge_l"]
    assert cfg == snapshot  # evaluation changed nothing in the config it was given


def test_selection_score_weighs_a_mixed_set_by_its_em_and_rouge():
    from csdistill.compare import selection_score, set_score

    mixed = {"n_examples": 32, "exact_match": {"mean": 11.1, "n": 9}, "rouge_l": {"mean": 28.3}}
    exact_only = {"n_examples": 9, "exact_match": {"mean": 40.0, "n": 9}, "rouge_l": {"mean": 10.0}}
    text = {"n_examples": 5, "rouge_l": {"mean": 30.0}}
    dist = {"n_examples": 5, "distribution": {"tvd": 0.25}, "rouge_l": {"mean": 1.0}}
    assert set_score(mixed) == pytest.approx((11.1 + 28.3) / 2)  # a handful of exact records does not decide alone
    assert set_score(exact_only) == 40.0 and set_score(text) == 30.0 and set_score(dist) == 75.0
    assert set_score({"n_examples": 3}) is None
    assert selection_score({"sets": {"a": mixed, "b": text, "c": {"n_examples": 1}}}) == pytest.approx(
        ((11.1 + 28.3) / 2 + 30.0) / 2)
    assert selection_score({"sets": {}}) != selection_score({"sets": {}})  # NaN: nothing to choose by
