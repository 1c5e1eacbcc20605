"""Training data for the loop: records -> encoded examples, the held-out split, the seeded data order.

An encoded example is {"input_ids": [int], "labels": [int], "prompt_length": int} (labels unshifted,
-100 on the prompt), plus "teacher" / "student" examples of the same shape when responses come from
pre-generated files (seqkd, paired).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from csdistill.config import Config, ConfigError
from csdistill.seeding import make_generator


class EpochSampler:
    """An endless stream of dataset indices: epoch e visits randperm(n) drawn from
    make_generator(seed, e, 0, stream). The permutation is global (rank 0's stream for every
    process) so that processes can split each global batch between them; the state is (epoch, offset).
    """

    def __init__(self, n: int, seed: int, stream: str):
        if n < 1:
            raise ConfigError(f"cannot sample from an empty dataset ({stream})")
        self.n, self.seed, self.stream = n, seed, stream
        self.epoch, self.offset = 0, 0
        self._perm: tuple[int, list[int]] | None = None

    def _permutation(self) -> list[int]:
        if self._perm is None or self._perm[0] != self.epoch:
            gen = make_generator(self.seed, self.epoch, 0, self.stream)
            self._perm = (self.epoch, torch.randperm(self.n, generator=gen).tolist())
        return self._perm[1]

    def take(self, k: int) -> list[int]:
        """The next k indices, continuing into the next epoch's permutation when this one runs out."""
        out: list[int] = []
        while len(out) < k:
            perm = self._permutation()
            count = min(k - len(out), self.n - self.offset)
            out.extend(perm[self.offset:self.offset + count])
            self.offset += count
            if self.offset == self.n:
                self.epoch, self.offset = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ConfigError(f"resume: the checkpoint's data order covers {state['n']} examples, this run has "
                             f"{self.n}; resume with the same data files and data.* settings")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


def rank_slice(items: list, batch_size: int, rank: int) -> list:
    """This process's share of a global batch (process r takes items [r·b, (r+1)·b))."""
    return items[rank * batch_size:(rank + 1) * batch_size]


# --------------------------------------------------------------------------- loading


def _load(path: str, cfg: Config, what: str, tokenizer=None) -> list:
    """The records of `path`; chat records are rendered with the tokenizer's chat template when it has one."""
    from csdistill.data import load_records

    try:
        record_set = load_records(path, format=cfg.data.format, skip_bad=cfg.data.skip_bad_records,
                                  tokenizer=tokenizer)
    except ValueError as err:  # csdistill.data.DataError (missing file, malformed record): name the key too
        raise ConfigError(f"{what}={path!r}: {err}") from None
    if record_set.skipped:
        print(f"csdistill: {what}: skipped {record_set.skipped} malformed records")
    return list(record_set.records)


def split_records(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded share `fraction` held out; nothing held out below 2 records."""
    if len(records) < 2:
        return records, []
    n_val = min(max(1, round(fraction * len(records))), len(records) - 1)
    order = torch.randperm(len(records), generator=make_generator(seed, 0, 0, "validation_split")).tolist()
    held = set(order[:n_val])
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def encode(records: list, tokenizer, cfg: Config, what: str = "data.train_file") -> list[dict]:
    from csdistill.data.collate import encode_example, warn_unknown_tokens

    d = cfg.data
    examples = [encode_example(r, tokenizer, d.template, d.max_prompt_length, d.max_length) for r in records]
    warn_unknown_tokens([ex["input_ids"] for ex in examples], records, tokenizer, what)
    return examples


def _response_table(path: str, cfg: Config, key: str, tokenizer) -> dict[str, object]:
    """prompt text -> record, for pre-generated responses (the record's response is the output)."""
    from csdistill.data.templates import build_prompt

    return {build_prompt(r, cfg.data.template): r for r in _load(path, cfg, key, tokenizer)}


def attach_responses(records: list, examples: list[dict], tokenizer, cfg: Config, role: str, path: str, key: str) -> None:
    """Add example[role] = the same prompt with the response read from `path` (matched by prompt)."""
    from csdistill.data.collate import encode_example
    from csdistill.data.templates import build_prompt

    table = _response_table(path, cfg, key, tokenizer)
    missing = 0
    for record, example in zip(records, examples):
        match = table.get(build_prompt(record, cfg.data.template))
        if match is None:
            missing += 1
            continue
        d = cfg.data
        example[role] = encode_example(match, tokenizer, d.template, d.max_prompt_length, d.max_length)
    if missing:
        raise ConfigError(f"{key}={path!r}: no response for {missing} of {len(records)} training prompts; "
                         f"generate responses for every prompt of data.train_file (matched by prompt text)")


@dataclass
class TrainData:
    train: list[dict]
    validation: list[dict]
    lm_chunks: list[dict] = field(default_factory=list)  # plain-text blocks {input_ids, labels}


def load_train_data(cfg: Config, tokenizer) -> TrainData:
    d = cfg.data
    if not d.train_file:
        raise ConfigError("data.train_file is empty: set it to a JSONL file of training records")
    records = _load(d.train_file, cfg, "data.train_file", tokenizer)
    if d.max_train_examples > 0:
        records = records[:d.max_train_examples]
    if not records:
        raise ConfigError(f"data.train_file={d.train_file!r} holds no training records; add records or fix the path")
    if d.validation_file:
        train_records, val_records = records, _load(d.validation_file, cfg, "data.validation_file", tokenizer)
    else:
        train_records, val_records = split_records(records, d.validation_fraction, cfg.train.seed)
    train = encode(train_records, tokenizer, cfg)
    mode = cfg.train.mode
    if mode in ("seqkd", "paired") and d.teacher_responses_file:
        attach_responses(train_records, train, tokenizer, cfg, "teacher", d.teacher_responses_file, "data.teacher_responses_file")
    if mode == "paired" and d.student_responses_file:
        attach_responses(train_records, train, tokenizer, cfg, "student", d.student_responses_file, "data.student_responses_file")
    lm_chunks: list[dict] = []
    if cfg.train.lm_coef > 0:
        from csdistill.data.text import load_text_chunks

        try:
            lm_chunks = load_text_chunks(d.lm_file, tokenizer, d.max_length)  # [{input_ids, labels}]
        except ValueError as err:  # csdistill.data.DataError: missing file, bad record
            raise ConfigError(f"data.lm_file={d.lm_file!r}: {err}") from None
        if not lm_chunks:
            raise ConfigError(f"data.lm_file={d.lm_file!r} yields no text blocks of data.max_length={d.max_length} tokens")
    return TrainData(train=train, validation=encode(val_records, tokenizer, cfg, "validation records"), lm_chunks=lm_chunks)
