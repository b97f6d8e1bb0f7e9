"""Fixed-memory accumulators over a stream of feature batches: moments for FID, a reservoir for
precision/recall, split marginals for the Inception Score.

Memory does not grow with the number of samples: FID keeps a d-vector and two d x d matrices, the sum and the
current batch's update (float64: 32 MB each at d = 2048), precision/recall a uniform random subset of at most
``capacity`` feature rows, IS ``splits`` class marginals (``bench/fid_features.py`` measures it).
"""

from __future__ import annotations

import math

import numpy as np
import torch


class FeatureMoments:
    """Running mean and covariance (Chan et al.'s pairwise merge, float64), for FID statistics.

    Merging per-batch centred moments avoids the cancellation of the naive sum-of-squares formula when the
    features have a large mean relative to their spread.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self._m2 = np.zeros((dim, dim), dtype=np.float64)  # sum of outer products of deviations
        self._gram = np.zeros((dim, dim), dtype=np.float64)  # each batch's update, computed in place

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected N x {self.dim} features, got {x.shape}")
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(axis=0)
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self.mean
        # The merge's M2_b + (n_a n_b / n) delta delta^T is the Gram matrix of the centred batch with one more row,
        # sqrt(n_a n_b / n) delta: one product into a reused buffer, where the sum of separate terms made three
        # d x d temporaries per batch (32 MB each at d = 2048; ~30% slower, bench/fid_features.py).
        rows = np.empty((n_b + 1, self.dim), dtype=np.float64)
        np.subtract(x, mean_b, out=rows[:n_b])
        rows[n_b] = delta * math.sqrt(n_a * n_b / n)
        np.matmul(rows.T, rows, out=self._gram)
        self._m2 += self._gram
        self.mean += delta * (n_b / n)
        self.count = n

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased (N - 1) covariance, as np.cov and every FID implementation use."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        return self._m2 / (self.count - 1)


class FeatureReservoir:
    """A uniform random subset of at most ``capacity`` rows of the stream (reservoir sampling, Algorithm R).

    Precision/recall compare k-NN balls between sets and need the features themselves; keeping a uniform
    subset, rather than the first rows, stays unbiased when the stream is ordered (e.g. ImageNet by class).
    """

    def __init__(self, capacity: int, dim: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"reservoir capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.seen = 0
        # Allocated once and filled in place (growing by concatenation copied the whole reservoir at every batch and
        # briefly held it twice). The OS commits pages as rows are written: a reservoir costs the rows it holds.
        self._rows = np.empty((capacity, dim), dtype=np.float32)
        self._rng = np.random.default_rng(seed)

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, np.float32)
        filled = min(self.seen, self.capacity)
        if filled < self.capacity:
            take = x[: self.capacity - filled]
            self._rows[filled : filled + take.shape[0]] = take
            self.seen += take.shape[0]
            x = x[take.shape[0] :]
        if x.shape[0] == 0:
            return
        # Row t of the stream (0-based) replaces a random slot with probability capacity / (t + 1).
        positions = self.seen + np.arange(x.shape[0])
        slots = self._rng.integers(0, positions + 1)
        for row, slot in zip(x, slots, strict=True):
            if slot < self.capacity:
                self._rows[slot] = row  # in stream order: a later row may overwrite an earlier one
        self.seen += x.shape[0]

    @property
    def features(self) -> np.ndarray:
        return self._rows[: min(self.seen, self.capacity)]


class InceptionScoreAccumulator:
    """The Inception Score over ``splits`` parts of the stream, from running class marginals.

    Sample t goes to split ``t % splits``. Per split, IS = exp(E_x KL(p(y|x) || p(y))), and
    E_x KL = E_x[sum_y p log p] - sum_y p(y) log p(y) with p(y) = E_x p(y|x): two running sums per split. This
    is torch-fidelity's estimator (mean and std over splits, float64, softmax of ``logits_unbiased``) with a
    round-robin partition instead of a shuffled one, so no logits need to be kept.
    """

    def __init__(self, num_classes: int, splits: int = 10) -> None:
        if splits < 1:
            raise ValueError(f"splits must be >= 1, got {splits}")
        self.splits = splits
        self.count = 0
        self._prob_sum = np.zeros((splits, num_classes), dtype=np.float64)
        self._neg_entropy_sum = np.zeros(splits, dtype=np.float64)
        self._n = np.zeros(splits, dtype=np.int64)

    def update(self, logits: torch.Tensor) -> None:
        logits = logits.detach().cpu().double()
        probs = logits.softmax(dim=1)
        neg_entropy = (probs * logits.log_softmax(dim=1)).sum(dim=1).numpy()
        split = (self.count + np.arange(logits.shape[0])) % self.splits
        np.add.at(self._prob_sum, split, probs.numpy())
        np.add.at(self._neg_entropy_sum, split, neg_entropy)
        np.add.at(self._n, split, 1)
        self.count += logits.shape[0]

    def result(self) -> tuple[float, float]:
        """(mean, std) of the per-split scores."""
        if self.count < self.splits:
            raise ValueError(f"the Inception Score over {self.splits} splits needs >= {self.splits} samples")
        scores = []
        for k in range(self.splits):
            marginal = self._prob_sum[k] / self._n[k]
            marginal_neg_entropy = float(np.sum(marginal * np.log(np.clip(marginal, 1e-300, None))))
            scores.append(math.exp(self._neg_entropy_sum[k] / self._n[k] - marginal_neg_entropy))
        return float(np.mean(scores)), float(np.std(scores))
