"""Hidden-state vs top-k teacher cache vs live teacher on SmolLM2-135M-Instruct: step cost, bytes, RSS.

    csdistill student init --teacher /work/models/smollm2 --out /work/scratch/exact-cache/student --layers 24
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/teacher_cache.py \\
        --teacher /work/models/smollm2 --student /work/scratch/exact-cache/student --work /work/scratch/exact-cache/bench

speed  one optimizer step (forward, loss, backward, AdamW) of the student through the trainer's own
       objective (train/objective.part_loss, loss.fused=true, CSD SS): CE only; KD from the hidden
       cache; KD from the k = 64 top-k cache (bucket); KD from the live teacher. Interleaved, medians.
bytes  bytes per position of each store, from the manifests.
rss    peak RSS of `csdistill train` (a subprocess, 2 steps) from each cache grown by filler shards
       (its own rows tiled under other sequences' digests) to N and 4·N positions: the reader must
       not hold the cache in memory, so both peaks should agree.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _prose_records(n: int, words: int) -> list[dict]:
    """Instruction records whose responses are ~`words` words of the project's own prose (README,
    docs): Dolly-like response lengths, unlike the built-in suite's short answers."""
    text = " ".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]).split()
    step = words + 12
    return [{"instruction": "Continue the text: " + " ".join(text[i * step:i * step + 12]),
             "response": " ".join(text[i * step + 12:(i + 1) * step])} for i in range(n)]


def _common(args, work: Path) -> list[str]:
    from csdistill.tasks.suite import write_suite

    if args.data == "prose":
        (work / "data").mkdir(parents=True, exist_ok=True)
        paths = {"train": work / "data" / "train.jsonl", "validation": work / "data" / "validation.jsonl"}
        records = _prose_records(args.examples + 8, args.words)
        for split, chunk in (("train", records[:args.examples]), ("validation", records[args.examples:])):
            paths[split].write_text("".join(json.dumps(r) + "\n" for r in chunk))
    else:
        paths = write_suite(work / "data", 0, n_train=args.examples, n_validation=8, n_test=8)
    return [f"model.name_or_path={args.student}", f"teacher.name_or_path={args.teacher}",
            f"data.train_file={paths['train']}", f"data.validation_file={paths['validation']}",
            "data.max_prompt_length=64", "data.max_length=256", f"train.batch_size={args.batch}", "train.max_steps=2",
            "train.progress=false", "train.num_threads=1", "eval.eval_every=0", "loss.fused=true", "loss.name=csd",
            "loss.weighting=SS", f"train.output_dir={work / 'run'}"]


def build_caches(args, work: Path, common: list[str]) -> dict[str, Path]:
    from csdistill.cache.runner import build_cache
    from csdistill.config import load_config

    cfg = load_config(None, common)
    out = {"hidden": work / "hidden", "topk": work / "topk"}
    for store, folder in out.items():
        start = time.perf_counter()
        manifest = build_cache(cfg, folder, 64 if store == "topk" else 0, "bf16" if store == "hidden" else "fp16",
                               shard_size=args.shard_size, progress=False, store=store)
        print(f"cache {store}: {manifest['sequences']} sequences, {manifest['positions']} positions, "
              f"{manifest['bytes_per_position']} B/position, built/checked in {time.perf_counter() - start:.0f} s",
              flush=True)
    return out


def _objective(cfg, cache, vocab: int):
    from csdistill.config import loss_params
    from csdistill.train.loop import _loss_fn
    from csdistill.train.objective import Objective

    distils = cfg.train.mode != "sft"
    return Objective(cfg, _loss_fn(cfg, cache) if distils else None, loss_params(cfg.loss) if distils else {}, vocab,
                     contextlib.nullcontext, cache)


def speed(args, common: list[str], caches: dict[str, Path]) -> None:
    from csdistill.config import load_config
    from csdistill.data.collate import collate
    from csdistill.data.train_data import load_train_data
    from csdistill.losses.reduce import count_valid, shift_labels
    from csdistill.models import load_model, load_tokenizer
    from csdistill.train.objective import part_loss
    from csdistill.train.teacher_cache import TeacherCache

    tokenizer = load_tokenizer(args.student)
    teacher = load_model(args.teacher).eval().requires_grad_(False)
    student = load_model(args.student).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-7)
    vocab = student.get_output_embeddings().weight.shape[0]
    arms = {"ce": (["train.mode=sft"], None), "kd_hidden": ([], "hidden"), "kd_topk64": ([], "topk"),
            "kd_live": ([], None)}
    objectives = {}
    for name, (extra, store) in arms.items():
        cache_args = [f"train.teacher_cache={caches[store]}"] if store else []
        cfg = load_config(None, [*common, *extra, *cache_args])
        objectives[name] = _objective(cfg, TeacherCache.from_dir(caches[store]) if store else None, vocab)
    examples = load_train_data(load_config(None, common), tokenizer).train[:args.batch]
    batch = collate(examples, tokenizer.pad_token_id)
    count = torch.tensor(float(count_valid(shift_labels(batch["labels"]))))

    def step(name):
        loss = part_loss(objectives[name], student, teacher if name == "kd_live" else None, "response", batch, count)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = {name: [] for name in arms}
    for round_ in range(args.warmup + args.repeats):
        for name in arms:  # interleaved: load drift hits every arm alike
            start = time.perf_counter()
            step(name)
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"\nspeed: batch {tuple(batch['input_ids'].shape)} ({int(count)} response positions), "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats} after {args.warmup} warm-up; "
          f"load {Path('/proc/loadavg').read_text().split()[:3]}")
    print("| step | seconds | × CE step |\n|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.3f} | {seconds / medians['ce']:.2f} |")


def grow(cache: Path, out: Path, extra_positions: int) -> dict:
    """A copy of `cache` plus filler shards of `extra_positions` more rows — the cache's own rows tiled,
    in sequences of 16 rows under fresh digests (other sequences) — so it still covers the run's data."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(cache, out)
    manifest = json.loads((cache / "manifest.json").read_text())
    first = manifest["shards"][0]
    with safe_open(str(cache / first["file"]), framework="pt") as handle:
        rows = {key: handle.get_tensor(key) for key in handle.keys() if key not in ("digests", "offsets")}
        metadata = handle.metadata()
    shards, generator, per_shard = list(manifest["shards"]), torch.Generator().manual_seed(0), 16384
    for start in range(0, extra_positions, per_shard):
        n = min(per_shard, extra_positions - start) // 16 * 16
        index = torch.arange(n) % first["positions"]
        tensors = {key: value[index].contiguous() for key, value in rows.items()}
        tensors["digests"] = torch.randint(0, 256, (n // 16, 16), generator=generator, dtype=torch.uint8)
        tensors["offsets"] = torch.arange(0, n + 1, 16, dtype=torch.int64)
        name = f"shard-{len(shards):05d}.safetensors"
        save_file(tensors, str(out / name), metadata=metadata)
        shards.append({"file": name, "sequences": n // 16, "positions": n})
    manifest.update(shards=shards, sequences=sum(e["sequences"] for e in shards),
                    positions=sum(e["positions"] for e in shards))
    (out / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def _peak_rss_mib(common: list[str], cache: Path, out: Path) -> float:
    code = ("import resource, sys; from csdistill.config import load_config; from csdistill.train import train; "
            "train(load_config(None, sys.argv[1:])); "
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    shutil.rmtree(out, ignore_errors=True)  # the benchmark's own scratch run
    args = [*common, "teacher.name_or_path=", f"train.teacher_cache={cache}", f"train.output_dir={out}"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-3000:])
    return int(proc.stdout.split("PEAK")[-1]) / 1024


def rss(args, common: list[str], caches: dict[str, Path], work: Path) -> None:
    print(f"\nrss: peak resident memory of `csdistill train` (2 steps, fused CSD SS) from a cache grown by filler "
          f"shards to {args.rss_positions} and 4 × {args.rss_positions} positions; "
          f"load {Path('/proc/loadavg').read_text().split()[:3]}")
    print("| store | cache size | positions | cache MB on disk | peak RSS MiB |\n|---|---|---|---|---|")
    for store in ("hidden", "topk"):
        for factor in (1, 4):
            folder = work / f"{store}-x{factor}"
            cache = grow(caches[store], folder, factor * args.rss_positions)
            size = sum((folder / s["file"]).stat().st_size for s in cache["shards"]) / 1e6
            peak = _peak_rss_mib(common, folder, work / f"run-{store}-{factor}")
            print(f"| {store} | {factor}× | {cache['positions']} | {size:.0f} | {peak:.0f} |", flush=True)
            shutil.rmtree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="/work/models/smollm2")
    parser.add_argument("--student", default="/work/scratch/exact-cache/student")
    parser.add_argument("--work", default="/work/scratch/exact-cache/bench")
    parser.add_argument("--examples", type=int, default=64, help="training examples cached")
    parser.add_argument("--data", default="prose", choices=("prose", "suite"),
                        help="prose: responses of ~--words words of README/docs text; suite: the task suite")
    parser.add_argument("--words", type=int, default=80, help="prose: words per response (~100 tokens)")
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", default="speed,rss")
    parser.add_argument("--rss-positions", type=int, default=131072, help="rss: filler rows of the 1x cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    common = _common(args, work)
    caches = build_caches(args, work, common)
    parts = set(args.parts.split(","))
    if "speed" in parts:
        speed(args, common, caches)
    if "rss" in parts:
        rss(args, common, caches, work)


if __name__ == "__main__":
    main()
