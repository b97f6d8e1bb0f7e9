"""Fig. 8: the first three principal components of a tokenizer's decoder features, over same-class images.

The features are the output of the first Transformer decoder layer (Sec. 5.2, "Visualization for the tokenizer
feature space") at every spatial position, for a group of validation images of one class. One PCA is fitted over
all positions of all images together, so colours are comparable within and across images: a semantically
consistent latent space paints the same object parts the same colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA

DECODER_LAYER = 1  # 1-based: the first Transformer decoder layer


@dataclass(frozen=True)
class FeaturePCA:
    images: np.ndarray  # (N, H, W, 3) uint8, the inputs
    components: np.ndarray  # (N, h, w, 3) float32 in [0, 1]: the first 3 components, each min-max scaled
    explained_variance_ratio: np.ndarray  # (3,)
    class_index: int
    layer: int

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(
            tmp,
            images=self.images,
            components=self.components,
            explained_variance_ratio=self.explained_variance_ratio,
            class_index=np.int64(self.class_index),
            layer=np.int64(self.layer),
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> FeaturePCA:
        with np.load(path) as data:
            return cls(
                data["images"],
                data["components"],
                data["explained_variance_ratio"],
                int(data["class_index"]),
                int(data["layer"]),
            )


def class_group(labels: list[int], count: int, class_index: int | None) -> tuple[int, list[int]]:
    """The class shown (``class_index``, else the one with most images) and the indices of its first ``count``."""
    if class_index is None:
        values, counts = np.unique(np.asarray(labels), return_counts=True)
        class_index = int(values[np.argmax(counts)])  # ties: the lowest class index
    members = [i for i, label in enumerate(labels) if label == class_index]
    if len(members) < 2:
        raise ValueError(f"eval.pca_class: class {class_index} has {len(members)} validation images; need >= 2")
    return class_index, members[:count]


@torch.no_grad()
def decoder_feature_pca(tokenizer: Any, images: torch.Tensor, class_index: int) -> FeaturePCA:
    """PCA of the first decoder layer's features of ``images`` ((N, 3, H, W) in [-1, 1])."""
    tokenizer.eval()
    quantized = tokenizer.encode(images).quantized
    _, features = tokenizer.decoder(quantized, capture_layer=DECODER_LAYER)  # (N, h*w, C)
    n, positions, width = features.shape
    side = int(round(positions**0.5))
    pca = PCA(n_components=3, svd_solver="full")
    projected = pca.fit_transform(features.reshape(n * positions, width).float().cpu().numpy())
    low, high = projected.min(axis=0), projected.max(axis=0)
    scaled = (projected - low) / np.where(high > low, high - low, 1.0)
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return FeaturePCA(
        images=pixels,
        components=scaled.reshape(n, side, side, 3).astype(np.float32),
        explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float64),
        class_index=class_index,
        layer=DECODER_LAYER,
    )


def labels_of(dataset: Any) -> list[int]:
    """Every label of ``dataset`` without decoding an image where the dataset keeps its labels apart."""
    if hasattr(dataset, "labels"):
        return [int(v) for v in dataset.labels]
    if hasattr(dataset, "samples"):
        return [int(label) for _, label in dataset.samples]
    return [int(dataset[i][1]) for i in range(len(dataset))]
