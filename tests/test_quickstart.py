"""`csdistill quickstart --preset tiny` end to end: every stage, the table and report, reuse on rerun."""

import json
from pathlib import Path

import pytest

from csdistill.cli import main
from csdistill.config import ConfigError
from csdistill.compare import RunSpec, parse_losses
from csdistill.jobs import Job
from csdistill.quickstart import quickstart


def test_parse_losses_names_bad_entries():
    assert parse_losses("csd:ss, fkl") == [RunSpec("csd", "SS"), RunSpec("fkl")]
    with pytest.raises(ConfigError, match="'kl'.*fkl"):
        parse_losses("csd:SS,kl")
    with pytest.raises(ConfigError, match="'csd:SX'"):
        parse_losses("csd:SX")
    with pytest.raises(ConfigError, match="only csd takes a weighting"):
        parse_losses("fkl:SS")


def test_stage_stamps_follow_settings_inputs_and_upstream_stages(tmp_path):
    def job(name, overrides, **kw):
        return Job(name, overrides, tmp_path / name, tmp_path, 1, **kw)

    teacher = job("teacher", ["train.lr=0.1", "train.num_threads=2"], inputs="suite-a")
    student = job("s", ["train.lr=0.2"], after=(teacher,), inputs="suite-a")
    stamp = student.stamp()
    assert job("teacher", ["train.num_threads=1", "train.lr=0.1"], inputs="suite-a").stamp() == teacher.stamp()
    assert job("s", ["train.lr=0.2"], after=(job("teacher", ["train.lr=0.3"], inputs="suite-a"),),
               inputs="suite-a").stamp() != stamp  # a retrained teacher retrains its students
    assert job("s", ["train.lr=0.2"], after=(teacher,), inputs="suite-b").stamp() != stamp  # other data
    assert job("s", ["train.lr=0.25"], after=(teacher,), inputs="suite-a").stamp() != stamp


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    return out, quickstart("tiny", out, losses="csd:SS", jobs=2, progress=False)


def test_tiny_quickstart_runs_every_stage_and_reports(tiny_run):
    out, summary = tiny_run
    labels = [r["label"] for r in summary.results]
    assert labels == ["teacher", "SFT only (no KD)", "CSD (SS)"]
    for result in summary.results:
        assert set(result["sets"]) == {"choice", "grammar", "reverse", "shift", "sort"}
        assert "exact_match" in result["sets"]["sort"] and "distribution" in result["sets"]["choice"]
    teacher = summary.results[0]["sets"]["reverse"]["fidelity"]
    assert teacher["forward_kl"] == pytest.approx(0.0, abs=1e-6)  # the teacher against itself
    assert summary.results[2]["sets"]["reverse"]["fidelity"]["forward_kl"] > 0
    student_cfg = (out / "configs" / "csd_SS.yaml").read_text()
    assert "cache_teacher_logits: true" in student_cfg and str(out / "student_init" / "final") in student_cfg
    report = summary.report.read_text()
    assert "| CSD (SS) |" in report and "## Comparison" in report
    assert (out / "report" / "fidelity_diversity.png").stat().st_size > 1000
    assert (out / "report" / "training_curves.png").is_file()


def test_rerun_reuses_finished_stages_and_trains_only_new_runs(tiny_run, capsys):
    out, _ = tiny_run
    code = main(["quickstart", "--preset", "tiny", "--out", str(out), "--losses", "csd:SS,fkl", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    for stage in ("teacher", "student_init", "sft", "csd_SS"):
        assert f"{stage}: finished earlier with the same settings" in printed
    assert "fkl: finished earlier" not in printed and (out / "students" / "fkl" / "final").is_dir()
    assert "| FKL |" in printed


def test_bad_losses_flag_is_a_clear_error(tmp_path, capsys):
    assert main(["quickstart", "--preset", "tiny", "--out", str(tmp_path), "--losses", "nope"]) == 2
    assert "--losses: 'nope'" in capsys.readouterr().err
