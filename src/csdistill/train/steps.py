"""Per-mode batch sources: what each optimizer step trains on.

A step trains on a window of `train.grad_accum` micro-batches. Each micro-batch holds named parts,
each a collated batch (input_ids, attention_mask, labels; (B, T), right-padded, labels unshifted):
  "response"                               the sequence the loss is applied to (all modes but paired)
  "teacher_response", "student_response"   paired mode: both sequences, losses summed
  "lm"                                     plain-text batch for the auxiliary LM loss (train.lm_coef)

Where a step's sequences come from ("source"):
  dataset   the dataset's responses                         sft, kd; gkd with prob 1-λ; adaptive
  generate  fresh student samples (pushed to the buffer      gkd with prob λ; adaptive
            in adaptive mode)
  imitate   fresh student samples pushed to the FIFO buffer, imitkd, every step
            then a random buffer batch
  buffer    a random replay-buffer batch                    adaptive
  teacher   teacher responses (pre-generated file or        seqkd
            sampled on the fly)
  paired    teacher + student response per prompt           paired

Coin flips (gkd, adaptive) use rank 0's stream on every process, so all processes take the same
branch (generation under ZeRO-3/FSDP must run on all of them) and produce the same parts.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from csdistill.config import Config
from csdistill.seeding import make_generator
from csdistill.data.train_data import EpochSampler, TrainData, rank_slice
from csdistill.train.replay import ReplayBuffer
from csdistill.train.schedules import AdaptiveThreshold

NO_AUTOCAST: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


@dataclass
class MicroBatch:
    parts: dict[str, dict[str, torch.Tensor]]  # part name -> collated batch, tensors (B, T)
    source: str


def sample_responses(model, examples: list[dict], cfg: Config, generator: torch.Generator, tokenizer,
                     autocast: Callable = NO_AUTOCAST) -> list[dict]:
    """Each example's prompt answered by `model` (sampling per cfg.generation), as encoded examples."""
    from csdistill.data.collate import encode_response, left_pad
    from csdistill.generation import sample

    device = next(model.parameters()).device
    out = []
    for start in range(0, len(examples), cfg.generation.batch_size):
        prompts = [ex["input_ids"][:ex["prompt_length"]] for ex in examples[start:start + cfg.generation.batch_size]]
        padded = left_pad(prompts, tokenizer.pad_token_id)  # input_ids, attention_mask (B, P)
        room = cfg.data.max_length - padded["input_ids"].shape[1]  # new tokens that still fit data.max_length
        gen = dataclasses.replace(cfg.generation, max_new_tokens=max(1, min(cfg.generation.max_new_tokens, room)))
        with torch.no_grad(), autocast():
            result = sample(model, padded["input_ids"].to(device), padded["attention_mask"].to(device), gen,
                            generator, tokenizer.eos_token_id, tokenizer.pad_token_id,
                            vocab_size=len(tokenizer))  # never sample a padded head's extra rows
        width = result.prompt_length
        for i, prompt in enumerate(prompts):
            response = result.sequences[i, width:][result.completion_mask[i, width:]].tolist()
            out.append(encode_response(prompt, response, cfg.data.max_length))
    return out


class BatchSource:
    """The per-mode batch source of one process: data order, replay buffer, adaptive threshold."""

    def __init__(self, cfg: Config, data: TrainData, tokenizer, rank: int, world_size: int, total_steps: int):
        self.cfg, self.data, self.tokenizer = cfg, data, tokenizer
        self.rank, self.world_size, self.total_steps = rank, world_size, total_steps
        mode = cfg.train.mode
        self.sampler = EpochSampler(len(data.train), cfg.train.seed, "shuffle")
        self.lm_sampler = EpochSampler(len(data.lm_chunks), cfg.train.seed, "lm_shuffle") if data.lm_chunks else None
        self.buffer = ReplayBuffer(cfg.train.buffer_size) if mode in ("imitkd", "adaptive") else None
        self.adaptive = (AdaptiveThreshold(cfg.train.adaptive_threshold_step, cfg.train.adaptive_loss_rise)
                         if mode == "adaptive" else None)

    # ------------------------------------------------------------------ one step

    def choose(self, step: int) -> str:
        """The step's source (see module docstring); one draw per optimizer step."""
        mode, t = self.cfg.train.mode, self.cfg.train
        u = torch.rand((), generator=make_generator(t.seed, step, 0, "coin")).item()  # same on every rank
        if mode == "gkd":
            return "generate" if u < t.gkd_lambda else "dataset"
        if mode == "adaptive":
            return self.adaptive.choose(u, step, self.total_steps, self.buffer.full)
        return {"sft": "dataset", "kd": "dataset", "imitkd": "imitate", "seqkd": "teacher", "paired": "paired"}[mode]

    def window(self, step: int, student, teacher, autocast: Callable = NO_AUTOCAST) -> list[MicroBatch]:
        """The grad_accum micro-batches of optimizer step `step`; student/teacher unwrapped, for sampling."""
        source = self.choose(step)
        return [self._micro(step, micro, source, student, teacher, autocast) for micro in range(self.cfg.train.grad_accum)]

    def _micro(self, step: int, micro: int, source: str, student, teacher, autocast: Callable) -> MicroBatch:
        t = self.cfg.train
        examples = self.next_examples()  # consumed by every source: responses or prompts
        device = next(student.parameters()).device

        def generator(stream: str) -> torch.Generator:
            return make_generator(t.seed, step, self.rank, f"{stream}/{micro}", device=device)

        def student_samples() -> list[dict]:
            return sample_responses(student, examples, self.cfg, generator("generate"), self.tokenizer, autocast)

        def teacher_samples() -> list[dict]:
            if all("teacher" in ex for ex in examples):
                return [ex["teacher"] for ex in examples]
            return sample_responses(teacher, examples, self.cfg, generator("teacher_generate"), self.tokenizer, autocast)

        if source == "dataset":
            parts = {"response": examples}
        elif source in ("generate", "imitate"):
            fresh = student_samples()
            if self.buffer is not None:
                self.buffer.push(fresh)
            parts = {"response": self.buffer.sample(t.batch_size, generator("buffer")) if source == "imitate" else fresh}
        elif source == "buffer":
            parts = {"response": self.buffer.sample(t.batch_size, generator("buffer"))}
        elif source == "teacher":
            parts = {"response": teacher_samples()}
        elif source == "paired":
            students = [ex["student"] for ex in examples] if all("student" in ex for ex in examples) else student_samples()
            parts = {"teacher_response": teacher_samples(), "student_response": students}
        else:
            raise AssertionError(f"unknown source {source!r}")
        if self.lm_sampler is not None:
            parts["lm"] = self.next_lm_examples()
        return MicroBatch({name: self._collate(exs) for name, exs in parts.items()}, source)

    def next_examples(self) -> list[dict]:
        b = self.cfg.train.batch_size
        indices = rank_slice(self.sampler.take(b * self.world_size), b, self.rank)
        return [self.data.train[i] for i in indices]

    def next_lm_examples(self) -> list[dict]:
        b = self.cfg.train.batch_size
        indices = rank_slice(self.lm_sampler.take(b * self.world_size), b, self.rank)
        return [self.data.lm_chunks[i] for i in indices]

    def _collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        from csdistill.data.collate import collate

        return collate(examples, self.tokenizer.pad_token_id)

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict:
        """Shared by all processes (data order, adaptive threshold)."""
        return {"sampler": self.sampler.state_dict(),
                "lm_sampler": self.lm_sampler.state_dict() if self.lm_sampler else None,
                "adaptive": self.adaptive.state_dict() if self.adaptive else None}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        if self.lm_sampler is not None and state.get("lm_sampler"):
            self.lm_sampler.load_state_dict(state["lm_sampler"])
        if self.adaptive is not None and state.get("adaptive"):
            self.adaptive.load_state_dict(state["adaptive"])

    def rank_state_dict(self) -> dict:
        """Per process: the replay buffer (each process samples its own prompts)."""
        return {"buffer": self.buffer.state_dict() if self.buffer is not None else None}

    def load_rank_state_dict(self, state: dict | None) -> None:
        if self.buffer is not None and state and state.get("buffer"):
            self.buffer.load_state_dict(state["buffer"])
