"""Targets for semantic regularization: frozen-encoder features resampled to the token grid, optionally cached.

The semantic encoder is frozen, so for unaugmented data its features are a fixed function of the dataset index.
With caching on, they are computed once for the whole dataset in fixed-size chunks (so every run sees bit-identical
targets, whether fresh or resumed) and stored on disk under a key naming the encoder and the data.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from gigatok.io import atomic_write_bytes
from gigatok.semantic_encoders import semantic_feature_grid

_CHUNK = 64


def cache_root() -> Path:
    return Path(os.environ.get("GIGATOK_CACHE_DIR", Path.home() / ".cache" / "gigatok"))


class SemanticTargets:
    def __init__(self, encoder: nn.Module, grid_size: int, device: torch.device) -> None:
        self.encoder = encoder
        self.grid_size = grid_size
        self.device = device
        self.cache: torch.Tensor | None = None

    @torch.no_grad()
    def compute(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images.to(self.device))
        return semantic_feature_grid(features, self.grid_size)

    def fill_cache(self, dataset: Dataset, key: dict[str, Any], progress: bool = True) -> None:
        """Load this dataset's features from disk, or compute them all now and save them."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = cache_root() / "semantic" / f"{digest}.pt"
        if path.is_file():
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("key") == json.dumps(key, sort_keys=True):
                self.cache = cached["features"]
                return
        n = len(cast(Sized, dataset))  # map-style: torch's Dataset declares no __len__, ours have one
        chunks = []
        for start in tqdm(range(0, n, _CHUNK), desc="semantic features", disable=not progress, leave=False):
            images = torch.stack([dataset[i][0] for i in range(start, min(n, start + _CHUNK))])
            chunks.append(self.compute(images).cpu())
        self.cache = torch.cat(chunks)
        payload = {"key": json.dumps(key, sort_keys=True), "features": self.cache}
        atomic_write_bytes(path, lambda f: torch.save(payload, f))

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[indices].to(self.device, non_blocking=True)
        return self.compute(images)
