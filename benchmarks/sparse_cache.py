"""Sparse (top-k) teacher vs dense teacher on a real model.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/sparse_cache.py            # all parts
    ... benchmarks/sparse_cache.py --parts sweep --positions 256                          # one part

Teacher: SmolLM2-135M-Instruct (an HF folder, --teacher). Student: the same model with only every
--keep-every-th decoder layer kept (a local helper; no `csdistill student init` needed).

sweep   k in {1, 4, 16, 64, 256, 1024}: relative error of the token-mean sparse loss against the dense
        one and cosine of their gradients w.r.t. the student logits, per CSD weighting and for the KL
        family, per tail mode (support | bucket); cached values go through fp16 as on disk; bytes/position.
speed   one optimizer step (forward, loss, backward, AdamW) of the student: CE only, KD from the k = 64
        cache (CSD SS, bucket), KD from the live dense teacher; interleaved, medians, one process.
train   `csdistill teacher cache` (k = 64) then `csdistill train` from it vs from the live teacher, same
        student/data/steps/seeds; quality = held-out dense CSD (SS) to the teacher and CE, measured here.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from csdistill.cache.store import bytes_per_position
from csdistill.losses import WEIGHTINGS, cross_entropy, get_loss
from csdistill.losses.sparse import SparseTeacher, get_sparse_loss, sparse_from_logits

ROOT = Path(__file__).resolve().parent.parent
KS = (1, 4, 16, 64, 256, 1024)
KL_NAMES = ("fkl", "rkl", "jsd", "skl", "srkl", "tvd")


def keep_layers(model, keep: list[int]):
    """A student: a deep copy of `model` with only the decoder layers `keep` (in order)."""
    student = copy.deepcopy(model)
    student.model.layers = torch.nn.ModuleList(student.model.layers[i] for i in keep)
    for index, layer in enumerate(student.model.layers):
        layer.self_attn.layer_idx = index
    student.config.num_hidden_layers = len(keep)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [student.config.layer_types[i] for i in keep]
    return student


def drop_layers(model, keep_every: int):
    """Far from the teacher: layers 0, keep_every, 2·keep_every, ... kept."""
    return keep_layers(model, list(range(0, model.config.num_hidden_layers, keep_every)))


def drop_layers_near(model, drop_every: int):
    """Close to the teacher: every drop_every-th layer removed."""
    return keep_layers(model, [i for i in range(model.config.num_hidden_layers) if (i + 1) % drop_every]).eval()


def text_batch(tokenizer, positions: int, width: int = 128) -> torch.Tensor:
    """(B, width+1) token ids of the project's own prose (README, docs): natural English text."""
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = -(-positions // width)
    return torch.tensor(ids[:rows * (width + 1)]).reshape(rows, width + 1)


def _fp16(sparse: SparseTeacher) -> SparseTeacher:
    """The values as stored on disk (fp16) and read back."""
    return SparseTeacher(sparse.ids, sparse.logprobs.half().float(), sparse.target_logprob.half().float(),
                         sparse.log_tail.half().float(), sparse.labels)


def _value_and_grad(fn, student_logits, teacher):
    logits = student_logits.detach().requires_grad_(True)
    value = fn(logits, teacher).mean()
    (grad,) = torch.autograd.grad(value, logits)
    return value.item(), grad.flatten()


def sweep(teacher, student, batch, positions: int, label: str) -> None:
    with torch.no_grad():
        t_logits = teacher(input_ids=batch[:, :-1]).logits.flatten(0, 1)[:positions].float()  # (N, V)
        s_logits = student(input_ids=batch[:, :-1]).logits.flatten(0, 1)[:positions].float()
    labels = batch[:, 1:].flatten()[:positions]
    vocab = t_logits.shape[-1]
    losses = [("csd", w, {"weighting": w}) for w in WEIGHTINGS] + [(n, "", {}) for n in KL_NAMES]
    dense = {(n, w): _value_and_grad(get_loss(n, **p), s_logits, t_logits) for n, w, p in losses}
    caches = {k: _fp16(sparse_from_logits(t_logits, labels, k)) for k in KS}
    tail_mass = {k: caches[k].log_tail.exp().mean().item() for k in KS}
    q = torch.softmax(s_logits, -1)
    student_mass = {k: q.gather(1, caches[k].ids).sum(-1).mean().item() for k in KS}
    print(f"\nsweep, student {label}: {positions} positions of README/docs text, V={vocab}")
    print("teacher mass off its top-k, mean: " + ", ".join(f"k={k}: {tail_mass[k]:.3f}" for k in KS))
    print("student mass on the teacher's top-k, mean: " + ", ".join(f"k={k}: {student_mass[k]:.3f}" for k in KS))
    print("bytes/position (fp16 values, uint16 ids): " + ", ".join(f"k={k}: {bytes_per_position(k, vocab, 'fp16')}"
                                                                 for k in KS))
    for tail in ("support", "bucket"):
        print(f"\n| {tail}: loss | " + " | ".join(f"k={k}" for k in KS) + " |")
        print("|---|" + "---|" * len(KS))
        for name, weighting, params in losses:
            cells = []
            for k in KS:
                value, grad = _value_and_grad(get_sparse_loss(name, tail, **params), s_logits, caches[k])
                d_value, d_grad = dense[(name, weighting)]
                cosine = torch.nn.functional.cosine_similarity(grad, d_grad, dim=0).item()
                cells.append(f"{abs(value - d_value) / abs(d_value):.2g} / {cosine:.3f}")
            print(f"| {name} {weighting} | " + " | ".join(cells) + " |")
    print("\n(cells: relative error of the token-mean value / cosine of the gradient w.r.t. the student logits)")


def _median_times(steps: dict, warmup: int, repeats: int) -> dict[str, float]:
    times = {name: [] for name in steps}
    for round_ in range(warmup + repeats):
        for name, step in steps.items():  # interleaved: load drift hits every kind alike
            start = time.perf_counter()
            step()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def speed(teacher, student, batch, warmup: int, repeats: int) -> None:
    inputs, labels = batch[:, :-1], batch[:, 1:].flatten()
    with torch.no_grad():
        cache = sparse_from_logits(teacher(input_ids=inputs).logits.flatten(0, 1), labels, 64)
    cache = _fp16(cache)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)
    sparse_csd, dense_csd = get_sparse_loss("csd", "bucket"), get_loss("csd")

    def step(loss_of_logits):
        def run():
            logits = student(input_ids=inputs).logits.flatten(0, 1)  # (N, V)
            loss_of_logits(logits).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    def live(logits):
        with torch.no_grad():
            t_logits = teacher(input_ids=inputs).logits.flatten(0, 1)
        return dense_csd(logits, t_logits).mean()

    steps = {"ce": step(lambda logits: cross_entropy(logits, labels).mean()),
             "kd_cache_k64": step(lambda logits: sparse_csd(logits, cache).mean()),
             "kd_live_dense": step(live)}
    times = _median_times(steps, warmup, repeats)
    print(f"\nspeed: batch {tuple(inputs.shape)}, student {sum(p.numel() for p in student.parameters()) / 1e6:.1f}M params, "
          f"{torch.get_num_threads()} thread(s); median of {repeats} after {warmup} warm-up")
    print("| step | seconds | × CE step |\n|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.3f} | {seconds / times['ce']:.3f} |")


def _quality(student_dir, teacher, examples, tokenizer) -> tuple[float, float]:
    """(held-out token-mean dense CSD SS to the teacher, held-out CE) of a trained student."""
    from csdistill.data.collate import collate
    from csdistill.losses.reduce import shift_labels
    from csdistill.models import load_model

    student = load_model(str(student_dir)).eval()
    csd, ce, count = 0.0, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), 8):
            batch = collate(examples[start:start + 8], tokenizer.pad_token_id)
            labels = shift_labels(batch["labels"])
            valid = labels != -100
            s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[valid]
            t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[valid]
            csd += get_loss("csd")(s, t).sum().item()
            ce += cross_entropy(s, labels[valid]).sum().item()
            count += int(valid.sum())
    return csd / count, ce / count


ARMS = {"live": ("live dense", []), "bucket": ("k=64 cache, bucket", ["loss.sparse_tail=bucket"]),
        "support": ("k=64 cache, support", ["loss.sparse_tail=support"]),
        "hidden": ("exact hidden-state cache, fp32", [])}


def train_compare(teacher_path: str, teacher, student, tokenizer, steps: int, seeds: list[int], work: Path,
                  weighting: str, arms: list[str]) -> None:
    from csdistill.cache.runner import build_cache
    from csdistill.config import load_config
    from csdistill.tasks.suite import write_suite
    from csdistill.train import train
    from csdistill.data.train_data import load_train_data

    student.save_pretrained(work / "student")
    tokenizer.save_pretrained(work / "student")
    paths = write_suite(work / "data", 0, n_train=400, n_validation=48, n_test=8, n_warmup=8)
    common = [f"model.name_or_path={work / 'student'}", f"teacher.name_or_path={teacher_path}",
              f"data.train_file={paths['train']}", f"data.validation_file={paths['validation']}",
              "data.max_prompt_length=64", "data.max_length=128", "train.batch_size=8", f"train.max_steps={steps}",
              "train.lr=1e-4", "train.warmup_steps=2", "train.progress=false", "train.num_threads=1",
              "eval.eval_every=0", "train.log_every=10", f"loss.weighting={weighting}"]
    start = time.perf_counter()
    manifest = build_cache(load_config(None, common), work / "cache", 64, progress=False)
    cache_seconds = time.perf_counter() - start
    if "hidden" in arms:
        build_cache(load_config(None, common), work / "cache-hidden", 0, dtype="fp32", progress=False, store="hidden")
    cfg = load_config(None, common)
    validation = load_train_data(cfg, tokenizer).validation
    print(f"\ntrain: cache of {manifest['sequences']} sequences / {manifest['positions']} positions built in "
          f"{cache_seconds:.1f} s ({manifest['bytes_per_position']} B/position, "
          f"{sum((work / 'cache' / s['file']).stat().st_size for s in manifest['shards']) / 1e6:.2f} MB); "
          f"{steps} steps, batch 8, lr 1e-4, CSD {weighting}")
    before = _quality(work / "student", teacher, validation, tokenizer)
    print(f"student before training: held-out CSD {before[0]:.4f}, CE {before[1]:.4f}")
    print("| teacher | seed | held-out dense CSD (SS) | held-out CE | train seconds |\n|---|---|---|---|---|")
    for name in arms:
        arm, extra = ARMS[name]
        if name != "live":
            cache = work / ("cache-hidden" if name == "hidden" else "cache")
            extra = [*extra, f"train.teacher_cache={cache}"]
        for seed in seeds:
            out = work / f"run-{name}-{weighting}-{seed}"
            start = time.perf_counter()
            result = train(load_config(None, [*common, *extra, f"train.seed={seed}", f"train.output_dir={out}"]))
            seconds = time.perf_counter() - start
            csd, ce = _quality(result.model_path, teacher, validation, tokenizer)
            print(f"| {arm} | {seed} | {csd:.4f} | {ce:.4f} | {seconds:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="/work/models/smollm2-135m-instruct-hf", help="HF folder or hub id")
    parser.add_argument("--keep-every", type=int, default=3, help="student keeps every n-th decoder layer")
    parser.add_argument("--near-drop-every", type=int, default=10, help="sweep: a near student drops every n-th layer")
    parser.add_argument("--parts", default="sweep,speed,train")
    parser.add_argument("--positions", type=int, default=256, help="sweep: positions of text")
    parser.add_argument("--speed-batch", type=int, default=2, help="speed: sequences of 128 tokens")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="train: optimizer steps per run")
    parser.add_argument("--seeds", default="0,1", help="train: seeds per arm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weighting", default="SS", help="train: CSD weighting")
    parser.add_argument("--arms", default="live,bucket,support", help="train: live, bucket, support, hidden")
    parser.add_argument("--work", default="", help="train: working folder to keep (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32).eval().requires_grad_(False)
    student = drop_layers(teacher, args.keep_every).requires_grad_(True)
    parts = set(args.parts.split(","))
    print(f"teacher {args.teacher} ({teacher.config.num_hidden_layers} layers), student keeps "
          f"{student.config.num_hidden_layers} layers; torch {torch.__version__}")
    if "sweep" in parts:
        batch = text_batch(tokenizer, args.positions)
        sweep(teacher, student.eval(), batch, args.positions, f"far: every {args.keep_every}th layer kept "
              f"({student.config.num_hidden_layers} layers)")
        near = drop_layers_near(teacher, args.near_drop_every)
        sweep(teacher, near, batch, args.positions, f"near: every {args.near_drop_every}th layer dropped "
              f"({near.config.num_hidden_layers} layers)")
        del near
    if "speed" in parts:
        speed(teacher, copy.deepcopy(student).train(), text_batch(tokenizer, args.speed_batch * 128), args.warmup,
              args.repeats)
    if "train" in parts:
        with tempfile.TemporaryDirectory() as scratch:
            work = Path(args.work or scratch)  # --work keeps the cache (reused when it matches)
            train_compare(args.teacher, teacher, student, tokenizer, args.steps, [int(s) for s in args.seeds.split(",")],
                          work, args.weighting, args.arms.split(","))


if __name__ == "__main__":
    main()
