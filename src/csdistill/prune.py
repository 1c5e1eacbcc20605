"""Students cut from a teacher: depth pruning (drop layers) and width pruning (drop MLP neurons,
attention heads, hidden channels), for the Llama, Qwen2 and GPT-2 families.

Importance comes from one pass over calibration text (``collect_statistics``):

- depth, ``block-influence`` (ShortGPT): BI_l = 1 - mean_t cos(h_l, h_{l+1}), h_l the input of layer l;
  keep the N layers of largest BI (in their original order).
- depth, ``angular`` (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers"): drop the
  contiguous block of n = L - N layers starting at argmin_l arccos(mean_t cos(h_l, h_{l+n})) / pi.
- depth, ``uniform``: the baseline, N evenly spaced layers (first and last kept).
- width (Minitron / ModelOpt activation importance): an MLP neuron scores the mean |activation| at the
  input of the down projection; an attention head the mean L2 norm of its output (the input of o_proj);
  a hidden channel the mean |x| of every norm layer's output. Each layer keeps its top-k neurons and heads
  (k the same in every layer so the config stays uniform); hidden channels are chosen once for the model.
  Heads are GQA-aware: whole KV groups are dropped first (``kv_heads``), then each kept group keeps its
  top heads_per_group query heads, so every kept query head keeps its own K/V head.

Means are over the calibration tokens that are not padding. The pure score functions take the
statistics; ``prune_model`` slices the weights; ``student_init_command`` is `csdistill student init`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from csdistill.errors import UserError

DEPTH_METHODS = ("block-influence", "angular", "uniform")


# --------------------------------------------------------------------------- architecture access


def model_family(model) -> str:
    """'llama' | 'qwen2' | 'gpt2' from config.model_type (mistral counts as llama); ValueError otherwise."""
    kind = getattr(model.config, "model_type", "")
    if kind in ("llama", "mistral"):
        return "llama"
    if kind in ("qwen2", "gpt2"):
        return kind
    raise UserError(f"student init: model_type {kind!r} is not supported; pruning knows the Llama, Qwen2 and "
                     "GPT-2 families (model_type llama, mistral, qwen2, gpt2)")


def decoder_layers(model) -> torch.nn.ModuleList:
    """The stack of transformer blocks: model.model.layers (Llama/Qwen2) or model.transformer.h (GPT-2)."""
    return model.transformer.h if model_family(model) == "gpt2" else model.model.layers


@dataclass(frozen=True)
class Shape:
    """The sizes pruning touches (per layer they are uniform)."""

    layers: int
    hidden: int
    mlp: int  # intermediate size
    heads: int
    kv_heads: int
    head_dim: int


def model_shape(model) -> Shape:
    c = model.config
    if model_family(model) == "gpt2":
        inner = c.n_inner or 4 * c.n_embd
        return Shape(c.n_layer, c.n_embd, inner, c.n_head, c.n_head, c.n_embd // c.n_head)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return Shape(c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads, kv, head_dim)


def _mlp_out(layer, family: str) -> torch.nn.Module:
    return layer.mlp.c_proj if family == "gpt2" else layer.mlp.down_proj


def _norms(model, family: str) -> list[torch.nn.Module]:
    """Every norm whose output feeds a block or the head (Minitron's hidden-channel activations)."""
    if family == "gpt2":
        return [m for layer in model.transformer.h for m in (layer.ln_1, layer.ln_2)] + [model.transformer.ln_f]
    return [m for layer in model.model.layers for m in (layer.input_layernorm, layer.post_attention_layernorm)] + [
        model.model.norm]


# --------------------------------------------------------------------------- calibration statistics


@dataclass
class Statistics:
    """Sums over calibration tokens, divided by `tokens` on read."""

    tokens: int = 0
    cosine: torch.Tensor | None = None  # (L+1, L+1): sum_t cos(h_i, h_j); h_0 the embeddings, h_l layer l-1's output
    neuron: torch.Tensor | None = None  # (L, I): sum_t |down-projection input|
    head: torch.Tensor | None = None  # (L, n_heads): sum_t ||head output||_2
    channel: torch.Tensor | None = None  # (H,): sum_t sum_norms |norm output|
    extra: dict = field(default_factory=dict)

    def mean(self, name: str) -> torch.Tensor:
        return getattr(self, name) / max(self.tokens, 1)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values (B, T, ...) summed over the positions where mask (B, T) is 1 -> (...)."""
    return (values.float() * mask.view(*mask.shape, *([1] * (values.ndim - 2)))).sum(dim=(0, 1))


def _install_hooks(model, family: str, shape: Shape, stats: Statistics, state: dict) -> list:
    layers, handles = decoder_layers(model), []
    handles.append(layers[0].register_forward_pre_hook(
        lambda m, args, kwargs: state["hidden"].append(kwargs.get("hidden_states", args[0] if args else None)),
        with_kwargs=True))
    for layer in layers:
        handles.append(layer.register_forward_hook(lambda m, a, out: state["hidden"].append(_first(out))))
    for index, layer in enumerate(layers):
        def neuron_hook(module, args, i=index):
            stats.neuron[i] += _masked_sum(args[0].abs(), state["mask"])

        def head_hook(module, args, i=index):
            x = args[0]  # (B, T, n_heads * head_dim)
            norms = x.float().view(*x.shape[:2], shape.heads, -1).norm(dim=-1)  # (B, T, n_heads)
            stats.head[i] += _masked_sum(norms, state["mask"])
        handles.append(_mlp_out(layer, family).register_forward_pre_hook(neuron_hook))
        out_proj = layer.attn.c_proj if family == "gpt2" else layer.self_attn.o_proj
        handles.append(out_proj.register_forward_pre_hook(head_hook))
    def channel_hook(module, args, output):  # returns None: the hook must not replace the output
        stats.channel += _masked_sum(_first(output).abs(), state["mask"])
    for norm in _norms(model, family):
        handles.append(norm.register_forward_hook(channel_hook))
    return handles


def _accumulate_cosine(stats: Statistics, hidden: list[torch.Tensor], mask: torch.Tensor) -> None:
    """Adds sum_t cos(h_i, h_j) for every pair of the L+1 hidden states (each (B, T, H))."""
    keep = mask.reshape(-1).bool()
    stacked = torch.stack([h.float().reshape(-1, h.shape[-1])[keep] for h in hidden])  # (L+1, N, H)
    unit = torch.nn.functional.normalize(stacked, dim=-1)
    stats.cosine += torch.einsum("inh,jnh->ij", unit, unit)


@torch.no_grad()
def collect_statistics(model, batches) -> Statistics:
    """One pass over `batches` ({input_ids (B, T), attention_mask (B, T)}): the sums every score needs."""
    family, shape = model_family(model), model_shape(model)
    stats = Statistics(cosine=torch.zeros(shape.layers + 1, shape.layers + 1),
                       neuron=torch.zeros(shape.layers, shape.mlp), head=torch.zeros(shape.layers, shape.heads),
                       channel=torch.zeros(shape.hidden))
    state: dict = {"hidden": [], "mask": None}
    handles = _install_hooks(model, family, shape, stats, state)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            mask = batch["attention_mask"].to(device)
            state["mask"], state["hidden"] = mask.float(), []
            model(input_ids=batch["input_ids"].to(device), attention_mask=mask, use_cache=False)
            assert len(state["hidden"]) == shape.layers + 1, "every block must run exactly once"
            _accumulate_cosine(stats, state["hidden"], mask)
            stats.tokens += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return stats


# --------------------------------------------------------------------------- scores (pure)


def block_influence(mean_cosine: torch.Tensor) -> torch.Tensor:
    """(L,) BI_l = 1 - mean cos(input of layer l, its output), from the (L+1, L+1) mean cosine matrix."""
    return 1.0 - torch.diagonal(mean_cosine, offset=1)


def angular_distance(mean_cosine: torch.Tensor, span: int) -> torch.Tensor:
    """(L - span + 1,) arccos(mean cos(h_l, h_{l+span})) / pi: how much the block l .. l+span-1 turns h."""
    return torch.arccos(torch.diagonal(mean_cosine, offset=span).clamp(-1.0, 1.0)) / math.pi


def evenly_spaced(total: int, keep: int) -> list[int]:
    """`keep` of range(total) spread evenly, first and last included (keep >= 2)."""
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def top_k_sorted(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k largest scores, in increasing index order (ties: the lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def choose_layers(method: str, total: int, keep: int, mean_cosine: torch.Tensor | None) -> list[int]:
    """The kept layer indices (increasing) under a DEPTH_METHODS method."""
    if not 1 <= keep <= total:
        raise UserError(f"--layers {keep}: choose between 1 and the teacher's {total} layers")
    if method not in DEPTH_METHODS:
        raise UserError(f"--depth-method {method!r}: choose one of {', '.join(DEPTH_METHODS)}")
    if keep == total:
        return list(range(total))
    if method == "uniform":
        return evenly_spaced(total, keep)
    if method == "block-influence":
        return top_k_sorted(block_influence(mean_cosine), keep)
    span = total - keep
    start = int(torch.argmin(angular_distance(mean_cosine, span)))
    return [i for i in range(total) if not start <= i < start + span]


def choose_heads(head_scores: torch.Tensor, heads: int, kv_heads: int, keep_heads: int, keep_kv: int) -> list[int]:
    """Kept query heads of one layer (increasing), from head_scores (n_heads,) under GQA groups.

    Query head h uses KV head h // (heads / kv_heads). The keep_kv groups of largest summed score stay;
    each keeps its top keep_heads / keep_kv query heads.
    """
    group = heads // kv_heads
    per_group = keep_heads // keep_kv
    group_scores = head_scores.view(kv_heads, group).sum(dim=-1)
    kept: list[int] = []
    for g in top_k_sorted(group_scores, keep_kv):
        kept += [g * group + h for h in top_k_sorted(head_scores[g * group:(g + 1) * group], per_group)]
    return kept


# --------------------------------------------------------------------------- the plan and the slicing


@dataclass
class Plan:
    """What the student keeps: teacher indices of layers, and per kept layer its neurons / heads."""

    layers: list[int]
    neurons: dict[int, list[int]]  # teacher layer -> kept intermediate indices
    heads: dict[int, list[int]]  # teacher layer -> kept query heads
    kv_heads: dict[int, list[int]]  # teacher layer -> kept KV heads
    hidden: list[int]  # kept hidden channels


def _check_width(name: str, value: int, full: int, multiple_of: int = 1) -> None:
    if not 1 <= value <= full or value % multiple_of:
        extra = f" and a multiple of {multiple_of}" if multiple_of > 1 else ""
        raise UserError(f"{name} {value}: choose between 1 and the teacher's {full}{extra}")


def make_plan(model, stats: Statistics | None, layers: int | None = None, depth_method: str = "block-influence",
              mlp: int | None = None, heads: int | None = None, kv_heads: int | None = None,
              hidden: int | None = None) -> Plan:
    """Choose what to keep (None = keep all of that dimension). Scores come from `stats` (only the
    uniform method with no width pruning needs none)."""
    family, shape = model_family(model), model_shape(model)
    layers = shape.layers if layers is None else layers
    keep_all = lambda value, full: full if value is None else value  # noqa: E731  (0 is a value, and wrong)
    mlp, hidden, heads = keep_all(mlp, shape.mlp), keep_all(hidden, shape.hidden), keep_all(heads, shape.heads)
    kv_heads = keep_all(kv_heads, heads if shape.kv_heads == shape.heads else shape.kv_heads)
    if family == "gpt2" and (heads != shape.heads or hidden != shape.hidden):
        raise UserError("--heads/--hidden: GPT-2's attention width is tied to its hidden size, so only --layers "
                         "and --mlp prune GPT-2; use a Llama or Qwen2 teacher for head or hidden pruning")
    _check_width("--mlp", mlp, shape.mlp)
    _check_width("--hidden", hidden, shape.hidden)
    _check_width("--kv-heads", kv_heads, shape.kv_heads)
    _check_width("--heads", heads, shape.heads, kv_heads)
    if heads // kv_heads > shape.heads // shape.kv_heads:
        raise UserError(f"--heads {heads} with --kv-heads {kv_heads}: {heads // kv_heads} query heads per KV group, "
                         f"but the teacher has {shape.heads // shape.kv_heads}; lower --heads or raise --kv-heads")
    needs_stats = depth_method != "uniform" and layers < shape.layers
    needs_stats = needs_stats or (mlp, heads, kv_heads, hidden) != (shape.mlp, shape.heads, shape.kv_heads, shape.hidden)
    if needs_stats and stats is None:
        raise UserError("make_plan: importance-based pruning needs calibration statistics (collect_statistics)")
    kept = choose_layers(depth_method, shape.layers, layers, stats.mean("cosine") if stats else None)
    full = lambda n: list(range(n))  # noqa: E731
    pick = lambda scores, k, n: full(n) if k == n else top_k_sorted(scores, k)  # noqa: E731
    neuron_plan = {i: pick(stats.neuron[i] if stats else None, mlp, shape.mlp) for i in kept}
    head_plan = {i: full(shape.heads) if (heads, kv_heads) == (shape.heads, shape.kv_heads)
                 else choose_heads(stats.head[i], shape.heads, shape.kv_heads, heads, kv_heads) for i in kept}
    group = shape.heads // shape.kv_heads
    kv_plan = {i: sorted({h // group for h in head_plan[i]}) for i in kept}
    hidden_plan = pick(stats.channel if stats else None, hidden, shape.hidden)
    return Plan(kept, neuron_plan, head_plan, kv_plan, hidden_plan)


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    """Row indices of the given heads in a (n_heads * head_dim, ...) projection."""
    return torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)], dtype=torch.long)


def _slice_llama(name: str, tensor: torch.Tensor, plan: Plan, layer: int | None, shape: Shape) -> torch.Tensor:
    """The student's copy of teacher parameter `name` (Llama/Qwen2 names)."""
    hid = torch.tensor(plan.hidden)
    if layer is None:  # embed_tokens (V, H), norm (H,), lm_head (V, H)
        return tensor[..., hid]
    q_rows, kv_rows = _head_rows(plan.heads[layer], shape.head_dim), _head_rows(plan.kv_heads[layer], shape.head_dim)
    neurons = torch.tensor(plan.neurons[layer])
    if "layernorm" in name:
        return tensor[hid]
    rows = {"q_proj": q_rows, "k_proj": kv_rows, "v_proj": kv_rows, "gate_proj": neurons, "up_proj": neurons}
    for key, index in rows.items():
        if f".{key}." in name:  # weight (out, H) or bias (out,)
            return tensor[index][:, hid] if tensor.ndim == 2 else tensor[index]
    if ".o_proj." in name:
        return tensor[hid][:, q_rows]
    if ".down_proj." in name:
        return tensor[hid][:, neurons]
    return tensor  # e.g. Qwen3's per-head q/k norms (head_dim,)


def _slice_gpt2(name: str, tensor: torch.Tensor, plan: Plan, layer: int | None) -> torch.Tensor:
    """GPT-2 (Conv1D weights are (in, out)): only the MLP's neurons are sliced."""
    if layer is None:
        return tensor
    neurons = torch.tensor(plan.neurons[layer])
    if ".mlp.c_fc." in name:  # weight (H, I), bias (I,)
        return tensor[..., neurons]
    if ".mlp.c_proj.weight" in name:  # (I, H)
        return tensor[neurons]
    return tensor


def _student_config(model, plan: Plan):
    import copy

    config, shape = copy.deepcopy(model.config), model_shape(model)
    n_layers = len(plan.layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in plan.layers]
    if model_family(model) == "gpt2":
        config.n_layer, config.n_inner = n_layers, len(plan.neurons[plan.layers[0]])
        return config
    config.num_hidden_layers, config.hidden_size = n_layers, len(plan.hidden)
    config.intermediate_size = len(plan.neurons[plan.layers[0]])
    config.num_attention_heads = len(plan.heads[plan.layers[0]])
    config.num_key_value_heads = len(plan.kv_heads[plan.layers[0]])
    config.head_dim = shape.head_dim  # no longer hidden_size / heads once either is pruned
    if getattr(config, "max_window_layers", None) is not None:
        config.max_window_layers = min(config.max_window_layers, n_layers)
    return config


def _teacher_name(name: str, plan: Plan, prefix: str) -> tuple[str, int | None]:
    """Student parameter name -> (teacher name, teacher layer index or None)."""
    if not name.startswith(prefix):
        return name, None
    index, _, rest = name[len(prefix):].partition(".")
    layer = plan.layers[int(index)]
    return f"{prefix}{layer}.{rest}", layer


@torch.no_grad()
def prune_model(model, plan: Plan):
    """A new model of the teacher's class holding the kept slices of its weights (same dtype)."""
    from transformers import AutoModelForCausalLM

    family, shape = model_family(model), model_shape(model)
    dtype = next(model.parameters()).dtype
    student = AutoModelForCausalLM.from_config(_student_config(model, plan)).to(dtype)
    prefix = "transformer.h." if family == "gpt2" else "model.layers."
    teacher_state = model.state_dict()
    new_state = {}
    for name, target in student.state_dict().items():
        teacher_name, layer = _teacher_name(name, plan, prefix)
        tensor = teacher_state[teacher_name]
        sliced = (_slice_gpt2(name, tensor, plan, layer) if family == "gpt2"
                  else _slice_llama(name, tensor, plan, layer, shape))
        assert sliced.shape == target.shape, f"{name}: sliced {tuple(sliced.shape)} vs {tuple(target.shape)}"
        new_state[name] = sliced.clone()
    student.load_state_dict(new_state)
    if getattr(model, "generation_config", None) is not None:
        student.generation_config = model.generation_config
    return student.eval()


def _layer_of(name: str, prefix: str) -> int | None:
    return int(name[len(prefix):].partition(".")[0]) if name.startswith(prefix) else None


def student_parameter_count(model, plan: Plan) -> int:
    """parameter_count(prune_model(model, plan)) without building it: the sliced shapes of meta tensors."""
    family, shape = model_family(model), model_shape(model)
    prefix = "transformer.h." if family == "gpt2" else "model.layers."
    total = 0
    for name, param in model.named_parameters():  # tied parameters once
        layer = _layer_of(name, prefix)
        if layer is not None and layer not in plan.layers:
            continue
        meta = torch.empty(param.shape, device="meta")
        sliced = _slice_gpt2(name, meta, plan, layer) if family == "gpt2" else _slice_llama(name, meta, plan, layer, shape)
        total += sliced.numel()
    return total


def parameter_count(model) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
