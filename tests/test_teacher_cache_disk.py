"""The top-k teacher cache on disk: `csdistill teacher cache`, training from it (train.teacher_cache),
resume, and bad caches as clear errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from csdistill.cache.store import bytes_per_position
from csdistill.cli import main
from csdistill.config import ConfigError, load_config
from csdistill.losses.sparse import sparse_from_logits
from csdistill.train import train
from csdistill.train.teacher_cache import TeacherCache
from test_train import QUIET, final_weights, kd_args, max_diff, toy  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
V = 101  # the tiny character tokenizer


def _cache(toy, out, k, *extra, dtype="fp32"):  # noqa: F811
    code = main(["teacher", "cache", "--top-k", str(k), "--out", str(out), "--dtype", dtype, "--shard-size", "16",
                 "--no-progress", *kd_args(toy, out.parent / "unused"), *extra])
    assert code == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def full_cache(toy, tmp_path_factory):  # noqa: F811
    """k = V, float32: the sparse loss then equals the dense one (tests/test_losses_sparse.py)."""
    out = tmp_path_factory.mktemp("c") / "full"
    _cache(toy, out, V)
    return out


def test_manifest_and_shards(toy, tmp_path, capsys):  # noqa: F811
    manifest = _cache(toy, tmp_path / "c8", 8, dtype="fp16")
    assert manifest["top_k"] == 8 and manifest["dtype"] == "fp16" and manifest["vocab_size"] == V
    assert manifest["sequences"] == 47 and len(manifest["shards"]) == 3  # 40 train + 8 validation, one duplicate
    assert manifest["bytes_per_position"] == bytes_per_position(8, V, "fp16") == 8 * 4 + 3 * 2 + 2
    assert manifest["data"]["settings"]["max_length"] == 64 and manifest["teacher"]["weights_sha256"]
    shard = load_file(str(tmp_path / "c8" / manifest["shards"][0]["file"]))
    assert shard["ids"].dtype == np.uint16 and shard["logprobs"].dtype == np.float16
    assert sum(e["positions"] for e in manifest["shards"]) == manifest["positions"]
    assert "bytes/position" in capsys.readouterr().out


def test_rows_are_the_teachers_top_k(toy, full_cache, tmp_path):  # noqa: F811
    from csdistill.data.collate import collate
    from csdistill.models import load_model, load_tokenizer
    from csdistill.train.dataset import load_train_data

    cfg = load_config(None, kd_args(toy, tmp_path))
    tokenizer = load_tokenizer(str(toy / "student"))
    examples = load_train_data(cfg, tokenizer).train[:5]
    batch = collate(examples, tokenizer.pad_token_id)
    labels = torch.full_like(batch["labels"], -100)
    labels[:, :-1] = batch["labels"][:, 1:]
    valid = labels != -100
    with torch.no_grad():
        logits = load_model(str(toy / "teacher"))(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want = sparse_from_logits(logits[valid], labels[valid], V)
    got = TeacherCache.from_dir(full_cache).rows(batch, valid)
    assert torch.equal(got.ids, want.ids) and torch.equal(got.labels, want.labels)
    torch.testing.assert_close(got.logprobs, want.logprobs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("extra", [["loss.sparse_tail=bucket"], ["loss.sparse_tail=support", "loss.weighting=TS"],
                                   ["loss.fused=true", "train.grad_accum=2", "loss.chunk_size=7"],
                                   ["loss.name=fkl", "train.kd_ratio=0.5"]])
def test_training_from_a_full_cache_matches_the_live_teacher(toy, full_cache, tmp_path, extra):  # noqa: F811
    steps = ["train.max_steps=4", "train.seed=3", "eval.eval_every=4", *extra]
    live = train(load_config(None, kd_args(toy, tmp_path / "live", *steps)))
    cached = train(load_config(None, kd_args(toy, tmp_path / "cached", *steps, "teacher.name_or_path=",
                                             f"train.teacher_cache={full_cache}")))
    # float32 rounding (log-softmax vs raw logits) only; Adam moves weights ~1e-3 per step at lr 1e-3
    assert max_diff(final_weights(tmp_path / "live"), final_weights(tmp_path / "cached")) < 1e-4
    assert cached.loss == pytest.approx(live.loss, rel=1e-4) and cached.val_loss == pytest.approx(live.val_loss, rel=1e-4)


def test_resume_recomputes_only_missing_shards_and_refuses_another_cache(toy, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "c"
    first = _cache(toy, out, 4)
    kept = (out / "shard-00000.safetensors").stat().st_mtime_ns
    (out / "manifest.json").unlink()
    (out / "shard-00001.safetensors").unlink()  # as if killed while writing shard 1
    assert _cache(toy, out, 4)["positions"] == first["positions"]
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == kept
    moved = tmp_path / "moved.jsonl"  # the same content elsewhere is the same cache
    moved.write_bytes((toy / "train.jsonl").read_bytes())
    assert _cache(toy, out, 4, f"data.train_file={moved}")["positions"] == first["positions"]
    capsys.readouterr()
    assert main(["teacher", "cache", "--top-k", "5", "--out", str(out), "--no-progress", *kd_args(toy, tmp_path / "x")]) == 2
    assert "holds a teacher cache of something else" in capsys.readouterr().err


def _train_from(toy, cache_dir, tmp_path, *extra):  # noqa: F811
    return train(load_config(None, kd_args(toy, tmp_path / "run", "train.max_steps=1", "teacher.name_or_path=",
                                           f"train.teacher_cache={cache_dir}", *extra)))


def _edit_shard(path: Path, **changes) -> None:
    arrays = load_file(str(path))
    arrays.update({name: fn(arrays[name]) for name, fn in changes.items()})
    save_file(arrays, str(path))


@pytest.mark.parametrize("damage, needle", [
    ("vocab", "V=200"), ("k", "k=5"), ("nan", "non-finite logprobs"), ("truncate", "truncated"),
    ("missing_shard", "missing"), ("max_length", "data.max_length"), ("data", "data.train_file"),
    ("unfinished", "has not finished")])
def test_bad_caches_are_clear_errors(toy, tmp_path, damage, needle):  # noqa: F811
    out = tmp_path / "c"
    _cache(toy, out, 4)
    manifest_path, shard = out / "manifest.json", out / "shard-00000.safetensors"
    manifest, extra = json.loads(manifest_path.read_text()), []
    if damage == "vocab":
        manifest["vocab_size"] = 200
    elif damage == "k":
        manifest["top_k"] = 5
    elif damage == "nan":
        _edit_shard(shard, logprobs=lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a).astype(a.dtype))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "missing_shard":
        shard.unlink()
    elif damage == "max_length":
        extra = ["data.max_length=48"]
    elif damage == "data":
        other = tmp_path / "other.jsonl"
        other.write_text((toy / "train.jsonl").read_text().replace("cat", "dog"))
        extra = [f"data.train_file={other}"]
    elif damage == "unfinished":
        manifest_path.unlink()
    if manifest_path.exists():
        manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=needle):
        _train_from(toy, out, tmp_path, *extra)
    assert main(["train", *kd_args(toy, tmp_path / "cli", "teacher.name_or_path=", f"train.teacher_cache={out}",
                                   *extra)]) == 2  # one line at the CLI, no traceback


@pytest.mark.parametrize("extra, needle", [(["train.mode=imitkd"], "imitkd"), (["train.mode=seqkd"], "seqkd"),
                                           (["train.cache_teacher_logits=true"], "cache_teacher_logits")])
def test_config_rejects_what_a_cache_cannot_do(toy, tmp_path, extra, needle):  # noqa: F811
    with pytest.raises(ConfigError, match=needle):
        load_config(None, kd_args(toy, tmp_path, "train.teacher_cache=somewhere", *extra))


@pytest.mark.parametrize("extra, needle", [(["loss.name=dld"], "no sparse-teacher form"),
                                           (["loss.temperature=2"], "temperature")])
def test_a_top_k_cache_refuses_losses_it_cannot_serve(toy, full_cache, tmp_path, extra, needle):  # noqa: F811
    with pytest.raises(ConfigError, match=needle) as err:
        _train_from(toy, full_cache, tmp_path, *extra)
    assert "--store hidden" in str(err.value)  # the store that serves every loss


@pytest.mark.slow
@pytest.mark.parametrize("store", [["--top-k", "16"], ["--store", "hidden", "--dtype", "fp32"]], ids=["topk", "hidden"])
def test_two_process_cache_and_ddp_training_from_it(toy, tmp_path, store):  # noqa: F811
    from test_train_ddp import _free_port

    def launch(*args):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "configs/accelerate/cpu_2proc.yaml"), "--num_cpu_threads_per_process", "1",
                   "--main_process_port", str(_free_port()), "-m", "csdistill.cli", *args]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=240, env={**os.environ})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    out = tmp_path / "cache"
    launch("teacher", "cache", *store, "--out", str(out), "--shard-size", "10", "--no-progress",
           *kd_args(toy, tmp_path / "unused"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and len(manifest["shards"]) == 5 and manifest["sequences"] == 47
    common = [*kd_args(toy, tmp_path / "x"), "teacher.name_or_path=", f"train.teacher_cache={out}", "train.max_steps=3",
              "train.grad_accum=2", "loss.fused=true"]
    launch("train", *common, f"train.output_dir={tmp_path / 'ddp'}", "train.batch_size=2")
    train(load_config(None, [*common, f"train.output_dir={tmp_path / 'one'}", "train.batch_size=4"]))
    assert max_diff(final_weights(tmp_path / "ddp"), final_weights(tmp_path / "one")) < 1e-5


def test_bf16_teacher_cache_trains(toy, tmp_path):  # noqa: F811
    manifest = _cache(toy, tmp_path / "bf16", 8, "teacher.precision=bf16", dtype="fp16")
    assert manifest["teacher"]["precision"] == "bf16"
    result = _train_from(toy, tmp_path / "bf16", tmp_path, "train.max_steps=2")
    assert result.loss is not None and result.loss == result.loss  # finite, not NaN


@pytest.mark.parametrize("extra", [(), ("loss.fused=true",), ("loss.name=fkl", "loss.weighting=")])
def test_bf16_student_trains_from_an_fp16_cache(toy, tmp_path, extra):  # noqa: F811
    """The cache's fp16 rows under a bf16 student's CPU autocast (their concatenation failed there)."""
    _cache(toy, tmp_path / "fp16", 8, dtype="fp16")
    bf16 = _train_from(toy, tmp_path / "fp16", tmp_path / "bf16", "model.precision=bf16", "train.max_steps=2", *extra)
    fp32 = _train_from(toy, tmp_path / "fp16", tmp_path / "fp32", "train.max_steps=2", *extra)
    assert bf16.loss == bf16.loss and bf16.loss == pytest.approx(fp32.loss, rel=0.05)


def test_seqkd_with_teacher_responses_trains_from_the_cache(toy, tmp_path):  # noqa: F811
    records = [json.loads(line) for line in (toy / "train.jsonl").read_text().splitlines()]
    responses = tmp_path / "teacher_responses.jsonl"
    responses.write_text("".join(json.dumps({**r, "response": r["response"].upper()}) + "\n" for r in records))
    seqkd = ["train.mode=seqkd", f"data.teacher_responses_file={responses}"]
    manifest = _cache(toy, tmp_path / "c", 4, *seqkd)
    assert manifest["sequences"] > 47  # the teacher responses are cached too
    result = _train_from(toy, tmp_path / "c", tmp_path, "train.max_steps=2", *seqkd)
    assert result.loss == result.loss


@pytest.mark.parametrize("vocab, id_type", [(65536, np.uint16), (70000, np.int32)])
def test_shard_round_trip_and_id_width(tmp_path, vocab, id_type):
    from csdistill.cache.store import load_shard, write_shard

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(9, vocab, generator=generator)
    labels = torch.randint(0, vocab, (9,), generator=generator)
    rows = sparse_from_logits(logits, labels, 3)
    spec = {"vocab_size": vocab, "dtype": "fp32", "top_k": 3}
    entry = write_shard(tmp_path / "s.safetensors", rows, [bytes(16), bytes([1] * 16)], [4, 5], spec)
    assert load_file(str(tmp_path / "s.safetensors"))["ids"].dtype == id_type
    shard, digests, offsets = load_shard(tmp_path, entry, spec)
    back = shard[0:9]  # read from disk, row range by row range
    assert torch.equal(back.ids, rows.ids) and torch.equal(back.labels, rows.labels)
    assert torch.equal(back.logprobs, rows.logprobs) and offsets.tolist() == [0, 4, 9]
