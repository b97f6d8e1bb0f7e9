"""The discriminator option: config field, registry entry, the DINO discriminator's loading, substitute and training.

Parity with the authors' code is tests/test_parity_discriminator.py; these tests check the plumbing around it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import urllib.request
from pathlib import Path

import pytest
import torch

from gigatok import weights
from gigatok.config import ConfigError, LossConfig, config_hash, hashed_fields, tokenizer_run
from gigatok.models.discriminator import (
    SUBSTITUTE_TAG,
    DinoArch,
    DinoDiscriminator,
    LocalBatchNorm,
    PatchDiscriminator,
    build_dino_discriminator,
    build_discriminator,
    create_dino_vit,
    diff_augment,
)
from gigatok.weights import MissingWeightsError, file_sha256

# A narrow DINO of full depth: the real layout and readouts at a fraction of ViT-S's cost.
NARROW = DinoArch(width=32, heads=2)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a download was attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "env-weights-unset"))
    torch.set_num_threads(1)


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def dino_file(folder: Path, arch: DinoArch = NARROW) -> Path:
    """A stand-in for dino_deitsmall16_pretrain.pth: the official file's key layout (timm's = DINO's)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / weights.REGISTRY["dino-vits16"].filename
    torch.save(create_dino_vit(arch).state_dict(), path)
    return path


def test_config_default_keeps_existing_hashes() -> None:
    loss = LossConfig()
    assert loss.discriminator == "patchgan"
    assert "discriminator" not in hashed_fields(loss)  # runs hashed before the field existed keep their hash
    assert config_hash(dataclasses.replace(loss, discriminator="dino")) != config_hash(loss)
    with pytest.raises(ConfigError, match="loss.discriminator"):
        LossConfig(discriminator="stylegan")  # type: ignore[arg-type]


@pytest.mark.parametrize(("profile", "start"), [("paper", 80_000), ("tiny", 1_600)])
def test_dino_runs_start_the_gan_as_the_authors_do(profile: str, start: int) -> None:
    plain = tokenizer_run("B-L", profile=profile)
    dino = tokenizer_run("B-L", profile=profile, discriminator="dino")
    assert plain.loss.discriminator == "patchgan" and dino.loss.discriminator == "dino"
    # VQ_BL256_dino_disc.yaml: disc_start 80000, disc_weight 0.5, hinge losses; VQ_BL256.yaml's PatchGAN: 20000.
    assert dino.loss.gan_start_step == start == 4 * plain.loss.gan_start_step
    assert (
        dataclasses.replace(dino.loss, discriminator="patchgan", gan_start_step=plain.loss.gan_start_step) == plain.loss
    )
    assert dino.tokenizer == plain.tokenizer and dino.hash() != plain.hash()


def test_registry_entry_has_no_hash_and_records_the_file_used(tmp_path: Path) -> None:
    entry = weights.REGISTRY["dino-vits16"]
    assert not entry.published and "not established" in entry.sha256_source
    assert entry.source.endswith("dino_deitsmall16_pretrain.pth")
    with pytest.raises(MissingWeightsError, match="no published sha256"):
        build_dino_discriminator(tmp_path, arch=NARROW)
    path = dino_file(tmp_path)
    disc = build_dino_discriminator(tmp_path, allow_substitute=True, arch=NARROW)  # present: never substituted
    assert not disc.substitute and file_sha256(path) in disc.network_name
    with pytest.raises(ValueError, match="must say why"):
        dataclasses.replace(entry, sha256_source="")


def test_dino_loads_a_verified_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = dino_file(tmp_path)
    entry = weights.REGISTRY["dino-vits16"]
    monkeypatch.setitem(weights.REGISTRY, "dino-vits16", dataclasses.replace(entry, sha256=file_sha256(path)))
    disc = build_dino_discriminator(tmp_path, arch=NARROW)
    assert not disc.substitute and SUBSTITUTE_TAG not in disc.network_name
    state = torch.load(path, weights_only=True)
    loaded = disc.backbone.vit.state_dict()
    assert torch.equal(loaded["blocks.3.attn.proj.weight"], state["blocks.3.attn.proj.weight"])
    # The key part of each qkv bias is zeroed as the authors' loader does; the query and value parts are kept.
    bias, width = loaded["blocks.0.attn.qkv.bias"], NARROW.width
    assert not bias[width : 2 * width].any() and torch.equal(bias[:width], state["blocks.0.attn.qkv.bias"][:width])


@pytest.fixture(scope="module")
def substitute() -> DinoDiscriminator:
    with pytest.warns(UserWarning, match="SUBSTITUTE"):
        return build_dino_discriminator("/nonexistent-weights", allow_substitute=True, arch=NARROW)


def test_substitute_is_marked_frozen_and_trains_only_its_heads(substitute: DinoDiscriminator) -> None:
    disc = substitute
    assert disc.substitute and SUBSTITUTE_TAG in disc.network_name
    trainable = {n for n, p in disc.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("heads.") for n in trainable)
    disc.train()
    assert not disc.backbone.training and disc.heads.training  # the frozen ViT stays in eval mode
    x = images(8, 32).requires_grad_(True)
    logits = disc(x)
    assert logits.shape == (8, 5 * 196)
    logits.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the generator's loss reaches the reconstruction
    assert all(p.grad is None for n, p in disc.named_parameters() if not n.startswith("heads."))


def test_substitute_is_the_same_network_every_time(substitute: DinoDiscriminator) -> None:
    with pytest.warns(UserWarning, match="SUBSTITUTE"):
        again = build_dino_discriminator("/nonexistent-weights", allow_substitute=True, arch=NARROW)
    assert torch.equal(again.backbone.vit.pos_embed, substitute.backbone.vit.pos_embed)


def test_state_dict_is_the_heads_only(substitute: DinoDiscriminator) -> None:
    """Checkpoints hold the trainable heads under the authors' keys, not a copy of the frozen pretrained ViT."""
    state = substitute.state_dict()
    assert state and all(k.startswith("heads.") for k in state)
    assert "heads.1.1.fn.0.weight_orig" in state and "heads.4.2.weight_u" in state  # DinoDisc's key names
    other = DinoDiscriminator(create_dino_vit(NARROW), NARROW)
    other.load_state_dict(state, strict=True)  # the ViT's keys are not missing: it comes from the registry file
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(RuntimeError, match="Missing key"):
        other.load_state_dict({k: v for k, v in state.items() if not k.startswith("heads.0.")}, strict=True)
    wrapped = torch.nn.ModuleDict({"disc": other})  # the hooks work at any depth
    assert all(k.startswith("disc.heads.") for k in wrapped.state_dict())


def test_full_size_dino_has_the_authors_parameter_count() -> None:
    disc = DinoDiscriminator(create_dino_vit(DinoArch()))
    heads = sum(p.numel() for p in disc.parameters() if p.requires_grad)
    vit = sum(p.numel() for p in disc.backbone.parameters())
    assert round(heads / 1e6, 2) == 7.39  # discriminator_dino.py's own printout: "7.39M"
    assert 21.6e6 < vit < 21.7e6  # ViT-S/16


def test_crop_is_random_only_for_images_larger_than_the_input(substitute: DinoDiscriminator) -> None:
    torch.manual_seed(0)
    draws = [substitute.sample_crop(images(1, 240)) for _ in range(40)]
    crops = [d for d in draws if d is not None]
    assert 5 < len(crops) < 35 and all(0 <= t <= 16 and 0 <= left <= 16 for t, left in crops)
    assert substitute.sample_crop(images(1, 224)) is None and substitute.sample_crop(images(1, 64)) is None


def test_diff_augment_changes_images_and_keeps_shape() -> None:
    x = images(4, 32)
    torch.manual_seed(0)
    out = diff_augment(x)
    assert out.shape == x.shape and not torch.equal(out, x)
    assert (out == 0).flatten(1).any(dim=1).all()  # every image lost a cutout square
    assert torch.equal(diff_augment(x, prob=0.0), x)


def test_local_batch_norm_refuses_a_batch_it_cannot_split() -> None:
    norm = LocalBatchNorm(4, virtual_batch=8)
    assert norm(torch.randn(12, 4, 5)).shape == (12, 4, 5)  # two groups of 6
    with pytest.raises(ValueError, match="batch 9 does not split"):
        norm(torch.randn(9, 4, 5))


def test_build_discriminator_by_name() -> None:
    assert isinstance(build_discriminator("patchgan", channels=8, layers=2), PatchDiscriminator)
    with pytest.raises(ValueError, match="unknown discriminator 'stylegan'"):
        build_discriminator("stylegan")


@pytest.mark.slow
def test_tokenizer_trains_against_the_dino_discriminator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make_tiny_run
) -> None:
    from gigatok.models import discriminator
    from gigatok.train.run_dir import read_metrics
    from gigatok.train.tokenizer_loop import train_tokenizer

    # The narrow ViT: the loop's plumbing is the point, and ViT-S at 224 px costs ~15 s a step on two cores.
    monkeypatch.setattr(
        discriminator,
        "build_dino_discriminator",
        functools.partial(discriminator.build_dino_discriminator, arch=NARROW),
    )
    cfg = make_tiny_run(2, log_every=1, semantic_weight=0)
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, discriminator="dino", gan_start_step=0))
    with pytest.warns(UserWarning, match="SUBSTITUTE"):  # stopped after one step, as a preemption would
        assert not train_tokenizer(
            cfg, tmp_path / "run", allow_substitutes=True, progress=False, stop_at_step=1
        ).finished
    with pytest.warns(UserWarning, match="SUBSTITUTE"):  # the resumed run loads the heads from the checkpoint
        result = train_tokenizer(cfg, tmp_path / "run", allow_substitutes=True, progress=False)
    assert result.finished and result.steps == 2
    records = read_metrics(tmp_path / "run")
    assert all("discriminator_loss" in r and r["adversarial_loss"] != 0 for r in records)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert any("dino-vits16" in name and SUBSTITUTE_TAG in name for name in summary["substitutes"])
