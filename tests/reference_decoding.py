"""Slow, obvious decoding references: the plain cached loop (one growing cache, every row to the end, no
row dropping, no preallocation) and an uncached one-row loop that reruns the whole sequence every step."""
import torch

from csdistill.generation import _forward, _forward_keywords, next_tokens


@torch.no_grad()
def greedy_loop(model, input_ids, attention_mask, steps, eos_token_id, pad_token_id):
    """New tokens (B, N') of the plain greedy loop: model's own cache, the whole batch every step."""
    model.eval()
    gen = type("Greedy", (), {"do_sample": False})()
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    keywords = _forward_keywords(model)
    logits, past = _forward(model, input_ids, attention_mask, position_ids, None, keywords)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    tokens, position = [], position_ids[:, -1:] + 1
    for _ in range(steps):
        token = torch.where(finished, torch.full_like(finished, pad_token_id, dtype=torch.long),
                            next_tokens(logits, gen, None))
        tokens.append(token)
        finished = finished | (token == eos_token_id)
        if bool(finished.all()):
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=-1)
        logits, past = _forward(model, token[:, None], attention_mask, position, past, keywords)
        position = position + 1
    return torch.stack(tokens, dim=1)


@torch.no_grad()
def uncached_row(model, prompt_ids, gen, uniforms, eos_token_id):
    """One unpadded prompt (P,) continued without a cache; step t picks with uniforms[t]: the new ids."""
    model.eval()
    ids = list(prompt_ids)
    for t in range(gen.max_new_tokens):
        logits = model(input_ids=torch.tensor([ids])).logits[:, -1, :]  # (1, V)
        token = int(next_tokens(logits, gen, uniforms[t:t + 1] if gen.do_sample else None))
        ids.append(token)
        if token == eos_token_id:
            break
    return ids[len(prompt_ids):]
