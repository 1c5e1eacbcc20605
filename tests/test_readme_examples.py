"""README.md's ```bash blocks run as pasted: each is valid bash, and every `csdistill ...` command in
them names a real command whose flags and values the CLI's parser accepts (nothing is run)."""

import contextlib
import io
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from csdistill.cli import COMMANDS, build_parser, command_path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
SEPARATORS = {"&&", "||", ";", "|", "&"}


def simple_commands(block: str) -> list[list[str]]:
    """The block's simple commands as word lists: continuations joined, comments dropped, split at && ; |."""
    commands: list[list[str]] = []
    for line in block.replace("\\\n", " ").splitlines():
        if "csdistill" not in line:  # only csdistill's commands are checked (heredoc bodies are not shell)
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token in SEPARATORS:
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def csdistill_commands(block: str) -> list[list[str]]:
    """The arguments of each `csdistill ...` (or `.venv/bin/csdistill ...`) command in the block."""
    return [words[1:] for words in simple_commands(block) if Path(words[0]).name == "csdistill"]


def parse_error(args: list[str]) -> str | None:
    """None when the CLI's parser accepts `csdistill *args`; otherwise argparse's message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser(args).parse_args(args)
    except SystemExit as exit_:
        return stderr.getvalue().strip().splitlines()[-1] if exit_.code else None
    return None


def _block_id(block: str) -> str:
    return block.splitlines()[0][:40]


@pytest.mark.parametrize("block", [pytest.param(b, id=_block_id(b)) for b in BLOCKS])
def test_readme_bash_block_runs_as_pasted(block):
    syntax = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    for words in simple_commands(block):
        assert not words[0].startswith("-"), f"{' '.join(words)!r}: a continuation line lost its backslash"
    leaves = {c.path for c in COMMANDS}
    for args in csdistill_commands(block):
        line = shlex.join(["csdistill", *args])
        assert " ".join(command_path(args)) in leaves, f"{line}: no such command"
        assert parse_error(args) is None, f"{line}: {parse_error(args)}"
        shipped = [a for a in args if a.startswith("configs/")]  # the repo's presets exist
        assert all((README.parent / a).is_file() for a in shipped), f"{line}: no such file in the repo"


def test_the_checks_catch_what_they_check():
    assert csdistill_commands("a && .venv/bin/csdistill quickstart --preset tiny # note\nx | csdistill data tasks \\\n"
                              "  --out d") == [["quickstart", "--preset", "tiny"], ["data", "tasks", "--out", "d"]]
    assert parse_error(["quickstart", "--preset", "tiny"]) is None
    assert "--nonesuch" in parse_error(["data", "tasks", "--out", "d", "--nonesuch"])
    assert "invalid choice" in parse_error(["data", "tasks", "--out", "d", "--preset", "huge"])
    assert "invalid choice" in parse_error(["nonesuch"])
    assert command_path(["data", "nonesuch"]) == ("data",)
    assert len(BLOCKS) >= 5  # the README's examples were found


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_github_anchor_drops_punctuation():
    assert github_anchor("Decoding throughput: batched seeds vs `model.generate`") == \
        "decoding-throughput-batched-seeds-vs-modelgenerate"


def test_links_into_the_results_name_a_heading_there():
    results = README.parent / "benchmarks" / "RESULTS.md"
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.*)$", results.read_text(), re.M)}
    links = re.findall(r"RESULTS\.md#([\w\-]+)", README.read_text())
    assert links and [link for link in links if link not in anchors] == []
