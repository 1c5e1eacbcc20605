"""Unit tests of the loop's parts: lr schedules, step budget, adaptive threshold, replay buffer, data order."""

import json
import math

import pytest
import torch

from csdistill.config import TrainConfig
from csdistill.train.dataset import EpochSampler, rank_slice, split_records
from csdistill.train.replay import ReplayBuffer
from csdistill.train.schedules import AdaptiveThreshold, lr_multiplier, total_steps


def test_warmup_then_cosine_linear_constant():
    cos = lr_multiplier("cosine", warmup_steps=4, total_steps=14)
    assert [round(cos(s), 3) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]  # linear warm-up, never 0
    assert cos(4) == 1.0 and cos(9) == pytest.approx(0.5) and cos(14) == pytest.approx(0.0)
    lin = lr_multiplier("linear", 0, 10)
    assert lin(0) == 1.0 and lin(5) == pytest.approx(0.5) and lin(10) == 0.0
    assert lr_multiplier("constant", 2, 10)(7) == 1.0
    with pytest.raises(ValueError, match="train.scheduler"):
        lr_multiplier("step", 0, 10)


def test_total_steps_from_epochs_or_max_steps():
    t = TrainConfig(batch_size=4, grad_accum=2, epochs=3.0)
    assert total_steps(t, num_examples=20, world_size=1) == math.ceil(3 * 20 / 8)
    assert total_steps(t, num_examples=20, world_size=2) == math.ceil(3 * 20 / 16)
    t.max_steps = 5
    assert total_steps(t, 20, 1) == 5


def test_adaptive_threshold_rises_only_after_a_bad_validation():
    a = AdaptiveThreshold(increment=0.1, loss_rise=0.1)
    assert a.choose(0.0, step=0, total=10, buffer_full=False) == "dataset"  # a = 0: always the dataset
    a.update(2.0)  # first validation: the reference
    a.update(2.05)  # rose by < 0.1
    assert a.threshold == 0.0
    a.update(2.2)  # rose by >= 0.1 over the previous validation
    assert a.threshold == pytest.approx(0.1)
    for loss in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13):
        a.update(loss)
    assert a.threshold == 1.0  # capped
    a.threshold = 0.5
    assert a.choose(0.2, step=0, total=10, buffer_full=True) == "generate"  # u < a(1 - 0)
    assert a.choose(0.2, step=8, total=10, buffer_full=True) == "buffer"  # a(1 - 0.8) = 0.1 <= u < a
    assert a.choose(0.2, step=8, total=10, buffer_full=False) == "generate"  # buffer not full yet
    assert a.choose(0.7, step=8, total=10, buffer_full=False) == "dataset"
    b = AdaptiveThreshold(0.1, 0.1)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert (b.threshold, b.reference) == (a.threshold, a.reference)


def test_replay_buffer_fifo_sampling_and_state():
    buf = ReplayBuffer(capacity=3)
    buf.push([{"input_ids": [i, i], "labels": [-100, i]} for i in range(5)])
    assert len(buf) == 3 and buf.full
    assert [it["input_ids"][0] for it in buf.items] == [2, 3, 4]  # oldest dropped first
    draw = lambda: buf.sample(2, torch.Generator().manual_seed(7))  # noqa: E731
    assert draw() == draw()  # seeded
    assert len({it["input_ids"][0] for it in draw()}) == 2  # without replacement when possible
    assert len(buf.sample(5, torch.Generator().manual_seed(0))) == 5  # with replacement otherwise
    again = ReplayBuffer(1)
    again.load_state_dict(json.loads(json.dumps(buf.state_dict())))
    assert list(again.items) == list(buf.items) and again.capacity == 3
    with pytest.raises(ValueError, match="train.buffer_size"):
        ReplayBuffer(0)
    with pytest.raises(RuntimeError):
        ReplayBuffer(2).sample(1, torch.Generator())


def test_epoch_sampler_visits_every_example_once_per_epoch_and_resumes():
    sampler = EpochSampler(10, seed=3, stream="shuffle")
    first, second = sampler.take(10), sampler.take(10)
    assert sorted(first) == list(range(10)) == sorted(second) and first != second  # reshuffled per epoch
    a = EpochSampler(10, 3, "shuffle")
    stream = a.take(7) + a.take(7)  # crosses the epoch boundary
    assert stream == first + second[:4]
    b = EpochSampler(10, 3, "shuffle")
    b.take(7)
    c = EpochSampler(10, 3, "shuffle")
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    assert c.take(7) == b.take(7)
    with pytest.raises(ValueError, match="same data"):
        EpochSampler(11, 3, "shuffle").load_state_dict(b.state_dict())


def test_processes_split_each_global_batch():
    global_batch = EpochSampler(12, 0, "shuffle").take(8)
    parts = [rank_slice(global_batch, 4, r) for r in range(2)]
    assert parts[0] + parts[1] == global_batch


def test_validation_split_is_seeded_and_disjoint():
    records = [{"instruction": str(i)} for i in range(40)]
    train, val = split_records(records, 0.1, seed=1)
    assert len(val) == 4 and len(train) == 36
    assert split_records(records, 0.1, seed=1) == (train, val)
    assert not {r["instruction"] for r in val} & {r["instruction"] for r in train}
    assert split_records(records[:1], 0.5, 0) == (records[:1], [])
