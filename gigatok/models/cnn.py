"""The CNN encoder and decoder (VQGAN / LlamaGen layout), of fixed size across tokenizer sizes.

Encoder: conv, per level ``encoder_res_blocks`` residual blocks (optionally self-attention after each at the
lowest resolution) and a strided-conv downsample between levels, a middle res-attn-res block, norm, conv to the latent
channels. The decoder mirrors it with ``decoder_res_blocks`` per level and nearest-neighbour upsampling; the
authors' options (``CNNConfig.decoder_attention``, ``decoder_adaptive_norm``, ``upsample``) drop its attention blocks,
put an adaptive GroupNorm conditioned on the decoder's input at the start of each level and upsample by
depth-to-space (tokenizer_image/vq/blocks.py ``Decoder``, ``AdaptiveGroupNorm``, ``D2SUpsampler``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.config import CNNConfig
from gigatok.models.attention import AttentionModule
from gigatok.models.norms import GroupNorm


def _norm(channels: int, groups: int) -> GroupNorm:
    return GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class AttnBlock(AttentionModule):
    """Single-head spatial self-attention with 1x1 projections."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = self.attend(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad keeps the exact halving of VQGAN


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, C*block^2, H, W) -> (B, C, H*block, W*block), channels read as (block_row, block_col, C): the DCR order
    of the authors' ``depth_to_space``, not ``pixel_shuffle``'s (C, block_row, block_col)."""
    b, c, h, w = x.shape
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        # Channels-last in, channels-last out (one copy): an NCHW result here made every later block mix formats.
        out = x.permute(0, 2, 3, 1).reshape(b, h, w, block, block, c // block**2).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(b, h * block, w * block, c // block**2).permute(0, 3, 1, 2)
    out = x.view(b, block, block, c // block**2, h, w).permute(0, 3, 4, 1, 5, 2)
    return out.reshape(b, c // block**2, h * block, w * block)


class DepthToSpaceUpsample(nn.Module):
    """3x3 conv to four times the channels, then depth-to-space: doubles the resolution, keeps the channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv(x), 2)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine parameters, then a scale and shift predicted from the per-channel standard deviation
    and mean of a conditioning map (the decoder's input), as in MAGVIT-v2."""

    def __init__(self, cond_channels: int, channels: int, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = GroupNorm(groups, channels, eps=eps, affine=False)
        self.gamma = nn.Linear(cond_channels, channels)
        self.beta = nn.Linear(cond_channels, channels)
        self.eps = eps

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        flat = cond.flatten(2)
        # Unbiased variance (torch's default), as the authors' ``scale.var(dim=-1)``.
        scale = self.gamma((flat.var(dim=-1) + self.eps).sqrt())[..., None, None]
        shift = self.beta(flat.mean(dim=-1))[..., None, None]
        return scale * self.norm(x) + shift


def _mid_block(channels: int, groups: int, attention: bool = True) -> nn.Sequential:
    attn: nn.Module = AttnBlock(channels, groups) if attention else nn.Identity()
    return nn.Sequential(ResnetBlock(channels, channels, groups), attn, ResnetBlock(channels, channels, groups))


class CNNEncoder(nn.Module):
    """Image (B, 3, H, W) -> latent feature map (B, latent_channels, H/ds, W/ds)."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        g = cfg.norm_groups
        self.conv_in = nn.Conv2d(3, cfg.base_channels, 3, padding=1)
        layers: list[nn.Module] = []
        c_in = cfg.base_channels
        last = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            c_out = cfg.base_channels * mult
            for _ in range(cfg.encoder_res_blocks):
                layers.append(ResnetBlock(c_in, c_out, g))
                c_in = c_out
                if level == last and cfg.encoder_attention:
                    layers.append(AttnBlock(c_in, g))
            if level != last:
                layers.append(Downsample(c_in))
        self.down = nn.Sequential(*layers)
        self.mid = _mid_block(c_in, g, attention=cfg.encoder_attention)
        self.norm_out = _norm(c_in, g)
        self.conv_out = nn.Conv2d(c_in, cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class CNNDecoder(nn.Module):
    """Latent feature map (B, latent_channels, h, w) -> image (B, 3, h*ds, w*ds)."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        g = cfg.norm_groups
        c_in = cfg.base_channels * cfg.channel_mult[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, c_in, 3, padding=1)
        self.mid = _mid_block(c_in, g, attention=cfg.decoder_attention)
        layers: list[nn.Module] = []
        last = len(cfg.channel_mult) - 1
        upsample = DepthToSpaceUpsample if cfg.upsample == "depth_to_space" else Upsample
        for level in reversed(range(len(cfg.channel_mult))):
            c_out = cfg.base_channels * cfg.channel_mult[level]
            if cfg.decoder_adaptive_norm:
                layers.append(AdaptiveGroupNorm(cfg.latent_channels, c_in, g))
            for _ in range(cfg.decoder_res_blocks):
                layers.append(ResnetBlock(c_in, c_out, g))
                c_in = c_out
                if level == last and cfg.decoder_attention:
                    layers.append(AttnBlock(c_in, g))
            if level != 0:
                layers.append(upsample(c_in))
        self.up = nn.Sequential(*layers)
        self.norm_out = _norm(c_in, g)
        self.conv_out = nn.Conv2d(c_in, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for layer in self.up:
            h = layer(h, z) if isinstance(layer, AdaptiveGroupNorm) else layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
