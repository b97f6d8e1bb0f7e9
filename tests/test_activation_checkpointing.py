"""Activation checkpointing (``performance.activation_checkpointing``): the same loss and gradients as the plain
forward, dropout included, for less kept for backward; nothing changes without gradients or in the state dict."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from gigatok.config import PerformanceConfig, ar_run, tokenizer_run
from gigatok.launch import memory
from gigatok.models.ar import build_ar_model
from gigatok.models.checkpointing import checkpoint_units, enable_activation_checkpointing
from gigatok.models.tokenizer import build_tokenizer
from gigatok.performance import prepare_module

PLAIN, CHECKPOINTED = PerformanceConfig(), PerformanceConfig(activation_checkpointing=True)


def _grads(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_tokenizer_gradients_are_those_of_the_plain_forward(kind: str) -> None:
    t = tokenizer_run("S-B", profile="tiny", kind=kind).tokenizer
    t = dataclasses.replace(t, dropout=0.1)  # recomputed blocks must redraw the same dropout masks
    images = torch.rand(2, 3, t.image_size, t.image_size) * 2 - 1
    results = []
    for perf in (PLAIN, CHECKPOINTED):
        torch.manual_seed(0)
        model = prepare_module(build_tokenizer(t), perf).train()
        wrapped = [getattr(b, "_gigatok_checkpointed", False) for b in checkpoint_units(model)]
        assert wrapped and all(wrapped) == perf.activation_checkpointing
        torch.manual_seed(1)
        out = model(images)
        loss = (out.reconstruction - images).square().mean() + out.quant.codebook_loss
        results.append((loss.detach(), _grads(model, loss)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    _assert_same(results[0][1], results[1][1])


def test_ar_gradients_match_with_dropout_drawing_the_same_masks() -> None:
    cfg = ar_run(tokenizer_run("S-S", profile="tiny"), "B").model
    assert cfg.dropout > 0  # the point of the test: recomputed blocks must redraw the same masks
    tokens = torch.randint(0, cfg.vocab_size, (4, cfg.num_tokens))
    labels = torch.randint(0, cfg.num_classes, (4,))
    results = []
    for perf in (PLAIN, CHECKPOINTED):
        torch.manual_seed(0)
        model = prepare_module(build_ar_model(cfg), perf).train()
        torch.manual_seed(1)
        loss = model.loss(tokens, labels)
        results.append((loss.detach(), _grads(model, loss)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    _assert_same(results[0][1], results[1][1])


def test_less_is_kept_for_backward_and_the_state_dict_is_unchanged() -> None:
    cfg = ar_run(tokenizer_run("S-S", profile="tiny"), "B").model
    torch.manual_seed(0)
    plain = build_ar_model(cfg).train()
    checkpointed = build_ar_model(cfg).train()
    checkpointed.load_state_dict(plain.state_dict())
    assert enable_activation_checkpointing(checkpointed) == cfg.depth == len(list(checkpoint_units(checkpointed)))
    assert enable_activation_checkpointing(checkpointed) == cfg.depth  # a second call wraps nothing twice
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()
    copied = copy.deepcopy(checkpointed)  # its blocks run themselves, not the original's
    with torch.no_grad():
        next(copied.layers[0].parameters()).add_(1.0)  # seen only if the copy's block runs its own weights
    tokens = torch.randint(0, cfg.vocab_size, (4, cfg.num_tokens))
    labels = torch.zeros(4, dtype=torch.long)
    kept = {
        name: memory.saved_bytes(lambda m=m: m.loss(tokens, labels))
        for name, m in (("plain", plain), ("ckpt", checkpointed))
    }
    assert kept["ckpt"] < kept["plain"] / 2
    with torch.no_grad():  # sampling and evaluation: no checkpoint, the same outputs
        plain.eval(), checkpointed.eval(), copied.eval()
        torch.testing.assert_close(plain(tokens, labels), checkpointed(tokens, labels), rtol=0, atol=0)
        assert not torch.equal(copied(tokens, labels), checkpointed(tokens, labels))
    copied.train()
    assert memory.saved_bytes(lambda: copied.loss(tokens, labels)) == kept["ckpt"]
