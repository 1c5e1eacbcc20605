"""Fused LM head + distillation loss, chunked over valid positions (Liger-style mechanics).

The engine holds no formula: it projects hidden states to logits one chunk of positions at a
time, calls the *same* per-position loss (``get_loss(name)`` or any callable), and immediately
turns the chunk's logits gradient into gradients of the hidden states, head weight and bias.
Only those gradients are kept; backward just scales them by ``grad_output``. At most one chunk
of (positions × V) logits exists per model at any time — never (N × V).

Memory per chunk ≈ 4 float32 (rows × V) tensors (student and teacher logits plus two loss
temporaries), on top of the float32 weight-gradient accumulator (V × H). The default chunk is
``DEFAULT_CHUNK_ELEMENTS // V`` rows (48 MiB of float32 logits per tensor; 96 rows at
V = 131072, 82 at 151936), measured on a 2-core CPU (benchmarks/RESULTS.md): 128 rows put the
fused peak at ~0.128 of the full-logit peak (target 1/8), while each halving of the rows costs
~10-15 % time, because the per-chunk head matmuls repack the (V × H) weight.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from csdistill.losses.reduce import _as_count, valid_mask
from csdistill.losses.registry import get_loss

DEFAULT_CHUNK_ELEMENTS = 12 * 2**20  # logits entries per chunk (rows × V); 48 MiB in float32


def default_chunk_size(vocab_size: int) -> int:
    """Rows (positions) per chunk so one chunk of logits holds ~DEFAULT_CHUNK_ELEMENTS entries."""
    return max(1, DEFAULT_CHUNK_ELEMENTS // vocab_size)


def fused_linear_distill(student_hidden, student_weight, teacher_hidden, teacher_weight, labels,
                         loss="csd", chunk_size=None, student_bias=None, teacher_bias=None,
                         num_valid_tokens=None, **loss_params) -> torch.Tensor:
    """Σ_valid loss(h_s W_sᵀ + b_s, h_t W_tᵀ + b_t) / n — a float32 scalar, chunked.

    student_hidden (..., H_s), teacher_hidden (..., H_t); student_weight (V_s, H_s), teacher_weight
    (V_t, H_t) like ``nn.Linear``; labels (...) already aligned to positions (shift_labels): only
    positions with label != IGNORE_INDEX are projected. n = num_valid_tokens (global count) if
    given, else the local count; 0 when nothing is valid. loss: a registry name (with
    ``**loss_params``) or a per-position callable. A padded teacher vocabulary (V_t > V_s) is
    compared on the shared ids [0, V_s). Gradients reach student_hidden, student_weight and
    student_bias (in their dtypes; accumulated in float32); the teacher runs without grad.
    bf16 inputs give bf16 logits per chunk, as the unfused model would; loss maths is float32.
    Under ``torch.autocast`` the head matmuls run in the autocast dtype, as ``F.linear`` would
    there (so fp32 hidden/weights give bf16 logits under bf16 autocast); the rest runs with
    autocast off, and the gradients still come back in each input's own dtype.
    """
    loss_fn = _resolve_loss(loss, loss_params)
    _check_inputs(student_hidden, student_weight, teacher_hidden, teacher_weight, labels)
    vocab = student_weight.shape[0]
    teacher_weight, teacher_bias = _shared_vocab(teacher_weight, teacher_bias, vocab)
    _check_bias(student_bias, vocab, "student_bias")
    rows = default_chunk_size(vocab) if chunk_size is None else chunk_size
    if not isinstance(rows, int) or rows < 1:
        raise ValueError(f"chunk_size={chunk_size!r} is invalid; pass a positive int of positions "
                         "per chunk, or None for the default.")
    mask = valid_mask(labels)  # (...)
    hidden = student_hidden[mask]  # (N, H_s): differentiable gather of the valid positions
    teacher_dtype = compute_dtype(teacher_hidden)  # the teacher has no grad: cast it up front
    teacher = teacher_hidden.detach()[mask].to(teacher_dtype)  # (N, H_t)
    count = mask.sum() if num_valid_tokens is None else _as_count(num_valid_tokens)
    denominator = max(int(count), 1)
    with torch.autocast(student_hidden.device.type, enabled=False):  # dtypes are chosen explicitly
        return _FusedLinearDistill.apply(hidden, student_weight, student_bias, teacher,
                                         _cast(teacher_weight.detach(), teacher_dtype),
                                         _cast(_detach(teacher_bias), teacher_dtype), loss_fn, rows,
                                         denominator, compute_dtype(student_hidden))


# ---- sparse teacher (issue 9): student side chunked, teacher rows given (e.g. a top-k cache) ----
def fused_linear_sparse_distill(student_hidden, student_weight, teacher_rows, labels, loss_fn,
                                chunk_size=None, student_bias=None, num_valid_tokens=None) -> torch.Tensor:
    """Σ_valid loss_fn(h_s W_sᵀ + b_s, teacher_rows[i]) / n — the fused engine with no teacher head.

    teacher_rows: one row per *valid* position (row-major order of labels != IGNORE_INDEX), sliced
    per chunk with ``teacher_rows[a:b]`` (e.g. ``losses.sparse.SparseTeacher``); loss_fn(student
    chunk logits (n, V), teacher_rows[a:b]) -> (n,). Otherwise as :func:`fused_linear_distill`."""
    vocab = student_weight.shape[0]
    _check_bias(student_bias, vocab, "student_bias")
    rows = default_chunk_size(vocab) if chunk_size is None else chunk_size
    mask = valid_mask(labels)  # (...)
    hidden = student_hidden[mask]  # (N, H_s)
    if len(teacher_rows) != hidden.shape[0]:
        raise ValueError(f"{len(teacher_rows)} teacher rows for {hidden.shape[0]} valid positions; the "
                         "teacher rows must cover exactly the positions with a label.")
    count = mask.sum() if num_valid_tokens is None else _as_count(num_valid_tokens)
    with torch.autocast(student_hidden.device.type, enabled=False):
        return _FusedLinearDistill.apply(hidden, student_weight, student_bias, teacher_rows, None, None,
                                         loss_fn, rows, max(int(count), 1), compute_dtype(student_hidden))
# ---- end sparse teacher ----


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear`` would compute in for `tensor` here: the autocast dtype when autocast
    is on for its device (float64 is never cast, as in autocast), else the tensor's own dtype."""
    device = tensor.device.type
    if tensor.dtype != torch.float64 and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return tensor.dtype


class _FusedLinearDistill(torch.autograd.Function):
    """Forward computes the loss and all student gradients chunk by chunk; backward scales."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, loss_fn,
                rows, denominator, dtype):
        """dtype: the student head's compute dtype; the teacher arrives already in its own."""
        wants = ctx.needs_input_grad[:3]  # (hidden, weight, bias)
        grads = _GradBuffers(hidden, weight, bias, wants)
        weight, bias = _cast(weight, dtype), _cast(bias, dtype)  # (V, H), (V,): one copy, as autocast
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            stop = min(start + rows, hidden.shape[0])
            hidden_chunk = hidden[start:stop].to(dtype)  # (n, H)
            chunk_sum, logits_grad = _chunk_loss_and_grad(
                loss_fn, (hidden_chunk, weight, bias),
                (teacher_hidden[start:stop], teacher_weight, teacher_bias), any(wants))
            total += chunk_sum
            if logits_grad is not None:
                grads.add_chunk(logits_grad, hidden_chunk, weight, start, stop)
            del logits_grad  # else it lives on through the next chunk's loss: one chunk extra
        ctx.save_for_backward(*grads.finish(denominator))
        return total / denominator

    @staticmethod
    def backward(ctx, grad_output):
        unit = bool(grad_output == 1)  # the usual case: hand the stored gradients over as they are
        scaled = [None if g is None else (g if unit else g * grad_output.to(g.dtype))
                  for g in ctx.saved_tensors]
        return scaled[0], scaled[1], scaled[2], None, None, None, None, None, None, None


def _chunk_loss_and_grad(loss_fn, student_head, teacher_head, need_grad: bool):
    """Σ loss over one chunk (float32 scalar) and ∂Σ/∂student_logits (n, V) or None.

    student_head / teacher_head: (hidden chunk (n, H), weight (V, H), bias (V,) or None). The
    logits live only in this frame, so the teacher's are freed before the backward pass.
    """
    student_logits = F.linear(*student_head).requires_grad_(need_grad)  # (n, V)
    teacher_logits = teacher_head[0] if teacher_head[1] is None else F.linear(*teacher_head)  # (n, V) or given rows
    with torch.enable_grad():
        per_position = loss_fn(student_logits, teacher_logits)  # (n,)
        if tuple(per_position.shape) != tuple(student_logits.shape[:-1]):
            raise ValueError(f"loss callable returned shape {tuple(per_position.shape)}; a "
                             f"per-position loss must return {tuple(student_logits.shape[:-1])}.")
        chunk_sum = per_position.float().sum()
    del teacher_logits, per_position
    if not need_grad:
        return chunk_sum.detach(), None
    (logits_grad,) = torch.autograd.grad(chunk_sum, student_logits)
    return chunk_sum.detach(), logits_grad


class _GradBuffers:
    """Student gradients, filled chunk by chunk: hidden rows written once, weight/bias summed."""

    def __init__(self, hidden, weight, bias, wants):
        self.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        self.hidden = torch.zeros_like(hidden) if wants[0] else None  # (N, H)
        f32 = dict(dtype=torch.float32, device=weight.device)
        self.weight = torch.zeros(weight.shape, **f32) if wants[1] else None  # (V, H)
        self.bias = torch.zeros(weight.shape[0], **f32) if wants[2] else None  # (V,)

    def add_chunk(self, logits_grad, hidden_chunk, weight, start: int, stop: int) -> None:
        """logits_grad (n, V), hidden_chunk (n, H), weight (V, H), all in the compute dtype: the
        nn.Linear backward for one chunk."""
        if self.hidden is not None:
            self.hidden[start:stop] = torch.mm(logits_grad, weight)  # (n, H), cast to the buffer's dtype
        if self.weight is not None:
            if logits_grad.dtype == torch.float32 and hidden_chunk.dtype == torch.float32:
                self.weight.addmm_(logits_grad.t(), hidden_chunk)  # (V, H), in place
            else:  # low precision: accumulate the chunk's product in float32
                self.weight.addmm_(logits_grad.t().float(), hidden_chunk.float())
        if self.bias is not None:
            self.bias += logits_grad.float().sum(0)

    def finish(self, denominator: int):
        """Divide once by the token count and cast back to the input dtypes."""
        out = []
        for grad, dtype in zip((self.hidden, self.weight, self.bias), self.dtypes):
            out.append(None if grad is None else grad.div_(denominator).to(dtype))
        return out


def _detach(tensor):
    return None if tensor is None else tensor.detach()


def _cast(tensor, dtype: torch.dtype):
    return None if tensor is None else tensor.to(dtype)


def _resolve_loss(loss, loss_params: dict):
    if isinstance(loss, str):
        return get_loss(loss, **loss_params)
    if callable(loss):
        if loss_params:
            raise ValueError(f"loss is a callable, so loss_params {sorted(loss_params)} cannot be "
                             "applied; bind them with functools.partial or pass a loss name.")
        return loss
    raise ValueError(f"loss={loss!r} must be a registry name (see LOSS_NAMES) or a callable.")


def _check_inputs(student_hidden, student_weight, teacher_hidden, teacher_weight, labels) -> None:
    """Shapes: hidden (..., H) per model matching labels (...), weights (V, H); one compute dtype per model."""
    positions = tuple(labels.shape)
    for who, hidden, weight in (("student", student_hidden, student_weight),
                                ("teacher", teacher_hidden, teacher_weight)):
        if tuple(hidden.shape[:-1]) != positions:
            raise ValueError(f"{who}_hidden shape {tuple(hidden.shape)} does not match labels "
                             f"shape {positions}; expected hidden (..., H) over the same "
                             "positions.")
        if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
            raise ValueError(f"{who}_weight shape {tuple(weight.shape)} does not fit {who}_hidden "
                             f"size H={hidden.shape[-1]}; expected (V, {hidden.shape[-1]}).")
        if compute_dtype(weight) != compute_dtype(hidden):  # autocast would unify them, as in F.linear
            raise ValueError(f"{who}_weight dtype {weight.dtype} != {who}_hidden dtype "
                             f"{hidden.dtype}; cast both to one dtype.")


def _shared_vocab(teacher_weight, teacher_bias, student_vocab: int):
    """Keep the teacher head rows [0, V_s) (padded vocab); a smaller teacher vocab is an error."""
    _check_bias(teacher_bias, teacher_weight.shape[0], "teacher_bias")
    if teacher_weight.shape[0] < student_vocab:
        raise ValueError(
            f"vocab mismatch: teacher_weight has V={teacher_weight.shape[0]} rows, student_weight "
            f"V={student_vocab}; a teacher vocabulary smaller than the student's means different "
            "tokenizers, which is not supported.")
    bias = None if teacher_bias is None else teacher_bias[:student_vocab]
    return teacher_weight[:student_vocab], bias


def _check_bias(bias, vocab: int, name: str) -> None:
    if bias is not None and tuple(bias.shape) != (vocab,):
        raise ValueError(f"{name} shape {tuple(bias.shape)} != ({vocab},); expected one bias per "
                         "vocabulary entry.")
