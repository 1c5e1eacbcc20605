"""A top-k cache from a vLLM (OpenAI-compatible) server's teacher-forced `prompt_logprobs`.

1. `csdistill teacher vllm-requests --config x.yaml --top-k 64 --model NAME --out requests.jsonl`
   writes one completions request body per sequence the run trains or validates on:
       {"model": NAME, "prompt": [token ids], "echo": true, "max_tokens": 0, "prompt_logprobs": 64}
   (the prompt is the whole tokenised sequence, so no re-tokenisation happens on the server; start
   the server with `--max-logprobs 64` or more).
2. POST each body to /v1/completions and write one line per request: {"request": BODY, "response":
   SERVER_JSON}. The documented response layout is vLLM's: response["choices"][0]["prompt_logprobs"]
   is a list with one entry per prompt token — null for the first, else a map
   {"<token id>": {"logprob": float, "rank": int, "decoded_token": str}} of k entries, or k + 1
   when the actual token is not in the top-k.
3. `csdistill teacher from-vllm --config x.yaml --responses responses.jsonl --top-k 64 --out DIR`.

Entry j scores token j given tokens < j, i.e. it is our row for position j − 1. The tail mass is
log(1 − Σ_topk p), from the returned values (float64). A live vLLM server was not tested here.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from csdistill.cache.spec import build_spec
from csdistill.cache.store import read_manifest, shard_name, write_shard
from csdistill.config import ConfigError, load_config
from csdistill.losses.reduce import shift_labels, valid_mask
from csdistill.losses.sparse import SparseTeacher
from csdistill.cache.keys import example_key


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="the training YAML config")
    parser.add_argument("--top-k", type=int, required=True, help="prompt_logprobs per position")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--out", required=True, help="requests JSONL to write")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="the training YAML config")
    parser.add_argument("--responses", required=True, help="JSONL of {request, response} pairs")
    parser.add_argument("--top-k", type=int, required=True, help="k of the requests (prompt_logprobs)")
    parser.add_argument("--out", required=True, help="cache folder to create")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"), help="log-probability storage")
    parser.add_argument("--shard-size", type=int, default=1024, help="sequences per shard")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")


def _run_inputs(args):
    from csdistill.cache.runner import cache_sequences
    from csdistill.models import load_tokenizer

    cfg = load_config(args.config, args.overrides)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path, fallback=cfg.teacher.name_or_path)
    return cfg, tokenizer, cache_sequences(cfg, tokenizer)


def requests_command(args: argparse.Namespace) -> int:
    _, _, sequences = _run_inputs(args)
    unique = list(dict.fromkeys(tuple(ex["input_ids"]) for ex in sequences))
    lines = [json.dumps({"model": args.model, "prompt": list(ids), "echo": True, "max_tokens": 0,
                         "prompt_logprobs": args.top_k}) for ids in unique]
    Path(args.out).write_text("".join(line + "\n" for line in lines))
    print(f"csdistill: {len(lines)} requests -> {args.out}")
    return 0


def convert_command(args: argparse.Namespace) -> int:
    cfg, tokenizer, sequences = _run_inputs(args)
    manifest = convert(cfg, tokenizer, sequences, args.responses, args.top_k, args.out, args.dtype, args.shard_size)
    print(f"csdistill: vLLM responses -> teacher cache {args.out}: {manifest['positions']} positions, k={args.top_k}")
    return 0


def read_responses(path: str | Path) -> dict[tuple, list]:
    """{prompt token ids: prompt_logprobs list} from a {request, response} JSONL."""
    table = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
            prompt = tuple(int(i) for i in item["request"]["prompt"])
            logprobs = item["response"]["choices"][0]["prompt_logprobs"]
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise ConfigError(f"{where}: not a {{request, response}} line with response.choices[0].prompt_logprobs "
                              f"({type(err).__name__}: {err}); see csdistill.cache.vllm for the layout") from None
        if not isinstance(logprobs, list) or len(logprobs) != len(prompt):
            raise ConfigError(f"{where}: prompt_logprobs has {len(logprobs) if isinstance(logprobs, list) else 'no'} "
                              f"entries for {len(prompt)} prompt tokens; request with echo and prompt_logprobs")
        table[prompt] = logprobs
    return table


def _position(entry, actual: int, top_k: int, vocab: int, where: str):
    """(top-k ids, their logprobs, log p(actual), log tail) of one prompt_logprobs entry."""
    if not isinstance(entry, dict) or len(entry) < top_k:
        raise ConfigError(f"{where}: {len(entry) if isinstance(entry, dict) else 0} logprobs, --top-k={top_k} needs "
                          f"at least {top_k}; request with prompt_logprobs={top_k} (server --max-logprobs >= {top_k})")
    items = sorted(((int(token), float(value["logprob"])) for token, value in entry.items()), key=lambda x: -x[1])
    top = items[:top_k]
    values = dict(items)
    if actual not in values:
        raise ConfigError(f"{where}: the actual token {actual} has no logprob; vLLM returns it always — "
                          "is the response from another prompt?")
    if any(not math.isfinite(v) for _, v in top) or max(t for t, _ in top) >= vocab:
        raise ConfigError(f"{where}: non-finite logprobs or token ids >= V={vocab}; wrong model or tokenizer")
    mass = sum(math.exp(v) for _, v in top)
    tail = math.log1p(-mass) if mass < 1.0 else -math.inf
    return [t for t, _ in top], [v for _, v in top], values[actual], tail


def _rows(example: dict, logprobs: list, top_k: int, vocab: int, where: str) -> SparseTeacher:
    ids = torch.as_tensor(example["input_ids"])[None]  # (1, T)
    labels = shift_labels(torch.as_tensor(example["labels"])[None])[0]  # (T,)
    positions = valid_mask(labels).nonzero()[:, 0].tolist()
    parts = [_position(logprobs[i + 1], int(ids[0, i + 1]), top_k, vocab, f"{where} position {i + 1}")
             for i in positions]
    top_ids, top_values, target, tail = (list(x) for x in zip(*parts)) if parts else ([], [], [], [])
    return SparseTeacher(torch.tensor(top_ids, dtype=torch.long).reshape(-1, top_k),
                         torch.tensor(top_values, dtype=torch.float32).reshape(-1, top_k),
                         torch.tensor(target, dtype=torch.float32), torch.tensor(tail, dtype=torch.float32),
                         labels[positions].long())


def convert(cfg, tokenizer, sequences: list[dict], responses: str, top_k: int, out: str | Path,
            dtype: str = "fp16", shard_size: int = 1024) -> dict:
    """Write the cache of `sequences` from vLLM responses; every sequence needs its response."""
    from csdistill.cache.runner import _prepare_folder, _write_manifest

    table = read_responses(responses)
    missing = sum(tuple(ex["input_ids"]) not in table for ex in sequences)
    if missing:
        raise ConfigError(f"--responses {responses!r}: no response for {missing} of {len(sequences)} sequences of this "
                          "config; send every request of `csdistill teacher vllm-requests` for this config")
    vocab = len(tokenizer)
    model = json.loads(Path(responses).read_text().splitlines()[0])["request"].get("model", "")
    teacher = {"name_or_path": model, "source": "vllm prompt_logprobs", "responses_sha256": _sha(responses)}
    spec = build_spec(cfg, tokenizer, teacher, top_k, dtype, vocab)
    out = Path(out)
    _prepare_folder(out, spec, True)
    shards = [sequences[i:i + shard_size] for i in range(0, len(sequences), shard_size)]
    for index, shard in enumerate(shards):
        rows = [_rows(ex, table[tuple(ex["input_ids"])], top_k, vocab, responses) for ex in shard]
        write_shard(out / shard_name(index), SparseTeacher.cat(rows), [example_key(ex) for ex in shard],
                    [len(r) for r in rows], spec)
    _write_manifest(out, spec, len(shards), 1)
    return read_manifest(out)


def _sha(path) -> str:
    from csdistill.files import file_sha256

    return file_sha256(path)
