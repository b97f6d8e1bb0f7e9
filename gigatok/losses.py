"""The tokenizer's training objective (Eq. 2): the VQGAN losses plus entropy and semantic terms.

L = w_pix * L2 + w_lpips * LPIPS + w_gan * L_GAN + w_cb * (codebook + beta * commitment)
    + w_ent * L_entropy + lambda * L_reg
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from gigatok.config import TokenizerRunConfig
from gigatok.models.tokenizer import TokenizerOutput, semantic_loss


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def adversarial_active(cfg: TokenizerRunConfig, step: int) -> bool:
    """The GAN terms (generator and discriminator) switch on at ``loss.gan_start_step``."""
    return cfg.loss.gan_weight > 0 and step >= cfg.loss.gan_start_step


def generator_loss(
    cfg: TokenizerRunConfig,
    images: torch.Tensor,
    out: TokenizerOutput,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    semantic_target: torch.Tensor | None,
    fake_logits: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """All generator-side terms, unweighted, plus the weighted ``total``.

    ``fake_logits`` is the discriminator's output on the reconstruction, or None before the GAN starts.
    """
    recon = out.reconstruction
    q = out.quant
    zero = recon.new_zeros(())
    terms = {
        "pixel_loss": F.mse_loss(recon, images),
        "perceptual_loss": perceptual(recon, images).mean() if cfg.loss.perceptual_weight > 0 else zero,
        "codebook_loss": q.codebook_loss,
        "commitment_loss": q.commitment_loss,
        "entropy_loss": q.entropy_loss,
        "semantic_loss": zero,
        "adversarial_loss": zero,
    }
    if out.semantic_projection is not None:
        assert semantic_target is not None, "semantic regularization is on but no target features were given"
        terms["semantic_loss"] = semantic_loss(out.semantic_projection, semantic_target)
    if fake_logits is not None:
        terms["adversarial_loss"] = hinge_generator_loss(fake_logits)
    qc = cfg.tokenizer.quantizer
    total = (
        cfg.loss.pixel_weight * terms["pixel_loss"]
        + cfg.loss.perceptual_weight * terms["perceptual_loss"]
        + qc.codebook_weight * (terms["codebook_loss"] + terms["commitment_loss"])
        + qc.entropy_weight * terms["entropy_loss"]
        + cfg.tokenizer.semantic.weight * terms["semantic_loss"]
        + cfg.loss.gan_weight * terms["adversarial_loss"]
    )
    terms["total_loss"] = total
    return terms
