"""Regenerate tests/fixtures/parity_tokenizer_{1d,2d}.pt from the authors' code: their tokenizers at reduced width.

    python tools/parity/tokenizer.py --authors /path/to/SilentView/GigaTok --out tests/fixtures

(needs ``einops``, which their code imports; the project's tests do not). It builds ``VQVitModelPlus`` (1D,
Q-Former) and ``VQVitModel2DPlus`` (2D, ViT with their ``TransformerLayer``) from
``tokenizer/tokenizer_image/vq/vq_vit_model.py`` with the options of configs/vq/VQ_*256.yaml (multi-level query
init, adaptive GroupNorm, depth-to-space upsampling, no CNN attention, rotation trick, L2-normalised codebook) at
a size that keeps each fixture near 1 MB:

- CNN base channels 32 (their ``Encoder``/``Decoder`` ``ch``, 128 in their models), ``ch_mult`` [1, 1] (one
  down/upsampling), ``num_res_blocks`` 0 (1D) or 1 (2D) in the encoder and 0 in the decoder (one block a level),
  latent channels 16, 32x32 (1D) or 16x16 (2D) images (their
  ViTs' ``image_size``, 256);
  their classes do not take these from the model config, so they are bound with ``functools.partial`` in the
  imported module, not edited;
- transformer sizes "parity_e" (width 24, 2 layers, 2 heads) and "parity_d" (width 32, 2 layers, 4 heads): their
  size tables are dict literals inside the ViT classes, so ``blocks.py`` is read, these two rows are added to each
  table (``self.width = {`` etc., five classes), and the result is executed as their module; nothing else changes
  and nothing under ``--authors`` is written;
- 32 latent tokens (1D), a 64-entry codebook of dimension 8, no semantic projector (``distill_depth`` None), no
  codebook-usage buffer.

Every parameter is then overwritten with seeded random values (weights N(0, 1/fan_in), position embeddings N(0, 1),
1-D parameters perturbed by 0.1 N(0, 1), the adaptive GroupNorm's scale kept near 1), so that zero-initialised
biases and unit norms matter too. In eval mode, fp32 on the CPU, their code computes: ``cnn_features`` (their
``spatial``), ``encoder_output`` (before ``quant_conv``), ``latents`` (after it, before quantization), ``indices``,
``quantized`` (the quantizer's output), ``decoder_features`` (their ``rec_spatial``), ``reconstruction``
(``forward``'s image) and ``decoded_codes`` (``decode_code`` of the given ``inputs["codes"]``). Tensors keep their
layout: (B, C, 1, N) for 1D latents, (B, C, h, w) for 2D.

It also writes tests/fixtures/authors_tokenizer_layouts.json: the key names and shapes (no values) of their models
as configs/vq/VQ_SS256.yaml, VQ_XLXXL256.yaml, VQ_SB256_2d.yaml and VQ_SS256_2d.yaml build them at full size, on
the meta device, for the converter's tests.

The script refuses to write a fixture whose nearest code is within 1e-4 (squared distance) of the second nearest, so
that the indices do not depend on rounding (the seeds below pass it by a factor of 19 or more). Nothing here is
imported by the project: the fixtures hold numbers, and tests/test_parity_tokenizer.py checks the workbench against
them without the authors' code. The output is bit-for-bit reproducible (fixed seeds, one thread): ``--check``
regenerates into a temporary folder and compares sha256 with the committed files.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import json
import re
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch
from authors_checkout import authors_commit, put_first_on_path

# Per model, chosen among the first sixteen for the widest nearest-code margin and most distinct codes.
SEEDS = {"1d": 9, "2d": 15}
BATCH = 2
# Image side per model: a 16x16 token grid for 1D (the real grid), 8x8 for 2D (its tokens are the grid).
IMAGE_SIZES = {"1d": 32, "2d": 16}
CNN_CHANNELS = 32
# Rows added to the authors' ViT size tables: width, layers, heads.
SIZES = {"parity_e": (24, 2, 2), "parity_d": (32, 2, 4)}
COMMON: dict[str, Any] = {
    "codebook_size": 64,
    "codebook_embed_dim": 8,
    "codebook_l2_norm": True,
    "codebook_show_usage": False,
    "commit_loss_beta": 0.25,
    "entropy_loss_ratio": 0.0,
    "encoder_ch_mult": [1, 1],
    "decoder_ch_mult": [1, 1],
    "model_size": None,
    "encoder_size": "parity_e",
    "decoder_size": "parity_d",
    "z_channels": 16,
    "dropout_p": 0.0,
    "adaptive_gn": True,
    "d2s_up": True,
    "rot": True,
    "use_attn": False,
    "fea_rec_loss_type": "mse",
    "fea_rec_loss_weight": 1.0,
    "distill_depth": None,
}
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "1d": (
        "VQVitModelPlus",
        {
            **COMMON,
            "num_latent_tokens": 32,
            "multi_level_query_init": True,
            "last_level_2d_query_init": False,
            "multi_level_2d_query_init": False,
        },
    ),
    "2d": ("VQVitModel2DPlus", {**COMMON, "num_latent_tokens": 64, "transformer_layer_type": "TransformerLayer"}),
}
# Their CNN's num_res_blocks (encoder blocks per level; the decoder has one more), 2 in their models; not part of
# their model config, so bound per CNN. Both decoders have one block a level; the 1D encoder has none (only the
# middle blocks), the 2D encoder one.
RES_BLOCKS = {"1d": (0, 0), "2d": (1, 0)}
VQ = "tokenizer.tokenizer_image.vq"


def _with_size_rows(source: str) -> str:
    for table, column in (("self.width = {", 0), ("self.num_layers = {", 1), ("self.num_heads = {", 2)):
        if source.count(table) != 5:
            sys.exit(f"blocks.py: expected five '{table}' size tables, found {source.count(table)}")
        rows = "".join(f'"{name}": {values[column]}, ' for name, values in SIZES.items())
        source = source.replace(table, table + rows)
    return source


def import_authors(root: Path) -> types.ModuleType:
    blocks_path = root / "tokenizer" / "tokenizer_image" / "vq" / "blocks.py"
    if not blocks_path.is_file():
        sys.exit(f"--authors {root}: no tokenizer/tokenizer_image/vq/blocks.py there (a SilentView/GigaTok checkout?)")
    put_first_on_path(root)
    importlib.import_module(VQ)
    blocks = types.ModuleType(f"{VQ}.blocks")
    blocks.__file__ = str(blocks_path)
    sys.modules[blocks.__name__] = blocks
    exec(compile(_with_size_rows(blocks_path.read_text()), str(blocks_path), "exec"), blocks.__dict__)
    vq = importlib.import_module(f"{VQ}.vq_vit_model")
    # Sizes their model classes do not pass on: bound here, their classes unchanged.
    return vq


@torch.no_grad()
def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Weights N(0, 1/fan_in), position embeddings N(0, 1); 1-D parameters (biases, norm scales) perturbed by
    0.1 N(0, 1). Strong positions keep the tokens apart, so that they do not all quantize to one code."""
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=gen)
        if "positional_embedding" in name:
            p.copy_(noise)
        elif p.ndim >= 2:
            p.copy_(noise * p[0].numel() ** -0.5)
        else:
            p.add_(0.1 * noise)
        if re.fullmatch(r"decoder\.adaptive\.\d+\.gamma\.(weight|bias)", name):
            # The adaptive GroupNorm's predicted scale kept near 1, as a norm's scale is (bias 1 + 0.1 N(0, 1),
            # weights 0.2 / sqrt(fan_in)). Near 0 it would leave channels almost constant, and the next GroupNorm
            # (one channel a group at 32 channels) would blow their rounding up 100-fold.
            p.mul_(0.2) if name.endswith("weight") else p.add_(1.0)


def test_images(gen: torch.Generator, size: int) -> torch.Tensor:
    """Smooth random colour fields (a 4x4 grid upsampled) plus fine noise, in [-1, 1]-ish."""
    coarse = torch.rand(BATCH, 3, 4, 4, generator=gen) * 2 - 1
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return smooth + 0.1 * torch.randn(BATCH, 3, size, size, generator=gen)


def _check_margin(latents: torch.Tensor, codebook: torch.Tensor) -> None:
    z = torch.nn.functional.normalize(latents.movedim(1, -1).reshape(-1, latents.shape[1]), dim=-1)
    e = torch.nn.functional.normalize(codebook, dim=-1)
    dist = torch.cdist(z.double(), e.double()) ** 2
    best = dist.topk(2, largest=False).values
    gap = (best[:, 1] - best[:, 0]).min().item()
    if gap < 1e-4:
        sys.exit(f"nearest-code margin {gap:.2e} < 1e-4: the indices would depend on rounding; change SEEDS")


@torch.no_grad()
def run_model(vq: types.ModuleType, kind: str, seed: int) -> dict[str, Any]:
    cls_name, config = MODELS[kind]
    enc_blocks, dec_blocks = RES_BLOCKS[kind]
    blocks = sys.modules[f"{VQ}.blocks"]
    vq.Encoder = functools.partial(blocks.Encoder, ch=CNN_CHANNELS, num_res_blocks=enc_blocks)
    vq.Decoder = functools.partial(blocks.Decoder, ch=CNN_CHANNELS, num_res_blocks=dec_blocks)
    for name in ("ViTEncoder", "ViTDecoder", "ViTEncoder2D", "ViTDecoder2D"):
        setattr(vq, name, functools.partial(getattr(blocks, name), image_size=IMAGE_SIZES[kind]))
    torch.manual_seed(seed)
    args_cls = vq.VQVitModelPlusArgs if kind == "1d" else vq.VQVitModel2DPlusArgs
    model = getattr(vq, cls_name)(args_cls(**config)).eval()
    gen = torch.Generator().manual_seed(seed)
    randomize(model, gen)
    images = test_images(gen, IMAGE_SIZES[kind])
    transformer_enc = model.s2to1encoder if kind == "1d" else model.s2dencoder
    cnn_features = model.encoder(images)
    encoder_output = transformer_enc(cnn_features)
    latents = model.quant_conv(encoder_output)
    _check_margin(latents, model.quantize.embedding.weight)
    quantized, _, (_, _, indices) = model.quantize(latents)
    reconstruction, decoder_features = model.decode(quantized)
    forward_image, _ = model(images)
    if not torch.equal(forward_image, reconstruction):
        sys.exit(f"{cls_name}: forward() and encode/decode disagree")
    tokens = latents.shape[2] * latents.shape[3]
    codes = torch.randint(0, config["codebook_size"], (BATCH, tokens), generator=gen)
    shape = (BATCH, config["codebook_embed_dim"], latents.shape[2], latents.shape[3])
    decoded_codes = model.decode_code(codes, shape=shape)
    authors_config = {
        **config,
        "cnn_ch": CNN_CHANNELS,
        "encoder_num_res_blocks": enc_blocks,
        "decoder_num_res_blocks": dec_blocks,
        "image_size": IMAGE_SIZES[kind],
        "size_table": {name: {"width": w, "layers": d, "heads": h} for name, (w, d, h) in SIZES.items()},
    }
    return {
        "authors_class": cls_name,
        "authors_config": authors_config,
        "state_dict": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
        "inputs": {"images": images, "codes": codes},
        "outputs": {
            "cnn_features": cnn_features,
            "encoder_output": encoder_output,
            "latents": latents,
            "indices": indices.view(BATCH, tokens),
            "quantized": quantized,
            "decoder_features": decoder_features,
            "reconstruction": reconstruction,
            "decoded_codes": decoded_codes,
        },
    }


# Full-size key layouts (key -> shape, no values) of the authors' configs, for the converter's tests.
LAYOUT_CONFIGS = ("VQ_SS256", "VQ_XLXXL256", "VQ_SB256_2d", "VQ_SS256_2d")
LAYOUTS = "authors_tokenizer_layouts.json"


def key_layouts(vq: types.ModuleType, root: Path) -> dict[str, Any]:
    """Their models as configs/vq/<name>.yaml builds them, on the meta device: every key with its shape."""
    import yaml

    blocks = sys.modules[f"{VQ}.blocks"]
    for name in ("Encoder", "Decoder", "ViTEncoder", "ViTDecoder", "ViTEncoder2D", "ViTDecoder2D"):
        setattr(vq, name, getattr(blocks, name))  # their own sizes: 128 CNN channels, 256 px
    layouts: dict[str, Any] = {}
    for config in LAYOUT_CONFIGS:
        spec = yaml.safe_load((root / "configs" / "vq" / f"{config}.yaml").read_text())["model"]
        two_d = spec["model_cls"] == "VQVitModel2DPlus"
        args_cls = vq.VQVitModel2DPlusArgs if two_d else vq.VQVitModelPlusArgs
        fields = set(args_cls.__dataclass_fields__)
        with torch.device("meta"):
            model = getattr(vq, spec["model_cls"])(
                args_cls(**{k: v for k, v in spec["init_args"].items() if k in fields})
            )
        layouts[config] = {
            "authors_class": spec["model_cls"],
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        }
    return layouts


def write_fixtures(root: Path, out: Path) -> list[Path]:
    torch.set_num_threads(1)
    vq = import_authors(root)
    commit = authors_commit(root)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in MODELS:
        path = out / f"parity_tokenizer_{kind}.pt"
        torch.save({"authors_commit": commit, **run_model(vq, kind, SEEDS[kind])}, path)
        paths.append(path)
    path = out / LAYOUTS
    path.write_text(json.dumps({"authors_commit": commit, **key_layouts(vq, root)}, indent=None) + "\n")
    paths.append(path)
    return paths


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors", type=Path, required=True, help="a checkout of SilentView/GigaTok")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    parser.add_argument("--check", action="store_true", help="regenerate elsewhere and compare with --out")
    args = parser.parse_args(argv)
    if not args.check:
        for path in write_fixtures(args.authors, args.out):
            print(f"{path}  {path.stat().st_size / 1e6:.2f} MB  sha256 {sha256(path)}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_fixtures(args.authors, Path(tmp)):
            committed = args.out / path.name
            same = committed.is_file() and sha256(committed) == sha256(path)
            print(f"{path.name}: {'identical' if same else 'DIFFERS'}  sha256 {sha256(path)}")
            if not same:
                sys.exit(1)


if __name__ == "__main__":
    main()
