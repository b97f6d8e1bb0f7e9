"""The linear probes: the authors' protocol (LARS, BatchNorm head, warm-up + cosine, fresh views) and its config."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gigatok.config import PAPER, TINY, ConfigError, EvalConfig, ProbeConfig, hashed_fields
from gigatok.data.imagefolder import ImageFolderDataset
from gigatok.metrics.linear_probe import (
    LARS,
    ProbeHead,
    RandomCropViews,
    lars_probe,
    linear_probe,
    probe_lr,
)


def blobs(n: int, dim: int = 32, classes: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Well separated Gaussian clusters: a linearly separable problem up to rare outliers."""
    centers = 4 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return centers[labels] + torch.randn(n, dim, generator=generator), labels


def test_lars_step_matches_the_formula() -> None:
    """Two steps by hand: matrices get d = g + wd w scaled to trust ||w|| / ||d||, vectors the plain gradient;
    both then heavy-ball momentum mu = m mu + d, w -= lr mu."""
    w0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    b0 = torch.tensor([0.2, -0.1])
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    lr, wd, momentum, trust = 0.5, 0.1, 0.9, 0.01
    optimizer = LARS([w, b], lr=lr, weight_decay=wd, momentum=momentum, trust_coefficient=trust)
    grads = [
        (torch.tensor([[0.3, 0.1], [-0.2, 0.4]]), torch.tensor([1.0, -2.0])),
        (torch.tensor([[-0.1, 0.2], [0.05, 0.0]]), torch.tensor([0.5, 0.5])),
    ]
    mu_w, mu_b = torch.zeros(2, 2), torch.zeros(2)
    expect_w, expect_b = w0.clone(), b0.clone()
    for g_w, g_b in grads:
        w.grad, b.grad = g_w.clone(), g_b.clone()
        optimizer.step()
        d = g_w + wd * expect_w
        d = d * (trust * expect_w.norm() / d.norm())
        mu_w, mu_b = momentum * mu_w + d, momentum * mu_b + g_b
        expect_w, expect_b = expect_w - lr * mu_w, expect_b - lr * mu_b
        assert torch.allclose(w.detach(), expect_w, atol=1e-7)
        assert torch.allclose(b.detach(), expect_b, atol=1e-7)
    # A zero matrix is not rescaled (ratio 1): its first step is the plain gradient.
    z = torch.zeros(2, 2, requires_grad=True)
    z.grad = torch.ones(2, 2)
    LARS([z], lr=0.1).step()
    assert torch.allclose(z.detach(), torch.full((2, 2), -0.1))


def test_probe_lr_warmup_then_half_cosine() -> None:
    cfg = ProbeConfig(method="lars", epochs=90, warmup_epochs=10, min_lr=0.0)
    assert probe_lr(0.0, 3.2, cfg) == 0.0
    assert probe_lr(5.0, 3.2, cfg) == pytest.approx(1.6)
    assert probe_lr(10.0, 3.2, cfg) == pytest.approx(3.2)
    assert probe_lr(50.0, 3.2, cfg) == pytest.approx(1.6)  # halfway through the cosine
    assert probe_lr(90.0, 3.2, cfg) == pytest.approx(0.0, abs=1e-12)
    assert probe_lr(30.0, 3.2, cfg) == pytest.approx(3.2 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_probe_head_is_the_authors_linprob() -> None:
    head = ProbeHead(16, 5)
    assert not head.norm.affine and head.norm.eps == 1e-6
    assert head.head.weight.std().item() < 0.02  # trunc-normal, std 0.01


def test_lars_probe_learns_a_separable_problem() -> None:
    train, val = blobs(2048), blobs(512, seed=1)
    # The authors' protocol, but a higher base lr: LARS moves a weight matrix by lr * trust * ||w|| a step, so
    # its total reach grows with the training-set size (1.28M images at the paper); 2k points need a larger lr.
    cfg = ProbeConfig(method="lars", epochs=30, warmup_epochs=3, batch_size=256, base_lr=4.0)
    result = lars_probe(train, val, "blobs", cfg)
    assert result.accuracy > 0.95
    assert result.chance == pytest.approx(1 / 6) and result.num_train == 2048 and result.num_val == 512
    assert "LARS" in result.method and "batch 256" in result.method
    again = lars_probe(train, val, "blobs", cfg)
    assert again.accuracy == result.accuracy  # seeded


def test_lars_probe_runs_the_frozen_model_on_fresh_views_each_epoch() -> None:
    """With (feature_fn, dataset) the features come from a new draw of the dataset's items every epoch."""

    class Noisy(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.x, self.y = blobs(96, dim=8, classes=3)
            self.num_classes = 3
            self.draws = 0

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            self.draws += 1
            return self.x[i] + 0.01 * torch.randn(8), int(self.y[i])

    dataset = Noisy()
    calls: list[int] = []

    def feature_fn(items: torch.Tensor) -> torch.Tensor:
        calls.append(len(items))
        return items * 2

    cfg = ProbeConfig(method="lars", epochs=3, warmup_epochs=1, batch_size=32, base_lr=1.0, views="random_crop")
    result = lars_probe((feature_fn, dataset), blobs(30, dim=8, classes=3, seed=1), "noisy", cfg, chunk_size=16)
    assert dataset.draws == 3 * 96  # every item drawn afresh in each of the 3 epochs
    assert max(calls) == 16 and sum(calls) == 3 * 96  # the model saw chunks of 16 images
    assert result.num_train == 96 and "random-crop" in result.method


def test_random_crop_views_of_an_image_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(folder / "0.png")
    views = RandomCropViews(ImageFolderDataset(tmp_path, "train", 16))
    assert len(views) == 2 and views.num_classes == 2
    first, label = views[0]
    assert first.shape == (3, 16, 16) and label == 0 and first.min() >= -1 and first.max() <= 1
    assert any(not torch.equal(first, views[0][0]) for _ in range(5))  # a new crop each access
    with pytest.raises(TypeError, match="image folder"):
        RandomCropViews(torch.utils.data.TensorDataset(torch.zeros(2, 3, 16, 16)))


def test_probe_config_defaults_keep_hashes_and_paper_uses_the_authors_protocol() -> None:
    assert "probe" not in hashed_fields(EvalConfig())  # today's probe: existing run hashes unchanged
    assert "probe" in hashed_fields(EvalConfig(probe=ProbeConfig(method="lars")))
    assert TINY.eval.probe.method == "logistic_regression"
    paper = PAPER.eval.probe
    assert (paper.method, paper.views, paper.epochs, paper.warmup_epochs) == ("lars", "random_crop", 90, 10)
    assert (paper.batch_size, paper.base_lr, paper.weight_decay, paper.min_lr) == (8192, 0.1, 0.0, 0.0)
    with pytest.raises(ConfigError, match="eval.probe.method"):
        ProbeConfig(method="svm")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="eval.probe.views"):
        ProbeConfig(views="random_crop")  # the logistic regression fits fixed features
    with pytest.raises(ConfigError, match="eval.probe.warmup_epochs"):
        ProbeConfig(method="lars", epochs=5, warmup_epochs=5)


def test_logistic_regression_probe_still_fits() -> None:
    (x, y), (xv, yv) = blobs(300), blobs(100, seed=1)
    result = linear_probe((x.numpy(), y.numpy()), (xv.numpy(), yv.numpy()), "blobs", max_iter=200)
    assert result.accuracy > 0.95 and result.method.startswith("logistic regression")


def test_probe_stage_key_unchanged_by_default_and_tokenizer_probe_on_random_crops(tmp_path: Path) -> None:
    from gigatok.config import tokenizer_run
    from gigatok.metrics.linear_probe import lars_probe_on_images, tokenizer_feature_fn
    from gigatok.models.tokenizer import build_tokenizer
    from gigatok.runs.layout import eval_key
    from gigatok.runs.spec import TOKENIZER_STAGES, RunContext, RunSpec
    from gigatok.runs.stages import stage_result_path

    tok = tokenizer_run("S-S")
    spec = RunSpec("s", (), tok, None, EvalConfig(), stages=TOKENIZER_STAGES)
    ctx = RunContext(runs_dir=str(tmp_path / "runs"), tracking_uri="")
    path = stage_result_path(spec, ctx, "tokenizer_probe")
    assert path.name == f"probe-{eval_key(spec, 'probe_max_iter')}.json"  # results written before keep their name
    lars = RunSpec("s", (), tok, None, EvalConfig(probe=ProbeConfig(method="lars")), stages=TOKENIZER_STAGES)
    assert stage_result_path(lars, ctx, "tokenizer_probe") != path and lars.hash != spec.hash

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for name in ("a", "b"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    torch.manual_seed(0)
    model = build_tokenizer(tok.tokenizer)
    train = ImageFolderDataset(tmp_path / "data", "train", tok.tokenizer.image_size)
    val = ImageFolderDataset(tmp_path / "data", "val", tok.tokenizer.image_size)
    cfg = ProbeConfig(method="lars", epochs=2, warmup_epochs=1, batch_size=4, views="random_crop")
    result = lars_probe_on_images(cfg, tokenizer_feature_fn(model), train, val, "encoder", batch_size=4)
    assert result.num_train == 12 and result.num_val == 4 and 0 <= result.accuracy <= 1


def test_lars_probe_head_covers_every_training_label() -> None:
    """Labels need not be contiguous: the head is sized by the largest label of either split."""
    x, y = blobs(64, dim=8, classes=2)
    result = lars_probe(
        (x, y * 5),
        (x[:8], torch.zeros(8, dtype=torch.long)),
        "sparse labels",
        ProbeConfig(method="lars", epochs=2, warmup_epochs=1, batch_size=16),
    )
    assert result.chance == pytest.approx(0.5) and 0 <= result.accuracy <= 1


def test_ar_image_features_tokenize_then_read_layer_half() -> None:
    from gigatok.config import ar_run, tokenizer_run
    from gigatok.metrics.linear_probe import ar_image_feature_fn
    from gigatok.models.ar import build_ar_model
    from gigatok.models.tokenizer import build_tokenizer

    tok_cfg = tokenizer_run("S-S")
    torch.manual_seed(0)
    tokenizer, ar = build_tokenizer(tok_cfg.tokenizer), build_ar_model(ar_run(tok_cfg).model)
    images = torch.rand(3, 3, tok_cfg.tokenizer.image_size, tok_cfg.tokenizer.image_size) * 2 - 1
    features = ar_image_feature_fn(tokenizer, ar)(images)
    with torch.no_grad():
        expected = ar.features(tokenizer.tokenize(images))
    assert features.shape == (3, ar.cfg.width) and torch.allclose(features, expected)
