"""`csdistill <command>`: parse arguments, build the config, call one function. No logic here.

Commands:
  train       run any training mode (sft, kd, imitkd, gkd, adaptive, seqkd, paired)
  generate    sample from a checkpoint for given prompts
  config      print the default or resolved config (and field help)
  evaluate    generation metrics, teacher fidelity, calibration -> results JSON
  report      results JSONs -> markdown table, plots, report.md
  data        data utilities: `data tasks` (built-in task suite), `data import` (published eval sets)
  quickstart  the whole embedded pipeline on the built-in suite, no network
  compare     train every (loss, seed) from one student start, evaluate all, one table
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


# --- compare (issue 11) ---
def _cmd_compare(args: argparse.Namespace) -> int:
    from csdistill.compare import compare_command

    return compare_command(args)
# --- end compare ---


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csdistill", description="Concrete Score Distillation for causal LMs")
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

    p = sub.add_parser("quickstart", help="the whole pipeline on the built-in suite (no network)")
    p.set_defaults(func=_cmd_quickstart)
    _register_extra(p, "csdistill.quickstart")

    p = sub.add_parser("compare", help="every (loss, seed) from one student start, evaluated, one table")
    p.set_defaults(func=_cmd_compare)
    _register_extra(p, "csdistill.compare")
    return parser


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from csdistill.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"csdistill: config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
