"""Teacher-forced metrics on reference responses: teacher fidelity, student NLL and calibration.

For each position that predicts a response token (labels shifted: logit i predicts token i+1):
- forward KL(p_teacher ‖ q_student), reverse KL(q_student ‖ p_teacher), CSD with (S, S) weights —
  the per-position functions of `csdistill.losses`, on the shared vocabulary range;
- top-1 agreement: argmax student == argmax teacher;
- student NLL: −log q_student(reference token);
- calibration: the student's top-1 probability vs whether the top-1 token is the reference token.

Each batch contributes sums over its valid positions; the sums are divided once by the total
number of valid tokens (the reduction rule of method.md §1), so batch size does not matter.
Only valid positions are gathered before the softmax: (N_valid, V), never (B, T, V) in float32.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from csdistill.evaluate.metrics import calibration_histogram, expected_calibration_error


def teacher_forced_batches(records: Sequence[dict], tokenizer, template: str, max_prompt_length: int,
                           max_length: int, batch_size: int) -> Iterator[dict]:
    """Collated batches {input_ids, attention_mask, labels} (B, T) of prompt + reference response."""
    from csdistill.data import collate, encode_example
    from csdistill.data.collate import warn_unknown_tokens

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = [encode_example(r, tokenizer, template, max_prompt_length, max_length) for r in records]
    warn_unknown_tokens([ex["input_ids"] for ex in examples], records, tokenizer, "evaluation set (teacher-forced)")
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start:start + batch_size], pad_id)


def _valid_logits(model, batch: dict, mask: torch.Tensor, vocab_size: int, precision: str = "fp32") -> torch.Tensor:
    """The model's float32 logits at the masked positions, shared vocabulary only -> (N, V); the head runs on
    those positions alone (not the prompt's). precision bf16: the model runs under bf16 autocast."""
    from csdistill.models import autocast_for, response_logits

    device = next(model.parameters()).device
    moved = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
    with autocast_for(precision, device)():
        logits = response_logits(model, moved, mask.to(device))  # (N, V_model)
    return logits[:, :vocab_size].float().to(mask.device)  # (N, V)


def _empty_sums(n_bins: int) -> dict:
    return {"n_tokens": 0, "nll": 0.0, "forward_kl": 0.0, "reverse_kl": 0.0, "csd_ss": 0.0, "agree": 0.0,
            "hist": torch.zeros(3, n_bins, dtype=torch.float64)}


@torch.no_grad()
def batch_sums(student, batch: dict, vocab_size: int, teacher=None, n_bins: int = 15, precision: str = "fp32") -> dict:
    """Sums over the batch's valid positions of every teacher-forced metric (teacher ones if teacher); the
    models' forwards under bf16 autocast when precision is bf16, the metric maths in float32."""
    from csdistill.losses import cross_entropy, csd, forward_kl, reverse_kl
    from csdistill.losses.reduce import IGNORE_INDEX, shift_labels

    targets_all = shift_labels(batch["labels"])  # (B, T): targets_all[:, i] = labels[:, i + 1]
    mask = targets_all != IGNORE_INDEX  # (B, T)
    sums = _empty_sums(n_bins)
    if not mask.any():
        return sums
    targets = targets_all[mask]  # (N,)
    assert int(targets.max()) < vocab_size, "reference token outside the shared vocabulary"
    s_logits = _valid_logits(student, batch, mask, vocab_size, precision)  # (N, V)
    log_q = torch.log_softmax(s_logits, dim=-1)
    confidence, top1 = log_q.max(dim=-1)  # (N,), (N,)
    sums["n_tokens"] = int(targets.numel())
    sums["nll"] = float(cross_entropy(s_logits, targets).sum())
    sums["hist"] = calibration_histogram(confidence.exp(), top1 == targets, n_bins)
    if teacher is not None:
        t_logits = _valid_logits(teacher, batch, mask, vocab_size, precision)  # (N, V)
        sums["forward_kl"] = float(forward_kl(s_logits, t_logits).sum())
        sums["reverse_kl"] = float(reverse_kl(s_logits, t_logits).sum())
        sums["csd_ss"] = float(csd(s_logits, t_logits, weighting="SS").sum())
        sums["agree"] = float((top1 == t_logits.argmax(dim=-1)).sum())
    return sums


def _add(total: dict, part: dict) -> dict:
    return {k: total[k] + part[k] for k in total}


def finalize(sums: dict, has_teacher: bool, vocab_size: int) -> tuple[dict, dict]:
    """(fidelity, calibration) dicts: token means of the sums, ECE of the histogram."""
    n = max(sums["n_tokens"], 1)
    fidelity = {"student_nll": sums["nll"] / n, "n_tokens": sums["n_tokens"], "shared_vocab": vocab_size}
    if has_teacher:
        fidelity.update({"forward_kl": sums["forward_kl"] / n, "reverse_kl": sums["reverse_kl"] / n,
                         "csd_ss": sums["csd_ss"] / n, "top1_agreement": sums["agree"] / n})
    counts, conf_sum, correct_sum = sums["hist"]
    calibration = {"ece": expected_calibration_error(sums["hist"]), "n_bins": int(counts.numel()),
                   "accuracy": float(correct_sum.sum()) / n, "confidence": float(conf_sum.sum()) / n,
                   "n_tokens": sums["n_tokens"]}
    return fidelity, calibration


def teacher_forced_metrics(student, batches, teacher=None, vocab_size: int | None = None, n_bins: int = 15,
                           progress: bool = False, precision: str = "fp32") -> tuple[dict, dict]:
    """(fidelity, calibration) over all batches; vocab_size None = the smaller of the two heads.

    fidelity: {student_nll, n_tokens, shared_vocab[, forward_kl, reverse_kl, csd_ss, top1_agreement]}
    calibration: {ece, n_bins, accuracy, confidence, n_tokens}
    """
    from tqdm.auto import tqdm

    from csdistill.models import output_vocab_size

    if vocab_size is None:
        sizes = [output_vocab_size(student)] + ([output_vocab_size(teacher)] if teacher is not None else [])
        vocab_size = min(sizes)
    models = [m for m in (student, teacher) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        total = _empty_sums(n_bins)
        for batch in tqdm(batches, desc="teacher forcing", disable=not progress, leave=False):
            total = _add(total, batch_sums(student, batch, vocab_size, teacher, n_bins, precision))
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return finalize(total, teacher is not None, vocab_size)
