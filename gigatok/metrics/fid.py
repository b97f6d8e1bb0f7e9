"""The Frechet distance between two Gaussians, the formula of FID.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)

The trace term is computed as tr sqrt(A S2 A) with A = S1^(1/2): the eigenvalues of S1 S2 and of the symmetric
positive semi-definite A S2 A are the same, so two symmetric eigendecompositions replace the general
(non-symmetric) one of torch-fidelity (``np.linalg.eigvals(S1 @ S2)``) or the matrix square root of pytorch-fid
and ADM (``scipy.linalg.sqrtm``). Same value (tests compare with torch-fidelity to 1e-6 relative); real by
construction, no complex round-off to discard; several times faster at 2048-d, which matters on a CPU.

With fewer feature rows than dimensions (r < d: the tiny profile, a small-budget CFG trial, a quick check) the
covariance S = F^T F is a Gram matrix of rank < r, where F holds the rows centred and scaled by 1/sqrt(r - 1). The
nonzero eigenvalues of S S2 are then those of the r x r matrix F S2 F^T, so when a side's rows are passed the trace
term costs one r x d x d product and an r x r eigenproblem: 20 rows against 2048-d moments take milliseconds where
the two 2048-d eigendecompositions take seconds. Same value by construction (tests compare both ways).

The linear algebra runs in torch (float64) on one thread. Multi-threaded symmetric eigensolvers (numpy's
OpenBLAS as much as torch's MKL) collapse when the cores are shared, as on a laptop running tests or a busy
node: on 2 shared cores a 2048-d eigendecomposition took 12-42 s with 2 threads and 4.4 s with one (768-d:
12 s against 0.2 s). One thread is never slow; the few seconds are nothing next to extracting the features.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    # Covariances of fewer samples than dimensions are singular: round-off makes some eigenvalues slightly < 0.
    return (eigenvectors * eigenvalues.clamp_min(0.0).sqrt()) @ eigenvectors.T


def frechet_distance_gaussians(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    *,
    rows1: np.ndarray | None = None,
    rows2: np.ndarray | None = None,
) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``rows1``/``rows2``, when given, are every feature row behind that side's mean and covariance (unbiased, N - 1);
    with fewer rows than dimensions the trace term is computed from them (module docstring). Rows that do not
    reproduce their covariance's trace raise ValueError rather than give a wrong distance.
    """
    mu1_t, sigma1_t, mu2_t, sigma2_t = (
        torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in (mu1, sigma1, mu2, sigma2)
    )
    return _frechet_distance(mu1_t, sigma1_t, mu2_t, sigma2_t, rows1, rows2)


def _frechet_distance(
    mu1: torch.Tensor,
    sigma1: torch.Tensor,
    mu2: torch.Tensor,
    sigma2: torch.Tensor,
    rows1: np.ndarray | None,
    rows2: np.ndarray | None,
) -> float:
    """:func:`frechet_distance_gaussians` on its moments as float64 tensors."""
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        shapes = ", ".join(str(tuple(a.shape)) for a in (mu1, sigma1, mu2, sigma2))
        raise ValueError(f"mismatched shapes: {shapes}")
    sides = [
        (rows, mu, sigma, other)
        for rows, mu, sigma, other in ((rows1, mu1, sigma1, sigma2), (rows2, mu2, sigma2, sigma1))
        if rows is not None and 2 <= len(rows) < d
    ]
    with _one_thread():
        if sides:
            rows, mu, sigma, other = min(sides, key=lambda side: len(side[0]))
            factor = _covariance_factor(rows, mu, sigma)
            middle = factor @ other @ factor.T
        else:
            root1 = _psd_sqrt((sigma1 + sigma1.T) / 2)
            middle = root1 @ sigma2 @ root1
        eigenvalues = torch.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = eigenvalues.clamp_min(0.0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2.0 * trace_sqrt)


def _covariance_factor(rows: np.ndarray, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """F (r x d) with F^T F = sigma: the rows centred on ``mu``, over sqrt(r - 1)."""
    x = torch.as_tensor(np.asarray(rows), dtype=torch.float64)
    if x.ndim != 2 or x.shape[1] != mu.shape[0]:
        raise ValueError(f"feature rows of shape {tuple(x.shape)} do not match {mu.shape[0]}-d moments")
    factor = (x - mu) / math.sqrt(x.shape[0] - 1)
    # tr(F^T F) = sum of squares of F: cheap, and wrong rows (a subset, other images) cannot pass it.
    expected, got = float(sigma.trace()), float(factor.square().sum())
    if abs(got - expected) > 1e-6 * max(abs(expected), 1e-12):
        raise ValueError(
            f"{x.shape[0]} feature rows do not reproduce the covariance they were given with "
            f"(trace {got:.9g} against {expected:.9g}): pass every row of the stream, or none"
        )
    return factor
