"""The peak-memory estimate: activations counted from what autograd saves, on fake tensors as on real ones."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from gigatok.config import ar_run, tokenizer_run
from gigatok.launch import memory
from gigatok.models.tokenizer import build_tokenizer


def test_saved_bytes_counts_what_backward_keeps_and_not_the_parameters() -> None:
    layer = nn.Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    # Linear keeps its input (3 x 8 fp32) and its weight, a parameter (a model state, counted elsewhere).
    assert memory.saved_bytes(lambda: layer(x)) == 3 * 8 * 4
    # Two uses of one tensor are one storage.
    assert memory.saved_bytes(lambda: layer(x) * layer(x).sum()) > memory.saved_bytes(lambda: layer(x))


def test_fake_tensor_count_is_close_to_the_count_on_real_tensors() -> None:
    t = tokenizer_run("S-S", profile="tiny").tokenizer

    def forward(model: nn.Module, batch: int) -> None:
        model(torch.randn(batch, 3, t.image_size, t.image_size))

    torch.manual_seed(0)
    real = build_tokenizer(t)
    with torch.autocast("cpu", torch.bfloat16):
        on_real = memory.per_sample_bytes(lambda b: forward(real, b))
    with memory._fake_build():
        fake = build_tokenizer(t)
        on_fake = memory.per_sample_bytes(lambda b: forward(fake, b))
    assert on_real > 0
    # Fake kernels allocate a few outputs that real CPU kernels share (7% more at tiny): an estimate, not a bill.
    assert abs(on_fake - on_real) / on_real < 0.1


def test_paper_estimates_shard_states_and_keep_activations() -> None:
    tok = tokenizer_run("S-S", profile="paper")
    est = memory.tokenizer_memory(tok, gpus=8)
    assert est.batch_per_gpu == tok.train.batch_size / 8
    assert est.activations > 0 and est.fsdp < est.ddp
    # FSDP divides the 16 B of fp32 states by the GPUs; activations and frozen networks stay whole on each.
    assert est.ddp - est.activations - est.frozen == memory.DDP_BYTES * est.params
    ar = memory.ar_memory(ar_run(tok, "B"), gpus=8)
    assert ar.activations > 0 and ar.fsdp < ar.ddp


def test_a_storage_freed_mid_forward_does_not_hide_a_later_one() -> None:
    layer = nn.Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)

    def discarded_graphs() -> None:
        for scale in range(20):
            layer(x * scale)  # each graph, and the input it saved, is freed at once (as a loss network's output)

    assert memory.saved_bytes(discarded_graphs) == 20 * 3 * 8 * 4


def test_frozen_networks_are_counted_from_their_architectures() -> None:
    from lpips.pretrained_networks import vgg16

    vgg = sum(p.numel() for p in vgg16(requires_grad=False, pretrained=False).parameters())
    counts = {}
    for encoder in ("dinov2-b", "siglip"):
        cfg = tokenizer_run("S-S", profile="paper", semantic_encoder=encoder)
        counts[encoder] = memory._frozen_params(cfg) - vgg
    # DINOv2 ViT-B/14 is ~86M parameters, SigLIP So400m ~0.4B: each run is charged its own teacher.
    assert 80e6 < counts["dinov2-b"] < 90e6
    assert 380e6 < counts["siglip"] < 440e6
    no_teacher = tokenizer_run("S-S", profile="paper", semantic_weight=0)
    assert memory._frozen_params(no_teacher) == vgg


def test_checkpointed_count_lies_between_what_checkpointing_keeps_and_the_plain_count() -> None:
    from gigatok.models.checkpointing import checkpoint_units, enable_activation_checkpointing

    t = tokenizer_run("S-B", profile="tiny", kind="1d").tokenizer
    torch.manual_seed(0)
    model = build_tokenizer(t)
    images = torch.randn(2, 3, t.image_size, t.image_size)
    plain, checkpointed = memory.saved_bytes_split(lambda: model(images), list(checkpoint_units(model)))
    assert plain == memory.saved_bytes(lambda: model(images))
    enable_activation_checkpointing(model)
    # What autograd still holds outside the blocks, for real; the estimate adds the blocks' inputs and one block's
    # own activations (rebuilt in backward), so it is above that and well below the plain count.
    outside = memory.saved_bytes(lambda: model(images))
    assert outside < checkpointed < plain


def test_the_estimate_reports_both_checkpointing_settings() -> None:
    tok = tokenizer_run("S-S", profile="paper")
    plain = memory.ar_memory(ar_run(tok, "B"), gpus=8)
    on = memory.ar_memory(
        ar_run(tok, "B", performance=dataclasses.replace(tok.performance, activation_checkpointing=True)), gpus=8
    )
    assert on.checkpointing and not plain.checkpointing
    assert on.activations == plain.other_activations < plain.activations == on.other_activations
    assert on.fsdp < plain.fsdp and "with activation checkpointing" in plain.row(8)
