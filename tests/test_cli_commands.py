"""The command table: every command parses and has help; only the chosen command's module is imported
(`csdistill --help` imports no torch); a command module that fails to import is an error."""

import subprocess
import sys

import pytest

import csdistill.cli as cli
from csdistill.cli import COMMANDS, GROUPS, Command, build_parser, command_path, main


def _imported_after(code: str) -> set[str]:
    """The csdistill modules (and torch) a fresh interpreter holds after running `code`."""
    probe = f"import sys\n{code}\nprint(' '.join(m for m in sys.modules if m.startswith(('csdistill', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split())


def test_top_level_help_imports_no_command_module_and_no_torch():
    loaded = _imported_after("import contextlib, io\nfrom csdistill.cli import main\n"
                             "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
                             "    main(['--help'])")
    assert loaded == {"csdistill", "csdistill.cli", "csdistill.errors"}  # errors: main's error boundary
    assert _imported_after("from csdistill.cli import build_parser; build_parser()") == {"csdistill", "csdistill.cli"}


def test_only_the_chosen_command_module_is_imported():
    loaded = _imported_after("from csdistill.cli import build_parser; build_parser(['config', '--help-fields'])")
    assert "torch" not in loaded and "csdistill.config" in loaded and "csdistill.train" not in loaded
    loaded = _imported_after("from csdistill.cli import build_parser; build_parser(['report', 'x', '--out', 'y'])")
    assert "csdistill.report" in loaded and not loaded & {"csdistill.compare", "csdistill.evaluate.runner",
                                                           "csdistill.quickstart", "csdistill.student"}


@pytest.mark.parametrize("path", [c.path for c in COMMANDS])
def test_every_command_has_its_arguments_and_help(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*path.split(), "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: csdistill {path} ") and "--help" in out
    assert next(c.help for c in COMMANDS if c.path == path).split()[0] in out


def test_top_level_and_group_help_list_the_table(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert all(f"    {c.path.split()[0]}" in top for c in COMMANDS)
    assert GROUPS["student"] in top
    with pytest.raises(SystemExit):
        main(["teacher", "--help"])
    group = capsys.readouterr().out
    assert all(f"    {c.path.split()[1]}" in group for c in COMMANDS if c.path.startswith("teacher "))


def test_command_path_reads_the_words_that_name_a_command():
    assert command_path(["data", "tasks", "--out", "data"]) == ("data", "tasks")
    assert command_path(["train", "--config", "x.yaml", "train.lr=1"]) == ("train",)
    assert command_path(["-h"]) == () and command_path(["data", "--help"]) == ("data",)
    assert command_path(["nonesuch", "train"]) == ()


def test_a_command_module_that_fails_to_import_is_an_error(monkeypatch):
    broken = Command("data broken", "csdistill.no_such_module", "a command whose module is missing", run="run")
    monkeypatch.setattr(cli, "COMMANDS", (*COMMANDS, broken))
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        build_parser(["data", "broken", "--flag"])  # not silently a command without its flags
    build_parser(["data", "tasks"])  # other commands do not import it


def test_unknown_commands_and_missing_subcommands_are_argparse_errors(capsys):
    for argv in (["nonesuch"], ["data"], ["teacher", "nonesuch"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    assert "invalid choice: 'nonesuch'" in capsys.readouterr().err
