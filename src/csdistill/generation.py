"""Batched sampling with a KV cache, drawing every random choice from a given torch.Generator.

Our own decode loop rather than ``model.generate``: sampling must come from the caller's generator
(seeded from (seed, step, rank)), so runs reproduce regardless of the global RNG. Greedy decoding
matches ``model.generate(do_sample=False)`` token for token (tested for Llama and GPT-2).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers.cache_utils import DynamicLayer

from csdistill.config import Config, ConfigError, GenerationConfig
from csdistill.errors import UserError, check_writable
from csdistill.seeding import make_generator
from csdistill.files import atomic_write_jsonl


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # (B, P + N) long: left-padded prompt, then N generated columns (pad after EOS)
    completion_mask: torch.Tensor  # (B, P + N) bool: generated tokens up to and including the first EOS
    prompt_length: int  # P: generated tokens start at this column


# What a sampled token is, given its row's uniform draw u in [0, 1): the first token whose cumulative probability
# exceeds u (inverse CDF). Stored with cached generations, so a change of this definition invalidates them.
SAMPLER = "inverse-cdf-per-row-uniforms"


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits (B, V) with tokens outside the top-k and outside the top-p nucleus set to -inf.

    top-p keeps the smallest set of most likely tokens whose probability reaches top_p (always >= 1 token).
    """
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
        sorted_remove = mass_before >= top_p  # the top token always has mass_before 0 and stays
        logits = logits.masked_fill(sorted_remove.scatter(-1, order, sorted_remove), float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, gen: GenerationConfig, uniforms: torch.Tensor | None) -> torch.Tensor:
    """One token per row (B,) from last-position logits (B, V): argmax, or the inverse-CDF pick of each row's
    uniform draw uniforms (B,) in [0, 1) under softmax(filter(logits / temperature))."""
    logits = logits.float()
    if not gen.do_sample:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits / gen.temperature, gen.top_k, gen.top_p).softmax(dim=-1)  # (B, V)
    cdf = probs.cumsum(dim=-1)  # (B, V)
    total = cdf[:, -1:]  # (B, 1): 1 up to float rounding
    below_total = torch.nextafter(total, torch.zeros_like(total))  # rounding never lifts the target to the total
    target = torch.minimum(uniforms.to(cdf.device, cdf.dtype)[:, None] * total, below_total)  # (B, 1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)  # first token with cdf > target: p > 0


def draw_uniforms(generator: torch.Generator, rows: int, steps: int) -> torch.Tensor:
    """(rows, steps) uniforms in [0, 1): row r's draw for its step-t token."""
    return torch.rand(rows, steps, generator=generator, device=generator.device)


def row_uniforms(seeds: Sequence[int], prompt_indices: Sequence[int], steps: int, stream: str = "generate") -> torch.Tensor:
    """(len(prompt_indices) * len(seeds), steps) uniforms, prompt-major: the draws of prompt i under seed s come
    from make_generator(s, i, 0, stream) alone, so they do not depend on batching, bucketing or other seeds."""
    return torch.cat([draw_uniforms(make_generator(seed, index, 0, stream), 1, steps)
                      for index in prompt_indices for seed in seeds])


def _forward_keywords(model) -> tuple[str, bool]:
    """(the KV-cache keyword: `cache` in transformers >= 5.2x, else `past_key_values`;
    whether forward takes logits_to_keep)."""
    import inspect

    from csdistill.models import unwrap_model

    parameters = inspect.signature(unwrap_model(model).forward).parameters
    return ("cache" if "cache" in parameters else "past_key_values"), "logits_to_keep" in parameters


def _forward(model, input_ids, attention_mask, position_ids, past, keywords: tuple[str, bool]):
    """Last-position logits (B, V) and the updated cache."""
    cache_argument, keep_last = keywords
    extra = {"logits_to_keep": 1} if keep_last else {}  # the prompt pass needs only the last position's logits
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                **{cache_argument: past}, **extra)
    return out.logits[:, -1, :], getattr(out, cache_argument)


class _BufferedLayer(DynamicLayer):
    """A full-attention cache layer holding keys/values (R, H, capacity, D) allocated once: each step writes its
    new columns in place instead of concatenating; `keys`/`values` are views of the filled part."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        rows, heads, length, dim = keys.shape
        self.key_buffer = keys.new_empty(rows, heads, capacity, dim)
        self.value_buffer = values.new_empty(rows, values.shape[1], capacity, values.shape[-1])
        self.key_buffer[:, :, :length] = keys
        self.value_buffer[:, :, :length] = values
        self.length, self.device, self.is_initialized = length, keys.device, True
        self._views()

    def _views(self) -> None:
        self.keys = self.key_buffer[:, :, :self.length]  # (R, H, length, D)
        self.values = self.value_buffer[:, :, :self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        new = key_states.shape[-2]
        self.key_buffer[:, :, self.length:self.length + new] = key_states
        self.value_buffer[:, :, self.length:self.length + new] = value_states
        self.length += new
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self._views()


def _expand_cache(cache, copies: int, capacity: int):
    """The prompt pass's cache with every row repeated `copies` times (prompt-major) and its full-attention
    layers moved into buffers of `capacity` positions; other layer kinds keep their own mechanics."""
    for index, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            cache.layers[index] = _BufferedLayer(layer.keys.repeat_interleave(copies, dim=0),
                                                 layer.values.repeat_interleave(copies, dim=0), capacity)
        elif copies > 1:
            layer.batch_repeat_interleave(copies)
    return cache


def _compact(keep: torch.Tensor, cache, *row_tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop finished rows: keep only rows `keep` (K,) of the cache and of each (R, ...) tensor."""
    for layer in cache.layers:
        layer.batch_select_indices(keep)
    return tuple(t[keep] if t is not None else None for t in row_tensors)


def _decode(model, input_ids, attention_mask, gen, uniforms, copies, eos_token_id, pad_token_id, vocab_size):
    """The decode loop: (new tokens (R, N), their mask (R, N)) for R = B * copies rows, row r continuing
    prompt r // copies with draws uniforms[r] (R, max_new_tokens) (None: greedy)."""
    prompt_length, steps = input_ids.shape[1], gen.max_new_tokens
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P): left padding shifts positions
    keywords = _forward_keywords(model)
    logits, past = _forward(model, input_ids, attention_mask, position_ids, None, keywords)
    past = _expand_cache(past, copies, prompt_length + steps)
    logits = logits.repeat_interleave(copies, dim=0)  # (R, V)
    mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], steps)], dim=1)
    mask = mask.repeat_interleave(copies, dim=0)  # (R, P + N): one allocation, sliced each step
    next_position = position_ids[:, -1:].repeat_interleave(copies, dim=0) + 1  # (R, 1)
    rows = torch.arange(mask.shape[0], device=input_ids.device)  # (R',): the output row of each present row
    tokens = torch.full((mask.shape[0], steps), pad_token_id, dtype=torch.long, device=input_ids.device)
    emitted = torch.zeros(mask.shape[0], steps, dtype=torch.bool, device=input_ids.device)
    finished = torch.zeros_like(rows, dtype=torch.bool)  # (R',)
    for step in range(steps):
        if vocab_size is not None:
            logits = logits[:, :vocab_size]  # never emit padding rows of the head
        token = next_tokens(logits, gen, None if uniforms is None else uniforms[:, step])  # (R',)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        tokens[rows, step], emitted[rows, step] = token, ~finished
        finished = finished | (token == eos_token_id)
        done = int(finished.sum())
        if done == rows.numel() or step == steps - 1:
            break
        if done >= max(1, rows.numel() // 4):  # geometric: a few cache copies per batch, not one per finished row
            rows, token, next_position, mask, uniforms, finished = _compact(
                (~finished).nonzero().squeeze(1), past, rows, token, next_position, mask, uniforms, finished)
        logits, past = _forward(model, token[:, None], mask[:, :prompt_length + step + 1], next_position, past,
                                keywords)
        next_position = next_position + 1
    return tokens[:, :step + 1], emitted[:, :step + 1]  # (R, N'), (R, N')


def _check_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise UserError(f"sample: input_ids {tuple(input_ids.shape)} and attention_mask "
                         f"{tuple(attention_mask.shape)} must both be (B, P)")


@torch.no_grad()
def sample_rows(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, gen: GenerationConfig,
                uniforms: torch.Tensor | None, eos_token_id: int, pad_token_id: int, vocab_size: int | None = None,
                copies: int = 1) -> GenerationOutput:
    """Continue each left-padded prompt input_ids (B, P) / attention_mask (B, P) `copies` times, as rows
    r = b * copies + c, by up to gen.max_new_tokens tokens; row r's step-t token is the pick of uniforms[r, t]
    (uniforms (B * copies, max_new_tokens); None or gen.do_sample False: greedy).

    One prompt pass per prompt; the rows then decode together, finished rows dropped as they accumulate.
    Stops when every row has emitted EOS; finished rows are filled with pad_token_id. vocab_size: emit only
    ids below it (a head padded beyond the tokenizer). Runs in eval mode; the model's mode is restored.
    """
    _check_prompts(input_ids, attention_mask)
    if gen.do_sample and (uniforms is None or uniforms.shape != (input_ids.shape[0] * copies, gen.max_new_tokens)):
        raise UserError(f"sample_rows: sampling needs uniforms of shape ({input_ids.shape[0] * copies}, "
                         f"{gen.max_new_tokens}), got {None if uniforms is None else tuple(uniforms.shape)}")
    was_training = model.training
    model.eval()
    try:
        new_tokens, new_mask = _decode(model, input_ids, attention_mask, gen, uniforms if gen.do_sample else None,
                                       copies, eos_token_id, pad_token_id, vocab_size)
    finally:
        model.train(was_training)
    prompts = input_ids.repeat_interleave(copies, dim=0)  # (R, P)
    return GenerationOutput(sequences=torch.cat([prompts, new_tokens], dim=1),
                            completion_mask=torch.cat([torch.zeros_like(prompts, dtype=torch.bool), new_mask], dim=1),
                            prompt_length=input_ids.shape[1])


def sample(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, gen: GenerationConfig,
           generator: torch.Generator, eos_token_id: int, pad_token_id: int,
           vocab_size: int | None = None) -> GenerationOutput:
    """Continue left-padded prompts input_ids (B, P) / attention_mask (B, P) by up to
    gen.max_new_tokens tokens (temperature, top-k, top-p; greedy when gen.do_sample is False), drawing
    the (B, max_new_tokens) uniforms from `generator`. See sample_rows."""
    _check_prompts(input_ids, attention_mask)
    uniforms = draw_uniforms(generator, input_ids.shape[0], gen.max_new_tokens) if gen.do_sample else None
    return sample_rows(model, input_ids, attention_mask, gen, uniforms, eos_token_id, pad_token_id, vocab_size)


def completions(output: GenerationOutput, eos_token_id: int) -> list[list[int]]:
    """Each row's generated ids without the EOS (completion_mask only)."""
    new = output.sequences[:, output.prompt_length:]  # (B, N)
    mask = output.completion_mask[:, output.prompt_length:]  # (B, N)
    return [[t for t in row[keep].tolist() if t != eos_token_id] for row, keep in zip(new, mask)]


def _head_rows(model) -> int | None:
    from csdistill.models import output_vocab_size

    try:
        return output_vocab_size(model)
    except ValueError:
        return None


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches of `batch_size` by ascending length (stable), so a batch pads little."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def generate_seed_texts(model, tokenizer, prompts: Sequence[str], gen: GenerationConfig, seeds: Sequence[int],
                        max_prompt_length: int = 256, batch_size: int | None = None, progress: bool = False,
                        what: str = "generation prompts", precision: str = "fp32") -> list[list[str]]:
    """texts[k][i]: the decoded completion (EOS stripped, special tokens skipped) of prompts[i] under seeds[k].

    Prompts go in length-sorted batches of batch_size; each batch decodes all seeds in one pass. Prompt i's
    draws under seed s come from make_generator(s, i, 0, "generate") alone, so a seed's texts are the same
    whatever the other seeds, the batch size or the bucketing. Greedy: one decoding, shared by every seed.
    `what` names the prompts in the unknown-token warning. precision bf16: the model runs under bf16 autocast
    (as it trained; on CPU ~1.45x faster than fp32 without AMX), which changes the texts a little.
    """
    from tqdm.auto import tqdm

    from csdistill.data.collate import encode_prompt_ids, left_pad
    from csdistill.models import autocast_for

    batch_size = batch_size or gen.batch_size
    device = next(model.parameters()).device
    rows = _head_rows(model)
    vocab_size = len(tokenizer) if rows is not None and rows > len(tokenizer) else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    draws = list(seeds) if gen.do_sample else list(seeds)[:1]
    texts: list[list[str]] = [[""] * len(prompts) for _ in draws]
    prompt_ids = encode_prompt_ids(list(prompts), tokenizer, max_prompt_length, what)
    autocast = autocast_for(precision, device)
    for bucket in tqdm(length_buckets([len(ids) for ids in prompt_ids], batch_size), desc="generate",
                       disable=not progress):
        batch = left_pad([prompt_ids[i] for i in bucket], pad)
        uniforms = row_uniforms(draws, bucket, gen.max_new_tokens) if gen.do_sample else None
        with autocast():
            output = sample_rows(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), gen,
                                 uniforms, tokenizer.eos_token_id, pad, vocab_size, copies=len(draws))
        for row, ids in enumerate(completions(output, tokenizer.eos_token_id)):
            texts[row % len(draws)][bucket[row // len(draws)]] = tokenizer.decode(ids, skip_special_tokens=True)
    return texts if gen.do_sample else texts * len(seeds)


def generate_texts(model, tokenizer, prompts: Sequence[str], gen: GenerationConfig, seed: int,
                   max_prompt_length: int = 256, batch_size: int | None = None, progress: bool = False,
                   what: str = "generation prompts", precision: str = "fp32") -> list[str]:
    """Decoded completions of prompt texts under one seed, in order (see generate_seed_texts)."""
    return generate_seed_texts(model, tokenizer, prompts, gen, [seed], max_prompt_length, batch_size, progress,
                               what, precision)[0]


def _checkpoint_model_dir(checkpoint: str) -> str:
    """A csdistill checkpoint dir holds the HF model in model/; anything else is used as given."""
    path = Path(checkpoint)
    return str(path / "model") if (path / "model" / "config.json").is_file() else checkpoint


def _prompt_records(prompts: Sequence[str], prompts_file: str | None, cfg: Config, tokenizer=None) -> list[dict]:
    from csdistill.data import load_records

    records = [{"instruction": p, "input": ""} for p in prompts]
    if prompts_file:
        records += load_records(prompts_file, format=cfg.data.format, skip_bad=cfg.data.skip_bad_records,
                                require_response=False, tokenizer=tokenizer).records
    if not records:
        raise ConfigError("generate: no prompts; pass --prompt TEXT (repeatable) or --prompts-file FILE.jsonl")
    return records


def add_arguments(parser) -> None:
    """`csdistill generate`: the config arguments, the checkpoint and the prompts."""
    from csdistill.config import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="checkpoint dir or hub id")
    parser.add_argument("--prompt", action="append", default=[], help="an instruction (repeatable)")
    parser.add_argument("--prompts-file", default=None, help="instruction JSONL whose prompts to answer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write generations as JSONL here")


def generate_command(args) -> int:
    """`csdistill generate`: the parsed arguments -> generate (no teacher needed to generate)."""
    from csdistill.config import load_inference_config

    cfg = load_inference_config(args.config, args.overrides)
    return generate(cfg, checkpoint=args.checkpoint, prompts=args.prompt, prompts_file=args.prompts_file,
                    seed=args.seed, out=args.out)


def generate(cfg: Config, checkpoint: str, prompts: Sequence[str], prompts_file: str | None, seed: int,
             out: str | None) -> int:
    """Answer prompts with a checkpoint (dir or hub id) under cfg.data.template.

    Prints each generation; with `out`, writes instruction JSONL whose ``response`` is the generation
    (usable as data.teacher_responses_file)."""
    from csdistill.data.templates import build_prompt
    from csdistill.models import load_model, load_tokenizer

    if out:
        check_writable(Path(out).parent, "--out")  # before the work, not after it
    model_dir = _checkpoint_model_dir(checkpoint)
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_dir)
    records = _prompt_records(prompts, prompts_file, cfg, tokenizer)  # chat records: the model's chat template
    model = load_model(model_dir, precision=cfg.model.precision, trust_remote_code=cfg.model.trust_remote_code)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    texts = generate_texts(model, tokenizer, [build_prompt(r, cfg.data.template) for r in records], cfg.generation,
                           seed, cfg.data.max_prompt_length, progress=sys.stderr.isatty(),
                           precision=cfg.model.precision)
    results = [{**r, "response": text, "generator": checkpoint, "seed": seed} for r, text in zip(records, texts)]
    for result in results:
        print(f"### {result['instruction']}\n{result['response']}\n")
    if out:
        atomic_write_jsonl(out, results)
        print(f"csdistill: wrote {len(results)} generations to {out}", file=sys.stderr)
    return 0
