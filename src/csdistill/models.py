"""Load students, teachers and tokenizers: a hub id, a local directory, or a named tiny preset.

Names:
- ``preset:<name>`` or ``preset:<name>@<seed>``: a tiny model built from a config (``PRESETS``), its
  weights initialised from `seed` (default 0) without touching the global RNG. Its tokenizer is the
  local character tokenizer (``data.tokenizer.build_char_tokenizer``) unless one is named.
- a local directory in Hugging Face format (``save_pretrained``), e.g. a csdistill checkpoint's ``model/``;
- a hub id (``gpt2``, ``Qwen/Qwen2.5-1.5B-Instruct``), read from the cache when HF_HUB_OFFLINE=1;
- a ``.gguf`` file (llama.cpp format; needs the ``gguf`` package, extra ``csdistill[gguf]``), dequantised
  to float32 on load (~20 s for 135M parameters): `csdistill model export` turns it into a directory once.

Also: the vocabulary check between student and teacher (``check_vocab``) and the final hidden
states + LM head that the fused loss path consumes (``hidden_states_and_head``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from csdistill.errors import UserError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

PRESET_PREFIX = "preset:"


# --------------------------------------------------------------------------- presets


def _tiny_llama(vocab_size: int, width: int = 64) -> PretrainedConfig:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _suite_llama(vocab_size: int, width: int, layers: int, heads: int, kv_heads: int, mlp: int) -> PretrainedConfig:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
                       tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _tiny_gpt2(vocab_size: int) -> PretrainedConfig:
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_embd=64, n_inner=128, n_layer=2, n_head=4, n_positions=1024,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # deterministic training on tiny tasks
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _tiny_qwen2(vocab_size: int) -> PretrainedConfig:
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)


# name -> factory(vocab_size) -> transformers config; 2 layers, so tests run in seconds on a CPU.
PRESETS: dict[str, Callable[[int], PretrainedConfig]] = {
    "tiny-llama": _tiny_llama,  # width 64, 4 heads (2 KV heads), MLP 128
    "tiny-llama-small": lambda vocab_size: _tiny_llama(vocab_size, width=32),  # width 32, MLP 64
    "tiny-gpt2": _tiny_gpt2,  # width 64, 4 heads, MLP 128, tied embeddings
    "tiny-qwen2": _tiny_qwen2,  # width 64, 4 heads (2 KV heads), MLP 128
    # The quickstart's pair on the built-in task suite (character vocabulary, ~100 ids):
    "suite-teacher": lambda v: _suite_llama(v, width=128, layers=4, heads=4, kv_heads=4, mlp=384),  # ~0.9M params
    "suite-student": lambda v: _suite_llama(v, width=32, layers=2, heads=2, kv_heads=2, mlp=64),  # ~0.03M params
}


def register_preset(name: str, factory: Callable[[int], PretrainedConfig]) -> None:
    """Add a preset: `factory(vocab_size)` returns a transformers config (e.g. the task suite's models)."""
    if not name or "@" in name or ":" in name:
        raise UserError(f"preset name {name!r}: use a non-empty name without '@' or ':'")
    PRESETS[name] = factory


def parse_preset(name_or_path: str) -> tuple[str, int | None] | None:
    """'preset:tiny-llama@1' -> ('tiny-llama', 1); 'preset:tiny-llama' -> ('tiny-llama', None); else None."""
    if not name_or_path.startswith(PRESET_PREFIX):
        return None
    name, _, seed = name_or_path[len(PRESET_PREFIX):].partition("@")
    if seed and not seed.lstrip("-").isdigit():
        raise UserError(f"model {name_or_path!r}: the part after '@' must be an integer seed, e.g. preset:{name}@1")
    return name, int(seed) if seed else None


def _preset_factory(name: str) -> Callable[[int], PretrainedConfig]:
    if name not in PRESETS:
        try:  # the task suite registers its presets on import
            import csdistill.tasks.suite  # noqa: F401
        except ImportError:
            pass
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; presets: {', '.join(sorted(PRESETS))} "
                         "(or pass a hub id / local directory)")
    return PRESETS[name]


def default_vocab_size() -> int:
    """The character tokenizer's size: the vocabulary of a preset built without one."""
    from csdistill.data.tokenizer import build_char_tokenizer

    return len(build_char_tokenizer())


# --------------------------------------------------------------------------- tokenizers


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _is_local_path(name: str) -> bool:
    """True for names that can only be paths (hub ids are 'name' or 'org/name')."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or Path(name).exists()


def _load_error(what: str, name: str, err: Exception) -> UserError:
    """A one-line ValueError for a model/tokenizer that could not be loaded, with the fix."""
    if _is_local_path(name):
        if not Path(name).expanduser().exists():
            return UserError(f"{what} {name!r}: the path does not exist; pass an existing directory "
                              "(save_pretrained format), a hub id or preset:<name>")
        if Path(name).expanduser().is_dir() and not (Path(name).expanduser() / "config.json").is_file():
            return UserError(f"{what} {name!r}: the folder has no config.json, so it is not a saved model; pass a "
                             "folder written by save_pretrained (e.g. csdistill model fetch / model export), a hub "
                             "id or preset:<name>")
        return UserError(f"{what} {name!r}: the directory could not be loaded ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); it must hold a save_pretrained() copy")
    if _offline():
        return UserError(f"{what} {name!r} is not a local path and not in the Hugging Face cache, and HF_HUB_OFFLINE "
                          f"is set, so nothing is downloaded; download it first (huggingface-cli download {name}) "
                          "or pass a local directory")
    return UserError(f"{what} {name!r} could not be loaded from the hub ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); check the id or pass a local directory")


def load_tokenizer(name_or_path: str, fallback: str = ""):
    """The tokenizer of a hub id or local directory; presets use `fallback` when it is a real
    model (the teacher's tokenizer), else the character tokenizer. pad_token defaults to EOS."""
    name = name_or_path or fallback
    if not name:
        raise UserError("no tokenizer: model.tokenizer and model.name_or_path are both empty; set one")
    if parse_preset(name) is not None:
        if fallback and fallback != name and parse_preset(fallback) is None:
            return load_tokenizer(fallback)
        from csdistill.data.tokenizer import build_char_tokenizer

        return build_char_tokenizer()
    from transformers import AutoTokenizer

    arguments = _gguf_arguments(name) if is_gguf(name) else {  # a missing .gguf or gguf package: its own error
        "pretrained_model_name_or_path": str(Path(name).expanduser()) if _is_local_path(name) else name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(**arguments)
    except (OSError, ValueError) as err:
        raise _load_error("tokenizer", name, err) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"tokenizer {name!r} has neither pad_token nor eos_token; add a pad token to it")
        tokenizer.pad_token = tokenizer.eos_token
        logger.warning("tokenizer %r has no pad_token: using eos_token %r for padding", name, tokenizer.eos_token)
    return tokenizer


# --------------------------------------------------------------------------- GGUF files


def is_gguf(name_or_path: str) -> bool:
    """True for a path ending in .gguf (a llama.cpp model file)."""
    return str(name_or_path).lower().endswith(".gguf")


def _gguf_arguments(name: str) -> dict:
    """from_pretrained keywords for a .gguf file; a one-line error when the file or the gguf package is missing."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"model {name!r}: the GGUF file does not exist; pass an existing .gguf file")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise UserError(f"model {name!r}: reading a GGUF file needs the gguf package; "
                         "pip install 'csdistill[gguf]' (or pip install gguf)") from None
    return {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}


def load_gguf_model(name: str, dtype: torch.dtype = torch.float32):
    """A GGUF file as a plain (dequantised) transformers model: its gguf quantization config is dropped,
    so save_pretrained writes ordinary safetensors that load without gguf."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(**_gguf_arguments(name), dtype=dtype)
    except (OSError, RuntimeError) as err:
        raise _load_error("model", name, err) from None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the weights are dequantised floats now
    model.hf_quantizer = None
    return model


# --------------------------------------------------------------------------- models


def _weight_dtype(precision: str) -> torch.dtype:
    """bf16 weights on CUDA only; on CPU bf16 means fp32 weights under autocast (done by the loop)."""
    if precision not in ("fp32", "bf16"):
        raise UserError(f"precision={precision!r} is not valid; choose fp32 or bf16")
    return torch.bfloat16 if precision == "bf16" and torch.cuda.is_available() else torch.float32


def build_preset(name: str, vocab_size: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A tiny model from PRESETS[name](vocab_size), initialised from `seed` (global RNG untouched)."""
    from transformers import AutoModelForCausalLM

    config = _preset_factory(name)(vocab_size or default_vocab_size())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.to(dtype)


def load_model(name_or_path: str, vocab_size: int | None = None, precision: str = "fp32",
               trust_remote_code: bool = False, seed: int = 0):
    """A causal LM: preset:<name>[@seed] (vocab_size rows, default the char tokenizer's; the @seed wins
    over `seed`), or a local directory / hub id (vocab_size ignored) via from_pretrained."""
    dtype = _weight_dtype(precision)
    preset = parse_preset(name_or_path)
    if preset is not None:
        name, name_seed = preset
        return build_preset(name, vocab_size, seed if name_seed is None else name_seed, dtype)
    from transformers import AutoModelForCausalLM

    if is_gguf(name_or_path):
        return load_gguf_model(name_or_path, dtype)
    source = str(Path(name_or_path).expanduser()) if _is_local_path(name_or_path) else name_or_path
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _load_error("model", name_or_path, err) from None


def output_vocab_size(model) -> int:
    """Rows of the LM head: the number of logits the model produces per position."""
    head = unwrap_model(model).get_output_embeddings()
    if head is None:
        raise UserError(f"{type(unwrap_model(model)).__name__} has no output embeddings (LM head); use a causal LM")
    return int(head.weight.shape[0])  # a PEFT LoRA layer exposes its base layer's weight here


def _check_tokenizer_fits(model, tokenizer, key: str) -> None:
    rows = output_vocab_size(model)
    if len(tokenizer) > rows:
        raise UserError(f"{key}: the tokenizer has {len(tokenizer)} tokens but the model has only {rows} output "
                         "rows; token ids would fall outside the embedding. Use the model's own tokenizer "
                         "(or resize the model's embeddings before training)")


def _wrap_lora(model, lora_cfg):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=list(lora_cfg.target_modules) or None, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"model.lora.target_modules={list(lora_cfg.target_modules)!r}: {err}; name modules of "
                         "this architecture (e.g. q_proj, v_proj for Llama/Qwen2, c_attn for GPT-2)") from None


def load_student(cfg, tokenizer):
    """cfg.model as a trainable model (train mode); wrapped in a PEFT LoRA adapter when cfg.model.lora.enabled
    (then only the adapter's parameters require grad)."""
    m = cfg.model
    model = load_model(m.name_or_path, vocab_size=len(tokenizer), precision=m.precision,
                       trust_remote_code=m.trust_remote_code)
    _check_tokenizer_fits(model, tokenizer, f"model.name_or_path={m.name_or_path!r}")
    if m.lora.enabled:
        model = _wrap_lora(model, m.lora)
    return model.train()


def load_teacher(cfg, tokenizer):
    """cfg.teacher frozen: eval mode (dropout off), no parameter requires grad; a LoRA adapter at
    cfg.teacher.adapter is loaded and merged into the weights first."""
    t = cfg.teacher
    if not t.name_or_path:
        raise UserError("teacher.name_or_path is empty; set the teacher model (hub id, path or preset:<name>)")
    model = load_model(t.name_or_path, vocab_size=len(tokenizer), precision=t.precision,
                       trust_remote_code=t.trust_remote_code)
    if t.adapter:
        if not (Path(t.adapter) / "adapter_config.json").is_file():
            raise UserError(f"teacher.adapter={t.adapter!r}: no adapter_config.json there; point it at a PEFT "
                             "adapter directory (save_pretrained of a PeftModel), or leave it empty")
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, t.adapter).merge_and_unload()
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- vocabulary check


def _tokenizer_difference(a, b) -> str:
    """'' when a and b tokenise alike (same vocabulary and special ids), else the first difference."""
    if a is b:
        return ""
    for special in ("eos_token_id", "bos_token_id", "unk_token_id"):
        if getattr(a, special, None) != getattr(b, special, None):
            return f"{special} {getattr(a, special, None)} vs {getattr(b, special, None)}"
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    if vocab_a == vocab_b:
        return ""
    only_a = sorted(set(vocab_a.items()) - set(vocab_b.items()), key=lambda item: item[1])
    only_b = sorted(set(vocab_b.items()) - set(vocab_a.items()), key=lambda item: item[1])
    first = (only_a or only_b)[0]
    return (f"{len(vocab_a)} vs {len(vocab_b)} tokens; {len(only_a)} (token, id) pairs only in the student's, "
            f"{len(only_b)} only in the teacher's, e.g. {first[0]!r} -> {first[1]}")


def check_vocab(student_tokenizer, teacher_tokenizer, student_model, teacher_model) -> int:
    """The number of logits compared per position: the shared vocabulary size.

    Same tokenizer and same head size V: V. Same tokenizer, heads padded differently within a
    family (e.g. 151936 vs 152064): min(V_s, V_t), with a warning, provided every real token id
    lies below it. Anything else: ValueError naming both tokenizers and sizes, and the fix.
    """
    v_student, v_teacher = output_vocab_size(student_model), output_vocab_size(teacher_model)
    name_s = getattr(student_tokenizer, "name_or_path", "") or "student tokenizer"
    name_t = getattr(teacher_tokenizer, "name_or_path", "") or "teacher tokenizer"
    sizes = (f"student {name_s!r}: {len(student_tokenizer)} tokens, {v_student} logits; "
             f"teacher {name_t!r}: {len(teacher_tokenizer)} tokens, {v_teacher} logits")
    difference = _tokenizer_difference(student_tokenizer, teacher_tokenizer)
    if difference:
        raise UserError(f"the student and teacher tokenizers differ ({difference}); {sizes}. Logit distillation "
                         "compares the two models token id by token id, so both must share one tokenizer: pick a "
                         "teacher and student of the same model family, or set model.tokenizer to the teacher's")
    shared = min(v_student, v_teacher)
    if len(student_tokenizer) > shared:
        raise UserError(f"the tokenizer has {len(student_tokenizer)} tokens but a model has only {shared} logits "
                         f"({sizes}); token ids would fall outside a head. Use the models' own tokenizer")
    if v_student != v_teacher:
        logger.warning("student and teacher heads differ in size (%d vs %d logits) with the same tokenizer "
                       "(%d tokens): comparing only the shared ids [0, %d), padding rows ignored",
                       v_student, v_teacher, len(student_tokenizer), shared)
    return shared


# --------------------------------------------------------------------------- head + hidden states


def unwrap_model(model):
    """The transformers PreTrainedModel inside DDP/DeepSpeed (`.module`) and PEFT wrappers."""
    while True:
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP, DeepSpeed engine
            model = model.module
        else:
            return model


def unwrap_lm_head(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight (V, H) and bias (V,) or None — the live parameters (tied ones included)."""
    head = unwrap_model(model).get_output_embeddings()
    if head is None:
        raise UserError(f"{type(unwrap_model(model)).__name__} has no output embeddings (LM head); use a causal LM")
    if hasattr(head, "base_layer"):  # a PEFT LoRA layer on the head: its weight alone is not the head
        raise UserError("the LM head carries a LoRA adapter, which the fused loss cannot see; remove lm_head from "
                         "model.lora.target_modules or set loss.fused=false")
    return head.weight, getattr(head, "bias", None)


def _accepts(module, argument: str) -> bool:
    return argument in inspect.signature(unwrap_model(module).forward).parameters


def hidden_states_and_head(model, input_ids: torch.Tensor, attention_mask: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Final hidden states (B, T, H) — after the final norm, the LM head's input — and the head's
    weight (V, H) and bias, so that logits = hidden @ weight.T + bias.

    The forward runs through the outermost wrapper (DDP keeps its gradient sync, PEFT its adapters);
    a hook on the base model captures its last hidden state, and logits_to_keep=1 keeps the head's
    own product to one position (B, 1, V) instead of (B, T, V).
    """
    base = unwrap_model(model).base_model  # LlamaModel, GPT2Model, Qwen2Model ...
    captured: list[torch.Tensor] = []
    hook = base.register_forward_hook(lambda module, args, output: captured.append(output[0]))
    try:
        extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
    finally:
        hook.remove()
    assert len(captured) == 1, "the base model must run exactly once per forward"
    weight, bias = unwrap_lm_head(model)
    return captured[0], weight, bias  # (B, T, H), (V, H), (V,) | None


def head_scale(model) -> float | None:
    """The final logit scale when `model`'s logits are scale·(hidden·Wᵀ + b) of a plain head; None when the
    head carries an adapter or the architecture transforms its logits otherwise (e.g. soft-capping)."""
    head = unwrap_model(model).get_output_embeddings()
    if head is None or hasattr(head, "base_layer"):
        return None
    try:
        return final_logit_scale(model)
    except UserError:
        return None


def response_logits(model, batch: dict, valid: torch.Tensor) -> torch.Tensor:
    """(N, V) logits at the `valid` (B, T) positions: the LM head runs on those N rows only, never
    on the prompt and padding (B, T, V). Call under the run's autocast."""
    scale = head_scale(model)
    if scale is None:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[valid]
    hidden, weight, bias = hidden_states_and_head(model, batch["input_ids"], batch["attention_mask"])  # (B, T, H)
    logits = torch.nn.functional.linear(hidden[valid], weight, bias)  # (N, V)
    return logits if scale == 1.0 else logits * scale


def final_logit_scale(model) -> float:
    """The factor by which the architecture turns hidden·Wᵀ + b into its logits: 1, Cohere's
    config.logit_scale, or 1 / Granite's config.logits_scaling. A non-linear final transform
    (Gemma-2's final_logit_softcapping) is refused: the teacher's logits are then not a scaled head."""
    config = getattr(unwrap_model(model), "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap:
        raise UserError(f"{type(unwrap_model(model)).__name__} caps its logits (final_logit_softcapping={softcap}), "
                        "which the hidden-state teacher cache does not apply; use `teacher cache --store topk`")
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    if getattr(config, "logits_scaling", None):
        scale /= float(config.logits_scaling)
    return scale


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16: autocast matmuls to bfloat16 (CPU: AMX); losses still upcast to float32 inside."""
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
