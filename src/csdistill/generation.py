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

from csdistill.config import Config, ConfigError, GenerationConfig
from csdistill.errors import UserError, check_writable
from csdistill.seeding import make_generator
from csdistill.files import atomic_write_jsonl


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # (B, P + N) long: left-padded prompt, then N generated columns (pad after EOS)
    completion_mask: torch.Tensor  # (B, P + N) bool: generated tokens up to and including the first EOS
    prompt_length: int  # P: generated tokens start at this column


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


def next_tokens(logits: torch.Tensor, gen: GenerationConfig, generator: torch.Generator) -> torch.Tensor:
    """One token per row (B,) from last-position logits (B, V): argmax, or a draw from `generator`."""
    logits = logits.float()
    if not gen.do_sample:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / gen.temperature, gen.top_k, gen.top_p)
    probs = logits.softmax(dim=-1).to(generator.device)  # (B, V): draw where the generator lives
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)


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


def _decode(model, input_ids, attention_mask, gen, generator, eos_token_id, pad_token_id, vocab_size):
    """The decode loop: (new tokens (B, N), their mask (B, N))."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P): left padding shifts positions
    keywords = _forward_keywords(model)
    logits, past = _forward(model, input_ids, attention_mask, position_ids, None, keywords)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # (B,)
    tokens, masks = [], []
    next_position = position_ids[:, -1:] + 1  # (B, 1)
    for step in range(gen.max_new_tokens):
        if vocab_size is not None:
            logits = logits[:, :vocab_size]  # never emit padding rows of the head
        token = next_tokens(logits, gen, generator)  # (B,)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        tokens.append(token)
        masks.append(~finished)
        finished = finished | (token == eos_token_id)
        if bool(finished.all()) or step == gen.max_new_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=-1)  # (B, P+step+1)
        logits, past = _forward(model, token[:, None], attention_mask, next_position, past, keywords)
        next_position = next_position + 1
    return torch.stack(tokens, dim=1), torch.stack(masks, dim=1)  # (B, N), (B, N)


@torch.no_grad()
def sample(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, gen: GenerationConfig,
           generator: torch.Generator, eos_token_id: int, pad_token_id: int,
           vocab_size: int | None = None) -> GenerationOutput:
    """Continue left-padded prompts input_ids (B, P) / attention_mask (B, P) by up to
    gen.max_new_tokens tokens (temperature, top-k, top-p; greedy when gen.do_sample is False).

    Stops when every row has emitted EOS. Rows that finished are filled with pad_token_id.
    vocab_size: sample only ids below it (a head padded beyond the tokenizer). Runs in eval mode;
    the model's train/eval mode is restored afterwards.
    """
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise UserError(f"sample: input_ids {tuple(input_ids.shape)} and attention_mask "
                         f"{tuple(attention_mask.shape)} must both be (B, P)")
    was_training = model.training
    model.eval()
    try:
        new_tokens, new_mask = _decode(model, input_ids, attention_mask, gen, generator, eos_token_id,
                                       pad_token_id, vocab_size)
    finally:
        model.train(was_training)
    prompt_mask = torch.zeros_like(input_ids, dtype=torch.bool)  # (B, P)
    return GenerationOutput(sequences=torch.cat([input_ids, new_tokens], dim=1),
                            completion_mask=torch.cat([prompt_mask, new_mask], dim=1),
                            prompt_length=input_ids.shape[1])


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


def generate_texts(model, tokenizer, prompts: Sequence[str], gen: GenerationConfig, seed: int,
                   max_prompt_length: int = 256, batch_size: int | None = None, progress: bool = False,
                   what: str = "generation prompts") -> list[str]:
    """Decoded completions of prompt texts (EOS stripped, special tokens skipped), in order.

    Batch b draws from make_generator(seed, b, 0, "generate"): the same seed and batch size give
    the same texts. `what` names the prompts in the unknown-token warning.
    """
    from tqdm.auto import tqdm

    from csdistill.data.collate import encode_prompt_ids, left_pad

    batch_size = batch_size or gen.batch_size
    device = next(model.parameters()).device
    rows = _head_rows(model)
    vocab_size = len(tokenizer) if rows is not None and rows > len(tokenizer) else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt_ids = encode_prompt_ids(list(prompts), tokenizer, max_prompt_length, what)
    texts: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for index, start in enumerate(tqdm(starts, desc="generate", disable=not progress)):
        batch = left_pad(prompt_ids[start:start + batch_size], pad)
        output = sample(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), gen,
                        make_generator(seed, index, 0, "generate"), tokenizer.eos_token_id, pad, vocab_size)
        texts.extend(tokenizer.decode(ids, skip_special_tokens=True) for ids in completions(output, tokenizer.eos_token_id))
    return texts


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
                           seed, cfg.data.max_prompt_length, progress=sys.stderr.isatty())
    results = [{**r, "response": text, "generator": checkpoint, "seed": seed} for r, text in zip(records, texts)]
    for result in results:
        print(f"### {result['instruction']}\n{result['response']}\n")
    if out:
        atomic_write_jsonl(out, results)
        print(f"csdistill: wrote {len(results)} generations to {out}", file=sys.stderr)
    return 0
