"""Linear probing (Sec. 3.1, Appendix F): a linear classifier on frozen features, trained on the training split
and scored on the validation split.

AR probe features are the middle transformer layer (n_layer // 2) of the AR model, mean-pooled over positions,
with the null class token as the prefix (so the label cannot leak in). Tokenizer features are the encoder
transformer's output before quantization, mean-pooled over tokens (the comparison of the paper's Fig. 13).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, Dataset

from gigatok.models.ar import ARModel
from gigatok.models.tokenizer import GigaTokenizer
from gigatok.token_cache import TokenCache


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float  # top-1 on the validation features
    chance: float  # 1 / number of classes seen in training
    num_train: int
    num_val: int
    features: str  # which features were probed


@torch.no_grad()
def ar_features(model: ARModel, cache: TokenCache, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    device = next(model.parameters()).device
    feats = []
    for start in range(0, len(cache), batch_size):
        tokens, _ = cache.batch(torch.arange(start, min(len(cache), start + batch_size)))
        feats.append(model.features(tokens.to(device)).float().cpu())
    return torch.cat(feats).numpy(), cache.labels.numpy()


@torch.no_grad()
def tokenizer_features(model: GigaTokenizer, dataset: Dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    device = next(model.parameters()).device
    feats, labels = [], []
    for images, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        latent = model.encoder(model.cnn_encoder(images.to(device)))  # (B, N, C) before quantization
        feats.append(latent.mean(dim=1).float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def linear_probe(
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], features: str, max_iter: int = 2000
) -> ProbeResult:
    """Standardised features, multinomial logistic regression; top-1 accuracy on the validation split."""
    (x_train, y_train), (x_val, y_val) = train, val
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    classifier.fit(x_train, y_train)
    accuracy = float((classifier.predict(x_val) == y_val).mean())
    return ProbeResult(accuracy, 1.0 / len(np.unique(y_train)), len(y_train), len(y_val), features)
