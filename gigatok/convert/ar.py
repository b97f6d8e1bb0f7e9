"""The authors' GPT checkpoints (``autoregressive.models.gpt_1d.Transformer``) as workbench AR weights.

Their released AR models (``GPT_B256_e300_VQ_SS.pt``, ``..._VQ_SB``, ``..._VQ_BL``, ``..._VQ_BL_dino_disc``,
``..._VQ_XLXXL``; ``GPT_XL256_e300_VQ_BL.pt``, ``GPT_XXL256_e300_VQ_BL.pt``, ``GPT_XXL256_e300_VQ_XLXXL.pt``) are
training checkpoints of ``train_c2i.py``: the weights under ``"model"``, which their sampler and linear probe
load. Their class-conditional GPT with 1D absolute positions computes the same function as
:class:`gigatok.models.ar.ARModel` (tests/test_parity_ar.py); the key layout is the same but for the class and
position embeddings.

What the shapes say: width and vocabulary (``tok_embeddings``), depth (the ``layers.<i>`` blocks), the FFN width
(``feed_forward.w1``), the number of classes (``cls_embedding`` rows less the null class their LabelEmbedder adds
when trained with class dropout, as every authors' run is) and the tokens per image (``positional_embedding`` rows
less the one class token). What they cannot say is the number of heads: the fused ``wqkv`` is (3 * width, width)
for any head count. It comes from the authors' size table (``GPT_models`` in gpt_1d.py) by width, or from the
checkpoint's ``args.gpt_model`` when present, or from the ``heads`` argument; for a width outside the table it is
width / 64, the head width of every authors' GPT size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gigatok.config import ARConfig, ConfigError, get_profile
from gigatok.convert import ConversionError, checkpoint_weights, read_checkpoint

# gpt_1d.py's GPT_models: name -> (width, heads). Every one has 64-wide heads.
AUTHORS_GPT_SIZES: dict[str, tuple[int, int]] = {
    "GPT-B": (768, 12),
    "GPT-L": (1024, 16),
    "GPT-XL": (1280, 20),
    "GPT-XXL": (1536, 24),
    "GPT-XXXL": (2560, 40),
    "GPT-1B": (2048, 32),
    "GPT-3B": (3200, 32),
    "GPT-7B": (4096, 32),
}
HEADS_BY_WIDTH = {width: heads for width, heads in AUTHORS_GPT_SIZES.values()}
HEAD_WIDTH = 64
CLS_TOKENS = 1  # gpt_1d.Transformer asserts cls_token_num == 1
# Buffers that sampling adds to their modules, and RoPE tables; not weights.
IGNORED = re.compile(r"(^|\.)(kv_cache\.[kv]_cache|freqs_cis|causal_mask)$")
# Features of their gpt_1d that the workbench does not implement (each off in every released model).
UNSUPPORTED = {
    "adaLN": "adaLN conditioning (--adaLN / --simple-adaLN)",
    "ada_gss": "adaLN conditioning (--simple-adaLN)",
    "q_norm": "QK-norm (--qk-norm)",
    "cap_proj": "text conditioning (--gpt-type t2i)",
}
TOKENIZER_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.", "pre_quant")
BLOCK_PARAMS = (
    "attention.wqkv.weight",
    "attention.wo.weight",
    "feed_forward.w1.weight",
    "feed_forward.w3.weight",
    "feed_forward.w2.weight",
    "attention_norm.weight",
    "ffn_norm.weight",
)
TOP_PARAMS = ("tok_embeddings.weight", "cls_embedding.embedding_table.weight", "norm.weight", "output.weight")


def load_authors_ar(
    source: str | Path | Mapping[str, Any], *, heads: int | None = None
) -> tuple[ARConfig, dict[str, torch.Tensor]]:
    """A workbench :class:`ARConfig` and a state dict that ``ARModel(config)`` loads with ``strict=True``.

    ``source``: a file path, a loaded training checkpoint (its ``"model"``, as the authors' GPT loaders read it;
    ``"ema"`` only without one) or a bare state dict. ``heads`` overrides the head count the shapes cannot
    determine. Recipe values the weights do not determine (dropout, initialisation) are the ``paper`` profile's.
    Raises :class:`ConversionError` (one line).
    """
    name = str(source) if isinstance(source, str | Path) else "checkpoint"
    checkpoint = read_checkpoint(Path(source)) if isinstance(source, str | Path) else source
    # "model" first: the authors' GPT loaders (sample_c2i_cfg_search.py, lin_probe.py) read checkpoint["model"]
    # even when train_c2i.py --ema also saved "ema" (their scripts never pass --ema).
    weights = checkpoint_weights(checkpoint, name, ("model", "ema"), lambda key: bool(IGNORED.search(key)))
    _check_layout(weights, name)
    cfg = _infer_config(weights, name, heads, _size_from_args(checkpoint, name))
    return cfg, _map(weights, cfg)


def _check_layout(weights: Mapping[str, torch.Tensor], name: str) -> None:
    keys = list(weights)
    if any(k.startswith(TOKENIZER_PREFIXES) for k in keys):
        raise ConversionError(
            f"{name}: this is a tokenizer checkpoint (encoder/decoder/quantize keys), not an "
            "authors' GPT; convert it with gigatok.convert.tokenizer"
        )
    for marker, feature in UNSUPPORTED.items():
        if any(marker in k for k in keys):
            raise ConversionError(f"{name}: the GPT uses {feature}, which the workbench AR model does not implement")
    missing = [k for k in TOP_PARAMS if k not in weights]
    if missing:
        raise ConversionError(f"{name}: not an authors' gpt_1d GPT state dict (missing {', '.join(missing)})")
    if "positional_embedding" not in weights:
        raise ConversionError(
            f"{name}: no positional_embedding, so the GPT uses RoPE (--rope, or the 2D gpt.py); "
            "the workbench AR model has learned 1D absolute positions only"
        )


def _size_from_args(checkpoint: Any, name: str) -> tuple[int, int] | None:
    """(width, heads) of the authors' size named by a training checkpoint's ``args.gpt_model``, if it has one."""
    args = checkpoint.get("args") if isinstance(checkpoint, Mapping) else None
    model = getattr(args, "gpt_model", None)
    if model is None:
        return None
    if model not in AUTHORS_GPT_SIZES:
        raise ConversionError(
            f"{name}: args.gpt_model {model!r} is not one of the authors' sizes {sorted(AUTHORS_GPT_SIZES)}"
        )
    return AUTHORS_GPT_SIZES[model]


def _depth(weights: Mapping[str, torch.Tensor], name: str) -> int:
    blocks = {int(m.group(1)) for k in weights if (m := re.match(r"layers\.(\d+)\.", k))}
    if not blocks or blocks != set(range(len(blocks))):
        raise ConversionError(f"{name}: transformer blocks layers.<i> missing or not numbered 0..n-1: {sorted(blocks)}")
    return len(blocks)


def _ffn_multiple_of(width: int, hidden: int, name: str) -> int:
    """The largest power of two up to the authors' 256 whose rounding of int(8 * width / 3) gives ``hidden``."""
    base = int(2 * 4 * width / 3)
    for multiple in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if multiple * -(-base // multiple) == hidden:
            return multiple
    raise ConversionError(
        f"{name}: FFN width {hidden} is not int(8 * {width} / 3) = {base} rounded up to a multiple "
        "of a power of two (an ffn_dim_multiplier the workbench does not implement)"
    )


def _shape(weights: Mapping[str, torch.Tensor], key: str, expected: tuple[int, ...], name: str) -> None:
    if key not in weights:
        raise ConversionError(f"{name}: missing {key}")
    if tuple(weights[key].shape) != expected:
        raise ConversionError(f"{name}: {key} has shape {tuple(weights[key].shape)}, expected {expected}")


def _infer_config(
    weights: Mapping[str, torch.Tensor], name: str, heads: int | None, named: tuple[int, int] | None
) -> ARConfig:
    if weights["tok_embeddings.weight"].ndim != 2:
        raise ConversionError(f"{name}: tok_embeddings.weight is not a 2D embedding table")
    vocab, width = weights["tok_embeddings.weight"].shape
    depth = _depth(weights, name)
    classes = weights["cls_embedding.embedding_table.weight"].shape[0] - 1  # less the null class
    positions = weights["positional_embedding"].shape[0] - CLS_TOKENS
    if classes < 1 or positions < 1:
        raise ConversionError(
            f"{name}: cls_embedding ({classes + 1} rows) or positional_embedding "
            f"({positions + CLS_TOKENS} rows) too small for a class-conditional GPT"
        )
    _shape(
        weights, "layers.0.feed_forward.w1.weight", (weights["layers.0.feed_forward.w1.weight"].shape[0], width), name
    )
    hidden = weights["layers.0.feed_forward.w1.weight"].shape[0]
    qkv = weights.get("layers.0.attention.wqkv.weight")
    if qkv is not None and qkv.shape[0] != 3 * width:
        raise ConversionError(
            f"{name}: fused wqkv has {qkv.shape[0]} rows, not 3 x {width}: grouped-query "
            "attention (n_kv_head) is not implemented in the workbench"
        )
    if named is not None and named[0] != width:
        raise ConversionError(f"{name}: args.gpt_model names a {named[0]}-wide GPT, but the weights are {width} wide")
    if heads is None:
        heads = named[1] if named is not None else HEADS_BY_WIDTH.get(width, max(1, width // HEAD_WIDTH))
    try:
        cfg = ARConfig(
            width=width,
            depth=depth,
            heads=heads,
            vocab_size=vocab,
            num_tokens=positions,
            num_classes=classes,
            ffn_multiple_of=_ffn_multiple_of(width, hidden, name),
            **get_profile("paper").ar_model_options,
        )
    except ConfigError as e:
        raise ConversionError(f"{name}: inferred an invalid AR config ({e})") from None
    _check_shapes(weights, cfg, name)
    return cfg


def _check_shapes(weights: Mapping[str, torch.Tensor], cfg: ARConfig, name: str) -> None:
    w, h = cfg.width, cfg.ffn_hidden
    expected = {
        "tok_embeddings.weight": (cfg.vocab_size, w),
        "cls_embedding.embedding_table.weight": (cfg.num_classes + 1, w),
        "positional_embedding": (cfg.num_tokens + CLS_TOKENS, w),
        "norm.weight": (w,),
        "output.weight": (cfg.vocab_size, w),
    }
    block = {
        "attention.wqkv.weight": (3 * w, w),
        "attention.wo.weight": (w, w),
        "feed_forward.w1.weight": (h, w),
        "feed_forward.w3.weight": (h, w),
        "feed_forward.w2.weight": (w, h),
        "attention_norm.weight": (w,),
        "ffn_norm.weight": (w,),
    }
    for i in range(cfg.depth):
        expected.update({f"layers.{i}.{k}": v for k, v in block.items()})
    for key, shape in expected.items():
        _shape(weights, key, shape, name)
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        more = f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
        raise ConversionError(f"{name}: unexpected keys {', '.join(unexpected[:3])}{more}")


def _map(weights: Mapping[str, torch.Tensor], cfg: ARConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        value = value.detach().float().contiguous()
        if key == "positional_embedding":
            # Their table has cls_token_num + block_size rows; the last is never used (training feeds
            # [class, t_0 .. t_{N-2}], sampling the positions 0 .. N-1), and the workbench keeps N rows.
            out["pos_embeddings"] = value[: cfg.num_tokens].unsqueeze(0).clone()
        elif key == "cls_embedding.embedding_table.weight":
            out["class_embeddings.weight"] = value  # row num_classes is the null class in both
        else:
            out[key] = value
    return out
