"""Peak GPU memory per GPU of a training stage, DDP against FSDP, estimated (no GPU is asked): model states from the
meta-device model, plus an activation model.

Model states, per parameter, under the mixed-precision policy the loops use on CUDA (gigatok.fsdp):

- DDP: fp32 weights, fp32 gradients and AdamW's two fp32 moments (16 B), DDP's fp32 gradient buckets (4 B), and the
  bf16 weight copies autocast keeps during the forward (2 B): 22 B, on every GPU.
- FSDP on ``gpus`` GPUs: the 16 B of fp32 weights, gradients and moments divided by ``gpus``; on top, the units
  gathered at once: the root (never resharded between forward and backward) and two blocks (the one computing and
  the one prefetched), each as bf16 weights (2 B) and unsharded fp32 gradients before their reduce-scatter (4 B).

Activations per sample, bf16 (2 B an element), from an analytic count per transformer block: 34 s w bytes for a
block over s tokens of width w (the attention and MLP inputs, outputs and masks of Korthikanti et al. 2022, "Reducing
activation recomputation", without the s^2 softmax term that fused attention does not keep), plus 6 s_kv w for a
cross-attention over s_kv context tokens (its input and the keys and values); the AR head adds its logits (bf16, their
fp32 copy, and the fp32 gradient: 10 B per token and vocabulary entry). The tokenizer's CNNs, LPIPS and the
discriminator are convolutional and are not in this count (the tokenizer row says so): for the tokenizer the
estimate is a lower bound. Frozen networks (LPIPS-VGG16, the DINOv2
teacher) are replicated in either mode and counted as bf16 weights at their parameter count.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

GIB = 2**30
DDP_BYTES, FSDP_SHARDED_BYTES, GATHERED_BYTES = 22, 16, 6
ACT_PER_TOKEN_WIDTH, CROSS_PER_TOKEN_WIDTH, LOGIT_BYTES = 34, 6, 10


@dataclass(frozen=True)
class MemoryEstimate:
    """One stage's estimated peak per GPU, in bytes, for DDP and FSDP on ``gpus`` GPUs."""

    what: str  # "tokenizer XL-XXL", "AR-XXL"
    params: int  # trained parameters
    batch_per_gpu: float
    activations: float  # at batch_per_gpu
    frozen: float  # replicated frozen weights
    ddp: float
    fsdp: float
    left_out: str = ""

    def row(self, gpus: int) -> str:
        return (
            f"  {self.what:18} {self.params / 1e9:6.2f} B params, batch {self.batch_per_gpu:g} a GPU: "
            f"DDP {self.ddp / GIB:6.1f} GiB, FSDP on {gpus} {self.fsdp / GIB:6.1f} GiB (activations "
            f"{self.activations / GIB:.1f} GiB){' ' + self.left_out if self.left_out else ''}"
        )


@contextmanager
def _meta_init() -> Any:
    """Build on the meta device: truncated-normal init's rejection loop asks a meta tensor for a value, so it is
    skipped (what is counted is the shapes, never the values)."""
    import torch
    from torch import nn

    with torch.device("meta"), mock.patch.object(nn.init, "trunc_normal_", lambda t, *a, **k: t):
        yield


def _states(params: int, root: int, block: int, gpus: int) -> tuple[float, float]:
    """(DDP, FSDP) bytes of model states per GPU."""
    ddp = DDP_BYTES * params
    fsdp = FSDP_SHARDED_BYTES * params / gpus + GATHERED_BYTES * (root + 2 * block)
    return ddp, fsdp


def _block_acts(width: int, depth: int, tokens: int, context: int = 0) -> float:
    return depth * (ACT_PER_TOKEN_WIDTH * tokens * width + CROSS_PER_TOKEN_WIDTH * context * width)


def tokenizer_memory(cfg: Any, gpus: int) -> MemoryEstimate:
    """The tokenizer run ``cfg`` (a TokenizerRunConfig) at its global batch over ``gpus`` GPUs."""
    from gigatok.models.tokenizer import build_tokenizer

    t = cfg.tokenizer
    with _meta_init():
        model = build_tokenizer(t)
    params = sum(p.numel() for p in model.parameters())
    blocks = [*model.encoder.stack.blocks, *model.decoder.stack.blocks]
    block = max(sum(p.numel() for p in b.parameters()) for b in blocks)
    root = params - sum(sum(p.numel() for p in b.parameters()) for b in blocks)
    grid = t.grid_size**2
    one_d = t.kind == "1d"
    per_sample = 2 * (
        _block_acts(t.encoder.width, t.encoder.depth, t.num_tokens if one_d else grid, grid if one_d else 0)
        + _block_acts(t.decoder.width, t.decoder.depth, grid, t.num_tokens if one_d else 0)
    )
    batch = cfg.train.batch_size / gpus
    frozen = 2 * (14_700_000 * (cfg.loss.perceptual_weight > 0) + 86_600_000 * t.semantic.enabled)
    ddp, fsdp = _states(params, root, block, gpus)
    acts = per_sample * batch
    left = "(transformer activations only: CNNs, LPIPS, discriminator not counted)"
    return MemoryEstimate(
        f"tokenizer {t.name}", params, batch, acts, frozen, ddp + acts + frozen, fsdp + acts + frozen, left
    )


def ar_memory(cfg: Any, gpus: int) -> MemoryEstimate:
    """The AR run ``cfg`` (an ARRunConfig) at its global batch over ``gpus`` GPUs."""
    from gigatok.models.ar import build_ar_model

    m = cfg.model
    with _meta_init():
        model = build_ar_model(m, device="meta")
    params = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.layers[0].parameters())
    tokens = m.num_tokens
    per_sample = 2 * _block_acts(m.width, m.depth, tokens) + LOGIT_BYTES * tokens * m.vocab_size
    batch = cfg.train.batch_size / gpus
    ddp, fsdp = _states(params, params - block * m.depth, block, gpus)
    acts = per_sample * batch
    return MemoryEstimate(f"AR-{cfg.size}", params, batch, acts, 0.0, ddp + acts, fsdp + acts)


def plan_memory(specs: list[Any], gpus: int) -> list[MemoryEstimate]:
    """One estimate per distinct trained model of the plan (tokenizers, then AR models), in plan order."""
    seen: dict[str, MemoryEstimate] = {}
    for spec in specs:
        key = f"tok {spec.tokenizer.tokenizer.name} {spec.tokenizer.train.batch_size}"
        if key not in seen and not spec.tokenizer.source:
            seen[key] = tokenizer_memory(spec.tokenizer, gpus)
        if spec.ar is not None and not spec.ar.source:
            key = f"ar {spec.ar.size} {spec.ar.train.batch_size}"
            if key not in seen:
                seen[key] = ar_memory(spec.ar, gpus)
    return list(seen.values())


def memory_lines(specs: list[Any], gpus: int) -> list[str]:
    """The estimate's memory section, as printed by ``studies/run.py --dry-run --estimate``."""
    rows = plan_memory(specs, gpus)
    head = "peak memory per GPU, ESTIMATED (meta-device parameters + analytic activations; gigatok/launch/memory.py):"
    return [head, *(r.row(gpus) for r in rows)]
