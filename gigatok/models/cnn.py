"""The CNN encoder and decoder (VQGAN / LlamaGen layout), of fixed size across tokenizer sizes.

Encoder: conv, per level ``encoder_res_blocks`` residual blocks (optionally self-attention after each at the
lowest resolution) and a strided-conv downsample between levels, a middle res-attn-res block, norm, conv to the latent
channels. The decoder mirrors it with ``decoder_res_blocks`` per level and nearest-neighbour upsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.config import CNNConfig
from gigatok.models.attention import AttentionModule


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


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
        self.mid = _mid_block(c_in, g)
        layers: list[nn.Module] = []
        last = len(cfg.channel_mult) - 1
        for level in reversed(range(len(cfg.channel_mult))):
            c_out = cfg.base_channels * cfg.channel_mult[level]
            for _ in range(cfg.decoder_res_blocks):
                layers.append(ResnetBlock(c_in, c_out, g))
                c_in = c_out
                if level == last:
                    layers.append(AttnBlock(c_in, g))
            if level != 0:
                layers.append(Upsample(c_in))
        self.up = nn.Sequential(*layers)
        self.norm_out = _norm(c_in, g)
        self.conv_out = nn.Conv2d(c_in, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))
