"""Peak memory and time of distillation losses: csdistill fused vs Liger-Kernel, TRL, plain torch.

    python benchmarks/loss_memory.py                  # the full table (N = 2048; long on a CPU)
    python benchmarks/loss_memory.py --positions 512  # the same at N = 512
    python benchmarks/loss_memory.py --quick          # small smoke run (seconds, no peers needed)
    python benchmarks/loss_memory.py --shapes 49152:576 --dtypes fp32 \
        --variants fused:csd,fused:fkl,full:csd,full:fkl      # any subset

Each variant runs forward + backward into the student hidden states and head weight, in a fresh
subprocess pinned with ``taskset`` to one core (``--cores``, one torch thread per core):
  fused:<loss>          csdistill ``fused_linear_distill`` (any registry loss; compile per --compile)
  fused-eager:<loss>    the same with compile=False
  fused-acc:<loss>      the same with accumulate="compute" (weight gradient summed in the compute dtype)
  base/<variant>        any variant run on another checkout's code (``--base-src``, e.g. main's
                        src/): a before/after comparison in one interleaved run
  full:<loss>           full (N × V) logits, csdistill's per-position loss, token_mean, backward
  plain-jsd, plain-fkl  full logits with the textbook formula in plain torch ops (autograd)
  liger, liger-eager    Liger-Kernel ``LigerFusedLinearJSDLoss`` (β 0.5, soft loss only), compiled / not
  trl                   TRL's chunked JSD (``trl.trainer.distillation_trainer._chunked_divergence_loss``)
JSD is β = 0.5 everywhere. Peers are optional (``pip install csdistill[bench]``); a missing one
is reported and skipped. Dtypes: fp32, or bf16 hidden states and heads (loss maths as each
implementation does it).

Correctness gate, before anything is timed: each JSD implementation's loss on the same inputs
(first --gate-rows positions) against a float64 reference computed from the same (rounded) inputs;
|Δ| > 1e-3 prints GATE FAILED and the variant is flagged in the table (--strict-gate: stop).

Peak extra memory = VmHWM − VmRSS around one step, after --warmup untimed steps (these include
torch.compile), with the peak reset by writing 5 to /proc/self/clear_refs; inputs are allocated
before the baseline, gradients after. Time = median of --reps timed steps. Variants run
back to back in --rounds rounds of alternating order; each reports its best round and, with
--rounds > 1, its time ratio to the reference in every round (min–max). The load average is printed
before and after each shape.

    python benchmarks/loss_memory.py --accumulation-error --shapes 49152:576
prints the error of the bf16 fused head's weight gradient, accumulate float32 vs compute, against a
float64 gradient of the same (rounded) inputs (relative Frobenius norm and max-abs / max-|ref|).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BETA = 0.5
DEFAULT_VARIANTS = ("fused:csd,fused:fkl,fused:jsd,liger,liger-eager,trl,plain-jsd,plain-fkl,"
                    "full:csd,full:fkl,full:jsd")
DEFAULT_SHAPES = "49152:576,151936:512"  # V:H
JSD_VARIANTS = ("fused:jsd", "fused-eager:jsd", "fused-acc:jsd", "full:jsd", "plain-jsd", "liger",
                "liger-eager", "trl")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)


def _loss_fn(variant: str, compile_mode: str):
    """(hidden, weight, teacher_hidden, teacher_weight) → scalar loss, differentiable in the first two."""
    import torch

    kind, _, name = variant.removeprefix("base/").partition(":")
    if kind in ("fused", "fused-eager", "fused-acc"):
        from csdistill.losses import fused_linear_distill

        params = {"beta": BETA} if name == "jsd" else {"weighting": "SS"} if name == "csd" else {}
        mode = "false" if kind == "fused-eager" else compile_mode
        if kind == "fused-acc":
            params["accumulate"] = "compute"
        return lambda h, w, th, tw: fused_linear_distill(
            h, w, th, tw, torch.zeros(h.shape[0], dtype=torch.long), loss=name, compile=mode, **params)
    if kind == "full":
        from csdistill.losses import get_loss

        params = {"beta": BETA} if name == "jsd" else {"weighting": "SS"} if name == "csd" else {}
        fn = get_loss(name, **params)

        def full(h, w, th, tw):
            with torch.no_grad():
                teacher_logits = th @ tw.t()  # (N, V)
            return fn(h @ w.t(), teacher_logits).mean()
        return full
    if kind in ("plain-jsd", "plain-fkl"):
        return lambda h, w, th, tw: _plain(kind, h @ w.t(), (th @ tw.t()).detach())
    if kind in ("liger", "liger-eager"):
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        module = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=BETA,
                                         compiled=kind == "liger")
        return lambda h, w, th, tw: module(h, w, th, tw, torch.zeros(h.shape[0], dtype=torch.long))
    if kind == "trl":
        from trl.trainer.distillation_trainer import _chunked_divergence_loss

        return lambda h, w, th, tw: _chunked_divergence_loss(
            h[None], th[None], w, tw, torch.ones(1, h.shape[0], dtype=torch.long), BETA)[0]
    raise SystemExit(f"unknown variant {variant!r}")


def _plain(kind: str, logits, teacher_logits):
    """Textbook full-logit JSD(β)/FKL in plain torch ops, float32 maths, mean over positions."""
    import math

    import torch

    log_q = torch.log_softmax(logits.float(), -1)
    log_p = torch.log_softmax(teacher_logits.float(), -1)
    if kind == "plain-fkl":
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    log_m = torch.logaddexp(log_p + math.log(BETA), log_q + math.log1p(-BETA))
    return (BETA * (log_p.exp() * (log_p - log_m)).sum(-1)
            + (1 - BETA) * (log_q.exp() * (log_q - log_m)).sum(-1)).mean()


def _reference_jsd(h, w, th, tw) -> float:
    """float64 JSD(β) of the given (already rounded) inputs, mean over positions."""
    import math

    import torch

    log_q = torch.log_softmax(h.double() @ w.double().t(), -1)
    log_p = torch.log_softmax(th.double() @ tw.double().t(), -1)
    log_m = torch.logaddexp(log_p + math.log(BETA), log_q + math.log1p(-BETA))
    kl = lambda a, b: (a.exp() * (a - b)).sum(-1)  # noqa: E731
    return float((BETA * kl(log_p, log_m) + (1 - BETA) * kl(log_q, log_m)).mean())


def _inputs(torch, positions: int, vocab: int, hidden: int, dtype):
    gen = torch.Generator().manual_seed(0)
    make = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=gen)).to(dtype)  # noqa: E731
    return (make(positions, hidden).requires_grad_(), make(vocab, hidden, scale=0.02).requires_grad_(),
            make(positions, hidden), make(vocab, hidden, scale=0.02))


def worker(args) -> None:
    """Run one variant in this (fresh) process and print one JSON line."""
    import torch

    torch.set_num_threads(1)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    try:
        step_loss = _loss_fn(args.worker, args.compile)
    except ImportError as error:
        print(json.dumps({"missing": str(error)}))
        return
    if args.gate:
        h, w, th, tw = _inputs(torch, args.gate_rows, args.vocab, args.hidden, dtype)
        with torch.no_grad():
            value = float(step_loss(h, w, th, tw))
        print(json.dumps({"loss": value, "reference": _reference_jsd(h, w, th, tw)}))
        return
    hidden, weight, teacher_hidden, teacher_weight = _inputs(torch, args.positions, args.vocab,
                                                             args.hidden, dtype)

    def step():
        step_loss(hidden, weight, teacher_hidden, teacher_weight).backward()

    for _ in range(args.warmup):
        step()
    times, peaks = [], []
    for _ in range(args.reps):
        hidden.grad = weight.grad = None
        _reset_peak()
        baseline = _status_kib("VmRSS")
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        peaks.append(_status_kib("VmHWM") - baseline)
    print(json.dumps({"time_ms": 1e3 * statistics.median(times), "peak_mib": max(peaks) / 1024}))


def _run(variant: str, vocab: int, hidden: int, dtype: str, core: str, args, gate=False) -> dict:
    command = ["taskset", "-c", core, sys.executable, __file__, "--worker", variant,
               "--vocab", str(vocab), "--hidden", str(hidden), "--dtype", dtype,
               "--positions", str(args.positions), "--reps", str(args.reps),
               "--warmup", str(args.warmup), "--compile", args.compile,
               "--gate-rows", str(args.gate_rows)] + (["--gate"] if gate else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if variant.startswith("base/"):
        if not args.base_src:
            raise SystemExit(f"{variant} needs --base-src (the other checkout's src/)")
        env["PYTHONPATH"] = args.base_src
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def _gate(variants, vocab: int, hidden: int, dtype: str, args) -> dict:
    """{variant: |loss − float64 reference|} for the JSD variants; prints one line each."""
    errors = {}
    for variant in [v for v in variants if v.removeprefix("base/") in JSD_VARIANTS]:
        result = _run(variant, vocab, hidden, dtype, args.cores[0], args, gate=True)
        if "loss" not in result:
            print(f"  gate {variant:<16} skipped: {result.get('missing') or result.get('error')}")
            continue
        errors[variant] = abs(result["loss"] - result["reference"])
        verdict = "ok" if errors[variant] <= 1e-3 else "GATE FAILED"
        print(f"  gate {variant:<16} loss {result['loss']:.6f} reference {result['reference']:.6f} "
              f"|Δ| {errors[variant]:.1e} {verdict}", flush=True)
    if args.strict_gate and any(e > 1e-3 for e in errors.values()):
        raise SystemExit("correctness gate failed; nothing timed (drop --strict-gate to time anyway)")
    return errors


def main(args) -> None:
    variants = args.variants.split(",")
    print(f"N={args.positions}, one core and one torch thread per variant (cores {args.cores}), "
          f"warmup {args.warmup}, reps {args.reps} (median), rounds {args.rounds} (best), "
          f"compile={args.compile}; peak = extra RSS during one step")
    for shape in args.shapes.split(","):
        vocab, hidden = (int(x) for x in shape.split(":"))
        for dtype in args.dtypes.split(","):
            print(f"\nV={vocab} H={hidden} {dtype} — load average before: {_load()}", flush=True)
            errors = _gate(variants, vocab, hidden, dtype, args)
            runs = {v: [] for v in variants}
            for round_index in range(args.rounds):
                order = variants if round_index % 2 == 0 else variants[::-1]
                for index, variant in enumerate(order):
                    core = args.cores[index % len(args.cores)]
                    runs[variant].append(_run(variant, vocab, hidden, dtype, core, args))
            _print_table(runs, errors)
            _print_round_ratios(runs)
            print(f"load average after: {_load()}", flush=True)


def _print_table(runs: dict, errors: dict) -> None:
    best = {}
    for variant, rounds in runs.items():
        good = [r for r in rounds if "time_ms" in r]
        if not good:
            note = rounds[0].get("missing") or rounds[0].get("error")
            print(f"  {variant:<16} skipped: {note}")
            continue
        best[variant] = {"time_ms": min(r["time_ms"] for r in good),
                         "peak_mib": max(r["peak_mib"] for r in good)}
    reference = best.get("liger") or best.get("plain-jsd")
    ref_name = "liger" if "liger" in best else "plain-jsd"
    print(f"  {'variant':<16} {'time ms':>9} {'peak MiB':>9}   ratios vs {ref_name} (time, memory)")
    for variant, result in best.items():
        flag = " (GATE FAILED)" if errors.get(variant, 0.0) > 1e-3 else ""
        ratio = (f"{result['time_ms'] / reference['time_ms']:.2f}x, "
                 f"{result['peak_mib'] / max(reference['peak_mib'], 1e-9):.2f}x") if reference else ""
        print(f"  {variant:<16} {result['time_ms']:9.0f} {result['peak_mib']:9.0f}   {ratio}{flag}")
    for variant in [v for v in best if v.startswith("fused")]:
        full = best.get("full:" + variant.partition(":")[2])
        if full:
            print(f"  {variant} / full: time {best[variant]['time_ms'] / full['time_ms']:.2f}x, "
                  f"memory {best[variant]['peak_mib'] / max(full['peak_mib'], 1e-9):.3f}x")
    for variant, plain in (("fused:jsd", "plain-jsd"), ("fused:fkl", "plain-fkl")):
        if variant in best and plain in best:
            print(f"  {variant} / {plain}: time {best[variant]['time_ms'] / best[plain]['time_ms']:.2f}x, "
                  f"memory {best[variant]['peak_mib'] / max(best[plain]['peak_mib'], 1e-9):.3f}x")


def _print_round_ratios(runs: dict) -> None:
    """Time / reference time within each round (the variants of one round ran back to back)."""
    ref_name = "liger" if "liger" in runs else "plain-jsd"
    rounds = len(runs.get(ref_name, []))
    if rounds < 2:
        return
    for variant, results in runs.items():
        ratios = [r["time_ms"] / ref["time_ms"] for r, ref in zip(results, runs[ref_name])
                  if "time_ms" in r and "time_ms" in ref]
        if variant != ref_name and ratios:
            print(f"  {variant:<16} / {ref_name} per round: "
                  + " ".join(f"{x:.2f}" for x in ratios) + f"  (min {min(ratios):.2f}, max {max(ratios):.2f})")


def accumulation_error(args) -> None:
    """Weight-gradient error of the bf16 fused JSD, accumulate float32 vs compute, vs float64."""
    import math

    import torch

    from csdistill.losses import fused_linear_distill

    torch.set_num_threads(1)
    for shape in args.shapes.split(","):
        vocab, hidden = (int(x) for x in shape.split(":"))
        h, w, th, tw = _inputs(torch, args.positions, vocab, hidden, torch.bfloat16)
        reference = torch.zeros(vocab, hidden, dtype=torch.float64)
        for start in range(0, args.positions, 256):  # float64 gradient of the mean JSD, by chunks
            hs = h.detach()[start:start + 256].double()
            logits = (hs @ w.detach().double().t()).requires_grad_()
            log_q = torch.log_softmax(logits, -1)
            log_p = torch.log_softmax(th[start:start + 256].double() @ tw.double().t(), -1)
            log_m = torch.logaddexp(log_p + math.log(BETA), log_q + math.log1p(-BETA))
            kl = lambda a, b: (a.exp() * (a - b)).sum()  # noqa: E731
            value = (BETA * kl(log_p, log_m) + (1 - BETA) * kl(log_q, log_m)) / args.positions
            (grad,) = torch.autograd.grad(value, logits)
            reference += grad.t() @ hs
        labels = torch.zeros(args.positions, dtype=torch.long)
        for accumulate in ("float32", "compute"):
            weight = w.detach().clone().requires_grad_()
            fused_linear_distill(h.detach(), weight, th, tw, labels, loss="jsd", beta=BETA,
                                 compile=args.compile, accumulate=accumulate).backward()
            delta = weight.grad.double() - reference
            print(f"V={vocab} H={hidden} N={args.positions} bf16 accumulate={accumulate}: weight-grad "
                  f"relative error {float(delta.norm() / reference.norm()):.2e}, max-abs / max-|ref| "
                  f"{float(delta.abs().max() / reference.abs().max()):.2e}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="V 4096/8192, N 256, csdistill variants only")
    parser.add_argument("--positions", type=int, default=2048, help="N positions")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated V:H list")
    parser.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated (see the docstring)")
    parser.add_argument("--compile", default="true", choices=("auto", "true", "false"),
                        help="fused:* variants' compile mode")
    parser.add_argument("--reps", type=int, default=2, help="timed steps per process (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (include compilation)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds in alternating order; best round")
    parser.add_argument("--cores", default="0", help="comma-separated cores, one per variant in turn")
    parser.add_argument("--gate-rows", type=int, default=64, help="positions of the correctness gate")
    parser.add_argument("--strict-gate", action="store_true", help="stop if any JSD fails the gate")
    parser.add_argument("--base-src", help="src/ of another checkout, for base/<variant> (before/after)")
    parser.add_argument("--accumulation-error", action="store_true",
                        help="print the bf16 weight-gradient error of accumulate float32 vs compute")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--gate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    cli.cores = cli.cores.split(",")
    if cli.quick:
        cli.positions, cli.shapes, cli.dtypes = 256, "4096:64,8192:64", "fp32"
        cli.variants = "fused:csd,fused:jsd,full:csd,full:jsd,plain-jsd"
    if cli.accumulation_error:
        accumulation_error(cli)
    else:
        worker(cli) if cli.worker else main(cli)
