"""Seeds for every random choice: one torch.Generator per (seed, step, rank, stream)."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, step: int = 0, rank: int = 0, stream: str = "") -> int:
    """A 63-bit seed that depends on (seed, step, rank, stream) and nothing else."""
    key = f"{seed}/{step}/{rank}/{stream}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, step: int = 0, rank: int = 0, stream: str = "", device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded from (seed, step, rank, stream); `stream` separates uses (e.g. 'coin', 'buffer')."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, step, rank, stream))
    return gen
