"""Bad input to the newer commands, as a new user types it: exit 2 and one line on stderr,
`csdistill: error: ...` naming what, where and the fix (nothing written, nothing loaded first)."""

import pytest

from csdistill.cli import main
from helpers import write_jsonl


@pytest.fixture
def places(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("mine\n")
    write_jsonl(tmp_path / "prompts" / "train.jsonl", [{"instruction": "say hi"}])
    return tmp_path


CASES = {
    "student init: folder without config.json": (["student", "init", "--teacher", "{empty}", "--out", "{new}"],
                                                  "no config.json"),
    "student init: zero heads": (["student", "init", "--teacher", "{empty}", "--out", "{new}", "--heads", "0"],
                                 "--heads 0"),
    "student init: negative layers": (["student", "init", "--teacher", "{empty}", "--out", "{new}", "--layers", "-2"],
                                      "--layers -2"),
    "data prompts: zero count": (["data", "prompts", "--out", "{new}", "--n-test", "0"], "--n-test 0"),
    "data prompts: negative count": (["data", "prompts", "--out", "{new}", "--n-train", "-5"], "--n-train -5"),
    "data prompts: --out is a file": (["data", "prompts", "--out", "{file}"], "is a file, not a folder"),
    "data prompts: no categories": (["data", "prompts", "--out", "{new}", "--categories", ","], "--categories"),
    "data respond: missing prompts folder": (["data", "respond", "--teacher", "{empty}", "--prompts", "{missing}",
                                              "--out", "{new}"], "--prompts"),
    "data respond: zero batch": (["data", "respond", "--teacher", "{empty}", "--prompts", "{prompts}", "--out",
                                  "{new}", "--batch-size", "0"], "--batch-size 0"),
    "data respond: --out is a file": (["data", "respond", "--teacher", "{empty}", "--prompts", "{prompts}", "--out",
                                       "{file}"], "is a file, not a folder"),
    "data tasks: --out is a file": (["data", "tasks", "--out", "{file}", "--preset", "tiny"], "is a file"),
    "data tasks: --out under a file": (["data", "tasks", "--out", "{file}/suite", "--preset", "tiny"], "is a file"),
    "data tasks: unknown task": (["data", "tasks", "--out", "{new}", "--tasks", "bogus"], "'bogus'"),
    "data import: missing source": (["data", "import", "--format", "dolly", "--src", "{missing}", "--out",
                                     "{new}/d.jsonl"], "--src"),
    "train: tiny presets, --output_dir is a file": (["train", "model.name_or_path=preset:tiny-llama",
                                                     "teacher.name_or_path=preset:tiny-llama@1",
                                                     "data.train_file={prompts}/train.jsonl",
                                                     "train.output_dir={file}"], "train.output_dir="),
    "quickstart: --out under a file": (["quickstart", "--preset", "tiny", "--out", "{file}"], "is a file"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line(name, places, capsys):
    argv, expected = CASES[name]
    where = {"empty": places / "empty", "new": places / "new", "file": places / "a-file",
             "missing": places / "missing", "prompts": places / "prompts"}
    assert main([a.format(**where) for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("csdistill: error: ") and captured.err.count("\n") == 1, captured.err
    assert expected in captured.err
    assert not (places / "new").exists() and (places / "a-file").read_text() == "mine\n"  # nothing written


def test_a_non_integer_count_is_argparse_s_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "prompts", "--out", "x", "--seed", "one"])
    assert exit_.value.code == 2 and "--seed: invalid int value: 'one'" in capsys.readouterr().err
