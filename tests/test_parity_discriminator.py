"""The discriminators compute the authors' functions: logits their code computed (tools/parity/discriminator.py).

No authors' code is needed: the fixtures hold their state dicts, inputs and outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gigatok.models.discriminator import (
    DinoArch,
    DinoDiscriminator,
    PatchDiscriminator,
    create_dino_vit,
    diff_augment,
    dino_state_for_timm,
)

FIXTURES = Path(__file__).parent / "fixtures"
TOL = {"rtol": 1e-4, "atol": 1e-5}


def load(name: str) -> dict[str, Any]:
    return torch.load(FIXTURES / name, weights_only=True)


def dino_from_fixture(fixture: dict[str, Any]) -> DinoDiscriminator:
    cfg = fixture["authors_config"]
    arch = DinoArch(
        width=cfg["embed_dim"],
        depth=cfg["depth"],
        heads=cfg["num_heads"],
        key_depths=tuple(cfg["key_depths"]),
        kernel_size=cfg["ks"],
        norm_eps=cfg["norm_eps"],
    )
    vit = create_dino_vit(arch)
    vit.load_state_dict(dino_state_for_timm(fixture["backbone_state_dict"]), strict=True)
    disc = DinoDiscriminator(vit, arch, augment=False)
    # Their DinoDisc's state dict is its heads (the ViT is held outside it), and so is ours: the same keys.
    disc.load_state_dict(fixture["state_dict"], strict=True)
    return disc


@pytest.fixture(scope="module")
def dino_fixture() -> dict[str, Any]:
    torch.set_num_threads(1)
    return load("parity_dino_disc.pt")


def test_fixture_format(dino_fixture: dict[str, Any]) -> None:
    for fixture in (dino_fixture, load("parity_patchgan.pt")):
        assert len(fixture["authors_commit"]) == 40
        assert set(fixture) >= {"authors_class", "authors_config", "state_dict", "inputs", "outputs"}


def test_dino_discriminator_reproduces_the_authors_logits(dino_fixture: dict[str, Any]) -> None:
    disc = dino_from_fixture(dino_fixture)
    inputs, outputs = dino_fixture["inputs"], dino_fixture["outputs"]
    small = inputs["small"]
    # Train mode first: their spectral norm takes one power-iteration step, and the eval pass uses its result.
    disc.train()
    torch.testing.assert_close(disc.logits(small, None).detach(), outputs["logits_train"], **TOL)
    disc.eval()
    with torch.no_grad():
        torch.testing.assert_close(disc.logits(small, None), outputs["logits_eval"], **TOL)
        large = inputs["large"]
        assert disc.sample_crop(large[..., :224, :224]) is None  # a 224 px image is never cropped
        torch.testing.assert_close(disc.logits(large, None), outputs["logits_area"], **TOL)
        top, left = inputs["crop_at"].tolist()
        torch.testing.assert_close(disc.logits(large, (top, left)), outputs["logits_crop"], **TOL)
    assert outputs["logits_crop"].shape == (1, 5 * 196)


def test_diff_augment_reproduces_the_authors(dino_fixture: dict[str, Any]) -> None:
    torch.manual_seed(int(dino_fixture["inputs"]["diffaug_seed"]))
    out = diff_augment(dino_fixture["inputs"]["diffaug_images"])
    torch.testing.assert_close(out, dino_fixture["outputs"]["diffaug"], rtol=0, atol=1e-6)


def test_patchgan_reproduces_the_authors() -> None:
    torch.set_num_threads(1)
    fixture = load("parity_patchgan.pt")
    cfg = fixture["authors_config"]
    assert (cfg["kw"], cfg["norm"], cfg["blur_ds"]) == (4, "batch", False)  # the options our PatchGAN implements
    disc = PatchDiscriminator(cfg["ndf"], cfg["n_layers"])
    state = {k.replace("main.", "net.", 1): v for k, v in fixture["state_dict"].items()}
    disc.load_state_dict(state, strict=True)
    images = fixture["inputs"]["images"]
    with torch.no_grad():
        disc.train()
        torch.testing.assert_close(disc(images), fixture["outputs"]["logits_train"], **TOL)
        disc.eval()  # the running statistics the train pass moved
        torch.testing.assert_close(disc(images), fixture["outputs"]["logits_eval"], **TOL)
