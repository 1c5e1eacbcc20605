"""train.cache_teacher_logits: the cache returns exactly what the teacher computes, keyed per
sequence whatever its batch or padding, and a cached kd run trains like an uncached one."""

import pytest
import torch

from csdistill.config import ConfigError, load_config
from csdistill.data.collate import collate
from csdistill.train.teacher_cache import TeacherLogitCache
from test_train import final_weights, kd_args, max_diff, toy  # noqa: F401  (fixture)
from csdistill.train import train


def _example(ids: list[int], prompt: int) -> dict:
    return {"input_ids": ids, "labels": [-100] * prompt + ids[prompt:], "attention_mask": [1] * len(ids)}


def test_cache_rows_follow_sequences_across_batches_and_padding():
    torch.manual_seed(0)
    a, b, c = _example([5, 6, 7, 8, 9], 2), _example([5, 6, 7], 1), _example([9, 8, 7, 6, 5, 4, 3], 3)
    table = {}  # a fake "teacher": logits depend only on (sequence, position)

    def fake_logits(batch, valid):
        B, T = batch["input_ids"].shape
        out = torch.zeros(B, T, 4)
        for i in range(B):
            key = tuple(batch["input_ids"][i, : int(batch["attention_mask"][i].sum())].tolist())
            table.setdefault(key, torch.randn(len(key), 4))
            out[i, : len(key)] = table[key]
        return out[valid]

    cache = TeacherLogitCache()
    calls = []
    for group in ([a, b], [c, a], [b, c, a], [a, b]):
        batch = {k: torch.as_tensor(v) for k, v in collate(group, pad_token_id=0).items()}
        shifted = torch.full_like(batch["labels"], -100)
        shifted[:, :-1] = batch["labels"][:, 1:]
        valid = shifted != -100
        expected = fake_logits(batch, valid)
        got = cache.rows(batch, valid, lambda: (calls.append(1), fake_logits(batch, valid))[1])
        assert torch.equal(got, expected)
    assert len(calls) == 2  # [a, b] and [c, a] miss; every later batch is served from the cache
    assert len(cache) == 3 and cache.hits == 5


def test_cached_kd_run_matches_uncached(toy, tmp_path):  # noqa: F811
    steps = ["train.max_steps=24", "train.batch_size=8", "train.seed=3"]  # 40 records: ~5 epochs
    plain = train(load_config(None, kd_args(toy, tmp_path / "plain", *steps)))
    cached = train(load_config(None, kd_args(toy, tmp_path / "cached", *steps, "train.cache_teacher_logits=true")))
    assert max_diff(final_weights(tmp_path / "plain"), final_weights(tmp_path / "cached")) < 1e-5
    assert abs(plain.loss - cached.loss) < 1e-5


@pytest.mark.parametrize("extra, needle", [(["train.mode=imitkd"], "train.mode='imitkd'"),
                                           (["loss.fused=true"], "loss.fused")])
def test_cache_rejects_modes_that_cannot_use_it(toy, tmp_path, extra, needle):  # noqa: F811
    with pytest.raises(ConfigError, match="cache_teacher_logits") as err:
        load_config(None, kd_args(toy, tmp_path, "train.cache_teacher_logits=true", *extra))
    assert needle in str(err.value)
