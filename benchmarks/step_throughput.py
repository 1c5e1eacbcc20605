"""Step throughput of a distillation step against its floor.

    .venv/bin/python benchmarks/step_throughput.py            # ~17M teacher, ~5M student, V=16k, 8 x 256, bf16

floor  = teacher forward alone (no grad) + student forward/backward/AdamW step alone (CE on the
         same labels) — what any KD step must at least pay.
kd     = one training step of csdistill's objective (train/objective.py, exactly what the loop runs):
         unfused (full logits of both models) and fused (chunked head + loss on hidden states), for
         CSD (S,S) and forward KL. Target: fused KD step <= 1.10 x floor. "of which fused head+loss" times the
fused head and loss alone (forward + backward on fixed hidden states), to attribute the overhead.
Every figure is the median over --steps timed steps after --warmup untimed ones, all in one process;
the timed rounds interleave the step kinds so that load drift on a shared machine hits all of them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from csdistill.config import Config
from csdistill.models import hidden_states_and_head
from csdistill.losses import cross_entropy, fused_linear_distill, get_loss
from csdistill.losses.reduce import count_valid, shift_labels, token_mean
from csdistill.train.objective import Objective, distill_term


def build(hidden: int, layers: int, intermediate: int, heads: int, vocab: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def median_seconds(fns: dict, warmup: int, steps: int) -> dict[str, float]:
    """Median wall time per function; rounds interleave the functions so load drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=64, help="prompt positions per sequence (no loss)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--compile", choices=("auto", "true", "false"), default="auto",
                        help="loss.compile of the fused steps")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    teacher = build(448, 4, 1200, 7, args.vocab, seed=1).eval().requires_grad_(False)
    student = build(192, 4, 512, 3, args.vocab, seed=0)
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"teacher {count(teacher):.1f}M params, student {count(student):.1f}M params, V={args.vocab}, "
          f"{args.batch} x {args.seq} tokens ({args.prompt} prompt), {args.precision}, torch threads {torch.get_num_threads()}, "
          f"fused compile={args.compile}")
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(args.vocab, (args.batch, args.seq), generator=gen)
    labels = input_ids.clone()
    labels[:, :args.prompt] = -100
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    shifted = shift_labels(labels)
    num_valid = count_valid(shifted).float()
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" else contextlib.nullcontext

    def teacher_forward():
        with torch.no_grad(), autocast():
            teacher(input_ids=input_ids, attention_mask=batch["attention_mask"]).logits

    def optimizer_step(loss):
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def student_step():
        with autocast():
            logits = student(input_ids=input_ids, attention_mask=batch["attention_mask"]).logits
        optimizer_step(token_mean(cross_entropy(logits, shifted), shifted, num_valid_tokens=num_valid))

    def kd_step(name: str, fused: bool):
        cfg = Config()
        cfg.loss.name, cfg.loss.fused, cfg.model.precision = name, fused, args.precision
        cfg.loss.compile = args.compile
        params = {"weighting": "SS"} if name == "csd" else {}
        objective = Objective(cfg, get_loss(name, **params), params, args.vocab, autocast)
        return lambda: optimizer_step(distill_term(objective, student, teacher, batch, num_valid))

    def head_and_loss_only(name: str):
        """Attribution: the fused head + loss (forward and backward) on fixed hidden states."""
        with torch.no_grad(), autocast():
            hidden, weight, _ = hidden_states_and_head(student, input_ids, batch["attention_mask"])
            t_hidden, t_weight, _ = hidden_states_and_head(teacher, input_ids, batch["attention_mask"])
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        hidden = hidden.to(dtype).requires_grad_()
        weight = weight.detach().to(dtype).requires_grad_()
        params = {"weighting": "SS"} if name == "csd" else {}

        def run():
            fused_linear_distill(hidden, weight, t_hidden.to(dtype), t_weight.to(dtype), shifted, loss=name,
                                 num_valid_tokens=num_valid, compile=args.compile, **params).backward()
            hidden.grad = weight.grad = None
        return run

    fns = {"teacher forward": teacher_forward, "student fwd+bwd+step (CE)": student_step}
    for name in ("csd", "fkl"):
        for fused in (False, True):
            fns[f"KD {name} {'fused' if fused else 'unfused'}"] = kd_step(name, fused)
        fns[f"  of which fused head+loss ({name})"] = head_and_loss_only(name)
    measured = median_seconds(fns, args.warmup, args.steps)
    floor = measured["teacher forward"] + measured["student fwd+bwd+step (CE)"]
    rows = {**{k: measured[k] for k in list(measured)[:2]}, "floor (sum)": floor, **{k: measured[k] for k in list(measured)[2:]}}
    tokens = args.batch * args.seq
    print(f"{'step':34s} {'median ms':>10s} {'tokens/s':>10s} {'x floor':>8s}")
    for name, seconds in rows.items():
        print(f"{name:34s} {seconds * 1e3:10.1f} {tokens / seconds:10.0f} {seconds / floor:8.2f}")


if __name__ == "__main__":
    main()
