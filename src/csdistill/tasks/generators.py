"""The built-in tasks as data: how a prompt is drawn, and its exact answer or true distribution.

Every prompt is a short tag plus a payload (``"rev: cup map pen"``) so that prompt + response fit in
``MAX_CHARS`` characters: sizes a 3-4M-parameter character-level transformer learns within minutes
of CPU training. Exact tasks have one right answer; distribution tasks have a closed-form output
distribution per prompt, so fidelity and diversity of sampled outputs are measured exactly.

| task    | tag   | example prompt        | response                    | kind         |
|---------|-------|-----------------------|-----------------------------|--------------|
| reverse | rev   | rev: cup map pen      | pen map cup                 | exact        |
| sort    | sort  | sort: dbja            | abdj                        | exact        |
| shift   | next  | next: cazy            | dbaz                        | exact        |
| add     | add   | add: 73+54            | 28 (37 + 45 = 82)           | exact (opt.) |
| choice  | pick  | pick: red blue gold   | red (p = 12/16)             | distribution |
| grammar | say   | say: fox hen          | the fox sees the hen (0.2625) | distribution |

`add` is registered but not in the default suite: a small char-level model needs many more examples
to learn it than the other tasks (see SUITE_TASKS in suite.py).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable
from csdistill.errors import UserError

MAX_CHARS = 48  # len(instruction) + len(response) never exceeds this (no template included)
ALPHABET = " +:0123456789abcdefghijklmnopqrstuvwxyz"  # every character any record field uses

REVERSE_WORDS = ("bag", "box", "cup", "fan", "hat", "jar", "key", "kit",
                 "map", "mug", "pen", "rug", "toy", "van", "web", "zip")
REVERSE_LENGTHS = (3, 4, 5)  # words per list
SORT_LETTERS = "abcdefghij"  # a small set keeps the comparison rule easy to learn
SORT_LENGTHS = (3, 4, 5)  # distinct letters per prompt
SHIFT_LETTERS = "abcdefghijklmnopqrstuvwxyz"
SHIFT_LENGTHS = (3, 4, 5)  # letters per prompt, repeats allowed
ADD_DIGITS = (2, 3)  # digits per operand

# Fixed weight per colour: p(colour | prompt) = weight / sum of the listed colours' weights.
# First letters are distinct, so the first response character already decides the output.
CHOICE_WEIGHTS = {"blue": 1, "cyan": 2, "gold": 3, "lime": 4, "navy": 6, "pink": 8, "red": 12, "teal": 16}
CHOICE_LENGTHS = (3, 4)  # colours listed per prompt

# A tiny PCFG, fixed for every prompt "say: <subject> <object>":
#   S -> DET ADJ SUBJECT VP;  DET -> the | a;  ADJ -> (none) | big | shy;
#   VP -> sees the OBJECT | likes the OBJECT | naps.   18 phrases, entropy ~2.39 nats.
GRAMMAR_ANIMALS = ("bat", "bear", "bee", "cat", "cow", "crab", "crow", "deer", "dog", "duck",
                   "fox", "frog", "goat", "hen", "lamb", "lion", "mole", "pig", "rat", "yak")
GRAMMAR_DETERMINERS = (("the", Fraction(3, 4)), ("a", Fraction(1, 4)))
GRAMMAR_ADJECTIVES = (("", Fraction(7, 10)), ("big", Fraction(2, 10)), ("shy", Fraction(1, 10)))
GRAMMAR_VERB_PHRASES = (("sees the {obj}", Fraction(5, 10)), ("likes the {obj}", Fraction(3, 10)),
                        ("naps", Fraction(2, 10)))


@dataclass(frozen=True)
class TaskDef:
    """One built-in task. `solve` (exact) or `distribution` (distribution) maps a payload to its target."""

    name: str
    kind: str  # "exact" | "distribution"
    tag: str  # the prompt is f"{tag}: {payload}"
    description: str
    space_size: int  # number of distinct prompts the sampler can produce
    sample_payload: Callable[[random.Random], str]
    solve: Callable[[str], str] | None = None
    distribution: Callable[[str], dict[str, float]] | None = None


def _n_permutations(pool: int, lengths: tuple[int, ...]) -> int:
    """Number of ordered selections without repetition of each length from `pool` items."""
    return sum(math.perm(pool, k) for k in lengths)


def _split_known(payload: str, known, what: str, lengths: tuple[int, ...]) -> list[str]:
    """Split a payload into distinct known items, or raise ValueError naming the bad value."""
    items = payload.split()
    if len(items) not in lengths or len(set(items)) != len(items):
        raise UserError(f"payload={payload!r}: expected {'/'.join(map(str, lengths))} distinct {what}")
    unknown = [item for item in items if item not in known]
    if unknown:
        raise UserError(f"payload={payload!r}: unknown {what} {unknown}; known: {' '.join(known)}")
    return items


# ----------------------------------------------------------------------------- reverse


def sample_reverse(rng: random.Random) -> str:
    return " ".join(rng.sample(REVERSE_WORDS, rng.choice(REVERSE_LENGTHS)))


def solve_reverse(payload: str) -> str:
    """The word list in reverse order: 'cup map pen' -> 'pen map cup'."""
    return " ".join(reversed(payload.split()))


# -------------------------------------------------------------------------------- sort


def sample_sort(rng: random.Random) -> str:
    return "".join(rng.sample(SORT_LETTERS, rng.choice(SORT_LENGTHS)))


def solve_sort(payload: str) -> str:
    """The letters in alphabetical order: 'dbja' -> 'abdj'."""
    return "".join(sorted(payload.strip()))


# ------------------------------------------------------------------------------- shift


def sample_shift(rng: random.Random) -> str:
    return "".join(rng.choices(SHIFT_LETTERS, k=rng.choice(SHIFT_LENGTHS)))


def solve_shift(payload: str) -> str:
    """Each letter replaced by the next one, z wrapping to a: 'cazy' -> 'dbaz'."""
    letters = payload.strip()
    if not set(letters) <= set(SHIFT_LETTERS):
        raise UserError(f"payload={payload!r}: expected lowercase letters only, e.g. 'cazy'")
    return "".join(SHIFT_LETTERS[(SHIFT_LETTERS.index(c) + 1) % len(SHIFT_LETTERS)] for c in letters)


# --------------------------------------------------------------------------------- add


def lsb_first(number: int) -> str:
    """Decimal digits, least-significant first: 82 -> '28', 100 -> '001'."""
    return str(number)[::-1]


def sample_add(rng: random.Random) -> str:
    a, b = (rng.randint(10 ** (d - 1), 10**d - 1) for d in (rng.choice(ADD_DIGITS), rng.choice(ADD_DIGITS)))
    return f"{lsb_first(a)}+{lsb_first(b)}"


def solve_add(payload: str) -> str:
    """Sum of two LSB-first operands, LSB first: '73+54' (37 + 45) -> '28' (82)."""
    left, sep, right = payload.strip().partition("+")
    if not (sep and left.isdigit() and right.isdigit()):
        raise UserError(f"payload={payload!r}: expected two LSB-first numbers joined by '+', e.g. '73+54'")
    return lsb_first(int(left[::-1]) + int(right[::-1]))


# ------------------------------------------------------------------------------ choice


def sample_choice(rng: random.Random) -> str:
    return " ".join(rng.sample(sorted(CHOICE_WEIGHTS), rng.choice(CHOICE_LENGTHS)))


def choice_distribution(payload: str) -> dict[str, float]:
    """p(colour) = CHOICE_WEIGHTS[colour] / sum over the listed colours; 'pick: red blue gold' -> red 12/16."""
    colours = _split_known(payload, CHOICE_WEIGHTS, "colours", CHOICE_LENGTHS)
    total = sum(CHOICE_WEIGHTS[c] for c in colours)
    return {c: CHOICE_WEIGHTS[c] / total for c in colours}


# ----------------------------------------------------------------------------- grammar


def sample_grammar(rng: random.Random) -> str:
    return " ".join(rng.sample(GRAMMAR_ANIMALS, 2))


def grammar_distribution(payload: str) -> dict[str, float]:
    """Every phrase of the PCFG for 'subject object' with its probability (sums over derivations)."""
    subject, obj = _split_known(payload, GRAMMAR_ANIMALS, "animals", (2,))
    probs: dict[str, Fraction] = {}
    for det, p_det in GRAMMAR_DETERMINERS:
        for adj, p_adj in GRAMMAR_ADJECTIVES:
            for verb_phrase, p_vp in GRAMMAR_VERB_PHRASES:
                words = [det, adj, subject, verb_phrase.format(obj=obj)]
                phrase = " ".join(w for w in words if w)
                probs[phrase] = probs.get(phrase, Fraction(0)) + p_det * p_adj * p_vp
    return {phrase: float(p) for phrase, p in probs.items()}


# ------------------------------------------------------------------------------- table

TASK_DEFS: dict[str, TaskDef] = {
    t.name: t
    for t in (
        TaskDef("reverse", "exact", "rev", "reverse a list of 3-5 three-letter words",
                _n_permutations(len(REVERSE_WORDS), REVERSE_LENGTHS), sample_reverse, solve=solve_reverse),
        TaskDef("sort", "exact", "sort", "sort 3-5 distinct letters from a-j alphabetically",
                _n_permutations(len(SORT_LETTERS), SORT_LENGTHS), sample_sort, solve=solve_sort),
        TaskDef("shift", "exact", "next", "replace each of 3-5 letters by the next letter (z -> a)",
                sum(len(SHIFT_LETTERS) ** k for k in SHIFT_LENGTHS), sample_shift, solve=solve_shift),
        TaskDef("add", "exact", "add", "add two 2-3 digit numbers, all written least-significant digit first",
                sum(9 * 10 ** (d - 1) for d in ADD_DIGITS) ** 2, sample_add, solve=solve_add),
        TaskDef("choice", "distribution", "pick", "pick a listed colour with probability proportional to its weight",
                _n_permutations(len(CHOICE_WEIGHTS), CHOICE_LENGTHS), sample_choice, distribution=choice_distribution),
        TaskDef("grammar", "distribution", "say", "a phrase from a fixed 18-phrase PCFG about a subject and an object",
                _n_permutations(len(GRAMMAR_ANIMALS), (2,)), sample_grammar, distribution=grammar_distribution),
    )
}


def instruction_for(task: TaskDef, payload: str) -> str:
    return f"{task.tag}: {payload}"


def payload_of(task: TaskDef, instruction: str) -> str:
    """The payload of a prompt of `task`, or ValueError if the instruction has another tag."""
    prefix = f"{task.tag}: "
    if not instruction.startswith(prefix):
        raise UserError(f"record['instruction']={instruction!r} is not a {task.name!r} prompt; "
                         f"it must start with {prefix!r}")
    return instruction[len(prefix):]
