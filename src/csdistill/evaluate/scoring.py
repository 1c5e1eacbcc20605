"""Scoring of one set's generations: text metrics over the passes, task metrics, optional semantic/COMET.

`passes` is a list over generation passes (seeds) of the predictions, one per record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from csdistill.evaluate import metrics as M
from csdistill.evaluate.semantic import semantic_similarity_per_pass
from csdistill.errors import UserError


def record_references(record: dict) -> list[str]:
    """record['references'] when non-empty, else [record['response']] when non-empty, else []."""
    given = record.get("references") or []
    refs = [str(r) for r in ([given] if isinstance(given, str) else given) if str(r).strip()]  # a string is one
    if refs:
        return refs
    response = str(record.get("response") or "")
    return [response] if response.strip() else []


def task_specs(name: str, records: Sequence[dict]) -> list:
    """The registry TaskSpec of each record (None for records without a 'task')."""
    from csdistill.tasks.registry import get_task

    specs = []
    for i, record in enumerate(records):
        try:
            specs.append(get_task(record["task"]) if record.get("task") else None)
        except ValueError as err:
            raise UserError(f"set {name!r}, record {i}: {err}") from None
    return specs


def text_scores(passes: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict:
    """ROUGE-L / BLEU / chrF on examples with references, diversity on all; mean ± std over passes."""
    scored = [i for i, refs in enumerate(references) if refs]
    out: dict = {"n_with_references": len(scored)}
    if scored:
        refs = [references[i] for i in scored]
        for key, fn in (("rouge_l", M.mean_rouge_l), ("bleu", M.corpus_bleu), ("chrf", M.corpus_chrf)):
            out[key] = M.mean_std([fn([p[i] for i in scored], refs) for p in passes])
    out["self_bleu"] = {"per_prompt": M.self_bleu_per_prompt(list(zip(*passes))) if len(passes) > 1 else None,
                        "set": M.mean_std([M.self_bleu(p) or 0.0 for p in passes])}
    out["distinct_1"] = M.mean_std([M.distinct_n(p, 1) for p in passes])
    out["distinct_2"] = M.mean_std([M.distinct_n(p, 2) for p in passes])
    return out


def task_scores(passes: Sequence[Sequence[str]], records: Sequence[dict], specs: Sequence) -> dict:
    """Exact match over 'exact' records (mean ± std over passes); distribution scores over 'distribution' ones."""
    out: dict = {}
    exact = [i for i, s in enumerate(specs) if s is not None and s.kind == "exact"]
    if exact:
        per_pass = [100.0 * sum(bool(specs[i].check(p[i], records[i])) for i in exact) / len(exact) for p in passes]
        out["exact_match"] = {**M.mean_std(per_pass), "n": len(exact)}
    dist = [i for i, s in enumerate(specs) if s is not None and s.kind == "distribution"]
    if dist:
        per_prompt = [M.distribution_scores([p[i] for p in passes], records[i], specs[i].true_distribution(records[i]),
                                            specs[i].check) for i in dist]
        out["distribution"] = M.aggregate_distribution(per_prompt)
    return out


def semantic_scores(passes: Sequence[Sequence[str]], references: Sequence[Sequence[str]], encoder) -> dict:
    """{"semantic": mean ± std over passes} on the examples with references ({} if none); see evaluate/semantic.py."""
    scored = [i for i, refs in enumerate(references) if refs]
    if not scored:
        return {}
    per_pass = semantic_similarity_per_pass([[p[i] for i in scored] for p in passes], [references[i] for i in scored],
                                            encoder)
    return {"semantic": M.mean_std(per_pass)}


def comet_scores(model_path: str, sources: Sequence[str], passes: Sequence[Sequence[str]],
                 references: Sequence[Sequence[str]]) -> dict:
    """COMET × 100 (first reference) per pass, mean ± std; only with the optional unbabel-comet package."""
    try:
        from comet import load_from_checkpoint
    except ImportError:
        raise UserError(f"eval.comet_model={model_path!r}: COMET needs the optional 'unbabel-comet' package "
                         "(pip install unbabel-comet); or leave eval.comet_model empty") from None
    if not Path(model_path).is_file():
        raise UserError(f"eval.comet_model={model_path!r} not found; pass the path of a downloaded COMET "
                         "checkpoint (…/checkpoints/model.ckpt)")
    comet = load_from_checkpoint(model_path)
    keep = [i for i, refs in enumerate(references) if refs]
    per_pass = []
    for preds in passes:
        data = [{"src": sources[i], "mt": preds[i], "ref": references[i][0]} for i in keep]
        out = comet.predict(data, batch_size=16, gpus=1 if torch.cuda.is_available() else 0, progress_bar=False)
        per_pass.append(100.0 * float(out.system_score))
    return M.mean_std(per_pass)
