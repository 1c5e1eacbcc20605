"""Fused LM head + distillation loss, chunked over valid positions (Liger-style mechanics).

The engine holds no formula: it projects hidden states to logits one chunk of positions at a
time, calls the *same* per-position maths as the loss functions, and immediately turns the
chunk's logits gradient into gradients of the hidden states, head weight and bias. Only those
gradients are kept; backward just scales them by ``grad_output``. At most one chunk of
(positions × V) logits exists per model at any time — never (N × V).

Per chunk, a registry loss runs its closed-form kernel (``registry.get_loss_kernel``: loss and
exact logits gradient in one pass, the kernel behind the public function), not autograd. With
compilation on, that kernel (plus the cast of the gradient to the compute dtype and a finiteness
sum) is one ``torch.compile`` graph — inductor fuses its elementwise passes (C++/OpenMP on CPU,
Triton on CUDA); the head matmuls stay outside it (BLAS either way). Compiled chunks are
zero-padded to a power of two >= ROW_QUANTUM rows, capped at the chunk size, so the last, shorter
chunk reuses the full chunks' graph and a loss sees at most ~5 shapes over a whole run. ``compile="auto"`` compiles chunks of >= AUTO_COMPILE_MIN_ELEMENTS logits
only (tiny test models stay eager); a compiler failure warns once and runs eagerly. A per-position
callable is differentiated by autograd per chunk and never compiled.

Precision: the head matmuls run in the compute dtype (bf16 under bf16 autocast, with float32
accumulation inside BLAS); the loss maths is float32; the weight-gradient matmul runs in the
compute dtype, block by block, summed into a float32 buffer; gradients return in input dtypes.

Chunk-size rule: rows = DEFAULT_CHUNK_ELEMENTS // V (~20M logits, 80 MiB per float32 tensor),
rounded down to a multiple of 64 and clamped to [64, 1024]: 128 rows at V = 131072 and 151936,
384 at 49152, 1024 at V <= 20480. Memory per chunk ≈ 3-4 (rows × V) float32 tensors (student and
teacher logits, the gradient, a loss temporary) on top of the float32 (V × H) weight-gradient
buffer. Small chunks are slow because every per-chunk head matmul repacks the (V × H) weight;
large ones cost memory. Measured (fused JSD, compiled, V = 151936, H = 512, N = 512, fp32, one
core, one thread, load average ~10 on the shared 2-core CPU, so ±20 %): 64 rows 22.0 s/step,
128 rows 15.8 s, 256 rows 17.1 s, 512 rows 34.6 s — no gain above 128 rows while the chunk memory keeps
doubling; at N = 2048 the 128-row chunks keep the fused peak under 1/8 of a full-logit FKL's.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from csdistill.losses.checks import check_logits
from csdistill.losses.reduce import _as_count, valid_mask
from csdistill.losses.registry import LOSS_NAMES, get_loss_kernel
from csdistill.errors import UserError

DEFAULT_CHUNK_ELEMENTS = 20 * 2**20  # logits entries per chunk (rows × V); 80 MiB in float32
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 64, 1024  # see the chunk-size rule in the module docstring
ROW_QUANTUM = 64  # the chunk-size rule's granularity and the smallest padded compiled chunk
AUTO_COMPILE_MIN_ELEMENTS = 2**20  # compile="auto" compiles only chunks of at least this many logits
COMPILE_MODES = ("auto", "true", "false")
_WEIGHT_GRAD_BLOCK = 32768  # vocab rows per low-precision weight-gradient matmul (bounds its temp)


def default_chunk_size(vocab_size: int) -> int:
    """Rows (positions) per chunk: ~DEFAULT_CHUNK_ELEMENTS logits, clamped to [64, 1024] and
    rounded down to a multiple of ROW_QUANTUM (see the module docstring for the measurements)."""
    rows = DEFAULT_CHUNK_ELEMENTS // vocab_size
    return max(MIN_CHUNK_ROWS, min(MAX_CHUNK_ROWS, rows // ROW_QUANTUM * ROW_QUANTUM))


def fused_linear_distill(student_hidden, student_weight, teacher_hidden, teacher_weight, labels,
                         loss="csd", chunk_size=None, student_bias=None, teacher_bias=None,
                         num_valid_tokens=None, compile="auto", **loss_params) -> torch.Tensor:
    """Σ_valid loss(h_s W_sᵀ + b_s, h_t W_tᵀ + b_t) / n — a float32 scalar, chunked.

    student_hidden (..., H_s), teacher_hidden (..., H_t); student_weight (V_s, H_s), teacher_weight
    (V_t, H_t) like ``nn.Linear``; labels (...) already aligned to positions (shift_labels): only
    positions with label != IGNORE_INDEX are projected. n = num_valid_tokens (global count) if
    given, else the local count; 0 when nothing is valid. loss: a registry name (with
    ``**loss_params``; its closed-form kernel runs per chunk, compiled or eager) or a per-position
    callable (differentiated by autograd per chunk, never compiled). compile: "auto" (compile when
    a chunk holds >= AUTO_COMPILE_MIN_ELEMENTS logits), "true", "false" (or a bool); a failed
    compilation falls back to eager with one warning. A padded teacher vocabulary (V_t > V_s) is
    compared on the shared ids [0, V_s). Gradients reach student_hidden, student_weight and
    student_bias (in their dtypes; accumulated in float32); the teacher runs without grad.
    bf16 inputs give bf16 logits per chunk, as the unfused model would; loss maths is float32.
    Under ``torch.autocast`` the head matmuls run in the autocast dtype, as ``F.linear`` would
    there (so fp32 hidden/weights give bf16 logits under bf16 autocast); the rest runs with
    autocast off, and the gradients still come back in each input's own dtype.
    """
    body = _resolve_loss(loss, loss_params, _compile_mode(compile))
    _check_inputs(student_hidden, student_weight, teacher_hidden, teacher_weight, labels)
    vocab = student_weight.shape[0]
    teacher_weight, teacher_bias = _shared_vocab(teacher_weight, teacher_bias, vocab)
    _check_bias(student_bias, vocab, "student_bias")
    rows = default_chunk_size(vocab) if chunk_size is None else chunk_size
    if not isinstance(rows, int) or rows < 1:
        raise UserError(f"chunk_size={chunk_size!r} is invalid; pass a positive int of positions "
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
                                         _cast(_detach(teacher_bias), teacher_dtype), body, rows,
                                         denominator, compute_dtype(student_hidden))


# ---- sparse teacher: student side chunked, teacher rows given (e.g. a top-k cache) ----
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
        raise UserError(f"{len(teacher_rows)} teacher rows for {hidden.shape[0]} valid positions; the "
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
    def forward(ctx, hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, body,
                rows, denominator, dtype):
        """dtype: the student head's compute dtype; the teacher arrives already in its own.
        teacher_weight None: teacher_hidden holds the teacher's rows themselves (sliceable)."""
        if not isinstance(body, (_KernelBody, _AutogradBody)):  # a bare per-position callable
            body = _AutogradBody(body)
        wants = ctx.needs_input_grad[:3]  # (hidden, weight, bias)
        grads = _GradBuffers(hidden, weight, bias, wants)
        weight, bias = _cast(weight, dtype), _cast(bias, dtype)  # (V, H), (V,): one copy, as autocast
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            stop = min(start + rows, hidden.shape[0])
            hidden_chunk = hidden[start:stop].to(dtype)  # (n, H)
            student_chunk, teacher_chunk = hidden_chunk, teacher_hidden[start:stop]
            padded = body.padded_rows(stop - start, rows, weight.shape[0])
            if padded != stop - start:  # compiled: zero rows up to one of few shapes
                student_chunk, teacher_chunk = _pad_rows(student_chunk, padded), _pad_rows(teacher_chunk, padded)
            chunk_sum, logits_grad = body((student_chunk, weight, bias),
                                          (teacher_chunk, teacher_weight, teacher_bias),
                                          stop - start, any(wants))
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


def _pad_rows(rows: torch.Tensor, padded: int) -> torch.Tensor:
    """rows (n, H) with zero rows appended up to `padded` (compiled chunks keep one shape)."""
    return F.pad(rows, (0, 0, 0, padded - rows.shape[0]))


def _head_logits(head) -> torch.Tensor:
    """(n, V) logits of (hidden (n, H), weight (V, H), bias); weight None: the rows themselves."""
    return head[0] if head[1] is None else F.linear(*head)


class _AutogradBody:
    """A per-position callable loss, differentiated by autograd chunk by chunk (never compiled)."""

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn

    def padded_rows(self, n: int, rows: int, vocab: int) -> int:
        return n

    def __call__(self, student_head, teacher_head, n: int, need_grad: bool):
        """Σ loss over one chunk (float32 scalar) and ∂Σ/∂student_logits (n, V) or None.
        The logits live only in this frame, so the teacher's are freed before the backward."""
        student_logits = _head_logits(student_head).requires_grad_(need_grad)  # (n, V)
        teacher_logits = _head_logits(teacher_head)  # (n, V) or given rows
        with torch.enable_grad():
            per_position = self.loss_fn(student_logits, teacher_logits)  # (n,)
            if tuple(per_position.shape) != tuple(student_logits.shape[:-1]):
                raise UserError(f"loss callable returned shape {tuple(per_position.shape)}; a "
                                 "per-position loss must return "
                                 f"{tuple(student_logits.shape[:-1])}.")
            chunk_sum = per_position.float().sum()
        del teacher_logits, per_position
        if not need_grad:
            return chunk_sum.detach(), None
        (logits_grad,) = torch.autograd.grad(chunk_sum, student_logits)
        return chunk_sum.detach(), logits_grad


class _KernelBody:
    """A registry loss's closed-form kernel per chunk: one compiled graph for the loss maths and
    the logits gradient (inductor fuses the elementwise passes), or the checked eager kernel.

    The compiled graph skips the per-chunk logits check; it returns the sum of all logits as well,
    and a non-finite sum (NaN, ±inf: a bad model or masked entries) reruns that chunk eagerly
    with the checks of ``checks.check_logits`` — the same errors and masking as the eager path.
    """

    def __init__(self, kernel, mode: str):
        self.kernel, self.mode = kernel, mode

    def padded_rows(self, n: int, rows: int, vocab: int) -> int:
        """Compiled: n rounded up to a power of two >= ROW_QUANTUM, capped at the chunk size
        (at most ~5 shapes per loss, whatever the batch); eager: n itself."""
        padded = min(rows, max(ROW_QUANTUM, 1 << (n - 1).bit_length()))
        return padded if self._compiles(padded * vocab) else n

    def _compiles(self, elements: int) -> bool:
        if self.mode == "false" or _COMPILE_FAILED or torch.compiler.is_compiling():
            return False
        return self.mode == "true" or elements >= AUTO_COMPILE_MIN_ELEMENTS

    def __call__(self, student_head, teacher_head, n: int, need_grad: bool):
        student_logits = _head_logits(student_head)  # (padded, V)
        teacher_logits = _head_logits(teacher_head)  # (padded, V)
        if self._compiles(student_logits.numel()):
            result = _compiled_chunk(self.kernel, student_logits, teacher_logits, need_grad)
            if result is not None and bool(torch.isfinite(result[2])):
                return result[0][:n].sum(), (None if result[1] is None else result[1][:n])
        student_logits, teacher_logits = student_logits[:n], teacher_logits[:n]
        masked = check_logits(student_logits, teacher_logits)  # raises on bad logits
        loss, grad = self.kernel(student_logits, teacher_logits, masked, need_grad)
        return loss.sum(), (None if grad is None else grad.to(student_logits.dtype))


def _chunk_maths(kernel, student_logits, teacher_logits, need_grad: bool):
    """The compiled unit: (loss (n,), grad (n, V) in the logits dtype or None, Σ all logits)."""
    loss, grad = kernel(student_logits, teacher_logits, None, need_grad)
    total = student_logits.sum(dtype=torch.float32) + teacher_logits.sum(dtype=torch.float32)
    return loss, (None if grad is None else grad.to(student_logits.dtype)), total


_COMPILED_CHUNK_MATHS = None  # torch.compile(_chunk_maths), made on first use
_COMPILE_FAILED = False


def _compiled_chunk(kernel, student_logits, teacher_logits, need_grad: bool):
    """_chunk_maths compiled (one graph per loss, parameters, shape and dtype); None if
    torch.compile fails here, after which every chunk runs eagerly (one warning)."""
    global _COMPILE_FAILED, _COMPILED_CHUNK_MATHS
    try:
        if _COMPILED_CHUNK_MATHS is None:
            _COMPILED_CHUNK_MATHS = torch.compile(_chunk_maths, dynamic=False)  # one graph per (loss, params, shape, dtype): allow more than dynamo's default of 8
        with torch._dynamo.config.patch(recompile_limit=64):
            return _COMPILED_CHUNK_MATHS(kernel, student_logits, teacher_logits, need_grad)
    except Exception as error:  # noqa: BLE001 - any compiler failure means: run eagerly
        _COMPILE_FAILED = True
        warnings.warn(f"torch.compile of the fused loss failed ({type(error).__name__}: "
                      f"{str(error)[:200]}); running it eagerly from now on. Set "
                      "loss.compile=false to skip the attempt.", RuntimeWarning, stacklevel=2)
        return None


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
            else:  # low precision: the matmul in the compute dtype, summed into float32 by blocks
                for low in range(0, logits_grad.shape[1], _WEIGHT_GRAD_BLOCK):
                    high = low + _WEIGHT_GRAD_BLOCK
                    self.weight[low:high] += torch.mm(logits_grad[:, low:high].t(), hidden_chunk)
        if self.bias is not None:
            self.bias += logits_grad.sum(0, dtype=torch.float32)

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


def _compile_mode(compile) -> str:
    """"auto" | "true" | "false" from the argument (bools accepted)."""
    mode = ("true" if compile else "false") if isinstance(compile, bool) else compile
    if mode not in COMPILE_MODES:
        raise UserError(f"compile={compile!r} is invalid; choose auto, true or false "
                         "(loss.compile in the config).")
    return mode


def _resolve_loss(loss, loss_params: dict, mode: str):
    if isinstance(loss, str):
        if loss not in LOSS_NAMES:
            raise UserError(f"loss={loss!r} is unknown; choose one of {', '.join(LOSS_NAMES)}.")
        return _KernelBody(get_loss_kernel(loss, **loss_params), mode)
    if callable(loss):
        if loss_params:
            raise UserError(f"loss is a callable, so loss_params {sorted(loss_params)} cannot be "
                             "applied; bind them with functools.partial or pass a loss name.")
        return _AutogradBody(loss)
    raise UserError(f"loss={loss!r} must be a registry name (see LOSS_NAMES) or a callable.")


def _check_inputs(student_hidden, student_weight, teacher_hidden, teacher_weight, labels) -> None:
    """Shapes: hidden (..., H) per model matching labels (...), weights (V, H); one compute dtype per model."""
    positions = tuple(labels.shape)
    for who, hidden, weight in (("student", student_hidden, student_weight),
                                ("teacher", teacher_hidden, teacher_weight)):
        if tuple(hidden.shape[:-1]) != positions:
            raise UserError(f"{who}_hidden shape {tuple(hidden.shape)} does not match labels "
                             f"shape {positions}; expected hidden (..., H) over the same "
                             "positions.")
        if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
            raise UserError(f"{who}_weight shape {tuple(weight.shape)} does not fit {who}_hidden "
                             f"size H={hidden.shape[-1]}; expected (V, {hidden.shape[-1]}).")
        if compute_dtype(weight) != compute_dtype(hidden):  # autocast would unify them, as in F.linear
            raise UserError(f"{who}_weight dtype {weight.dtype} != {who}_hidden dtype "
                             f"{hidden.dtype}; cast both to one dtype.")


def _shared_vocab(teacher_weight, teacher_bias, student_vocab: int):
    """Keep the teacher head rows [0, V_s) (padded vocab); a smaller teacher vocab is an error."""
    _check_bias(teacher_bias, teacher_weight.shape[0], "teacher_bias")
    if teacher_weight.shape[0] < student_vocab:
        raise UserError(
            f"vocab mismatch: teacher_weight has V={teacher_weight.shape[0]} rows, student_weight "
            f"V={student_vocab}; a teacher vocabulary smaller than the student's means different "
            "tokenizers, which is not supported.")
    bias = None if teacher_bias is None else teacher_bias[:student_vocab]
    return teacher_weight[:student_vocab], bias


def _check_bias(bias, vocab: int, name: str) -> None:
    if bias is not None and tuple(bias.shape) != (vocab,):
        raise UserError(f"{name} shape {tuple(bias.shape)} != ({vocab},); expected one bias per "
                         "vocabulary entry.")
