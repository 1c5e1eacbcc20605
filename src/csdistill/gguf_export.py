"""`csdistill model export DIR --to gguf --out F.gguf`: a student folder as one llama.cpp file.

    csdistill model export runs/compare/runs/csd_SS_seed0/final --to gguf --out student.gguf --dtype q8_0

DIR is a save_pretrained() folder of the families `student init` makes: Llama / Mistral (GGUF
architecture ``llama``), Qwen2 (``qwen2``) and GPT-2 (``gpt2``), pruned students included. What goes in:

- tensors, named by the gguf package's own map (``gguf.get_tensor_name_map``). Llama's q/k projection
  rows are permuted the way llama.cpp's converter does (its rope pairs dimensions (2i, 2i+1), the HF
  weights pair (i, i + head_dim/2)); transformers' GGUF loader undoes it. GPT-2's Conv1D weights,
  stored (in, out), are transposed to (out, in). ``--dtype``: f32, f16, bf16 or q8_0 for the matrices;
  norms, biases and 1-D tensors stay f32, and a q8_0 matrix whose rows are not a multiple of 32 is f16.
- the hyper-parameters llama.cpp reads (``<arch>.block_count``, ``.feed_forward_length``,
  ``.attention.key_length``: the head width, which pruning heads keeps while the width shrinks, ...);
- the tokenizer: byte-level BPE tokens, merges and token types (special added tokens CONTROL, other
  added tokens USER_DEFINED, padding rows UNUSED), bos/eos/unk/pad ids, add-bos/eos flags, the chat
  template;
- provenance under ``csdistill.*``: the teacher, the kept layers, the loss (from ``csdistill_student.json``
  beside the weights or in the training run's student start, and the run's ``config.yaml``).

Refused with one line (``UserError``): other model types, rope scaling, a sliding window, a Qwen2 model
with pruned heads (llama.cpp's qwen2 graph wants heads x head_dim = width; Llama's does not), layers whose
shapes differ (llama.cpp holds one MLP width and one head count for the whole model), a tokenizer that
is not byte-level BPE (llama.cpp's BPE needs merges: csdistill's character tokenizer has none).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from csdistill.errors import UserError
from csdistill.files import atomic_path
from csdistill.provenance import student_provenance

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gpt2": "gpt2"}  # HF model_type -> GGUF
CONV1D_WEIGHTS = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5  # llama.cpp token types
Q8_BLOCK = 32  # values per q8_0 block: a row's length must be a multiple
logger = logging.getLogger(__name__)


def _fail(message: str) -> UserError:
    return UserError(f"model export --to gguf: {message}")


# --------------------------------------------------------------------------- checks


def check_student_folder(source: str | Path) -> Path:
    """`source` as a folder holding config.json; a one-line UserError naming what is wrong otherwise."""
    path = Path(source).expanduser()
    if not path.exists():
        raise _fail(f"{str(source)!r} does not exist; pass a student folder (save_pretrained format)")
    if path.is_file():
        what = "is already a GGUF file" if path.suffix.lower() == ".gguf" else "is a file"
        raise _fail(f"{str(source)!r} {what}; pass a student folder (save_pretrained format)")
    if not (path / "config.json").is_file():
        raise _fail(f"the folder {str(source)!r} has no config.json; pass a save_pretrained() model folder")
    if not (path / "tokenizer.json").is_file():
        raise _fail(f"the folder {str(source)!r} has no tokenizer.json; save the tokenizer beside the model "
                    "(tokenizer.save_pretrained(folder))")
    return path


def check_new_file(out: str | Path) -> Path:
    """`out` as a Path; UserError if it exists (an earlier export is never replaced) or its folder is missing."""
    path = Path(out).expanduser()
    if path.exists():
        raise _fail(f"--out {str(out)!r} already exists; choose a new file name or remove it")
    if not path.parent.is_dir():
        raise _fail(f"--out {str(out)!r}: the folder {str(path.parent)!r} does not exist; create it first")
    return path


def gguf_architecture(config) -> str:
    """The GGUF architecture name of an HF config; UserError for what llama.cpp (or this export) cannot run."""
    kind = getattr(config, "model_type", "")
    if kind not in ARCHITECTURES:
        raise _fail(f"model_type {kind!r} is not supported; GGUF export knows {', '.join(ARCHITECTURES)}")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise _fail(f"rope type {rope.get('rope_type', rope.get('type'))!r} is not exported (only the default "
                    "rope); llama.cpp would need its scaling keys")
    window = getattr(config, "sliding_window", None) if kind == "mistral" else (
        config.sliding_window if getattr(config, "use_sliding_window", False) else None)
    if window:
        raise _fail(f"sliding_window {window}: llama.cpp's {ARCHITECTURES[kind]} architecture attends to the whole "
                    "context; turn the window off in config.json if the model never saw longer inputs")
    heads, head_dim = getattr(config, "num_attention_heads", 0), getattr(config, "head_dim", None)
    if kind == "qwen2" and head_dim and heads * head_dim != config.hidden_size:
        raise _fail(f"a Qwen2 model with {heads} heads x head_dim {head_dim} != hidden_size {config.hidden_size} "
                    "(heads pruned): llama.cpp's qwen2 graph needs heads x head_dim = hidden_size; prune the "
                    "layers or the MLP only")
    return ARCHITECTURES[kind]


def check_uniform_layers(state: dict[str, torch.Tensor], prefix: str) -> None:
    """UserError naming the first layer whose tensor shapes differ from layer 0's (llama.cpp has one MLP
    width, one head count and one head width per model)."""
    layers: dict[int, dict[str, tuple]] = {}
    for name, tensor in state.items():
        if name.startswith(prefix):
            index, _, rest = name[len(prefix):].partition(".")
            layers.setdefault(int(index), {})[rest] = tuple(tensor.shape)
    first = layers.get(0, {})
    for index in sorted(layers):
        for rest, shape in layers[index].items():
            if first.get(rest) != shape:
                raise _fail(f"layer {index} {rest} has shape {shape} but layer 0's is {first.get(rest)}: "
                            "llama.cpp runs one MLP width and one head count for all layers")


# --------------------------------------------------------------------------- tensors


def permute_for_rope(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Llama q/k rows (heads * head_dim, ...) from HF's half-split rope order (i, i + d/2) to llama.cpp's
    interleaved order (2i, 2i + 1), head by head: llama.cpp's converter does the same."""
    head_dim = weight.shape[0] // heads
    rows = weight.reshape(heads, 2, head_dim // 2, *weight.shape[1:])  # (heads, half, d/2, ...)
    return rows.transpose(1, 2).reshape(weight.shape)


def gguf_tensors(model, arch: str) -> list[tuple[str, torch.Tensor]]:
    """(GGUF name, float32 tensor in torch (out, in) layout) for every tensor llama.cpp reads."""
    import gguf

    config, state = model.config, model.state_dict()
    layers = config.n_layer if arch == "gpt2" else config.num_hidden_layers
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out = []
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied and arch != "gpt2":
            continue  # llama.cpp reuses token_embd when there is no output tensor
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            if hf_name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
                continue  # buffers, not weights
            raise _fail(f"tensor {hf_name!r} has no GGUF name in the gguf package's {arch} map")
        tensor = tensor.detach().float()
        if arch == "gpt2" and hf_name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.T
        elif arch == "llama" and ".self_attn.q_proj." in hf_name:
            tensor = permute_for_rope(tensor, config.num_attention_heads)
        elif arch == "llama" and ".self_attn.k_proj." in hf_name:
            tensor = permute_for_rope(tensor, config.num_key_value_heads)
        out.append((name, tensor.contiguous()))
    return out


def encode_tensor(tensor: torch.Tensor, dtype: str):
    """(numpy data, raw GGML type or None) of one tensor in `dtype`; 1-D tensors stay f32."""
    import gguf

    values = tensor.numpy()
    if tensor.ndim < 2 or dtype == "f32":
        return values, None
    if dtype == "q8_0" and tensor.shape[-1] % Q8_BLOCK:
        dtype = "f16"  # q8_0 packs each row in blocks of 32
    if dtype == "f16":
        return values.astype(np.float16), None
    kind = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[dtype]
    return gguf.quants.quantize(values, kind), kind


def file_type(dtype: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]


# --------------------------------------------------------------------------- hyper-parameters


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def add_hyperparameters(writer, config, arch: str, name: str) -> None:
    """The architecture keys llama.cpp reads, from the HF config."""
    writer.add_name(name)
    if arch == "gpt2":
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        return
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_key_length(head_dim)  # pruned heads: head_dim != hidden_size / heads
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


# --------------------------------------------------------------------------- tokenizer


def vocabulary(tokenizer_json: dict, n_vocab: int) -> tuple[list[str], list[int], str]:
    """(tokens, token types, llama.cpp pre-tokenizer name) of a byte-level BPE tokenizer.json, padded to the
    model's n_vocab embedding rows with UNUSED tokens. Other tokenizers are refused: llama.cpp's BPE needs
    merges, which a WordLevel vocabulary (csdistill's character tokenizer) does not have."""
    model, added = tokenizer_json["model"], {t["id"]: t for t in tokenizer_json.get("added_tokens", [])}
    decoder_type = (tokenizer_json.get("decoder") or {}).get("type")
    if model["type"] != "BPE" or decoder_type != "ByteLevel" or model.get("byte_fallback"):
        raise _fail(f"tokenizer model {model['type']!r} (decoder {decoder_type!r}) is not exported: llama.cpp "
                    "needs a byte-level BPE tokenizer with merges (GPT-2, Llama 3, SmolLM, Qwen2 style)")
    pre = pre_tokenizer_name(tokenizer_json.get("pre_tokenizer"))
    vocab = dict(model.get("vocab") or {})
    vocab.update({t["content"]: i for i, t in added.items()})
    beyond = sorted(t for t, i in vocab.items() if i >= n_vocab)
    if beyond:  # e.g. the default unk '<|endoftext|>' transformers' Qwen2 tokenizer appends to a small vocabulary
        if any(t not in {a["content"] for a in added.values()} for t in beyond):
            raise _fail(f"the tokenizer has ids up to {max(vocab.values())} but the model only {n_vocab} embedding "
                        "rows; resize the embeddings (model.resize_token_embeddings) before exporting")
        logger.warning("GGUF export: added tokens %s have ids past the model's %d embedding rows (the model "
                       "cannot read them): left out", beyond, n_vocab)
        vocab = {t: i for t, i in vocab.items() if i < n_vocab}
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]"), types.append(TOKEN_UNUSED)
        elif i in added:
            tokens.append(by_id[i]), types.append(TOKEN_CONTROL if added[i].get("special") else TOKEN_USER_DEFINED)
        else:
            tokens.append(by_id[i]), types.append(TOKEN_NORMAL)
    return tokens, types, pre


def pre_tokenizer_name(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name for a byte-level pre-tokenizer (how text is split before the merges)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    steps = (pre_tokenizer or {}).get("pretokenizers") or ([pre_tokenizer] if pre_tokenizer else [])
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # SmolLM's original tokenizer: digits one by one, then GPT-2's split
    by_regex = {}  # transformers' table of llama.cpp names -> split regex, read backwards (first name wins)
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        by_regex.setdefault(regex, name)
    if kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") in by_regex:
        return by_regex[steps[0]["pattern"]["Regex"]]  # Llama 3 ('llama3'), Qwen2 ('qwen2'), ...
    raise _fail(f"pre-tokenizer {json.dumps(pre_tokenizer)[:120]} has no llama.cpp name known to csdistill; "
                "known: GPT-2's byte-level split, SmolLM's (digits + GPT-2) and the Split regexes transformers "
                "maps (Llama 3, Qwen2, ...)")


def add_special_flags(writer, tokenizer) -> None:
    """tokenizer.ggml.add_bos_token / add_eos_token: whether encoding a text adds them (llama.cpp's default
    for BPE differs between versions, so both are written)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    extra = len(full) - len(plain)
    writer.add_add_bos_token(extra > 0 and tokenizer.bos_token_id is not None and full[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(extra > 0 and tokenizer.eos_token_id is not None and full[-1] == tokenizer.eos_token_id)


def add_tokenizer(writer, folder: Path, tokens: list[str], types: list[int], pre: str) -> None:
    """Tokens and types (from `vocabulary`), merges, special ids and chat template of the folder's tokenizer."""
    import gguf
    from csdistill.models import load_tokenizer

    n_vocab = len(tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
    special.add_special_token = {}  # written from the tokenizer's behaviour below
    special.add_to_gguf(writer, quiet=True)
    add_special_flags(writer, load_tokenizer(str(folder)))


# --------------------------------------------------------------------------- provenance


def add_provenance(writer, info: dict, dtype: str) -> None:
    """csdistill.* keys: each field on its own, and all of them as one JSON string."""
    writer.add_string("csdistill.dtype", dtype)
    for key, value in info.items():
        if isinstance(value, list):
            writer.add_array(f"csdistill.{key}", [int(v) for v in value])
        elif isinstance(value, int):
            writer.add_uint64(f"csdistill.{key}", value)
        else:
            writer.add_string(f"csdistill.{key}", str(value))
    writer.add_string("csdistill.provenance", json.dumps(info, sort_keys=True))


# --------------------------------------------------------------------------- export


def export_gguf(source: str | Path, out: str | Path, dtype: str = "f32") -> Path:
    """Write the student folder `source` as the new GGUF file `out` (atomically); see the module docstring."""
    import gguf
    from csdistill.models import load_model

    if dtype not in GGUF_DTYPES:
        raise _fail(f"--dtype {dtype!r}: choose one of {', '.join(GGUF_DTYPES)}")
    from transformers import AutoConfig

    folder, path = check_student_folder(source), check_new_file(out)
    config = AutoConfig.from_pretrained(folder)
    arch = gguf_architecture(config)
    check_uniform_layers(_stored_shapes(folder), "transformer.h." if arch == "gpt2" else "model.layers.")
    vocab = vocabulary(json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")), config.vocab_size)
    model = load_model(str(folder)).float().eval()  # Mistral without a sliding window runs as Llama
    tensors = gguf_tensors(model, arch)
    with atomic_path(path) as temp:
        writer = gguf.GGUFWriter(temp, arch)
        add_hyperparameters(writer, model.config, arch, model_name(folder))
        writer.add_file_type(file_type(dtype))
        add_tokenizer(writer, folder, *vocab)
        add_provenance(writer, student_provenance(folder), dtype)
        for tensor_name, tensor in tensors:
            data, raw = encode_tensor(tensor, dtype)
            writer.add_tensor(tensor_name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def run_in_llama_cpp(path: str | Path, prompt_ids: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    """(greedy continuation of `steps` tokens, logits of the prompt positions (T, V)) of a GGUF file in
    llama.cpp on one thread, its KV cache in f32 (llama.cpp's default f16 cache alone moves SmolLM2's logits
    by ~0.06); needs llama-cpp-python (extra ``csdistill[llama_cpp]``)."""
    from llama_cpp import GGML_TYPE_F32, Llama

    model = Llama(str(path), n_ctx=max(256, len(prompt_ids) + steps), n_threads=1, logits_all=True, verbose=False,
                  type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    try:
        model.eval(prompt_ids)
        logits = np.array(model.scores[:len(prompt_ids)])
        tokens = []
        for _ in range(steps):
            tokens.append(int(np.argmax(model.scores[model.n_tokens - 1])))
            model.eval([tokens[-1]])
        return tokens, logits
    finally:
        model.close()


def model_name(folder: Path) -> str:
    """general.name: the folder's name, or the run's for a checkpoint (runs/csd_SS_seed0/final -> csd_SS_seed0)."""
    path = folder.absolute()
    while path.parent != path and (path.name in ("final", "model") or path.name.startswith("checkpoint-")):
        path = path.parent
    return path.name or "student"


def _stored_shapes(folder: Path) -> dict[str, torch.Tensor]:
    """name -> meta tensor of the stored shape of every weight in the folder's safetensors files (read
    before loading: a folder with per-layer widths does not load into one HF config)."""
    from safetensors import safe_open

    shapes = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = torch.empty(handle.get_slice(key).get_shape(), device="meta")
    return shapes
