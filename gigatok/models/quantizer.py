"""Vector quantizer: low-dimensional projection, L2-normalised codebook, straight-through or rotation trick,
codebook + commitment losses and the entropy loss of the paper's Eq. 3/5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.config import QuantizerConfig


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (B, N, latent_channels): codes projected back up, gradients reach the encoder
    indices: torch.Tensor  # (B, N) int64
    codebook_loss: torch.Tensor  # ||sg[z] - q||^2
    commitment_loss: torch.Tensor  # beta * ||z - sg[q]||^2
    entropy_loss: torch.Tensor  # E[H(q|z)] - H(q), weight not applied
    usage: torch.Tensor  # fraction of codebook entries used in this batch
    perplexity: torch.Tensor  # exp(entropy of the batch's code histogram)


def rotate_to(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Rotation trick (Fifty et al., 2024): returns a tensor equal to ``tgt`` whose gradient w.r.t. ``src`` is
    ``src``'s gradient rotated and rescaled by the (constant) map taking ``src`` onto ``tgt``, instead of the
    identity of the straight-through estimator.
    """
    eps = 1e-6
    src_norm = src.norm(dim=-1, keepdim=True).clamp_min(eps)
    tgt_norm = tgt.norm(dim=-1, keepdim=True).clamp_min(eps)
    u = (src / src_norm).detach()
    q = (tgt / tgt_norm).detach()
    w = F.normalize(u + q, dim=-1, eps=eps).detach()
    # Householder reflection about w followed by the reflection taking u to q: a rotation R with R u = q.
    rotated = src - 2 * (src * w).sum(-1, keepdim=True) * w + 2 * (src * u).sum(-1, keepdim=True) * q
    return rotated * (tgt_norm / src_norm).detach()


def entropy_loss(logits: torch.Tensor, log_offset: float = 0.0) -> torch.Tensor:
    """Eq. 5: mean per-sample entropy E_z[H(q|z)] minus the entropy H(q) of the batch-averaged assignment.

    ``log_offset`` > 0 takes log(p + offset) in H(q), as the authors' ``compute_entropy_loss`` (offset 1e-5).
    """
    probs = logits.softmax(dim=-1)
    log_probs = logits.log_softmax(dim=-1)
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    avg_probs = probs.mean(0)
    log_avg = torch.log(avg_probs + log_offset) if log_offset > 0 else torch.log(avg_probs.clamp_min(1e-10))
    codebook_entropy = -(avg_probs * log_avg).sum()
    return sample_entropy - codebook_entropy


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: QuantizerConfig, latent_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj_in = nn.Linear(latent_channels, cfg.codebook_dim)
        self.proj_out = nn.Linear(cfg.codebook_dim, latent_channels)
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.codebook_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook.weight, dim=-1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: (B, N, latent_channels)."""
        # In fp32 even under bf16 autocast: with an 8-bit mantissa, 16384 unit codes' similarities to a latent tie
        # or reorder in the third digit, which changes the chosen codes, not only the rounding.
        with torch.autocast(z.device.type, enabled=False):
            return self._quantize(z.float())

    def _quantize(self, z: torch.Tensor) -> QuantizerOutput:
        b, n, _ = z.shape
        z = F.normalize(self.proj_in(z), dim=-1)
        flat = z.reshape(-1, z.shape[-1])
        codebook = self.normalized_codebook()
        # Both sides unit-norm: ||z - c||^2 = 2 - 2 z.c, so the nearest code is the largest dot product.
        similarity = flat @ codebook.t()
        indices = similarity.argmax(dim=-1)
        q = codebook[indices]

        codebook_loss = F.mse_loss(q, flat.detach())
        commitment_loss = self.cfg.commitment_beta * F.mse_loss(flat, q.detach())
        if self.cfg.entropy_weight > 0:
            distance = 2 - 2 * similarity
            ent = entropy_loss(-distance / self.cfg.entropy_temperature, self.cfg.entropy_log_offset)
        else:
            ent = flat.new_zeros(())

        if not (self.training and torch.is_grad_enabled()):
            q_st = q  # no gradient needed: the exact codes, so decoding indices reproduces the forward pass
        elif self.cfg.rotation_trick:
            q_st = rotate_to(flat, q)
        else:
            q_st = flat + (q - flat).detach()
        with torch.no_grad():
            # scatter, not bincount: CUDA's bincount reads the largest index back to the host (a synchronisation
            # every step) and its data-dependent shape breaks the torch.compile graph. Counts of ones are exact.
            counts = flat.new_zeros(self.cfg.codebook_size, dtype=torch.float32)
            counts.index_add_(0, indices, torch.ones_like(indices, dtype=torch.float32))
            usage = (counts > 0).float().mean()
            p = counts / counts.sum()
            perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())
        return QuantizerOutput(
            quantized=self.proj_out(q_st.view(b, n, -1)),
            indices=indices.view(b, n),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            entropy_loss=ent,
            usage=usage,
            perplexity=perplexity,
        )

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Token indices (B, N) -> decoder input (B, N, latent_channels)."""
        return self.proj_out(self.normalized_codebook()[indices])
