"""FIFO replay buffer of student-generated examples (ImitKD, adaptive off-policy).

An example is a token-level dict: {"input_ids": [int], "labels": [int]} (labels unshifted, -100 on
the prompt), exactly what `csdistill.data.collate.collate` takes. Plain lists keep the buffer
JSON-serialisable for checkpoints (never pickled).
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import torch
from csdistill.errors import UserError


class ReplayBuffer:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise UserError(f"train.buffer_size={capacity}: must be >= 1")
        self.capacity = capacity
        self.items: deque[dict] = deque(maxlen=capacity)  # oldest dropped first

    def __len__(self) -> int:
        return len(self.items)

    @property
    def full(self) -> bool:
        return len(self.items) >= self.capacity

    def push(self, examples: list[dict]) -> None:
        for example in examples:
            self.items.append({"input_ids": list(map(int, example["input_ids"])),
                               "labels": list(map(int, example["labels"]))})

    def sample(self, batch_size: int, generator: torch.Generator) -> list[dict]:
        """A random batch: without replacement when the buffer holds enough, else with replacement."""
        if not self.items:
            raise RuntimeError("sample() on an empty replay buffer; push student samples first")
        n = len(self.items)
        if n >= batch_size:
            index = torch.randperm(n, generator=generator)[:batch_size]
        else:
            index = torch.randint(n, (batch_size,), generator=generator)
        return [self.items[i] for i in index.tolist()]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "items": list(self.items)}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        self.items = deque(state["items"], maxlen=self.capacity)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.state_dict()))

    def load(self, path: str | Path) -> None:
        self.load_state_dict(json.loads(Path(path).read_text()))
