"""The Llama-style AR model: Table 8 sizes, KV-cache equivalence, CFG schedules and sampling filters."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gigatok.config import ConfigError, ar_run, get_profile, hashed_fields, tokenizer_run
from gigatok.models.ar import ARModel, build_ar_model
from gigatok.sampling import (
    SamplingConfig,
    cfg_scales,
    class_balanced_labels,
    draw,
    filter_logits,
    sample_tokens,
)

TABLE8 = {"B": 111e6, "L": 343e6, "XL": 775e6, "XXL": 1.4e9}


@pytest.mark.parametrize("size,expected", TABLE8.items())
def test_paper_ar_sizes_match_table8(size: str, expected: float) -> None:
    cfg = ar_run(tokenizer_run("S-S", profile="paper"), size)
    assert (cfg.model.vocab_size, cfg.model.num_tokens, cfg.model.num_classes) == (16384, 256, 1000)
    n = sum(p.numel() for p in build_ar_model(cfg.model, "meta").parameters())
    assert abs(n - expected) / expected < 0.01, f"{size}: {n / 1e6:.1f}M vs Table 8 {expected / 1e6:.0f}M"


def test_llama_style_has_no_biases() -> None:
    model = build_ar_model(ar_run(tokenizer_run("S-S")).model)
    assert not [n for n, _ in model.named_parameters() if n.endswith(".bias")]


def _tiny_model(seed: int = 0) -> ARModel:
    torch.manual_seed(seed)
    return build_ar_model(ar_run(tokenizer_run("S-S")).model).eval()


def test_kv_cache_gives_the_same_logits_as_full_recomputation() -> None:
    model = _tiny_model()
    n, b = model.cfg.num_tokens, 3
    tokens = torch.randint(0, model.cfg.vocab_size, (b, n))
    labels = torch.tensor([0, 5, model.null_class])
    with torch.no_grad():
        full = model(tokens, labels)  # teacher-forced: all positions at once
        cache = model.new_cache(b, torch.device("cpu"))
        steps = [model.decode_step(model.embed(None, labels, start=0), cache, start=0)]
        for i in range(1, n):
            x = model.embed(tokens[:, i - 1 : i], None, start=i)
            steps.append(model.decode_step(x, cache, start=i))
    incremental = torch.stack(steps, dim=1)
    assert torch.allclose(full, incremental, atol=1e-5), (full - incremental).abs().max()


def test_cached_and_uncached_sampling_agree() -> None:
    model = _tiny_model()
    labels = torch.tensor([1, 2])
    cfg = SamplingConfig(cfg_scale=2.0, temperature=1.0, top_k=50)
    a = sample_tokens(model, labels, cfg, torch.Generator().manual_seed(3), use_cache=True)
    b = sample_tokens(model, labels, cfg, torch.Generator().manual_seed(3), use_cache=False)
    assert a.shape == (2, model.cfg.num_tokens)
    assert torch.equal(a, b)


def test_draw_follows_the_probabilities_and_never_picks_a_masked_code() -> None:
    probs = torch.tensor([[0.0, 1.0, 0.0, 3.0, 0.0]]).expand(20_000, -1)  # unnormalised; the last code masked too
    picks = draw(probs, torch.Generator().manual_seed(0))
    assert picks.shape == (20_000, 1)
    counts = torch.bincount(picks.squeeze(1), minlength=5)
    assert counts[[0, 2, 4]].sum() == 0
    assert abs(counts[3] / 20_000 - 0.75) < 0.015  # ~5 standard deviations
    seeded = [draw(probs[:50], torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(*seeded)


def test_cfg_schedules() -> None:
    assert cfg_scales(SamplingConfig(cfg_scale=2.0), 10) == [2.0] * 10
    step = cfg_scales(SamplingConfig(cfg_scale=2.0, cfg_schedule="step"), 256)
    unguided = math.ceil(0.18 * 256)  # 47 of 256 tokens
    assert step[:unguided] == [1.0] * unguided and step[unguided:] == [2.0] * (256 - unguided)
    half = cfg_scales(SamplingConfig(cfg_scale=3.0, cfg_schedule="step", step_fraction=0.5), 16)
    assert half == [1.0] * 8 + [3.0] * 8


def test_guidance_mixes_conditional_and_unconditional_logits() -> None:
    """With temperature -> 0 the sample is the argmax of uncond + s * (cond - uncond)."""
    model = _tiny_model()
    label = torch.tensor([4])
    with torch.no_grad():
        cond = model.decode_step(model.embed(None, label, 0), model.new_cache(1, torch.device("cpu")), 0)
        null = torch.tensor([model.null_class])
        uncond = model.decode_step(model.embed(None, null, 0), model.new_cache(1, torch.device("cpu")), 0)
    expected = (uncond + 4.0 * (cond - uncond)).argmax(-1)
    got = sample_tokens(model, label, SamplingConfig(cfg_scale=4.0, temperature=1e-4))[:, 0]
    assert torch.equal(got, expected)


def test_filters() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert torch.isinf(filter_logits(logits, top_k=2, top_p=1.0)).tolist() == [[True, False, False, True]]
    probs = logits.softmax(-1)[0]  # 0.032, 0.644, 0.237, 0.087
    kept = ~torch.isinf(filter_logits(logits, top_k=0, top_p=0.7))
    assert kept.tolist() == [[False, True, True, False]], probs
    assert torch.equal(filter_logits(logits, 0, 1.0), logits)


def test_class_dropout_only_in_training() -> None:
    model = _tiny_model()
    labels = torch.zeros(10_000, dtype=torch.long)
    model.train()
    dropped = (model.drop_classes(labels) == model.null_class).float().mean()
    assert 0.08 < dropped < 0.12
    model.eval()
    assert torch.equal(model.drop_classes(labels), labels)


def test_class_balanced_labels() -> None:
    labels = class_balanced_labels(50, 10)
    assert torch.bincount(labels).tolist() == [5] * 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cfg_scale": -1.0}, "sampling.cfg_scale"),
        ({"cfg_schedule": "linear"}, "sampling.cfg_schedule"),
        ({"step_fraction": 1.5}, "sampling.step_fraction"),
        ({"temperature": 0.0}, "sampling.temperature"),
        ({"top_p": 0.0}, "sampling.top_p"),
        ({"step_rule": "llamagen"}, "sampling.step_rule"),
    ],
)
def test_bad_sampling_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SamplingConfig(**kwargs)


def test_bad_ar_size() -> None:
    with pytest.raises(ConfigError, match="ar.size: unknown AR size 'S'"):
        ar_run(tokenizer_run("S-S"), "S")


def test_generation_streams_class_balanced_batches_and_times_decoding() -> None:
    from gigatok.generation import decode_cost, generate_batches
    from gigatok.models.tokenizer import build_tokenizer

    tok_cfg = tokenizer_run("S-S")
    tokenizer = build_tokenizer(tok_cfg.tokenizer)
    ar = _tiny_model()
    batches = list(generate_batches(ar, tokenizer, 10, SamplingConfig(cfg_scale=1.5), batch_size=4))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    size = tok_cfg.tokenizer.image_size
    assert batches[0][0].shape[1:] == (3, size, size) and batches[0][0].abs().max() <= 1
    assert torch.cat([b[1] for b in batches]).tolist() == list(range(10))
    cost = decode_cost(ar, tokenizer, SamplingConfig(), batch_size=2, repeats=1)
    assert cost.sampling_seconds > 0 and cost.decoding_seconds > 0 and 0 < cost.decode_fraction < 1


def test_paper_profile_uses_the_authors_gpt_recipe() -> None:
    """gpt_1d.py: attention dropout 0 (ModelArgs.attn_dropout_p), a zero output head, positions ~ width**-0.5."""
    cfg = ar_run(tokenizer_run("S-S", profile="paper"), "B").model
    assert (cfg.attn_dropout, cfg.attention_dropout, cfg.dropout, cfg.init) == (0.0, 0.0, 0.1, "llamagen")
    small = dataclasses.replace(cfg, width=64, depth=2, heads=4, vocab_size=32, num_tokens=16)
    torch.manual_seed(0)
    model = build_ar_model(small)
    assert model.layers[0].attention.dropout == 0.0
    assert not model.output.weight.any()
    assert abs(model.pos_embeddings.std().item() - 64**-0.5) < 0.02


def test_tiny_profile_keeps_its_model_and_hash() -> None:
    """The new fields default to the earlier behaviour, so tiny runs (and their hashes) are unchanged."""
    run = ar_run(tokenizer_run("S-S"))
    assert (run.model.attn_dropout, run.model.attention_dropout, run.model.init) == (None, 0.1, "normal")
    hashed = hashed_fields(run.model)
    assert "attn_dropout" not in hashed and "init" not in hashed  # NEW_FIELD at its default: not hashed
    assert {"attn_dropout", "init"} <= set(hashed_fields(ar_run(tokenizer_run("S-S", profile="paper")).model))
    model = build_ar_model(run.model)
    assert model.layers[0].attention.dropout == 0.1 and model.output.weight.std() > 0.01


def test_authors_step_rule() -> None:
    """generate.py: the prefill token is always guided; token j >= 1 when j / (N - 1) >= window_start."""
    scales = cfg_scales(SamplingConfig(cfg_scale=3.0, cfg_schedule="step", step_fraction=0.3, step_rule="authors"), 11)
    assert scales[0] == 3.0
    assert scales[1:3] == [1.0001] * 2 and scales[3:] == [3.0] * 8  # 3 / 10 >= 0.3
    plain = cfg_scales(SamplingConfig(cfg_scale=3.0, cfg_schedule="step", step_fraction=0.3), 11)
    assert plain == [1.0] * 4 + [3.0] * 7  # ceil(0.3 * 11) unguided
    assert (get_profile("paper").eval.cfg_step_rule, get_profile("tiny").eval.cfg_step_rule) == ("authors", "workbench")
