"""The hidden-state teacher cache (`teacher cache --store hidden`): training from it equals training
from the live teacher for every loss and CSD weighting (unfused and fused, grad accumulation 2),
a bf16 store stays within a stated tolerance, and bad caches and inputs are one-line errors."""
import contextlib
import json
import shutil

import pytest
import torch

from csdistill.cli import main
from csdistill.config import load_config
from csdistill.data.collate import collate
from csdistill.data.train_data import load_train_data
from csdistill.losses import LOSS_NAMES, WEIGHTINGS
from csdistill.losses.reduce import count_valid, shift_labels
from csdistill.models import load_model, load_tokenizer
from csdistill.train.loop import _loss_fn
from csdistill.train.objective import Objective, part_loss
from csdistill.train.teacher_cache import TeacherCache
from test_train import kd_args, toy  # noqa: F401  (fixture)
from test_user_errors import one_line_error

V = 101  # the tiny character tokenizer
FP32_TOLERANCE = 1e-5  # relative, loss and every gradient tensor
BF16_TOLERANCE = 5e-3  # relative: bf16 keeps 8 mantissa bits per hidden value; measured <= 6e-4 (gradients) here


def _cache(toy, out, *extra, dtype="fp32"):  # noqa: F811
    code = main(["teacher", "cache", "--store", "hidden", "--out", str(out), "--dtype", dtype, "--shard-size", "16",
                 "--no-progress", *kd_args(toy, out.parent / "unused"), *extra])
    assert code == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def caches(toy, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("hidden")
    _cache(toy, root / "fp32")
    _cache(toy, root / "bf16", dtype="bf16")
    return root


@pytest.fixture(scope="module")
def models(toy):  # noqa: F811
    tokenizer = load_tokenizer(str(toy / "student"))
    teacher = load_model(str(toy / "teacher")).eval().requires_grad_(False)
    return tokenizer, teacher


def _window_loss_and_grads(cfg, objective, student, teacher, batches):
    """Σ part_loss over the micro-batches (one window, grad accumulation) and the student's gradients."""
    count = torch.tensor(float(sum(count_valid(shift_labels(b["labels"])) for b in batches)))
    student.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        loss = part_loss(objective, student, teacher, "response", batch, count)
        loss.backward()
        total += loss.item()
    return total, {name: p.grad.clone() for name, p in student.named_parameters()}


def _compare(toy, models, cache_dir, overrides, tolerance, tmp_path):  # noqa: F811
    tokenizer, teacher = models
    results = []
    for cached in (False, True):
        extra = ["teacher.name_or_path=", f"train.teacher_cache={cache_dir}"] if cached else []
        cfg = load_config(None, kd_args(toy, tmp_path / "unused", "train.grad_accum=2", *overrides, *extra))
        cache = TeacherCache.from_dir(cache_dir) if cached else None
        from csdistill.config import loss_params

        objective = Objective(cfg, _loss_fn(cfg, cache), loss_params(cfg.loss), V, contextlib.nullcontext, cache)
        examples = load_train_data(cfg, tokenizer).train[:7]  # odd batch: 4 + 3
        batches = [collate(examples[:4], tokenizer.pad_token_id), collate(examples[4:], tokenizer.pad_token_id)]
        student = load_model(str(toy / "student"))
        results.append(_window_loss_and_grads(cfg, objective, student, None if cached else teacher, batches))
    (live_loss, live_grads), (cached_loss, cached_grads) = results
    assert cached_loss == pytest.approx(live_loss, rel=tolerance), (live_loss, cached_loss)
    for name, want in live_grads.items():
        gap = float((cached_grads[name] - want).abs().max()) / max(float(want.abs().max()), 1e-30)
        assert gap <= tolerance, f"{name}: relative gradient gap {gap:.2e} > {tolerance}"


CASES = ([[f"loss.name={name}"] for name in LOSS_NAMES if name != "csd"]
         + [["loss.name=csd", f"loss.weighting={w}"] for w in WEIGHTINGS]
         + [["loss.name=csd", "loss.weighting=SS", "loss.temperature=1.5"], ["loss.name=fkl", "loss.temperature=2"],
            ["loss.name=csd", "train.kd_ratio=0.5"]])


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("overrides", CASES, ids=lambda o: "-".join(x.split("=")[1] for x in o))
def test_fp32_hidden_cache_equals_the_live_teacher(toy, models, caches, tmp_path, overrides, fused):  # noqa: F811
    extra = ["loss.fused=true", "loss.chunk_size=7", "loss.compile=false"] if fused else []
    _compare(toy, models, caches / "fp32", [*overrides, *extra], FP32_TOLERANCE, tmp_path)


@pytest.mark.parametrize("overrides", [["loss.name=csd", "loss.weighting=SS"], ["loss.name=fkl"],
                                       ["loss.name=csd", "loss.weighting=TS", "loss.fused=true"]])
def test_bf16_hidden_cache_is_within_its_tolerance(toy, models, caches, tmp_path, overrides):  # noqa: F811
    _compare(toy, models, caches / "bf16", overrides, BF16_TOLERANCE, tmp_path)


def test_manifest_head_and_bytes(caches):
    manifest = json.loads((caches / "bf16" / "manifest.json").read_text())
    assert manifest["store"] == "hidden" and manifest["hidden_size"] == 64 and manifest["head"]["rows"] == V
    assert manifest["bytes_per_position"] == 64 * 2 + 2  # d bf16 values + the uint16 next token
    assert (caches / "bf16" / "head.safetensors").is_file() and "top_k" not in manifest


def test_rows_are_the_teachers_final_hidden_states(toy, models, caches):  # noqa: F811
    from csdistill.models import hidden_states_and_head

    tokenizer, teacher = models
    cfg = load_config(None, kd_args(toy, "unused"))
    batch = collate(load_train_data(cfg, tokenizer).train[:5], tokenizer.pad_token_id)
    valid = shift_labels(batch["labels"]) != -100
    with torch.no_grad():
        hidden, weight, _ = hidden_states_and_head(teacher, batch["input_ids"], batch["attention_mask"])
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[valid]
    cache = TeacherCache.from_dir(caches / "fp32")
    rows = cache.rows(batch, valid)
    assert torch.equal(rows.hidden, hidden[valid])
    torch.testing.assert_close(cache.head.logits(rows.hidden, V), logits, rtol=1e-5, atol=1e-5)


def _contents(path):
    """(metadata, {name: tensor bytes}) of a safetensors file (its header's key order is not fixed)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name).view(-1).view(torch.uint8).numpy().tobytes() for name in handle.keys()}
        return handle.metadata(), tensors


def test_killed_and_rerun_equals_an_uninterrupted_run(toy, caches, tmp_path):  # noqa: F811
    out = tmp_path / "c"
    _cache(toy, out)
    (out / "manifest.json").unlink()  # killed after shard 0, while writing shard 1 (a torn file)
    (out / "shard-00001.safetensors").write_bytes((out / "shard-00001.safetensors").read_bytes()[:200])
    (out / "shard-00002.safetensors").unlink()
    _cache(toy, out)
    for name in ("head.safetensors", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"):
        assert _contents(out / name) == _contents(caches / "fp32" / name), name
    ours, theirs = (json.loads((d / "manifest.json").read_text()) for d in (out, caches / "fp32"))
    assert {k: v for k, v in ours.items() if k != "created"} == {k: v for k, v in theirs.items() if k != "created"}


def test_the_run_logs_and_saves_its_teacher(toy, caches, tmp_path, capsys):  # noqa: F811
    args = kd_args(toy, tmp_path / "run", "train.max_steps=1", f"train.teacher_cache={caches / 'fp32'}")
    assert main(["train", *args]) == 0  # teacher.name_or_path set to the cache's own teacher: accepted
    assert f"of teacher {str(toy / 'teacher')!r}" in capsys.readouterr().out
    record = json.loads((tmp_path / "run" / "teacher.json").read_text())
    assert record["store"] == "hidden" and record["name_or_path"] == str(toy / "teacher") and record["weights_sha256"]


# ---------------------------------------------------------------- bad input: one line at the CLI


def _copy(caches, tmp_path):
    return shutil.copytree(caches / "fp32", tmp_path / "c")


def _train_args(toy, cache, tmp_path, *extra):  # noqa: F811
    return ["train", *kd_args(toy, tmp_path / "run", "train.max_steps=1", "teacher.name_or_path=",
                              f"train.teacher_cache={cache}", *extra)]


def test_a_different_teacher_is_refused_naming_both(toy, caches, tmp_path, capsys):  # noqa: F811
    args = _train_args(toy, caches / "fp32", tmp_path, f"teacher.name_or_path={toy / 'student'}")
    assert main(args) == 2
    line = one_line_error(capsys)
    assert str(toy / "student") in line and str(toy / "teacher") in line and "weights_sha256" in line


def test_a_wrong_head_is_refused(toy, caches, tmp_path, capsys):  # noqa: F811
    from safetensors.torch import save_file

    cache = _copy(caches, tmp_path)
    student = load_model(str(toy / "student"))
    save_file({"weight": student.get_output_embeddings().weight.detach().contiguous()}, str(cache / "head.safetensors"))
    assert main(_train_args(toy, cache, tmp_path)) == 2
    assert "head.safetensors" in one_line_error(capsys)


@pytest.mark.parametrize("damage, needle", [
    ("tokenizer", "different tokenizer"), ("data", "data.train_file"), ("json", "not valid JSON"),
    ("vocab_small", "V=50"), ("vocab_large", "V=200"), ("hidden_size", "d=32")])
def test_bad_caches_are_one_line(toy, caches, tmp_path, capsys, damage, needle):  # noqa: F811
    cache, extra = _copy(caches, tmp_path), []
    manifest_path = cache / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if damage == "tokenizer":
        manifest["tokenizer_sha256"] = "0" * 64
    elif damage == "data":
        other = tmp_path / "other.jsonl"
        other.write_text((toy / "train.jsonl").read_text().replace("cat", "dog"))
        extra = [f"data.train_file={other}"]
    elif damage.startswith("vocab"):
        manifest["vocab_size"] = 50 if damage == "vocab_small" else 200
    elif damage == "hidden_size":
        manifest["hidden_size"] = 32
    manifest_path.write_text("{not json" if damage == "json" else json.dumps(manifest))
    assert main(_train_args(toy, cache, tmp_path, *extra)) == 2
    line = one_line_error(capsys)
    assert needle in line, line
    if damage == "json":
        assert str(manifest_path) in line


def test_cache_out_that_is_a_file_is_one_line(toy, tmp_path, capsys):  # noqa: F811
    existing = tmp_path / "a-file"
    existing.write_text("keep me")
    code = main(["teacher", "cache", "--store", "hidden", "--out", str(existing), "--no-progress",
                 *kd_args(toy, tmp_path / "unused")])
    assert code == 2 and "is an existing file" in one_line_error(capsys) and existing.read_text() == "keep me"


@pytest.mark.parametrize("flags, needle", [(["--store", "topk"], "--top-k"), (["--top-k", "4", "--store", "hidden"], "--top-k"),
                                           (["--store", "hidden", "--dtype", "fp16"], "--dtype fp16")])
def test_store_flags_are_checked(toy, tmp_path, capsys, flags, needle):  # noqa: F811
    code = main(["teacher", "cache", "--out", str(tmp_path / "c"), "--no-progress", *flags, *kd_args(toy, tmp_path / "u")])
    assert code == 2 and needle in one_line_error(capsys)


def test_from_vllm_without_prompt_logprobs_names_file_and_line(toy, tmp_path, capsys):  # noqa: F811
    responses = tmp_path / "responses.jsonl"
    good = {"request": {"prompt": [1, 2, 3]}, "response": {"choices": [{"prompt_logprobs": [None, {}, {}]}]}}
    bad = {"request": {"prompt": [1, 2, 3]}, "response": {"choices": [{"text": ""}]}}
    responses.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    code = main(["teacher", "from-vllm", "--responses", str(responses), "--top-k", "2", "--out", str(tmp_path / "c"),
                 *kd_args(toy, tmp_path / "u")])
    assert code == 2 and f"{responses}:2" in one_line_error(capsys)


@pytest.mark.parametrize("extra", [(), ("loss.fused=true", "train.grad_accum=2")])
def test_bf16_autocast_training_from_the_cache_matches_the_live_teacher(toy, tmp_path, extra):  # noqa: F811
    """Cache and training under the same bf16 autocast (model.precision=bf16): the cached hidden states
    are the ones the live teacher computes there."""
    bf16 = ("model.precision=bf16", "train.max_steps=2", "train.seed=3", *extra)
    _cache(toy, tmp_path / "c", "model.precision=bf16")
    live = main(["train", *kd_args(toy, tmp_path / "live", *bf16)])
    cached = main(["train", *kd_args(toy, tmp_path / "cached", *bf16, f"train.teacher_cache={tmp_path / 'c'}")])
    assert live == cached == 0
    rows = [json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[-1]) for run in ("live", "cached")]
    assert rows[1]["loss"] == pytest.approx(rows[0]["loss"], rel=1e-3)
