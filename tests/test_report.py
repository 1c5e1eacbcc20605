"""Report rendering: expected table, files, plots."""

import json

import pytest

from csdistill.cli import main
from csdistill.evaluate.metrics import mean_std
from csdistill.report import build_report, load_results, markdown_table, main_columns, unique_labels


def fake_result(loss, weighting, dolly_seeds, gsm_seeds, fkl, self_bleu, mode="kd"):
    def set_result(per_seed, exact):
        out = {"n_examples": 4, "rouge_l": mean_std(per_seed), "bleu": mean_std([5.0, 6.0]),
               "chrf": mean_std([20.0, 22.0]), "self_bleu": {"per_prompt": self_bleu, "set": mean_std([30.0, 31.0])},
               "distinct_1": mean_std([0.5, 0.6]), "distinct_2": mean_std([0.8, 0.9]),
               "fidelity": {"forward_kl": fkl, "reverse_kl": fkl / 2, "csd_ss": fkl / 3, "top1_agreement": 0.7,
                            "student_nll": 2.5},
               "calibration": {"ece": 0.05}}
        if exact:
            out["exact_match"] = mean_std(per_seed)
            out["distribution"] = {"valid": 0.9, "tvd": 0.2, "kl": 0.3, "distinct": 2.0, "entropy": 0.6,
                                   "true_entropy": 0.69}
        return out

    return {"model": f"runs/{loss}{weighting}/final", "teacher": "runs/teacher", "config_hash": f"hash{loss}",
            "command": "csdistill evaluate --model x", "date": "2026-01-01T00:00:00", "machine": {"host": "ci"},
            "run": {"loss": loss, "weighting": weighting, "mode": mode, "seeds": [10, 20], "greedy": False},
            "sets": {"dolly": set_result(dolly_seeds, False), "gsm": set_result(gsm_seeds, True)}}


RUNS = [fake_result("csd", "SS", [20.0, 22.0], [30.0, 30.0], 0.5, 40.0),
        fake_result("fkl", "", [18.0, 18.0], [32.0, 35.0], 0.4, 30.0)]


def test_markdown_table_cells_and_bold_best():
    labels = unique_labels(RUNS)
    assert labels == ["csd SS · 2 seeds", "fkl · 2 seeds"]
    table = markdown_table(labels, RUNS, main_columns(RUNS)).splitlines()
    assert table[0] == "| run | dolly (ROUGE-L) | gsm (EM) | average |"
    # csd: dolly 21 ± 1 (best), gsm 30 ± 0; average per seed (25, 26) -> 25.5 ± 0.5
    assert table[2] == "| csd SS · 2 seeds | **21.00 ± 1.00** | 30.00 ± 0.00 | 25.50 ± 0.50 |"
    # fkl: dolly 18 ± 0, gsm 33.5 ± 1.5 (best); average per seed (25, 26.5) -> 25.75 ± 0.75 (best)
    assert table[3] == "| fkl · 2 seeds | 18.00 ± 0.00 | **33.50 ± 1.50** | **25.75 ± 0.75** |"


def test_duplicate_labels_are_disambiguated_and_explicit_labels_checked():
    twin = dict(RUNS[0], model="runs/other/final")
    assert unique_labels([RUNS[0], twin]) == ["csd SS · 2 seeds (final)", "csd SS · 2 seeds (final) #2"]
    with pytest.raises(ValueError, match="--labels"):
        unique_labels(RUNS, ["only one"])


def test_build_report_writes_files_and_links(tmp_path):
    paths = []
    for k, run in enumerate(RUNS):
        p = tmp_path / f"eval{k}" / "results.json"
        p.parent.mkdir()
        p.write_text(json.dumps(run))
        paths.append(p if k == 0 else p.parent)  # a file and a folder
    run_dir = tmp_path / "train_run"
    run_dir.mkdir()
    lines = [{"step": s, "loss": 3.0 / s, "lr": 1e-4 * (1 - s / 10)} for s in range(1, 10)]
    lines.append({"step": 5, "val_loss": 0.9})
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    report = build_report(paths, tmp_path / "report", metrics_dirs=[run_dir], title="Test report")
    text = report.read_text()
    for png in ("fidelity_diversity.png", "training_curves.png", "teacher_fidelity.png"):
        assert (tmp_path / "report" / png).stat().st_size > 5000
        assert f"]({png})" in text
    assert text.startswith("# Test report")
    assert "## Distribution tasks" in text and "hashcsd" in text and "csdistill evaluate --model x" in text
    assert "**0.4000**" in text  # fkl has the lowest forward KL
    assert "2026-01-01T00:00:00" in text and "host=ci" in text


def test_report_cli_and_errors(tmp_path, capsys):
    p = tmp_path / "results.json"
    p.write_text(json.dumps(RUNS[0]))
    assert main(["report", str(p), "--out", str(tmp_path / "r"), "--labels", "mine"]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "| mine |" in text and f"by `csdistill report {p} --out" in text
    assert not (tmp_path / "r" / "training_curves.png").exists()
    assert main(["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no 'sets'"):
        load_results({"model": "x"})
    assert main(["report", str(p), "--out", str(tmp_path / "r"), "--metrics", str(tmp_path / "nope")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
