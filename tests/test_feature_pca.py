"""Fig. 8's measurement: PCA of the first decoder layer's features over a group of same-class images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gigatok.config import tokenizer_run
from gigatok.feature_pca import FeaturePCA, class_group, decoder_feature_pca, labels_of
from gigatok.models.tokenizer import build_tokenizer


def test_class_group_picks_the_largest_class_or_the_one_asked() -> None:
    labels = [3, 1, 1, 2, 1, 3]
    assert class_group(labels, 2, None) == (1, [1, 2])
    assert class_group(labels, 8, 3) == (3, [0, 5])
    with pytest.raises(ValueError, match="eval.pca_class: class 2 has 1 validation images"):
        class_group(labels, 8, 2)


def test_pca_maps_of_a_tokenizer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = tokenizer_run("S-S", profile="tiny").tokenizer
    tokenizer = build_tokenizer(cfg)
    images = torch.rand(4, 3, cfg.image_size, cfg.image_size) * 2 - 1
    pca = decoder_feature_pca(tokenizer, images, class_index=5)
    assert pca.components.shape == (4, cfg.grid_size, cfg.grid_size, 3)
    assert pca.components.min() == 0.0 and pca.components.max() == 1.0  # each component spans [0, 1] over the group
    ratio = pca.explained_variance_ratio
    assert np.all(np.diff(ratio) <= 0) and 0 < ratio.sum() <= 1
    assert pca.images.dtype == np.uint8 and pca.images.shape == (4, cfg.image_size, cfg.image_size, 3)
    back = FeaturePCA.load(pca.save(tmp_path / "pca.npz"))
    assert np.array_equal(back.components, pca.components) and back.class_index == 5 and back.layer == 1


def test_labels_without_decoding_images() -> None:
    from gigatok.data import build_dataset

    cfg = tokenizer_run("S-S", profile="tiny")
    val = build_dataset(cfg.data, "val", cfg.tokenizer.image_size)
    assert labels_of(val) == [int(val[i][1]) for i in range(len(val))]
