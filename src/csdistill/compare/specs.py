"""What a comparison runs, as parsed from its flags: the runs (losses), seeds, learning rates, decodings, baselines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from csdistill.config import Config, ConfigError

DECODES = ("greedy", "sampled")


@dataclass(frozen=True)
class RunSpec:
    """One row: 'sft' (no distillation: SFT on the training responses) or a registry loss with its weighting."""

    loss: str  # "sft" or a registry loss name
    weighting: str = ""  # csd only

    @property
    def name(self) -> str:
        return f"{self.loss}_{self.weighting}" if self.weighting else self.loss

    @property
    def key(self) -> str:  # as written on the command line: csd:SS
        return f"{self.loss}:{self.weighting}" if self.weighting else self.loss

    @property
    def label(self) -> str:
        if self.loss == "sft":
            return "SFT only (no KD)"
        return f"CSD ({self.weighting})" if self.loss == "csd" else self.loss.upper() if len(self.loss) <= 4 else self.loss


def parse_losses(text: str | Sequence[str], allow_sft: bool = True) -> list[RunSpec]:
    """'sft,csd:SS,fkl' -> RunSpecs, validated against the loss registry (duplicates are errors)."""
    from csdistill.losses import get_loss

    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not items:
        raise ConfigError("--losses is empty; give e.g. --losses sft,csd:SS,csd:TS,fkl,rkl,srkl")
    specs = []
    for item in items:
        name, _, weighting = item.partition(":")
        if name == "sft" and allow_sft and not weighting:
            specs.append(RunSpec("sft"))
            continue
        if weighting and name != "csd":
            raise ConfigError(f"--losses: {item!r}: only csd takes a weighting (csd:SS, csd:TS, ...)")
        try:
            get_loss(name, **({"weighting": weighting.upper()} if weighting else {}))
        except ValueError as err:
            raise ConfigError(f"--losses: {item!r}: {err}" + ("; sft is the no-distillation run" if allow_sft else "")) from None
        specs.append(RunSpec(name, weighting.upper() if name == "csd" else ""))
    duplicates = sorted({s.key for s in specs if specs.count(s) > 1})
    if duplicates:
        raise ConfigError(f"--losses: {', '.join(duplicates)} given twice; list each loss once")
    return specs


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (distinct integers)."""
    items = [s.strip() for s in text.split(",") if s.strip()] if isinstance(text, str) else list(text)
    try:
        seeds = [int(s) for s in items]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: not a list of integers; give e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: give one or more distinct integers, e.g. --seeds 0,1,2")
    return seeds


def parse_lrs(text: str, specs: Sequence[RunSpec]) -> dict[str, float]:
    """'3e-4' (every run) or 'fkl=3e-4,csd:SS=1e-4' -> {run name or loss: lr}; keys must be in --losses."""
    out: dict[str, float] = {}
    for item in (s.strip() for s in (text or "").split(",") if s.strip()):
        key, _, value = item.rpartition("=")
        try:
            lr = float(value)
        except ValueError:
            raise ConfigError(f"--lr {item!r}: {value!r} is not a number; write e.g. --lr fkl=3e-4,csd:SS=1e-4") from None
        if not lr > 0:
            raise ConfigError(f"--lr {item!r}: a learning rate must be > 0")
        if not key:
            out.update({s.name: lr for s in specs})
            continue
        name, _, weighting = key.partition(":")
        target = RunSpec(name, weighting.upper()) if weighting else RunSpec(name)
        if target not in specs and not any(s.loss == name for s in specs):
            raise ConfigError(f"--lr {item!r}: {key!r} is not in --losses ({','.join(s.key for s in specs)})")
        out[target.name] = lr
    return out


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: not a list of numbers; write e.g. {flag} 1e-4,3e-4,1e-3") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{flag} {text!r}: give one or more learning rates > 0, e.g. {flag} 1e-4,3e-4,1e-3")
    return values


def parse_decodes(text: str | None, cfg: Config) -> list[str]:
    """'greedy,sampled' -> ['greedy', 'sampled']; None: what the config's eval settings ask for."""
    if not text:
        return ["greedy" if cfg.eval.greedy or not cfg.generation.do_sample else "sampled"]
    decodes = [s.strip() for s in text.split(",") if s.strip()]
    bad = [d for d in decodes if d not in DECODES]
    if bad or not decodes or len(set(decodes)) != len(decodes):
        raise ConfigError(f"--decode {text!r}: give greedy, sampled or greedy,sampled")
    return decodes


def parse_baselines(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip() and s.strip() != "none"]
    bad = [s for s in items if s not in ("teacher", "start")]
    if bad:
        raise ConfigError(f"--baselines {text!r}: {', '.join(bad)} unknown; give teacher, start, teacher,start or none")
    return items
