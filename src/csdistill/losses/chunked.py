"""Fused LM head + distillation loss, chunked over valid positions (Liger-style mechanics).

The engine holds no formula: it projects hidden states to logits one chunk of positions at a time,
calls the *same* per-position maths as the loss functions, and immediately turns the chunk's logits
gradient into gradients of the hidden states, head weight and bias. Only those gradients are kept;
backward just scales them by ``grad_output``. At most one chunk of (positions × V) logits exists
per model at any time — never (N × V).

Per chunk, a registry loss runs its closed-form kernel (``registry.get_loss_kernel``: loss and
exact logits gradient in one pass, the kernel behind the public function), not autograd. With
compilation on, that kernel (plus the write of the gradient, in the compute dtype, over the
student's logits and a finiteness sum) is one ``torch.compile`` graph — inductor fuses its
elementwise passes (C++/OpenMP on CPU, Triton on CUDA); the head matmuls stay outside it (BLAS
either way). Compiled chunks are zero-padded to a power of two >= ROW_QUANTUM rows, capped at the
chunk size, so the last, shorter chunk reuses the full chunks' graph and a loss sees at most ~5
shapes over a whole run. ``compile="auto"`` compiles chunks of >= AUTO_COMPILE_MIN_ELEMENTS logits
only (tiny test models stay eager); a compiler failure warns once and runs eagerly. A per-position
callable is differentiated by autograd per chunk and never compiled.

Buffers: each model's chunk logits go into one (rows, V) buffer reused by every chunk (no fresh
allocation, hence no page faults, per chunk), and the compiled graph writes the chunk's logits
gradient over the student's logits in place. The compiled maths runs on row slices of the chunk
(``loss_slice_rows``: float32 temporaries of at most LOSS_SLICE_BYTES each), so a compiled chunk
holds its two (rows × V) logits tensors plus one slice's temporaries, not the 3-4 (rows × V)
tensors of the whole kernel at once (inductor keeps reused exp/softmax terms in buffers); the
matmuls keep the full chunk, whose size sets their speed. The weight and bias gradient sums start
as the first chunk's product (no zero fill).

Precision: the head matmuls run in the compute dtype (bf16 under bf16 autocast, with float32
accumulation inside BLAS); the loss maths is float32. The weight-gradient matmul runs in the
compute dtype; by default (accumulate="float32") its per-chunk products are summed in a float32
buffer (one ``addmm_`` in float32; by vocabulary blocks added into float32 under bf16, since CPU
BLAS has no bf16 → float32 output); accumulate="compute" sums them in the compute dtype (one
``addmm_`` per chunk, no float32 buffer: less memory, rounded to bf16 after every chunk). Gradients return in
the input dtypes.

Chunk-size rule: rows = DEFAULT_CHUNK_BYTES // (V × bytes per logit in the compute dtype), i.e. ~80
MiB per (rows × V) logits tensor, rounded down to a multiple of 64 and clamped to [64, 1024]: 128
rows at V = 131072 and 151936 in float32, 384 at 49152, 1024 at V <= 20480; in bf16 832 at 49152,
320 at 131072, 256 at 151936. Why: every per-chunk head matmul re-reads (and BLAS repacks) the
whole (V × H) weight and every chunk adds one product into the weight-gradient sum, so small chunks
are slow; a chunk's memory is two or three (rows × V) tensors on top of the float32 (V × H)
weight-gradient buffer, so large chunks cost memory with no further speed-up (measurements in
benchmarks/RESULTS.md, "Fused engine: first-chunk write, in-place chunk gradient, sliced loss maths"). A budget in
bytes rather than in logits gives bf16 chunks twice the rows for the same memory.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from csdistill.losses.checks import check_logits
from csdistill.losses.reduce import _as_count, valid_mask
from csdistill.losses.registry import LOSS_NAMES, get_loss_kernel
from csdistill.errors import UserError

DEFAULT_CHUNK_BYTES = 80 * 2**20  # bytes of one (rows × V) logits tensor per chunk
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 64, 1024  # the chunk-size rule in the module docstring
ROW_QUANTUM = 64  # the chunk-size rule's granularity and the smallest padded compiled chunk
# float32 bytes of one (slice × V) temporary in a compiled loss-maths call (see loss_slice_rows):
# inductor keeps 1-3 such temporaries per loss (realised exp/softmax terms) beside the chunk's logits
LOSS_SLICE_BYTES = 16 * 2**20
AUTO_COMPILE_MIN_ELEMENTS = 2**20  # compile="auto" compiles only chunks of at least this many logits
COMPILE_MODES = ("auto", "true", "false")
# The dtype the head's weight/bias gradients are summed in over chunks: float32, or the compute dtype
# (bf16 under bf16: less memory; its speed and error against float64 are in benchmarks/RESULTS.md).
ACCUMULATE_MODES = ("float32", "compute")
_WEIGHT_GRAD_BLOCK = 32768  # vocab rows per low-precision weight-gradient matmul (bounds its temp)


def default_chunk_size(vocab_size: int, dtype: torch.dtype = torch.float32) -> int:
    """Rows (positions) per chunk: (rows × V) logits of ~DEFAULT_CHUNK_BYTES in `dtype` (the
    compute dtype), clamped to [64, 1024] and rounded down to a multiple of ROW_QUANTUM (the
    chunk-size rule in the module docstring)."""
    rows = DEFAULT_CHUNK_BYTES // (vocab_size * torch.empty((), dtype=dtype).element_size())
    return max(MIN_CHUNK_ROWS, min(MAX_CHUNK_ROWS, rows // ROW_QUANTUM * ROW_QUANTUM))


def fused_linear_distill(student_hidden, student_weight, teacher_hidden, teacher_weight, labels,
                         loss="csd", chunk_size=None, student_bias=None, teacher_bias=None,
                         num_valid_tokens=None, compile="auto", accumulate="float32",
                         **loss_params) -> torch.Tensor:
    """Σ_valid loss(h_s W_sᵀ + b_s, h_t W_tᵀ + b_t) / n — a float32 scalar, chunked.

    student_hidden (..., H_s), teacher_hidden (..., H_t); student_weight (V_s, H_s), teacher_weight
    (V_t, H_t) like ``nn.Linear``; labels (...) already aligned to positions (shift_labels): only
    positions with label != IGNORE_INDEX are projected. n = num_valid_tokens (global count) if
    given, else the local count; 0 when nothing is valid. loss: a registry name (with
    ``**loss_params``; its closed-form kernel runs per chunk, compiled or eager) or a per-position
    callable (differentiated by autograd per chunk, never compiled). compile: "auto" (compile when
    a chunk holds >= AUTO_COMPILE_MIN_ELEMENTS logits), "true", "false" (or a bool); a failed
    compilation falls back to eager with one warning. accumulate: "float32" (default) sums the
    head's weight and bias gradients over chunks in float32; "compute" sums them in the compute
    dtype (under bf16: no float32 buffer, rounded per chunk; see ACCUMULATE_MODES). A padded teacher vocabulary (V_t > V_s) is
    compared on the shared ids [0, V_s). Gradients reach student_hidden, student_weight and
    student_bias (in their dtypes; accumulated in float32); the teacher runs without grad.
    bf16 inputs give bf16 logits per chunk, as the unfused model would; loss maths is float32.
    Under ``torch.autocast`` the head matmuls run in the autocast dtype, as ``F.linear`` would
    there (so fp32 hidden/weights give bf16 logits under bf16 autocast); the rest runs with
    autocast off, and the gradients still come back in each input's own dtype.
    """
    body = _resolve_loss(loss, loss_params, _compile_mode(compile))
    _check_accumulate(accumulate)
    _check_inputs(student_hidden, student_weight, teacher_hidden, teacher_weight, labels)
    vocab = student_weight.shape[0]
    teacher_weight, teacher_bias = _shared_vocab(teacher_weight, teacher_bias, vocab)
    _check_bias(student_bias, vocab, "student_bias")
    dtype = compute_dtype(student_hidden)
    rows = default_chunk_size(vocab, dtype) if chunk_size is None else chunk_size
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
                                         denominator, dtype, accumulate)


# ---- sparse teacher: student side chunked, teacher rows given (e.g. a top-k cache) ----
def fused_linear_sparse_distill(student_hidden, student_weight, teacher_rows, labels, loss_fn,
                                chunk_size=None, student_bias=None, num_valid_tokens=None,
                                accumulate="float32") -> torch.Tensor:
    """Σ_valid loss_fn(h_s W_sᵀ + b_s, teacher_rows[i]) / n — the fused engine with no teacher head.

    teacher_rows: one row per *valid* position (row-major order of labels != IGNORE_INDEX), sliced
    per chunk with ``teacher_rows[a:b]`` (e.g. ``losses.sparse.SparseTeacher``); loss_fn(student
    chunk logits (n, V), teacher_rows[a:b]) -> (n,). Otherwise as :func:`fused_linear_distill`."""
    _check_accumulate(accumulate)
    vocab = student_weight.shape[0]
    _check_bias(student_bias, vocab, "student_bias")
    rows = default_chunk_size(vocab, compute_dtype(student_hidden)) if chunk_size is None else chunk_size
    mask = valid_mask(labels)  # (...)
    hidden = student_hidden[mask]  # (N, H_s)
    if len(teacher_rows) != hidden.shape[0]:
        raise UserError(f"{len(teacher_rows)} teacher rows for {hidden.shape[0]} valid positions; the "
                         "teacher rows must cover exactly the positions with a label.")
    count = mask.sum() if num_valid_tokens is None else _as_count(num_valid_tokens)
    with torch.autocast(student_hidden.device.type, enabled=False):
        return _FusedLinearDistill.apply(hidden, student_weight, student_bias, teacher_rows, None, None,
                                         loss_fn, rows, max(int(count), 1), compute_dtype(student_hidden),
                                         accumulate)
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
                rows, denominator, dtype, accumulate):
        """dtype: the student head's compute dtype; the teacher arrives already in its own.
        teacher_weight None: teacher_hidden holds the teacher's rows themselves (sliceable).
        accumulate: "float32" or "compute", the dtype the weight and bias gradients are summed in."""
        if not isinstance(body, (_KernelBody, _AutogradBody)):  # a bare per-position callable
            body = _AutogradBody(body)
        wants = ctx.needs_input_grad[:3]  # (hidden, weight, bias)
        grads = _GradBuffers(hidden, weight, bias, wants, accumulate)
        weight, bias = _cast(weight, dtype), _cast(bias, dtype)  # (V, H), (V,): one copy, as autocast
        student_head = _Head(weight, bias, body.reuses_buffers)
        teacher_head = _Head(teacher_weight, teacher_bias, body.reuses_buffers)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            stop = min(start + rows, hidden.shape[0])
            hidden_chunk = hidden[start:stop].to(dtype)  # (n, H)
            student_chunk, teacher_chunk = hidden_chunk, teacher_hidden[start:stop]
            padded = body.padded_rows(stop - start, rows, weight.shape[0])
            if padded != stop - start:  # compiled: zero rows up to one of few shapes
                student_chunk, teacher_chunk = _pad_rows(student_chunk, padded), _pad_rows(teacher_chunk, padded)
            chunk_sum, logits_grad = body(lambda: (student_head(student_chunk), teacher_head(teacher_chunk)),
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
        return scaled[0], scaled[1], scaled[2], None, None, None, None, None, None, None, None


def _pad_rows(rows: torch.Tensor, padded: int) -> torch.Tensor:
    """rows (n, H) with zero rows appended up to `padded` (compiled chunks keep one shape)."""
    return F.pad(rows, (0, 0, 0, padded - rows.shape[0]))


class _Head:
    """One model's LM head over the chunks: rows (n, H) → logits (n, V) = rows Wᵀ + b.

    reuse: every chunk's logits go into one (rows, V) buffer made by the first (largest) chunk,
    so no chunk allocates (and page-faults) fresh (n, V) memory; the compiled loss then writes
    the chunk's gradient over the student's logits in that same buffer. weight None: the rows
    are the logits themselves (teacher rows given, e.g. a cache)."""

    def __init__(self, weight, bias, reuse: bool):
        self.weight, self.bias, self.reuse, self.buffer = weight, bias, reuse, None

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return rows
        if not self.reuse:
            return F.linear(rows, self.weight, self.bias)
        n = rows.shape[0]
        if self.buffer is None or self.buffer.shape[0] < n:
            self.buffer = rows.new_empty((n, self.weight.shape[0]))  # (rows, V)
        out = self.buffer[:n]  # (n, V): leading rows of a contiguous buffer, contiguous
        if self.bias is None:
            return torch.mm(rows, self.weight.t(), out=out)  # what F.linear runs, into the buffer
        return torch.addmm(self.bias, rows, self.weight.t(), out=out)


class _AutogradBody:
    """A per-position callable loss, differentiated by autograd chunk by chunk (never compiled).
    Its logits are fresh tensors (no reused buffers): the teacher's are freed before the backward."""

    reuses_buffers = False

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn

    def padded_rows(self, n: int, rows: int, vocab: int) -> int:
        return n

    def __call__(self, project, n: int, need_grad: bool):
        """Σ loss over one chunk (float32 scalar) and ∂Σ/∂student_logits (n, V) or None.
        project() → (student logits (n, V), teacher logits (n, V) or given rows); they live only
        in this frame, so the teacher's are freed before the backward."""
        student_logits, teacher_logits = project()
        student_logits.requires_grad_(need_grad)  # (n, V)
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

    reuses_buffers = True

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

    def __call__(self, project, n: int, need_grad: bool):
        """(Σ loss over the n real rows, ∂Σ/∂student_logits (n, V) or None); project() gives the
        (padded, V) logits of both models. Compiled, the gradient is the student's logits buffer."""
        student_logits, teacher_logits = project()  # (padded, V) each
        if self._compiles(student_logits.numel()):
            result = _compiled_slices(self.kernel, student_logits, teacher_logits, need_grad)
            if result is not None and bool(torch.isfinite(result[1])):
                return result[0][:n].sum(), (student_logits[:n] if need_grad else None)
            student_logits, teacher_logits = project()  # the graph may have overwritten them
        student_logits, teacher_logits = student_logits[:n], teacher_logits[:n]
        masked = check_logits(student_logits, teacher_logits)  # raises on bad logits
        loss, grad = self.kernel(student_logits, teacher_logits, masked, need_grad)
        return loss.sum(), (None if grad is None else grad.to(student_logits.dtype))


def _chunk_maths(kernel, student_logits, teacher_logits, need_grad: bool):
    """The compiled unit: (loss (n,), Σ all logits); with need_grad the gradient (n, V) is
    written over student_logits, in its dtype (inductor stores it straight into that buffer:
    no extra (n, V) tensor). The sum is taken before the overwrite (program order)."""
    loss, grad = kernel(student_logits, teacher_logits, None, need_grad)
    total = student_logits.sum(dtype=torch.float32) + teacher_logits.sum(dtype=torch.float32)
    if grad is not None:
        student_logits.copy_(grad)
    return loss, total


def loss_slice_rows(rows: int, vocab: int) -> int:
    """Rows per compiled loss-maths call within a (rows, V) chunk: the largest power of two <=
    ROW_QUANTUM whose float32 (slice × V) temporaries fit LOSS_SLICE_BYTES, and that divides
    `rows` (else `rows` itself: one call per chunk)."""
    budget = max(1, LOSS_SLICE_BYTES // (4 * vocab))
    slice_rows = min(ROW_QUANTUM, 1 << (budget.bit_length() - 1))
    return slice_rows if rows % slice_rows == 0 else rows


def _compiled_slices(kernel, student_logits, teacher_logits, need_grad: bool):
    """_compiled_chunk over row slices of the (padded, V) chunk (one graph: equal slices), so the
    float32 temporaries inductor keeps are (slice × V), not (padded × V); the gradients land in
    the student's buffer, slice by slice. (loss (padded,), Σ all logits) or None."""
    step = loss_slice_rows(student_logits.shape[0], student_logits.shape[1])
    losses, total = [], 0.0
    for start in range(0, student_logits.shape[0], step):
        result = _compiled_chunk(kernel, student_logits[start:start + step],
                                 teacher_logits[start:start + step], need_grad)
        if result is None:
            return None
        losses.append(result[0])
        total = total + result[1]
    return torch.cat(losses), total


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
    """Student gradients, filled chunk by chunk: hidden rows written once, weight/bias summed.

    The weight and bias sums start as the first chunk's product (written, not added to zeros).
    accumulate "float32": a float32 sum; in float32 one ``addmm_`` per chunk, in a low-precision
    compute dtype the matmul runs in that dtype by vocabulary blocks, each added into float32.
    "compute": the sum in the compute dtype itself (bf16: one ``addmm_`` per chunk, faster,
    rounded to bf16 after every chunk)."""

    def __init__(self, hidden, weight, bias, wants, accumulate: str):
        self.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        self.shapes = (hidden.shape, weight.shape, weight.shape[:1])
        self.wants, self.accumulate, self.device = wants, accumulate, weight.device
        self.hidden = torch.empty_like(hidden) if wants[0] else None  # (N, H): every row written
        self.weight = self.bias = None  # (V, H), (V,): made by the first chunk

    def add_chunk(self, logits_grad, hidden_chunk, weight, start: int, stop: int) -> None:
        """logits_grad (n, V), hidden_chunk (n, H), weight (V, H), all in the compute dtype: the
        nn.Linear backward for one chunk."""
        if self.hidden is not None:
            rows = self.hidden[start:stop]  # (n, H)
            if rows.dtype == logits_grad.dtype:
                torch.mm(logits_grad, weight, out=rows)
            else:
                rows.copy_(torch.mm(logits_grad, weight))  # cast to the buffer's dtype
        sum_dtype = torch.float32 if self.accumulate == "float32" else logits_grad.dtype
        if self.wants[1]:
            self._add_weight(logits_grad, hidden_chunk, sum_dtype)
        if self.wants[2]:
            bias = logits_grad.sum(0, dtype=sum_dtype)  # (V,)
            self.bias = bias if self.bias is None else self.bias.add_(bias)

    def _add_weight(self, logits_grad, hidden_chunk, sum_dtype: torch.dtype) -> None:
        """weight sum += logits_gradᵀ hidden_chunk, (V, H)."""
        if logits_grad.dtype == sum_dtype and hidden_chunk.dtype == sum_dtype:
            if self.weight is None:
                self.weight = torch.mm(logits_grad.t(), hidden_chunk)
            else:
                self.weight.addmm_(logits_grad.t(), hidden_chunk)  # in place
            return
        first = self.weight is None
        if first:
            self.weight = torch.empty(self.shapes[1], dtype=sum_dtype, device=self.device)
        for low in range(0, logits_grad.shape[1], _WEIGHT_GRAD_BLOCK):
            high = low + _WEIGHT_GRAD_BLOCK
            product = torch.mm(logits_grad[:, low:high].t(), hidden_chunk)  # compute dtype
            if first:
                self.weight[low:high].copy_(product)
            else:
                self.weight[low:high] += product

    def finish(self, denominator: int):
        """Divide once by the token count, cast back to the input dtypes (one pass each)."""
        out = []
        for index, (grad, dtype) in enumerate(zip((self.hidden, self.weight, self.bias), self.dtypes)):
            if not self.wants[index]:
                out.append(None)
            elif grad is None:  # no valid position: no chunk ran
                out.append(torch.zeros(self.shapes[index], dtype=dtype, device=self.device))
            elif grad.dtype == dtype:
                out.append(grad.div_(denominator))
            else:
                out.append(torch.div(grad, denominator, out=torch.empty_like(grad, dtype=dtype)))
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


def _check_accumulate(accumulate) -> None:
    if accumulate not in ACCUMULATE_MODES:
        raise UserError(f"accumulate={accumulate!r} is invalid; choose float32 or compute "
                         "(loss.accumulate in the config).")


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
