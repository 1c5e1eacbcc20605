"""Convert the published instruction-following evaluation sets into our instruction JSONL.

Output records: {"instruction", "input", "response", "references": [...], "source", ...}; the
first reference is the response. Users bring the files in their distributed layout:

- dolly:     databricks-dolly-15k JSONL: instruction, context, response, category
- self-inst: user_oriented_instructions.jsonl: instruction, instances [{input, output}]
- vicuna:    question.jsonl: question_id, text (or turns), category; references from an optional
             answers JSONL (question_id + text, or choices[0].turns[0])
- sni:       Super-NaturalInstructions task JSON files (a file or a folder of task*.json):
             Definition, Instances [{input, output: [...]}]
- unni:      Unnatural Instructions JSONL: core/full format (instruction, instances
             [{instruction_with_input, input, constraints, output}]) or one flat instance per line

Paper filter: S-NI and UnNI keep only examples whose reference has >= 11 white-space tokens
(the default of --min-ref-tokens for those two formats; 0 elsewhere).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Iterator
from csdistill.files import atomic_write_jsonl
from csdistill.errors import UserError

FORMATS = ("dolly", "self-inst", "vicuna", "sni", "unni")
PAPER_MIN_REF_TOKENS = {"sni": 11, "unni": 11}


# --------------------------------------------------------------------------- reading


def _require_file(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} {str(p)!r} not found; pass the path of the downloaded file")
    return p


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line; ValueError naming the file and line if bad."""
    p = _require_file(path, "file")
    with p.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{p}:{number}: not valid JSON ({err.msg}); is this a JSONL file?") from None
            if not isinstance(obj, dict):
                raise UserError(f"{p}:{number}: expected a JSON object per line, got {type(obj).__name__}")
            yield number, obj


def _field(obj: dict, key: str, where: str, fmt: str) -> object:
    if key not in obj:
        raise UserError(f"{where}: missing field {key!r} (present: {', '.join(sorted(obj)) or 'none'}); "
                         f"is this the published --format {fmt} layout?")
    return obj[key]


def _record(instruction: str, input_text: str, references: list[str], source: str, **extra) -> dict:
    refs = [str(r).strip() for r in references if str(r).strip()]
    return {"instruction": str(instruction).strip(), "input": str(input_text or "").strip(),
            "response": refs[0] if refs else "", "references": refs, "source": source, **extra}


# --------------------------------------------------------------------------- one converter per layout


def convert_dolly(src: str | Path) -> list[dict]:
    """databricks-dolly-15k JSONL -> records (context becomes the input)."""
    out = []
    for number, obj in read_jsonl(src):
        where = f"{src}:{number}"
        out.append(_record(_field(obj, "instruction", where, "dolly"), obj.get("context", ""),
                           [_field(obj, "response", where, "dolly")], "dolly", category=obj.get("category", "")))
    return out


def convert_self_instruct(src: str | Path) -> list[dict]:
    """Self-Instruct user-oriented instructions -> one record per instance."""
    out = []
    for number, obj in read_jsonl(src):
        where = f"{src}:{number}"
        instruction = _field(obj, "instruction", where, "self-inst")
        for instance in _field(obj, "instances", where, "self-inst"):
            out.append(_record(instruction, instance.get("input", ""), [_field(instance, "output", where, "self-inst")],
                               "self-inst", id=obj.get("id", "")))
    return out


def _vicuna_answer_text(obj: dict, where: str) -> str:
    if "text" in obj:
        return str(obj["text"])
    try:  # FastChat model_answer layout
        return str(obj["choices"][0]["turns"][0])
    except (KeyError, IndexError, TypeError):
        raise UserError(f"{where}: an answer needs 'text' or 'choices[0].turns[0]'") from None


def convert_vicuna(src: str | Path, answers: str | Path | None = None) -> list[dict]:
    """Vicuna question.jsonl (+ optional answers JSONL keyed by question_id) -> records."""
    references: dict = {}
    if answers:
        for number, obj in read_jsonl(answers):
            where = f"{answers}:{number}"
            references.setdefault(_field(obj, "question_id", where, "vicuna"), []).append(_vicuna_answer_text(obj, where))
    out = []
    for number, obj in read_jsonl(src):
        where = f"{src}:{number}"
        qid = _field(obj, "question_id", where, "vicuna")
        text = obj["text"] if "text" in obj else (obj.get("turns") or [None])[0]
        if text is None:
            raise UserError(f"{where}: a question needs 'text' (or 'turns'); is this Vicuna's question.jsonl?")
        out.append(_record(text, "", references.get(qid, []), "vicuna", question_id=qid, category=obj.get("category", "")))
    return out


def _sni_task_files(src: Path, tasks_file: str | Path | None) -> list[Path]:
    if src.is_file():
        return [src]
    files = sorted(src.glob("*.json"))
    if tasks_file:
        wanted = [t.strip() for t in _require_file(tasks_file, "tasks file").read_text().splitlines() if t.strip()]
        missing = [t for t in wanted if not (src / f"{t}.json").is_file()]
        if missing:
            raise UserError(f"tasks file {tasks_file}: {len(missing)} tasks not in {src} (e.g. {missing[0]!r}); "
                             "pass the S-NI 'tasks' folder as --src")
        files = [src / f"{t}.json" for t in wanted]
    if not files:
        raise UserError(f"--src {str(src)!r} holds no task*.json files; pass S-NI's 'tasks' folder or one task file")
    return files


def convert_sni(src: str | Path, tasks_file: str | Path | None = None, max_per_task: int = 0) -> list[dict]:
    """Super-NaturalInstructions task files -> one record per instance (all outputs as references)."""
    out = []
    for path in _sni_task_files(_require_file(src, "S-NI source"), tasks_file):
        try:
            task = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err.msg})") from None
        definition = _field(task, "Definition", str(path), "sni")
        definition = "\n".join(definition) if isinstance(definition, list) else str(definition)
        instances = _field(task, "Instances", str(path), "sni")
        for instance in instances[:max_per_task] if max_per_task > 0 else instances:
            outputs = _field(instance, "output", str(path), "sni")
            outputs = outputs if isinstance(outputs, list) else [outputs]
            out.append(_record(definition, instance.get("input", ""), outputs, "sni", task_name=path.stem,
                               id=instance.get("id", "")))
    return out


def _unni_instance(instruction: str, instance: dict, where: str) -> dict:
    constraints = str(instance.get("constraints", "") or "").strip()
    if constraints and constraints.rstrip(".").lower() != "none":
        instruction = f"{instruction}\n{constraints}"
    return _record(instruction, instance.get("input", ""), [_field(instance, "output", where, "unni")], "unni")


def convert_unni(src: str | Path) -> list[dict]:
    """Unnatural Instructions -> records; constraints (other than 'None.') are appended to the instruction."""
    out = []
    for number, obj in read_jsonl(src):
        where = f"{src}:{number}"
        if "instances" in obj:
            instruction = _field(obj, "instruction", where, "unni")
            out.extend(_unni_instance(instruction, inst, where) for inst in obj["instances"])
        else:  # one flat instance per line
            instruction = obj.get("instruction") or _field(obj, "instruction_with_input", where, "unni")
            out.append(_unni_instance(instruction, obj, where))
    return out


# --------------------------------------------------------------------------- filters and entry points


def filter_records(records: list[dict], min_ref_tokens: int = 0, max_examples: int = 0) -> list[dict]:
    """Keep records whose response has >= min_ref_tokens white-space tokens; then the first max_examples."""
    kept = [r for r in records if len(r["response"].split()) >= min_ref_tokens] if min_ref_tokens > 0 else list(records)
    return kept[:max_examples] if max_examples > 0 else kept


def import_set(fmt: str, src: str | Path, *, answers: str | None = None, tasks_file: str | None = None,
               max_per_task: int = 0, min_ref_tokens: int | None = None, max_examples: int = 0) -> list[dict]:
    """Convert `src` in the published `fmt` layout; min_ref_tokens None = the paper's default for fmt."""
    converters: dict[str, Callable[[], list[dict]]] = {
        "dolly": lambda: convert_dolly(src),
        "self-inst": lambda: convert_self_instruct(src),
        "vicuna": lambda: convert_vicuna(src, answers),
        "sni": lambda: convert_sni(src, tasks_file, max_per_task),
        "unni": lambda: convert_unni(src),
    }
    if fmt not in converters:
        raise UserError(f"--format {fmt!r} is not known; choose one of: {', '.join(FORMATS)}")
    _require_file(src, "--src")
    threshold = PAPER_MIN_REF_TOKENS.get(fmt, 0) if min_ref_tokens is None else min_ref_tokens
    return filter_records(converters[fmt](), threshold, max_examples)


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    """Write records as JSONL (atomically: a temporary file renamed into place)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out, records)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=FORMATS, help="layout of --src")
    parser.add_argument("--src", required=True, help="the published file (sni: a task file or the tasks folder)")
    parser.add_argument("--out", required=True, help="instruction JSONL to write")
    parser.add_argument("--min-ref-tokens", type=int, default=None,
                        help="keep references with at least this many white-space tokens "
                             "(default: 11 for sni/unni as in the paper, else 0; 0 = no filter)")
    parser.add_argument("--max-examples", type=int, default=0, help="keep the first N examples after filtering (0 = all)")
    parser.add_argument("--answers", default=None, help="vicuna: answers JSONL whose texts become the references")
    parser.add_argument("--tasks-file", default=None, help="sni: text file of task names to keep (e.g. test_tasks.txt)")
    parser.add_argument("--max-per-task", type=int, default=0, help="sni: at most N instances per task (0 = all)")


def import_command(args: argparse.Namespace) -> int:
    """`csdistill data import`: convert, filter, write (user errors: the CLI's one line)."""
    records = import_set(args.format, args.src, answers=args.answers, tasks_file=args.tasks_file,
                         max_per_task=args.max_per_task, min_ref_tokens=args.min_ref_tokens,
                         max_examples=args.max_examples)
    if not records:
        raise UserError(f"--src {args.src!r}: no examples left after filtering; lower --min-ref-tokens")
    missing = sum(1 for r in records if not r["references"])
    write_jsonl(records, args.out)
    threshold = PAPER_MIN_REF_TOKENS.get(args.format, 0) if args.min_ref_tokens is None else args.min_ref_tokens
    print(f"wrote {len(records)} {args.format} examples to {args.out} (min reference tokens: {threshold})")
    if missing:
        print(f"warning: {missing} examples have no reference (ROUGE-L needs one); vicuna: pass --answers")
    return 0
