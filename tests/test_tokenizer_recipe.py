"""The authors' tokenizer training recipe: the small tokenizers' shortcut, the training crop, windowed codebook usage
and the paper profile's optimisation settings (configs/vq/*.yaml, vq_train.py, vq_loss.py)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from gigatok.config import ConfigError, DataConfig, TokenizerRunConfig, get_profile, tokenizer_run
from gigatok.data import DataError, ImageFolderDataset, build_dataset, train_transform
from gigatok.distributed import DistEnv
from gigatok.losses import generator_loss, shortcut_active, shortcut_direct_active, shortcut_feature_loss
from gigatok.models.discriminator import PatchDiscriminator
from gigatok.models.quantizer import QuantizerOutput
from gigatok.models.tokenizer import TokenizerOutput, build_tokenizer
from gigatok.train.codebook_usage import CodebookUsageWindow, default_window
from gigatok.train.optimizer import build_optimizer
from gigatok.train.sampling import IndexedDataset, KeyedBatches, ResumableBatchSampler, crop_seed
from gigatok.train.tokenizer_loop import StepModules, training_step

# ---- paper profile: the authors' configs ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["S-S", "S-B", "S-L", "B-L"])
def test_small_paper_tokenizers_train_with_the_shortcut(name: str) -> None:
    # configs/vq/VQ_{SS,SB,BL}256.yaml: aux_loss_end 15000, use_direct_rec_loss True, fea_rec_loss_weight 1.0 (mse);
    # warm-up 0 and entropy 0 (Table 9).
    cfg = tokenizer_run(name, profile="paper")
    assert (cfg.loss.shortcut_end_step, cfg.loss.shortcut_decode, cfg.loss.shortcut_feature_weight) == (
        15_000,
        True,
        1.0,
    )
    assert cfg.optim.warmup_steps == 0 and cfg.tokenizer.quantizer.entropy_weight == 0.0


def test_xl_xxl_trains_with_warmup_and_entropy() -> None:
    # configs/vq/VQ_XLXXL256.yaml: warmup 5000, entropy_loss_ratio 0.005, aux_loss_end 0, use_direct_rec_loss False;
    # compute_entropy_loss's temperature 0.01.
    cfg = tokenizer_run("XL-XXL", profile="paper")
    assert cfg.loss.shortcut_end_step == 0 and cfg.optim.warmup_steps == 5_000
    q = cfg.tokenizer.quantizer
    assert q.entropy_weight == 5e-3 and q.entropy_temperature == 0.01


def test_appendix_c_alternative_for_small_tokenizers() -> None:
    cfg = tokenizer_run("S-B", profile="paper", stabiliser="warmup_entropy")
    assert cfg.loss.shortcut_end_step == 0 and cfg.optim.warmup_steps == 5_000
    assert cfg.tokenizer.quantizer.entropy_weight == 5e-3
    assert cfg.hash() != tokenizer_run("S-B", profile="paper").hash()
    shortcut_big = tokenizer_run("XL-XXL", profile="paper", stabiliser="shortcut")
    assert shortcut_big.loss.shortcut_end_step == 15_000 and shortcut_big.optim.warmup_steps == 0
    with pytest.raises(ConfigError, match="^stabiliser: unknown stabiliser 'magic'"):
        tokenizer_run("S-S", profile="paper", stabiliser="magic")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["S-S", "S-B", "S-L", "B-L", "XL-XXL"])
def test_paper_optimisation_follows_the_configs(name: str) -> None:
    # trainer: lr 1e-4, cosine_v2 to end_lr 1e-5, AdamW (0.9, 0.95), weight_decay 1e-4, max_grad_norm 10;
    # loss: disc_start 20000, disc_weight 0.5, perceptual 1, reconstruction (l2) 1, codebook 1, disc_dim 64,
    # 3 layers; commit_loss_beta 0.25. Batch and epochs: Table 9 (global_batch_size, checkpoint names e100-e300).
    cfg = tokenizer_run(name, profile="paper")
    o, loss, q = cfg.optim, cfg.loss, cfg.tokenizer.quantizer
    assert (o.lr, o.min_lr, o.beta1, o.beta2, o.weight_decay, o.grad_clip) == (1e-4, 1e-5, 0.9, 0.95, 1e-4, 10.0)
    assert (loss.gan_start_step, loss.gan_weight, loss.perceptual_weight, loss.pixel_weight) == (20_000, 0.5, 1, 1)
    assert (loss.disc_channels, loss.disc_layers) == (64, 3)
    assert (q.codebook_weight, q.commitment_beta, q.codebook_size, q.codebook_dim) == (1.0, 0.25, 16384, 8)
    batch = {"S-S": 128, "S-B": 128, "S-L": 256, "B-L": 256, "XL-XXL": 256}[name]
    epochs = {"S-S": 100, "S-B": 200, "S-L": 200, "B-L": 200, "XL-XXL": 300}[name]
    assert (cfg.train.batch_size, cfg.train.epochs) == (batch, epochs)
    assert default_window(q.codebook_size, cfg.train.usage_window) == 65_536


def test_paper_warmup_starts_at_a_hundredth_of_the_lr() -> None:
    from gigatok.train.tokenizer_loop import cosine_schedule

    # scheduler.py: _warmup_lr ratio = step / W + (1 - step / W) / 100, then cosine_v2 from lr to end_lr.
    cfg = tokenizer_run("XL-XXL", profile="paper")
    assert cfg.optim.warmup_start_factor == 0.01
    factor = cosine_schedule(cfg, total_steps=1_000_000)
    assert factor(0) == pytest.approx(0.01 + 0.99 / 5000)
    assert factor(2499) == pytest.approx(0.01 + 0.99 * 0.5)
    assert factor(4999) == pytest.approx(1.0) and factor(5000) == pytest.approx(1.0)
    assert factor(1_000_000) == pytest.approx(0.1)  # end_lr 1e-5 of lr 1e-4
    tiny = cosine_schedule(tokenizer_run("S-S"), total_steps=100)  # tiny keeps its warm-up from zero
    assert tiny(0) == pytest.approx(0.1) and tiny(9) == pytest.approx(1.0)


def test_paper_discriminator_loss_is_weighted_by_disc_weight() -> None:
    # vq_loss.py: d_adversarial_loss = disc_weight * self.disc_loss(logits_real, logits_fake).
    paper = tokenizer_run("S-S", profile="paper")
    assert paper.loss.disc_loss_weight == 0.5 and tokenizer_run("S-S").loss.disc_loss_weight == 1.0
    cfg = _run_with_lpips()
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, gan_start_step=0))
    half = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, disc_loss_weight=0.5))
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    full_loss = training_step(cfg, _modules(cfg), images, torch.arange(4), step=0)["discriminator_loss"]
    half_loss = training_step(half, _modules(half), images, torch.arange(4), step=0)["discriminator_loss"]
    assert half_loss.item() == pytest.approx(0.5 * full_loss.item(), rel=1e-5)


def test_paper_2d_b_l_adds_entropy_loss() -> None:
    # configs/vq/VQ_BL256_2d.yaml: entropy_loss_ratio 0.005 (with the shortcut); the other 2D configs: 0.
    assert tokenizer_run("B-L", profile="paper", kind="2d").tokenizer.quantizer.entropy_weight == 5e-3
    assert tokenizer_run("B-L", profile="paper", kind="2d").loss.shortcut_end_step == 15_000
    assert tokenizer_run("B-L", profile="paper").tokenizer.quantizer.entropy_weight == 0.0
    assert tokenizer_run("S-B", profile="paper", kind="2d").tokenizer.quantizer.entropy_weight == 0.0


def test_paper_trains_on_random_crops_and_flips() -> None:
    data = tokenizer_run("B-L", profile="paper").data
    assert (data.dataset, data.train_crop, data.crop_fraction, data.hflip) == (
        "imagefolder",
        "random",
        (0.8, 1.0),
        True,
    )


def test_tiny_profile_uses_the_shortcut_below_xl() -> None:
    # The small tokenizers take the authors' shortcut by default at tiny too (the profile's comments give the
    # measurements); XL-XXL keeps warm-up with entropy loss.
    steps = get_profile("tiny").shortcut_steps
    for name in ("S-S", "S-B", "B-L"):
        cfg = tokenizer_run(name)
        assert cfg.loss.shortcut_end_step == steps and cfg.data.train_crop == "center"
        assert cfg.tokenizer.quantizer.entropy_weight == 0.05
        assert cfg.train.usage_window is None
        assert cfg == tokenizer_run(name, stabiliser="shortcut")
    large = tokenizer_run("XL-XXL")
    assert large.loss.shortcut_end_step == 0 and large.optim.warmup_steps == 50
    assert tokenizer_run("S-S").optim.warmup_steps == 10


@pytest.mark.parametrize(
    "build, field, why",
    [
        (lambda: DataConfig(dataset="builtin", train_crop="random"), "data.train_crop", "precomputed crops"),
        (lambda: DataConfig(train_crop="corner"), "data.train_crop", "'center' or 'random'"),
        (lambda: DataConfig(crop_fraction=(0.0, 1.0)), "data.crop_fraction", "0 < min <= max <= 1"),
        (lambda: DataConfig(crop_fraction=(0.9, 0.8)), "data.crop_fraction", "0 < min <= max <= 1"),
        (lambda: dataclasses.replace(tokenizer_run().loss, shortcut_end_step=-1), "loss.shortcut_end_step", ">= 0"),
        (
            lambda: dataclasses.replace(tokenizer_run().loss, shortcut_feature_weight=-1.0),
            "loss.shortcut_feature_weight",
            "negative",
        ),
        (lambda: dataclasses.replace(tokenizer_run().train, usage_window=0), "train.usage_window", ">= 1"),
    ],
)
def test_invalid_recipe_fields_are_rejected(build, field: str, why: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as err:
        build()
    assert str(err.value).startswith(field) and why in str(err.value), str(err.value)


def test_cached_semantic_features_refuse_random_crops(tmp_path: Path) -> None:
    cfg = tokenizer_run("S-S", data_root=str(tmp_path))
    assert cfg.tokenizer.semantic.cache_features
    with pytest.raises(ConfigError, match="^semantic.cache_features"):
        dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_crop="random"))


# ---- the shortcut -------------------------------------------------------------------------------------------


def test_shortcut_gating_counts_steps_as_the_authors() -> None:
    # vq_train.py: rec_loss = train_steps + 1 < aux_loss_end; so 0-based steps 0..14998 of 15000.
    cfg = tokenizer_run("S-S", profile="paper")
    assert shortcut_active(cfg, 0) and shortcut_active(cfg, 14_998)
    assert not shortcut_active(cfg, 14_999) and not shortcut_active(cfg, 20_000)
    assert not any(shortcut_active(tokenizer_run("XL-XXL", profile="paper"), s) for s in (0, 1, 100))
    features_only = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, shortcut_decode=False))
    assert shortcut_active(features_only, 0) and not shortcut_direct_active(features_only, 0)


def _output(cnn: torch.Tensor, dec: torch.Tensor, recon: torch.Tensor) -> TokenizerOutput:
    zero = torch.zeros(())
    quant = QuantizerOutput(
        quantized=torch.zeros(1),
        indices=torch.zeros(1, dtype=torch.long),
        codebook_loss=zero,
        commitment_loss=zero,
        entropy_loss=zero,
        usage=zero,
        perplexity=zero,
    )
    return TokenizerOutput(recon, quant, None, cnn, dec)


def test_feature_loss_is_mse_to_the_detached_cnn_features() -> None:
    cnn = torch.randn(2, 4, 3, 3, requires_grad=True)
    dec = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss = shortcut_feature_loss(_output(cnn, dec, torch.zeros(2, 3, 8, 8)))
    assert loss.item() == pytest.approx(((cnn - dec) ** 2).mean().item(), rel=1e-6)
    loss.backward()
    # Only the transformer path is pulled (spatial.detach() in vq_vit_model.py).
    assert cnn.grad is None and dec.grad is not None and dec.grad.abs().sum() > 0


def _l1_perceptual(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean(dim=(1, 2, 3))


def _run_with_lpips(**kwargs: object) -> TokenizerRunConfig:
    """A tiny S-S run with the perceptual term on (the L1 stand-in above plays LPIPS, whatever the machine has)."""
    cfg = tokenizer_run("S-S", semantic_weight=0, **kwargs)  # type: ignore[arg-type]
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, perceptual="lpips"))


def test_shortcut_terms_and_their_weights() -> None:
    cfg = _run_with_lpips(stabiliser="shortcut")
    cfg = dataclasses.replace(
        cfg, loss=dataclasses.replace(cfg.loss, pixel_weight=2.0, perceptual_weight=3.0, shortcut_feature_weight=5.0)
    )
    torch.manual_seed(0)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    recon, direct = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    out = _output(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), recon)
    plain = generator_loss(cfg, images, out, _l1_perceptual, None, None)
    assert not any(k.startswith("shortcut") for k in plain)
    terms = generator_loss(cfg, images, out, _l1_perceptual, None, None, shortcut=True, direct=direct)
    # vq_loss.py: rec_weight * direct_rec_loss (pixel L2), perceptual_weight * direct_p_loss, plus fea_rec_loss.
    assert terms["shortcut_pixel_loss"].item() == pytest.approx(F.mse_loss(direct, images).item(), rel=1e-6)
    assert terms["shortcut_perceptual_loss"].item() == pytest.approx(
        _l1_perceptual(direct, images).mean().item(), rel=1e-6
    )
    expected = (
        plain["total_loss"]
        + 2.0 * terms["shortcut_pixel_loss"]
        + 3.0 * terms["shortcut_perceptual_loss"]
        + 5.0 * terms["shortcut_feature_loss"]
    )
    assert terms["total_loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert "shortcut_adversarial_loss" not in terms  # no GAN yet
    with_gan = generator_loss(
        cfg,
        images,
        out,
        _l1_perceptual,
        None,
        torch.ones(2, 1),
        shortcut=True,
        direct=direct,
        direct_fake_logits=torch.full((2, 1), 3.0),
    )
    assert with_gan["shortcut_adversarial_loss"].item() == pytest.approx(-3.0)
    # Feature alignment without the direct decoding (use_direct_rec_loss False with aux_loss_end > 0).
    features_only = generator_loss(cfg, images, out, _l1_perceptual, None, None, shortcut=True)
    assert set(k for k in features_only if k.startswith("shortcut")) == {"shortcut_feature_loss"}


class _L1Perceptual(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _l1_perceptual(a, b)


def _modules(cfg: TokenizerRunConfig, usage: CodebookUsageWindow | None = None) -> StepModules:
    torch.manual_seed(0)
    model = build_tokenizer(cfg.tokenizer).train()
    disc = PatchDiscriminator(cfg.loss.disc_channels, cfg.loss.disc_layers).train()
    return StepModules(
        model,
        disc,
        _L1Perceptual(),
        None,
        build_optimizer(cfg, model.parameters()),
        build_optimizer(cfg, disc.parameters()),
        model,
        disc,
        usage,
    )


def test_training_step_uses_the_shortcut_until_its_end() -> None:
    cfg = _run_with_lpips(stabiliser="shortcut")
    end = cfg.loss.shortcut_end_step
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    indices = torch.arange(4)
    m = _modules(cfg)
    early = training_step(cfg, m, images, indices, step=end - 2)
    assert {"shortcut_feature_loss", "shortcut_pixel_loss", "shortcut_perceptual_loss"} <= set(early)
    assert early["shortcut_feature_loss"] > 0 and early["shortcut_pixel_loss"] > 0
    late = training_step(cfg, m, images, indices, step=end - 1)
    assert not any(k.startswith("shortcut") for k in late)
    # The direct decoding trains the CNN decoder: with the pixel terms weighted 0 the decoder gets gradients only
    # through it, and only while the shortcut is on.
    only_direct = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, perceptual_weight=0.0))
    m = _modules(only_direct)
    before = [p.detach().clone() for p in m.model.cnn_decoder.parameters()]
    training_step(only_direct, m, images, indices, step=0)
    grads = [p.grad for p in m.model.cnn_decoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert any(not torch.equal(b, p) for b, p in zip(before, m.model.cnn_decoder.parameters(), strict=True))


def test_discriminator_also_sees_the_direct_decoding_while_both_are_on() -> None:
    # vq_loss.py: once disc_start is reached while aux_loss_end is not (never in the published configs), the
    # generator gets direct_generator_adv_loss and the discriminator d_d_adversarial_loss on the direct decoding.
    cfg = _run_with_lpips(stabiliser="shortcut")
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, gan_start_step=0))
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    both = training_step(cfg, _modules(cfg), images, torch.arange(4), step=0)
    assert "shortcut_adversarial_loss" in both and "discriminator_loss" in both
    after = training_step(cfg, _modules(cfg), images, torch.arange(4), step=cfg.loss.shortcut_end_step - 1)
    assert "shortcut_adversarial_loss" not in after
    # Two hinge terms (each >= 0 and ~1 at initialisation) against one.
    assert both["discriminator_loss"] > after["discriminator_loss"] + 0.5


def test_training_step_feeds_the_usage_window() -> None:
    cfg = _run_with_lpips()
    usage = CodebookUsageWindow(cfg.tokenizer.quantizer.codebook_size, 1024)
    terms = training_step(cfg, _modules(cfg, usage), torch.rand(4, 3, 32, 32) * 2 - 1, torch.arange(4), step=0)
    assert usage.recent.numel() == 4 * cfg.tokenizer.num_tokens
    assert "codebook_usage_batch" in terms and "codebook_usage" not in terms
    assert usage.usage() == pytest.approx(terms["codebook_usage_batch"].item())  # one batch, inside the window


# ---- windowed codebook usage --------------------------------------------------------------------------------


def test_usage_window_rolls_over_batches() -> None:
    usage = CodebookUsageWindow(codebook_size=100, window=6)
    assert usage.usage() == 0.0
    for batch in ([0, 1], [2, 3], [4, 5], [6, 7]):
        usage.add(torch.tensor(batch))
    assert usage.recent.tolist() == [2, 3, 4, 5, 6, 7] and usage.usage() == pytest.approx(0.06)
    usage.add(torch.tensor([[7, 7], [7, 7]]))  # the window is now 6, 7, 7, 7, 7, 7: repeats count once
    assert usage.usage() == pytest.approx(0.02)


def test_usage_window_smaller_than_a_batch_keeps_the_newest() -> None:
    usage = CodebookUsageWindow(codebook_size=10, window=3)
    usage.add(torch.tensor([[9, 9, 9], [0, 1, 2]]))
    assert usage.recent.tolist() == [0, 1, 2] and usage.usage() == pytest.approx(0.3)


def test_usage_window_state_round_trip_and_rank_share() -> None:
    usage = CodebookUsageWindow(codebook_size=10, window=4)
    usage.add(torch.tensor([1, 2, 3, 4, 5]))
    restored = CodebookUsageWindow(codebook_size=10, window=4)
    restored.load(usage.state())
    assert restored.recent.tolist() == [2, 3, 4, 5] and restored.usage() == usage.usage()
    # With N ranks each keeps its share of the window (rounded up); the union covers the global window.
    assert CodebookUsageWindow(16384, 65_536, DistEnv(world_size=8)).capacity == 8192
    assert CodebookUsageWindow(10, 5, DistEnv(world_size=2)).capacity == 3
    assert default_window(256, None) == 1024 and default_window(256, 77) == 77
    with pytest.raises(ValueError, match="window"):
        CodebookUsageWindow(10, 0)


# ---- the training crop --------------------------------------------------------------------------------------


def _folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_random_crop_applies_to_the_training_split_only(tmp_path: Path) -> None:
    _folder(tmp_path)
    data = DataConfig(dataset="imagefolder", root=str(tmp_path), train_crop="random")
    train = build_dataset(data, "train", 32, augment=True)
    assert isinstance(train, ImageFolderDataset) and train.crop is not None
    # Without augment (token caches, evaluation on train images) and on validation: the centre crop.
    plain = build_dataset(data, "train", 32)
    assert isinstance(plain, ImageFolderDataset) and plain.crop is None
    val = build_dataset(data, "val", 32)
    assert isinstance(val, ImageFolderDataset) and val.crop is None
    with pytest.raises(DataError, match="training split only"):
        build_dataset(data, "val", 32, augment=True)
    # A centre-crop config stays centre-cropped even when augmented.
    centre = build_dataset(dataclasses.replace(data, train_crop="center"), "train", 32, augment=True)
    assert centre.crop is None  # type: ignore[attr-defined]
    # The random crop covers 80-100% of the short side: over a few draws, crops differ from the centre crop.
    crops = {train.item(0, random.Random(s))[0].sum().item() for s in range(6)}
    assert len(crops) > 1 and plain[0][0].shape == train.item(0, random.Random(0))[0].shape == (3, 32, 32)


def test_training_loop_asks_for_the_augmented_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gigatok.train.tokenizer_loop as loop

    calls: list[tuple[str, bool]] = []

    def record(data_cfg, split, image_size, seed=0, *, augment=False):  # type: ignore[no-untyped-def]
        calls.append((split, augment))
        raise RuntimeError("stop here")

    monkeypatch.setattr(loop, "build_dataset", record)
    with pytest.raises(RuntimeError, match="stop here"):
        loop.train_tokenizer(tokenizer_run("S-S"), tmp_path / "run", progress=False, device="cpu")
    assert calls == [("train", True)]


def test_crops_depend_only_on_seed_step_and_index(tmp_path: Path) -> None:
    _folder(tmp_path)
    data = DataConfig(dataset="imagefolder", root=str(tmp_path), train_crop="random")
    dataset = IndexedDataset(build_dataset(data, "train", 32, augment=True))
    whole = list(KeyedBatches(ResumableBatchSampler(4, 2, seed=3, start_step=0, total_steps=6)))
    resumed = list(KeyedBatches(ResumableBatchSampler(4, 2, seed=3, start_step=4, total_steps=6)))
    assert resumed == whole[4:]
    index, key = whole[5][0]
    assert key == crop_seed(3, 5, index)
    a, b = dataset[(index, key)], dataset[(index, key)]
    assert torch.equal(a[0], b[0]) and a[2] == index
    other_step = dataset[(index, crop_seed(3, 6, index))]
    assert not torch.equal(a[0], other_step[0])
    assert isinstance(dataset[index][0], torch.Tensor)  # plain indices still read the dataset directly


def test_train_transform_crops_and_flips(tmp_path: Path) -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    data = DataConfig(train_crop="random")
    flipped = unflipped = 0
    for s in range(20):
        out = train_transform(data, 32)(image, random.Random(s))
        same_crop = train_transform(data, 32, hflip=False)(image, random.Random(s))
        assert out.size == (32, 32)
        if np.array_equal(np.asarray(out), np.asarray(same_crop)):
            unflipped += 1
        elif np.array_equal(np.asarray(out), np.asarray(same_crop)[:, ::-1]):
            flipped += 1
    assert flipped > 0 and unflipped > 0 and flipped + unflipped == 20
    centre = train_transform(DataConfig(hflip=False), 32)
    assert np.array_equal(np.asarray(centre(image, random.Random(0))), np.asarray(centre(image, random.Random(5))))
