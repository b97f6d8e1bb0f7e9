"""PSNR and SSIM per image, with the data range of the images actually passed.

Both take two ``B x 3 x H x W`` batches of one dtype: uint8 (data range 255) or float in [0, 1] (data range 1).
The range is read from the dtype, never guessed from values, and can be overridden only explicitly.

SSIM is Wang et al. (2004) as everyone quotes it: an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
population (not sample) statistics, averaged over the valid (unpadded) window positions and the three channels.
It equals scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=..., channel_axis=...)``.

The GigaTok / LlamaGen reference evaluation (``tokenizer/tokenizer_image/reconstruction_ddp.py``) calls
scikit-image's ``structural_similarity(restored, original, data_range=2.0, channel_axis=-1)`` on [0, 1] images:
its default 7x7 uniform window, sample covariance (N / (N - 1)) and a data range twice the real one, which makes
C1 and C2 4x larger and inflates SSIM. Numbers from that code are not comparable with :func:`ssim`;
:func:`ssim_authors` reproduces them, so a workbench run can be set beside the paper's table (a comparison
number, never the headline SSIM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# The authors' call: scikit-image defaults (7x7 uniform window, sample covariance) with data_range=2.0 on [0, 1].
AUTHORS_SSIM_WINDOW = 7
AUTHORS_SSIM_DATA_RANGE = 2.0


def data_range_of(images: torch.Tensor) -> float:
    """255 for uint8 images, 1.0 for float images (which must then lie in [0, 1])."""
    if images.dtype == torch.uint8:
        return 255.0
    if images.is_floating_point():
        return 1.0
    raise TypeError(f"images must be uint8 or float in [0, 1], got {images.dtype}")


def _pair(x: torch.Tensor, y: torch.Tensor, data_range: float | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected two B x 3 x H x W batches of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    if x.dtype != y.dtype:
        raise TypeError(f"both batches must have one dtype (it sets the data range), got {x.dtype} and {y.dtype}")
    rng = data_range_of(x) if data_range is None else float(data_range)
    if x.is_floating_point() and data_range is None and (x.min() < 0 or x.max() > 1 or y.min() < 0 or y.max() > 1):
        raise ValueError("float images must lie in [0, 1] (convert [-1, 1] with gigatok.metrics.images.to_unit_float)")
    return x.double(), y.double(), rng


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float | None = None) -> torch.Tensor:
    """Per-image PSNR in dB, 10 log10(R^2 / MSE) over all pixels and channels; +inf for identical images."""
    a, b, rng = _pair(x, y, data_range)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(rng**2 / mse)  # mse = 0 gives +inf, the exact answer


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float | None = None) -> torch.Tensor:
    """Per-image SSIM (Gaussian 11x11, sigma 1.5), mean over valid positions and channels; images >= 11 px."""
    a, b, rng = _pair(x, y, data_range)
    return _ssim(a, b, rng, _gaussian_window(SSIM_WINDOW, SSIM_SIGMA), covariance_norm=1.0)


def ssim_authors(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM as the GigaTok / LlamaGen evaluation computes it: 7x7 uniform window, sample covariance,
    data range 2.0 on images in [0, 1] (uint8 input is divided by 255 first, as their code does); images >= 7 px.

    Equals scikit-image's ``structural_similarity(x, y, data_range=2.0, channel_axis=-1)`` on HxWx3 [0, 1] arrays.
    """
    if x.dtype == torch.uint8 and y.dtype == torch.uint8:
        x, y = x.double() / 255.0, y.double() / 255.0
    a, b, _ = _pair(x, y, None)  # checks shapes and the [0, 1] range; the data range is the authors' 2.0
    window = torch.full((AUTHORS_SSIM_WINDOW,), 1.0 / AUTHORS_SSIM_WINDOW, dtype=torch.float64)
    positions = AUTHORS_SSIM_WINDOW**2
    return _ssim(a, b, AUTHORS_SSIM_DATA_RANGE, window, covariance_norm=positions / (positions - 1))


def _ssim(a: torch.Tensor, b: torch.Tensor, rng: float, g: torch.Tensor, covariance_norm: float) -> torch.Tensor:
    """SSIM with the separable window ``g``, mean over valid positions and channels; variances and covariance are
    scaled by ``covariance_norm`` (1: population statistics; N / (N - 1): sample statistics)."""
    size = len(g)
    if min(a.shape[-2:]) < size:
        raise ValueError(f"SSIM needs images of at least {size} px, got {tuple(a.shape[-2:])}")
    g = g.to(a.device)
    channels = a.shape[1]
    # Separable filtering, one channel per group: rows then columns, 'valid' positions only.
    row = g.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    col = g.view(1, 1, -1, 1).expand(channels, 1, -1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, row, groups=channels), col, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = covariance_norm * (blur(a * a) - mu_a**2)
    var_b = covariance_norm * (blur(b * b) - mu_b**2)
    cov = covariance_norm * (blur(a * b) - mu_a * mu_b)
    c1 = (SSIM_K1 * rng) ** 2
    c2 = (SSIM_K2 * rng) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(dim=1)
