"""Regenerate tests/fixtures/parity_dino_disc.pt and parity_patchgan.pt from the authors' discriminators.

    python tools/parity/discriminator.py --authors /path/to/SilentView/GigaTok --out tests/fixtures

DINO (``tokenizer/tokenizer_image/discriminator_dino.py``, ``DinoDisc`` built as their ``VQLoss`` builds it for
``disc_type: dinodisc``: ``norm_type="bn"``, kernel 9, depth 12, readouts after blocks 2, 5, 8, 11, spectral norm):
their loader would download DINO ViT-S/16, so ``torch.hub.load_state_dict_from_url`` is replaced, for this process
only, by a function returning seeded random weights, and their ``FrozenDINOSmallNoDrop`` by a subclass of width 32
with 2 heads (depth and everything else unchanged), which keeps the file small. Nothing in the checkout is modified.
Their code then computes, fp32 on the CPU:

- ``logits_train`` on 16 images of 32 px (bicubic-upsampled to 224; two local-batch-norm groups of 8), in train
  mode, so their spectral norm runs one power iteration; then ``logits_eval`` on the same images in eval mode;
- ``logits_area`` (eval) on 1 image of 232 px with their random crop switched off (area resize), and
  ``logits_crop`` with it switched on, the crop offsets their ``RandomCrop`` drew stored as ``crop_at``;
- ``diffaug``: their ``DiffAug(prob=1.0, cutout=0.2).aug`` of 4 images of 32 px after ``torch.manual_seed``
  (``diffaug_seed``).

``state_dict`` is ``DinoDisc.state_dict()`` before any forward (the trainable heads; their frozen ViT is held
outside the module) and ``backbone_state_dict`` the frozen ViT's (DINO's key layout plus their two preprocessing
buffers ``x_scale``, ``x_shift``).

PatchGAN (``discriminator_patchgan.py``, ``NLayerDiscriminator`` as ``VQLoss`` builds it for ``patchgan``: kernel
4, BatchNorm, 3 layers) at ``ndf`` 8 instead of 64: ``logits_train`` on 4 images of 32 px in train mode (batch
statistics, which also move the running statistics), then ``logits_eval`` in eval mode.

Nothing here is imported by the project; tests/test_parity_discriminator.py checks the workbench against the
numbers. The output is bit-for-bit reproducible (fixed seeds, one thread).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import types
from pathlib import Path
from typing import Any

import torch
from authors_checkout import authors_commit, put_first_on_path

DINO_FIXTURE = "parity_dino_disc.pt"
PATCHGAN_FIXTURE = "parity_patchgan.pt"
SEED = 0
DINO_NARROW = {"embed_dim": 32, "num_heads": 2}  # their ViT-S/16 is 384 wide with 6 heads
# DinoDisc's keyword arguments as VQLoss passes them (it leaves the rest at their defaults), device aside.
DINO_CONFIG: dict[str, Any] = {
    "ks": 9,
    "depth": 12,
    "key_depths": [2, 5, 8, 11],
    "norm_type": "bn",
    "using_spec_norm": True,
    "norm_eps": 1e-6,
    **DINO_NARROW,
}
PATCHGAN_CONFIG: dict[str, Any] = {"input_nc": 3, "ndf": 8, "n_layers": 3, "norm": "batch", "kw": 4, "blur_ds": False}


def import_authors(root: Path) -> tuple[Any, Any, Any]:
    if not (root / "tokenizer" / "tokenizer_image" / "discriminator_dino.py").is_file():
        sys.exit(f"--authors {root}: no tokenizer/tokenizer_image/discriminator_dino.py (not a GigaTok checkout?)")
    put_first_on_path(root)
    from tokenizer.tokenizer_image import diffaug, discriminator_dino, discriminator_patchgan

    return discriminator_dino, diffaug, discriminator_patchgan


@torch.no_grad()
def random_vit_state(vit: torch.nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Seeded values for every ViT weight (a trained ViT has no zero or constant tensors; neither does this)."""
    state = {}
    for name, p in vit.state_dict().items():
        noise = torch.randn(p.shape, generator=gen)
        if name in ("x_scale", "x_shift"):
            continue  # their preprocessing constants, not weights
        if "norm" in name and name.endswith("weight"):
            state[name] = 1 + 0.1 * noise
        elif p.ndim >= 2 and name.endswith("weight"):
            state[name] = noise / p[0].numel() ** 0.5
        else:
            state[name] = 0.1 * noise
    return state


def dino_fixture(dino: Any, diffaug: Any) -> dict[str, Any]:
    base = dino.FrozenDINOSmallNoDrop

    class Narrow(base):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs, **DINO_NARROW)

    gen = torch.Generator().manual_seed(SEED)
    weights = random_vit_state(Narrow(depth=DINO_CONFIG["depth"]), gen)
    dino.FrozenDINOSmallNoDrop = Narrow
    dino.torch.hub.load_state_dict_from_url = lambda *a, **k: {n: t.clone() for n, t in weights.items()}
    torch.manual_seed(SEED)
    disc = dino.DinoDisc(device="cpu", **{k: v for k, v in DINO_CONFIG.items() if k not in DINO_NARROW})
    vit = disc.dino_proxy[0]
    state = {k: v.clone() for k, v in disc.state_dict().items()}
    backbone = {k: v.clone() for k, v in vit.state_dict().items()}

    small = torch.rand(16, 3, 32, 32, generator=gen) * 2 - 1
    large = torch.rand(1, 3, 232, 232, generator=gen) * 2 - 1
    outputs: dict[str, torch.Tensor] = {}
    disc.train()
    outputs["logits_train"] = disc(small).detach()
    disc.eval()
    with torch.no_grad():
        outputs["logits_eval"] = disc(small)
        dino.random = types.SimpleNamespace(random=lambda: 1.0)  # their coin: never crop
        outputs["logits_area"] = disc(large)
        dino.random = types.SimpleNamespace(random=lambda: 0.0)  # always crop, at offsets RandomCrop draws
        drawn: list[tuple[int, int]] = []
        get_params = vit.crop.get_params

        def spy(img: torch.Tensor, size: Any) -> Any:
            top, left, h, w = get_params(img, size)
            drawn.append((top, left))
            return top, left, h, w

        vit.crop.get_params = spy
        torch.manual_seed(SEED + 1)
        outputs["logits_crop"] = disc(large)
    assert len(drawn) == 1, "their crop path did not run"

    images = torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1
    torch.manual_seed(SEED + 2)
    outputs["diffaug"] = diffaug.DiffAug(prob=1.0, cutout=0.2).aug(images, 0)
    return {
        "authors_class": "DinoDisc",
        "authors_config": DINO_CONFIG,
        "state_dict": state,
        "backbone_state_dict": backbone,
        "inputs": {
            "small": small,
            "large": large,
            "crop_at": torch.tensor(drawn[0]),
            "diffaug_images": images,
            "diffaug_seed": torch.tensor(SEED + 2),
        },
        "outputs": outputs,
    }


def patchgan_fixture(patchgan: Any) -> dict[str, Any]:
    torch.manual_seed(SEED)
    disc = patchgan.NLayerDiscriminator(**PATCHGAN_CONFIG)
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():  # the BatchNorm affine parameters start at 1 / 0 +- noise; make every one matter
        for p in disc.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    state = {k: v.clone() for k, v in disc.state_dict().items()}
    images = torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1
    disc.train()
    with torch.no_grad():
        train = disc(images)
        disc.eval()
        evaluated = disc(images)
    return {
        "authors_class": "NLayerDiscriminator",
        "authors_config": PATCHGAN_CONFIG,
        "state_dict": state,
        "inputs": {"images": images},
        "outputs": {"logits_train": train, "logits_eval": evaluated},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors", type=Path, required=True, help="a checkout of SilentView/GigaTok")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"), help="folder for the two fixtures")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one summation order, so the files are the same bit for bit on every run
    root = args.authors.resolve()
    dino, diffaug, patchgan = import_authors(root)
    commit = authors_commit(root)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, fixture in ((DINO_FIXTURE, dino_fixture(dino, diffaug)), (PATCHGAN_FIXTURE, patchgan_fixture(patchgan))):
        path = args.out / name
        torch.save({"authors_commit": commit, **fixture}, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB, sha256 {digest}")


if __name__ == "__main__":
    main()
