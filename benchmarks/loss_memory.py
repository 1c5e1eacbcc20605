"""Peak memory and time of CSD: full logits vs the fused chunked head, vs a plain forward KL.

    python benchmarks/loss_memory.py            # V ∈ {32768, 131072, 151936}, N = 2048, H = 512
    python benchmarks/loss_memory.py --quick    # small smoke run (seconds)

Variants, each forward + backward into the student hidden states and head weight (fp32):
  a  full-logit CSD(SS): logits = h W_sᵀ, teacher h_t W_tᵀ (no grad), csd, token_mean, backward
  b  fused CSD(SS): fused_linear_distill (chunked, never (N × V) logits)
  c  full-logit forward KL written with plain torch ops (log_softmax, exp, sum) — the baseline
Each variant runs in a fresh subprocess, pinned to the same cores with the same thread count.
Peak extra memory = VmHWM − VmRSS around one step, after a warm-up step, with the peak reset by
writing 5 to /proc/self/clear_refs; inputs are allocated before the baseline, gradients after.
Time = median of --reps timed steps within a process; the variants run in --rounds rounds of
alternating order (abc, cba) and each reports its best round, so load from other processes on a
shared machine biases no variant in particular (the round medians are printed too). Targets: b/a memory ≤ 1/8 at V ≥ 131072, b/a time ≤ 1.1,
a/c time ≤ 1.2.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {"a": "full-logit CSD(SS)", "b": "fused CSD(SS)", "c": "full-logit FKL (plain torch)"}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)


def _make_step(variant: str, torch, inputs: dict, chunk_size=None):
    from csdistill.losses import csd, fused_linear_distill, token_mean

    hidden, weight = inputs["hidden"], inputs["weight"]
    teacher_hidden, teacher_weight = inputs["teacher_hidden"], inputs["teacher_weight"]
    mask = torch.ones(hidden.shape[0], dtype=torch.bool)  # every position valid

    def full_csd():
        logits = hidden @ weight.t()  # (N, V)
        with torch.no_grad():
            teacher_logits = teacher_hidden @ teacher_weight.t()  # (N, V)
        token_mean(csd(logits, teacher_logits, "SS"), mask).backward()

    def fused_csd():
        labels = torch.zeros(hidden.shape[0], dtype=torch.long)
        fused_linear_distill(hidden, weight, teacher_hidden, teacher_weight, labels,
                             chunk_size=chunk_size).backward()

    def full_fkl():
        logits = hidden @ weight.t()
        with torch.no_grad():
            teacher_log_probs = torch.log_softmax(teacher_hidden @ teacher_weight.t(), -1)
        student_log_probs = torch.log_softmax(logits, -1)
        per_position = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)
        per_position.mean().backward()

    return {"a": full_csd, "b": fused_csd, "c": full_fkl}[variant]


def worker(args) -> None:
    """Run one variant in this (fresh) process and print one JSON line."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
    import torch

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "hidden": torch.randn(args.positions, args.hidden, generator=gen).requires_grad_(),
        "weight": (0.02 * torch.randn(args.vocab, args.hidden, generator=gen)).requires_grad_(),
        "teacher_hidden": torch.randn(args.positions, args.hidden, generator=gen),
        "teacher_weight": 0.02 * torch.randn(args.vocab, args.hidden, generator=gen),
    }
    step = _make_step(args.worker, torch, inputs, args.chunk_size)
    step()  # warm-up
    times, peaks = [], []
    for _ in range(args.reps):
        inputs["hidden"].grad = inputs["weight"].grad = None
        _reset_peak()
        baseline = _status_kib("VmRSS")
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        peaks.append(_status_kib("VmHWM") - baseline)
    print(json.dumps({"time_ms": 1e3 * statistics.median(times), "peak_mib": max(peaks) / 1024}))


def _run_variant(variant: str, vocab: int, args) -> dict:
    command = [sys.executable, __file__, "--worker", variant, "--vocab", str(vocab),
               "--positions", str(args.positions), "--hidden", str(args.hidden),
               "--reps", str(args.reps), "--threads", str(args.threads)]
    command += ["--chunk-size", str(args.chunk_size)] if args.chunk_size else []
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(args) -> None:
    vocabs = (4096, 16384) if args.quick else (32768, 131072, 151936)
    vocabs = tuple(int(v) for v in args.vocabs.split(",")) if args.vocabs else vocabs
    print(f"N={args.positions} H={args.hidden} fp32, threads={args.threads}, reps={args.reps}, "
          f"chunk_size={args.chunk_size or 'default'} (median time; peak memory above inputs)")
    for vocab in vocabs:
        runs = {variant: [] for variant in args.variants}
        for round_index in range(args.rounds):  # alternate the order: abc, cba, abc, ...
            order = args.variants if round_index % 2 == 0 else args.variants[::-1]
            for variant in order:
                runs[variant].append(_run_variant(variant, vocab, args))
        results = {}
        for variant, rounds in runs.items():
            times = [r["time_ms"] for r in rounds]
            results[variant] = r = {"time_ms": min(times),
                                    "peak_mib": max(r["peak_mib"] for r in rounds)}
            print(f"V={vocab:>6} {variant} {VARIANTS[variant]:<30} peak {r['peak_mib']:9.1f} MiB"
                  f"  time {r['time_ms']:9.1f} ms  (round medians "
                  f"{', '.join(f'{t:.0f}' for t in times)} ms)", flush=True)
        if set(results) == set(VARIANTS):
            _print_ratios(vocab, results)


def _print_ratios(vocab: int, results: dict) -> None:
    a, b, c = results["a"], results["b"], results["c"]
    memory, fused_time = b["peak_mib"] / a["peak_mib"], b["time_ms"] / a["time_ms"]
    csd_time = a["time_ms"] / c["time_ms"]
    memory_ok = "met" if memory <= 0.125 else "MISSED"
    print(f"V={vocab:>6} ratios: memory b/a {memory:.3f} (target <= 0.125 at V >= 131072: "
          f"{memory_ok if vocab >= 131072 else 'n/a'}), "
          f"time b/a {fused_time:.3f} (<= 1.1: {'met' if fused_time <= 1.1 else 'MISSED'}), "
          f"time a/c {csd_time:.3f} (<= 1.2: {'met' if csd_time <= 1.2 else 'MISSED'})", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small vocabularies, N=256, H=64")
    parser.add_argument("--positions", type=int, default=None, help="N positions (default 2048)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size H (default 512)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of all variants in alternating order; time = best round")
    parser.add_argument("--threads", type=int, default=2, help="torch threads = pinned cores")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="fused rows per chunk (default: the library's default_chunk_size)")
    parser.add_argument("--variants", default="abc", help="subset of variants to run, e.g. ab")
    parser.add_argument("--vocabs", default=None, help="comma-separated V list (overrides)")
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    cli.positions = cli.positions or (256 if cli.quick else 2048)
    cli.hidden = cli.hidden or (64 if cli.quick else 512)
    worker(cli) if cli.worker else main(cli)
