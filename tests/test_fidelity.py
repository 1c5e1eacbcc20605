"""Teacher-forced fidelity, NLL and calibration on tiny models."""

import pytest
import torch

from csdistill.evaluate.fidelity import teacher_forced_batches, teacher_forced_metrics
from csdistill.losses.reduce import IGNORE_INDEX, shift_labels
from helpers import tiny_model, tiny_tokenizer

RECORDS = [
    {"instruction": "rev: cat dog", "input": "", "response": "dog cat"},
    {"instruction": "sort: dcba", "input": "", "response": "abcd"},
    {"instruction": "say something longer", "input": "with an input", "response": "a much longer reference response"},
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _batches(tok, batch_size):
    return list(teacher_forced_batches(RECORDS, tok, "alpaca", 64, 128, batch_size))


def test_model_against_itself_is_zero_divergence_and_full_agreement(tok):
    model = tiny_model(seed=0)
    fid, cal = teacher_forced_metrics(model, _batches(tok, 2), teacher=model)
    assert fid["forward_kl"] == pytest.approx(0.0, abs=1e-6)
    assert fid["reverse_kl"] == pytest.approx(0.0, abs=1e-6)
    assert fid["csd_ss"] == pytest.approx(0.0, abs=1e-6)
    assert fid["top1_agreement"] == 1.0
    assert 0.0 <= cal["ece"] <= 1.0 and cal["n_bins"] == 15 and cal["n_tokens"] == fid["n_tokens"] > 0


def test_nll_matches_hf_loss_and_is_batch_size_invariant(tok):
    model = tiny_model(seed=0)
    batch = _batches(tok, 3)[0]
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    targets = shift_labels(batch["labels"])
    mask = targets != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(out.logits[mask].float(), targets[mask])
    fid_all, cal_all = teacher_forced_metrics(model, [batch])
    assert fid_all["student_nll"] == pytest.approx(float(expected), rel=1e-5)
    assert "forward_kl" not in fid_all  # no teacher, no teacher metrics
    fid_one, cal_one = teacher_forced_metrics(model, _batches(tok, 1))
    assert fid_one["student_nll"] == pytest.approx(fid_all["student_nll"], rel=1e-5)
    assert cal_one["ece"] == pytest.approx(cal_all["ece"], abs=1e-6)


def test_forward_kl_against_direct_reference_and_padded_teacher_vocab(tok):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1, vocab_size=len(tok) + 7)  # padded teacher head
    batches = _batches(tok, 2)
    fid, _ = teacher_forced_metrics(student, batches, teacher=teacher)
    assert fid["shared_vocab"] == student.get_output_embeddings().weight.shape[0]
    total, count = 0.0, 0
    for batch in batches:
        targets = shift_labels(batch["labels"])
        mask = targets != IGNORE_INDEX
        with torch.no_grad():
            s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[mask]
            t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[mask]
        v = fid["shared_vocab"]
        log_p, log_q = t[:, :v].log_softmax(-1), s[:, :v].log_softmax(-1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
        count += int(mask.sum())
    assert fid["forward_kl"] == pytest.approx(total / count, rel=1e-4)
    assert fid["forward_kl"] > 0 and fid["csd_ss"] > 0 and 0 <= fid["top1_agreement"] <= 1


def test_training_mode_is_restored(tok):
    model = tiny_model(seed=0)
    model.train()
    teacher_forced_metrics(model, _batches(tok, 3))
    assert model.training


def test_bf16_forwards_stay_near_the_fp32_metrics(tok):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    fp32, _ = teacher_forced_metrics(student, _batches(tok, 2), teacher=teacher)
    bf16, _ = teacher_forced_metrics(student, _batches(tok, 2), teacher=teacher, precision="bf16")
    assert bf16["n_tokens"] == fp32["n_tokens"]
    for key in ("student_nll", "forward_kl", "reverse_kl"):
        assert bf16[key] == pytest.approx(fp32[key], rel=3e-2), key
