"""A generated instruction prompt set, no download: `csdistill data prompts --out DIR --seed N`.

Categories are templates filled from small word lists (``CATEGORIES``). ``arithmetic`` holds GSM8K-style
word problems with an exact answer (task ``gsm8k``: the number after ``####``, else the last number);
every other category is open-ended (task ``open``), scored by ROUGE-L against the teacher's response once
`csdistill data respond` has written it.

Records: {"instruction", "input": "", "response", "category", "task", "id"} plus ``answer`` (the number,
as a string) on arithmetic ones; ``response`` is the worked solution ending in ``#### n`` for arithmetic
and "" for open-ended prompts until a teacher answers them. Splits are drawn test first, then validation,
then train, and no prompt text appears in two splits (nor twice in one). The same seed and sizes give the
same files.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Callable
from csdistill.files import atomic_write_json, atomic_write_jsonl
from csdistill.errors import UserError, check_writable

VERSION = 1  # bump when the templates or lists change: the same seed then gives other prompts

NAMES = ("Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jack", "Kira", "Liam", "Maya",
         "Noah", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara")
ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "eggs")
TOPICS = ("photosynthesis", "gravity", "the water cycle", "volcanoes", "rainbows", "magnets", "the moon's phases",
          "vaccines", "recycling", "earthquakes", "electricity", "the seasons", "tides", "clouds", "bees",
          "the internet", "money", "sleep", "muscles", "fossils")
TASKS = ("learn a new language", "save money", "sleep better", "study for an exam", "keep a plant alive",
         "cook rice", "write a good email", "stay focused", "make new friends", "prepare for a job interview",
         "start running", "organise a small room", "reduce food waste", "remember names", "drink more water")
PAIRS = (("a cat", "a dog"), ("tea", "coffee"), ("a river", "a lake"), ("weather", "climate"), ("a virus", "bacteria"),
         ("a city", "a village"), ("a poem", "a story"), ("a star", "a planet"), ("summer", "winter"),
         ("a train", "a bus"), ("reading", "listening"), ("a map", "a compass"))
WORDS = ("curious", "generous", "ancient", "fragile", "brave", "humble", "vivid", "patient", "rare", "clever",
         "gentle", "famous", "honest", "quiet", "eager")
SENTENCES = ("i cant come today because my car is broke", "the meeting got moved to next week sorry",
             "we need more chairs for the party tomorrow", "your order will be late by two days",
             "thanks a lot for helping me move last weekend", "the printer on floor two is not working again",
             "can you send me the report before friday", "the shop is closed on sundays now",
             "me and him was going to the cinema but it rained", "pls tell the team the server is down",
             "i has finished the homework yesterday", "we dont got any milk left in the fridge",
             "the bus come late every morning this week", "i want to return this shoes they is too small")
CHARACTERS = ("a robot", "a fox", "a young pirate", "an old baker", "a lost kitten", "a dragon", "a librarian",
              "a snowman", "a tiny ant", "an astronaut")
PLACES = ("a quiet forest", "a busy market", "the bottom of the sea", "a snowy mountain", "an empty train station",
          "a small island", "a school library", "a garden at night")
RECIPIENTS = ("your teacher", "a neighbour", "your manager", "a friend", "the landlord", "a customer")
REASONS = ("to ask for a day off", "to say thank you for a gift", "to report a broken window",
           "to invite them to a picnic", "to apologise for a late reply", "to ask for feedback on a project")

AUDIENCES = ("a ten-year-old", "a grandparent", "a new student", "a busy manager", "a curious teenager")
LENGTHS = ("in two sentences", "in one short paragraph", "in three bullet points", "in under fifty words")
STYLES = ("", " Be concise.", " Use simple words.", " Answer in a friendly tone.", " Start with the main point.",
          " Avoid jargon.")  # appended to every open-ended prompt: more distinct prompts per template
ARITHMETIC_SUFFIX = " Show your steps and end with a line '#### <number>'."


def _arithmetic(rng: random.Random) -> dict:
    """A GSM8K-style word problem: instruction, the worked solution ending '#### n', and n."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(4)
    a, b, c = rng.randint(2, 30), rng.randint(2, 9), rng.randint(2, 9)
    if kind == 0:
        answer = a + b * c
        text = f"{name} has {a} {item}. {name} buys {b} packs with {c} {item} in each. How many {item} does {name} have now?"
        steps = f"{b} packs x {c} = {b * c} {item}. {a} + {b * c} = {answer}."
    elif kind == 1:
        total = a + b * c
        answer = total - b
        text = f"{name} had {total} {item} and gave {b} of them to a friend. How many {item} are left?"
        steps = f"{total} - {b} = {answer}."
    elif kind == 2:
        spent = rng.randint(1, a * b - 1)
        answer = a * b - spent
        text = (f"{name} buys {b} boxes of {item} with {a} in each box and gives away {spent}. "
                f"How many {item} does {name} keep?")
        steps = f"{b} x {a} = {a * b}. {a * b} - {spent} = {answer}."
    else:
        per_day, days = rng.randint(2, 12), rng.randint(2, 7)
        spent = rng.randint(1, per_day * days - 1)
        answer = per_day * days - spent
        text = (f"{name} saves {per_day} dollars a day for {days} days and then spends {spent} dollars. "
                "How many dollars are left?")
        steps = f"{per_day} x {days} = {per_day * days}. {per_day * days} - {spent} = {answer}."
    return {"instruction": text + ARITHMETIC_SUFFIX, "response": f"{steps}\n#### {answer}", "answer": str(answer)}


def _open(templates: tuple[str, ...], **lists: tuple) -> Callable[[random.Random], dict]:
    """An open-ended category: a template filled with one draw from each named list."""

    def draw(rng: random.Random) -> dict:
        values = {key: rng.choice(options) for key, options in lists.items()}
        return {"instruction": rng.choice(templates).format(**values) + rng.choice(STYLES), "response": ""}

    return draw


def _pair(rng: random.Random) -> dict:
    first, second = rng.choice(PAIRS)
    if rng.random() < 0.5:
        first, second = second, first
    template = rng.choice(("What is the difference between {a} and {b}?", "Compare {a} and {b} in three sentences."))
    return {"instruction": template.format(a=first, b=second) + rng.choice(STYLES), "response": ""}


# name -> (kind, draw(rng) -> {instruction, response[, answer]}); the share of each split per category.
CATEGORIES: dict[str, tuple[str, Callable[[random.Random], dict], float]] = {
    "arithmetic": ("exact", _arithmetic, 2.0),
    "explain": ("open", _open(("Explain {topic} to {audience} {length}.", "Why does {topic} matter to {audience}?"),
                              topic=TOPICS, audience=AUDIENCES, length=LENGTHS), 1.0),
    "advice": ("open", _open(("Give three tips to {task}.", "How can I {task}? Answer in a few sentences.",
                              "What is the most common mistake people make when they try to {task}?"),
                             task=TASKS), 1.0),
    "compare": ("open", _pair, 1.0),
    "define": ("open", _open(("What does the word '{word}' mean? Use it in a sentence.",
                              "Give two synonyms and one antonym of '{word}'."), word=WORDS), 0.5),
    "rewrite": ("open", _open(("Rewrite this sentence in correct, formal English: \"{sentence}\"",
                               "Make this message polite and clear: \"{sentence}\""), sentence=SENTENCES), 0.5),
    "story": ("open", _open(("Write a three-sentence story about {who} in {place}.",
                             "Describe {place} as seen by {who}, in a short paragraph."),
                            who=CHARACTERS, place=PLACES), 1.0),
    "email": ("open", _open(("Write a short email to {to} {why}.",), to=RECIPIENTS, why=REASONS), 0.5),
}
DEFAULT_SIZES = {"train": 1000, "validation": 100, "test": 100}  # `csdistill data prompts` without size flags
SPLITS = ("test", "validation", "train")  # drawn in this order, each excluding the earlier ones
TASK_OF_KIND = {"exact": "gsm8k", "open": "open"}
MAX_MISSES = 2000  # duplicate draws in a row after which a category counts as exhausted


def _shares(total: int, weights: list[float]) -> list[int]:
    """`total` shared in proportion to `weights` (largest remainder, ties to the earlier category)."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _draw_category(name: str, n: int, rng: random.Random, seen: set[str], split: str) -> list[dict]:
    kind, draw, _ = CATEGORIES[name]
    records, misses = [], 0
    while len(records) < n:
        if misses > MAX_MISSES:
            raise UserError(f"data prompts: category {name!r} ran out of distinct prompts for the {split} split "
                             f"({len(records)} of {n}); ask for fewer records (--n-train/--n-validation/--n-test)")
        record = draw(rng)
        if record["instruction"] in seen:
            misses += 1
            continue
        misses = 0
        seen.add(record["instruction"])
        records.append({**record, "input": "", "category": name, "task": TASK_OF_KIND[kind]})
    return records


def generate_prompt_splits(seed: int, sizes: dict[str, int], categories: list[str] | None = None) -> dict[str, list[dict]]:
    """{split: records} for SPLITS with sizes[split] records each, shared over `categories` by weight;
    records carry an id '<split>-<index>' and are shuffled (seeded) within a split."""
    names = list(categories or CATEGORIES)
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
        raise UserError(f"data prompts: unknown categories {unknown}; choose from {', '.join(CATEGORIES)}")
    rng, seen, out = random.Random(seed), set(), {}
    for split in SPLITS:
        counts = _shares(sizes.get(split, 0), [CATEGORIES[n][2] for n in names])
        records = [r for name, n in zip(names, counts) for r in _draw_category(name, n, rng, seen, split)]
        rng.shuffle(records)
        out[split] = [{**r, "id": f"{split}-{i}"} for i, r in enumerate(records)]
    return out


def chat_prompt(record: dict, tokenizer) -> str:
    """The prompt text of an instruction record for `tokenizer`: its chat template with one user turn
    (instruction, then input) when it has one, else the alpaca template; chat records keep their prompt."""
    from csdistill.data.templates import build_prompt

    if "messages" in record or not getattr(tokenizer, "chat_template", None):
        return build_prompt(record, "alpaca")
    user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)


# --------------------------------------------------------------------------- `csdistill data prompts`


def write_jsonl_atomic(path: Path, records: list[dict]) -> None:
    """Write records as JSONL via a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(path, records)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`csdistill data prompts` flags (a contract: compare's configs and benchmarks/real_model.sh call them)."""
    parser.add_argument("--out", required=True, help="folder for train.jsonl, validation.jsonl, test.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="the same seed and sizes give the same files")
    parser.add_argument("--n-train", type=int, default=DEFAULT_SIZES["train"], help="train prompts")
    parser.add_argument("--n-validation", type=int, default=DEFAULT_SIZES["validation"], help="validation prompts")
    parser.add_argument("--n-test", type=int, default=DEFAULT_SIZES["test"],
                        help="test prompts (never in train or validation)")
    parser.add_argument("--categories", default=",".join(CATEGORIES),
                        help=f"comma-separated subset of: {', '.join(CATEGORIES)}")


def prompts_command(args: argparse.Namespace) -> int:
    sizes = {"train": args.n_train, "validation": args.n_validation, "test": args.n_test}
    bad = [f"--n-{k} {v}" for k, v in sizes.items() if v < 1]
    if bad:
        raise UserError(f"data prompts: {', '.join(bad)}: each split needs at least 1 prompt; pass a count >= 1")
    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    if not categories:
        raise UserError(f"data prompts: --categories {args.categories!r} names none; choose from {', '.join(CATEGORIES)}")
    out = check_writable(args.out, "--out")  # a folder (not a file), writable, before any work
    splits = generate_prompt_splits(args.seed, sizes, categories)
    existing = [s for s in SPLITS if (out / f"{s}.jsonl").exists()]
    expected = {s: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in splits[s]) for s in SPLITS}
    changed = [s for s in existing if (out / f"{s}.jsonl").read_text(encoding="utf-8") != expected[s]]
    if changed:
        raise UserError(f"data prompts: {out}/{changed[0]}.jsonl already exists with other prompts; choose a new "
                         "--out (files are never overwritten)")
    for split in SPLITS:
        write_jsonl_atomic(out / f"{split}.jsonl", splits[split])
    manifest = {"seed": args.seed, "sizes": sizes, "categories": categories, "version": VERSION}
    atomic_write_json(out / "manifest.json", manifest, indent=2)
    counts = ", ".join(f"{s} {len(splits[s])}" for s in SPLITS)
    print(f"csdistill: wrote {out}: {counts} prompts ({sum(r['task'] == 'gsm8k' for r in splits['test'])} exact "
          "arithmetic in test)")
    return 0
