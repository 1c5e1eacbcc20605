"""SFT's CE term runs the LM head at the response positions only; its loss and gradient equal the
full (B, T, V) computation's."""
import contextlib

import pytest
import torch

from csdistill.config import load_config
from csdistill.losses import cross_entropy
from csdistill.losses.reduce import shift_labels, token_mean, valid_mask
from csdistill.train.objective import Objective, ce_term
from helpers import tiny_model


def _batch(vocab: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (3, 13), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    mask[2, 5:] = 0
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _full_logits_ce(model, batch, num_valid):
    labels = shift_labels(batch["labels"])
    valid = valid_mask(labels)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    return token_mean(cross_entropy(logits[valid], labels[valid]), labels[valid], num_valid_tokens=num_valid)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "tiny-qwen2"])
def test_ce_term_equals_the_full_logits_computation(preset):
    model = tiny_model(preset, seed=0)
    batch = _batch(model.get_output_embeddings().weight.shape[0])
    objective = Objective(load_config(None, ["train.mode=sft"]), None, {}, 0, contextlib.nullcontext)
    results = []
    for compute in (lambda n: _full_logits_ce(model, batch, n), lambda n: ce_term(objective, model, batch, n)):
        model.zero_grad(set_to_none=True)
        loss = compute(torch.tensor(17.0))
        loss.backward()
        results.append((loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}))
    shapes = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    ce_term(objective, model, batch, torch.tensor(17.0))
    hook.remove()
    assert shapes == [(3, 1, model.get_output_embeddings().weight.shape[0])]  # the head's own product: one position
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert want_grads.keys() == got_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
