"""The tokenizer's training objective (Eq. 2): the VQGAN losses plus entropy and semantic terms.

L = w_pix * L2 + w_lpips * LPIPS + w_gan * L_GAN + w_cb * (codebook + beta * commitment)
    + w_ent * L_entropy + lambda * L_reg

While the small tokenizers' shortcut is on (``loss.shortcut_end_step``; the authors' vq_loss.py with
use_direct_rec_loss and aux_loss_end), the CNN decoder's direct decoding of the CNN encoder's features adds the same
pixel, perceptual and (if the GAN is already on) adversarial terms at the same weights, and
``w_fea * MSE(sg[CNN encoder features], transformer decoder features)`` pulls the transformer path towards the
identity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from gigatok.config import TokenizerRunConfig
from gigatok.models.tokenizer import TokenizerOutput, semantic_loss
from gigatok.perceptual import perceptual_active

Perceptual = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def adversarial_active(cfg: TokenizerRunConfig, step: int) -> bool:
    """The GAN terms (generator and discriminator) switch on at ``loss.gan_start_step``."""
    return cfg.loss.gan_weight > 0 and step >= cfg.loss.gan_start_step


def shortcut_active(cfg: TokenizerRunConfig, step: int) -> bool:
    """Whether the shortcut terms apply at 0-based ``step``: the authors' vq_train.py passes
    ``rec_loss=train_steps + 1 < aux_loss_end`` and vq_loss.py gates on ``global_step < aux_loss_end`` with
    ``global_step = train_steps + 1``, so the shortcut covers the first ``aux_loss_end - 1`` updates."""
    return step + 1 < cfg.loss.shortcut_end_step


def shortcut_direct_active(cfg: TokenizerRunConfig, step: int) -> bool:
    """Whether the CNN decoder also decodes the CNN encoder's features at ``step`` (use_direct_rec_loss)."""
    return cfg.loss.shortcut_decode and shortcut_active(cfg, step)


def shortcut_feature_loss(out: TokenizerOutput) -> torch.Tensor:
    """MSE between the transformer decoder's output and the CNN encoder's (detached) output: vq_vit_model.py's
    ``F.mse_loss(spatial.detach(), rec_spatial)`` (fea_rec_loss_type mse)."""
    if out.cnn_features is None or out.decoder_features is None:
        raise ValueError("the shortcut needs TokenizerOutput.cnn_features and .decoder_features; the model gave None")
    target = out.cnn_features.detach()
    return F.mse_loss(out.decoder_features.float(), target.float())


def generator_loss(
    cfg: TokenizerRunConfig,
    images: torch.Tensor,
    out: TokenizerOutput,
    perceptual: Perceptual | None,
    semantic_target: torch.Tensor | None,
    fake_logits: torch.Tensor | None,
    *,
    shortcut: bool = False,
    direct: torch.Tensor | None = None,
    direct_fake_logits: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All generator-side terms, unweighted, plus the weighted ``total``.

    ``fake_logits`` is the discriminator's output on the reconstruction, or None before the GAN starts.
    ``shortcut`` adds the feature-alignment term; ``direct`` is the CNN decoder's decoding of the CNN encoder's
    features (None without the direct decoding), ``direct_fake_logits`` the discriminator's output on it (None
    unless the GAN is on too). The shortcut terms are present only while the shortcut is on. Without the perceptual
    term (:func:`~gigatok.perceptual.perceptual_active`; ``perceptual`` may then be None) ``perceptual_loss`` is
    absent, so no curve shows a zero that was never computed.
    """
    recon = out.reconstruction
    q = out.quant
    zero = recon.new_zeros(())
    perceptual_net = _perceptual_network(cfg, perceptual)
    use_perceptual = perceptual_net is not None
    terms = {
        "pixel_loss": F.mse_loss(recon, images),
        **({"perceptual_loss": perceptual_net(recon, images).mean()} if perceptual_net is not None else {}),
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
        + (cfg.loss.perceptual_weight * terms["perceptual_loss"] if use_perceptual else zero)
        + qc.codebook_weight * (terms["codebook_loss"] + terms["commitment_loss"])
        + qc.entropy_weight * terms["entropy_loss"]
        + cfg.tokenizer.semantic.weight * terms["semantic_loss"]
        + cfg.loss.gan_weight * terms["adversarial_loss"]
    )
    if shortcut:
        shortcut_terms = _shortcut_terms(cfg, images, out, perceptual, direct, direct_fake_logits)
        total = total + _weighted_shortcut(cfg, shortcut_terms)
        terms.update(shortcut_terms)
    terms["total_loss"] = total
    return terms


def _shortcut_terms(
    cfg: TokenizerRunConfig,
    images: torch.Tensor,
    out: TokenizerOutput,
    perceptual: Perceptual | None,
    direct: torch.Tensor | None,
    direct_fake_logits: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """vq_loss.py's direct_rec_loss, direct_p_loss, direct_generator_adv_loss and the model's fea_rec_loss."""
    terms = {"shortcut_feature_loss": shortcut_feature_loss(out)}
    if direct is not None:
        terms["shortcut_pixel_loss"] = F.mse_loss(direct, images)
        perceptual_net = _perceptual_network(cfg, perceptual)
        if perceptual_net is not None:
            terms["shortcut_perceptual_loss"] = perceptual_net(direct, images).mean()
        if direct_fake_logits is not None:
            terms["shortcut_adversarial_loss"] = hinge_generator_loss(direct_fake_logits)
    return terms


def _perceptual_network(cfg: TokenizerRunConfig, perceptual: Perceptual | None) -> Perceptual | None:
    """``perceptual`` when the objective has the perceptual term, else None (an error if the term has no network)."""
    if not perceptual_active(cfg):
        return None
    if perceptual is None:
        raise ValueError(
            "the objective has the perceptual term (loss.perceptual 'lpips') but no perceptual network was given"
        )
    return perceptual


def _weighted_shortcut(cfg: TokenizerRunConfig, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    weights = {
        "shortcut_feature_loss": cfg.loss.shortcut_feature_weight,
        "shortcut_pixel_loss": cfg.loss.pixel_weight,
        "shortcut_perceptual_loss": cfg.loss.perceptual_weight,
        "shortcut_adversarial_loss": cfg.loss.gan_weight,
    }
    total = terms["shortcut_feature_loss"].new_zeros(())
    for name, value in terms.items():
        total = total + weights[name] * value
    return total
