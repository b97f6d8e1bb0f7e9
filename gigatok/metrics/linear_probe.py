"""Linear probing (Sec. 3.1, Appendix F): a linear classifier on frozen features, trained on the training split
and scored on the validation split.

AR probe features are the middle transformer layer (n_layer // 2) of the AR model, mean-pooled over positions,
with the null class token as the prefix (so the label cannot leak in). Tokenizer features are the encoder
transformer's output before quantization, mean-pooled over tokens (the comparison of the paper's Fig. 13).

Two classifiers (:class:`gigatok.config.ProbeConfig`): :func:`linear_probe`, scikit-learn's logistic regression
on standardised features (CPU), and :func:`lars_probe`, the authors' protocol (BatchNorm without affine + a linear
head trained with :class:`LARS` under a warm-up + cosine schedule) on the features' device. :func:`lars_probe`
takes either fixed training features or a dataset and a feature function: then every step runs the frozen model
on fresh views of the images (:class:`RandomCropViews`), as the authors' ``lin_probe.py`` does.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import cast, overload

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ImageOps
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from gigatok.config import ProbeConfig
from gigatok.data.imagefolder import ImageFolderDataset
from gigatok.data.transforms import adm_random_crop, to_unit_range, uint8_to_tensor
from gigatok.metrics.images import dataset_length
from gigatok.models.ar import ARModel
from gigatok.models.tokenizer import GigaTokenizer
from gigatok.token_cache import TokenCache

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, H, W) in [-1, 1] -> features (B, C)


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float  # top-1 on the validation features
    chance: float  # 1 / number of classes seen in training
    num_train: int
    num_val: int
    features: str  # which features were probed
    method: str = "logistic regression (scikit-learn, standardised features)"


# ----------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def ar_features(model: ARModel, cache: TokenCache, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    device = next(model.parameters()).device
    feats = []
    for start in range(0, len(cache), batch_size):
        tokens, _ = cache.batch(torch.arange(start, min(len(cache), start + batch_size)))
        feats.append(model.features(tokens.to(device)).float().cpu())
    return torch.cat(feats).numpy(), cache.labels.numpy()


def tokenizer_feature_fn(model: GigaTokenizer) -> FeatureFn:
    """The tokenizer encoder's output before quantization, mean over tokens, of a batch of images."""
    model.eval()
    device = next(model.parameters()).device

    @torch.no_grad()
    def features(images: torch.Tensor) -> torch.Tensor:
        return model.encoder(model.cnn_encoder(images.to(device))).mean(dim=1).float()  # (B, N, C) -> (B, C)

    return features


def ar_image_feature_fn(tokenizer: GigaTokenizer, model: ARModel) -> FeatureFn:
    """AR layer n/2 features of a batch of images: tokenized by the frozen tokenizer first (the authors' AR probe
    encodes each training view with the tokenizer inside the loop)."""
    tokenizer.eval()
    model.eval()
    device = next(model.parameters()).device

    @torch.no_grad()
    def features(images: torch.Tensor) -> torch.Tensor:
        return model.features(tokenizer.tokenize(images.to(device))).float()

    return features


@torch.no_grad()
def dataset_features(
    feature_fn: FeatureFn, dataset: Dataset, batch_size: int = 64, num_workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of every item of ``dataset``, in order."""
    feats, labels = [], []
    for images, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        feats.append(feature_fn(images))
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels).to(feats[0].device)


def tokenizer_features(model: GigaTokenizer, dataset: Dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    x, y = dataset_features(tokenizer_feature_fn(model), dataset, batch_size)
    return x.cpu().numpy(), y.cpu().numpy()


class RandomCropViews(Dataset):
    """An image folder whose every access is a fresh ADM random crop (crop fraction 0.8-1.0) of the image, mirrored
    with probability 1/2: the training transform of the authors' linear probes (``lin_probe.py``:
    ``random_crop_arr`` then ``RandomHorizontalFlip``). Draws from Python's ``random``, which DataLoader workers
    seed each from the loader's generator."""

    def __init__(self, folder: Dataset) -> None:
        if not isinstance(folder, ImageFolderDataset):
            raise TypeError(
                f"random-crop probe views need an image folder dataset, got {type(folder).__name__} "
                "(use eval.probe.views=fixed)"
            )
        self.folder = folder
        self.num_classes = folder.num_classes

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = adm_random_crop(self.folder.load(index), self.folder.image_size)
        if random.random() < 0.5:
            image = ImageOps.mirror(image)
        return to_unit_range(uint8_to_tensor(np.asarray(image))), self.folder.samples[index][1]


# ----------------------------------------------------------------------------------------------------------
# scikit-learn logistic regression
# ----------------------------------------------------------------------------------------------------------


def linear_probe(
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], features: str, max_iter: int = 2000
) -> ProbeResult:
    """Standardised features, multinomial logistic regression; top-1 accuracy on the validation split."""
    (x_train, y_train), (x_val, y_val) = train, val
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    classifier.fit(x_train, y_train)
    accuracy = float((classifier.predict(x_val) == y_val).mean())
    return ProbeResult(accuracy, 1.0 / len(np.unique(y_train)), len(y_train), len(y_val), features)


# ----------------------------------------------------------------------------------------------------------
# The authors' protocol: BatchNorm + linear head, LARS, warm-up + cosine
# ----------------------------------------------------------------------------------------------------------


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017) as MAE's linear probe uses it (the authors'
    ``tokenizer/lin_probe/misc.py``): for a tensor with more than one dimension the update ``d = grad + wd * w`` is
    rescaled by ``trust_coefficient * ||w|| / ||d||`` (by 1 when either norm is 0); 1-D tensors (biases) get the
    plain gradient. Then heavy-ball momentum: ``mu = momentum * mu + d``, ``w -= lr * mu``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 1e-3,
    ) -> None:
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "trust_coefficient": trust_coefficient,
        }
        super().__init__(params, defaults)

    @overload  # torch.optim.Optimizer.step's two forms: no loss without a closure
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    ratio = group["trust_coefficient"] * w_norm / u_norm
                    update = update * torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                state["mu"].mul_(group["momentum"]).add_(update)
                p.add_(state["mu"], alpha=-group["lr"])
        return loss


class ProbeHead(nn.Module):
    """BatchNorm without affine (eps 1e-6) then a linear layer whose weight is trunc-normal, std 0.01 (MoCo v3's
    init, kept by MAE and the authors' ``LinProb``); the bias keeps PyTorch's default init, as theirs does."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(features))


def probe_lr(epoch: float, peak_lr: float, cfg: ProbeConfig) -> float:
    """The learning rate at (fractional) ``epoch``: linear warm-up to ``peak_lr``, then half-cycle cosine to
    ``cfg.min_lr`` at ``cfg.epochs`` (MAE's ``adjust_learning_rate``, called before every step)."""
    if epoch < cfg.warmup_epochs:
        return peak_lr * epoch / cfg.warmup_epochs
    progress = (epoch - cfg.warmup_epochs) / (cfg.epochs - cfg.warmup_epochs)
    return cfg.min_lr + (peak_lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _fixed_batches(
    x: torch.Tensor, y: torch.Tensor, batch: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled full batches (the last partial batch dropped, as the authors' loader does)."""
    order = torch.randperm(len(x), generator=generator).to(x.device)
    for start in range(0, len(x) - batch + 1, batch):
        index = order[start : start + batch]
        yield x[index], y[index]


def _view_batches(
    feature_fn: FeatureFn, dataset: Dataset, batch: int, chunk: int, generator: torch.Generator, num_workers: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of full batches of features of fresh views: the frozen model runs on ``chunk`` images at a time
    (bounding its memory), and their features are gathered into optimiser batches of ``batch``."""
    sampler = RandomSampler(cast(Sized, dataset), generator=generator)  # a map-style dataset: it has a length
    loader = DataLoader(dataset, batch_size=chunk, sampler=sampler, num_workers=num_workers)
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    held = 0
    for images, y in loader:
        f = feature_fn(images)
        feats.append(f)
        labels.append(torch.as_tensor(y).to(f.device))
        held += len(f)
        while held >= batch:
            x_all, y_all = torch.cat(feats), torch.cat(labels)
            yield x_all[:batch], y_all[:batch]
            feats, labels, held = [x_all[batch:]], [y_all[batch:]], held - batch


def lars_probe(
    train: tuple[torch.Tensor, torch.Tensor] | tuple[FeatureFn, Dataset],
    val: tuple[torch.Tensor, torch.Tensor],
    features: str,
    cfg: ProbeConfig,
    *,
    num_classes: int | None = None,
    chunk_size: int = 64,
    num_workers: int = 0,
) -> ProbeResult:
    """Train the authors' probe and score top-1 on ``val`` (features and labels on the device to train on).

    ``train`` is either fixed ``(features, labels)`` tensors, or ``(feature_fn, dataset)``: then each epoch draws
    the dataset's items afresh (a :class:`RandomCropViews` gives new crops) and runs ``feature_fn`` on them,
    ``chunk_size`` images at a time. The step batch is ``cfg.batch_size``, clipped to the training set, and the
    peak learning rate is ``cfg.base_lr * batch / 256`` of the batch actually used.
    """
    x_val, y_val = val
    device = x_val.device
    size, classes_seen, labels_need = _training_set_size(train)
    if size < 2:
        raise ValueError(f"linear probe: needs at least 2 training items, got {size}")
    num_classes = num_classes or max(int(y_val.max()) + 1, labels_need)
    batch = min(cfg.batch_size, size)
    steps_per_epoch = size // batch
    peak_lr = cfg.base_lr * batch / 256
    total_steps = math.ceil(cfg.epochs * steps_per_epoch)

    generator = torch.Generator().manual_seed(cfg.seed)
    epoch_batches = functools.partial(_epoch_batches, train, batch, chunk_size, generator, num_workers)
    python_state = random.getstate()
    # The head is initialised on the CPU; the seeds (torch's for DataLoader workers, Python's for the crops drawn in
    # this process) are the probe's own and the caller's random state is restored afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        head = ProbeHead(x_val.shape[1], num_classes).to(device)
        _train_head(head, epoch_batches, cfg, total_steps=total_steps, steps_per_epoch=steps_per_epoch, peak_lr=peak_lr)
        head.eval()
        with torch.no_grad():
            predictions = torch.cat([head(x.float()).argmax(dim=1) for x in x_val.split(4096)])
    random.setstate(python_state)
    accuracy = float((predictions == y_val).double().mean())
    method = _probe_method(cfg, batch, peak_lr)
    return ProbeResult(accuracy, 1.0 / max(classes_seen, 1), size, len(y_val), features, method)


def _training_set_size(train: tuple[torch.Tensor, torch.Tensor] | tuple[FeatureFn, Dataset]) -> tuple[int, int, int]:
    """(items, classes seen, labels the head must cover) of fixed training features, or of a dataset (its
    ``num_classes`` for both: its items are not read before training)."""
    if isinstance(train[0], torch.Tensor):
        x_train, y_train = train
        return len(x_train), int(torch.unique(y_train).numel()), int(y_train.max()) + 1
    _feature_fn, dataset = train
    classes = int(getattr(dataset, "num_classes", 0))
    return dataset_length(dataset), classes, classes


def _epoch_batches(
    train: tuple[torch.Tensor, torch.Tensor] | tuple[FeatureFn, Dataset],
    batch: int,
    chunk: int,
    generator: torch.Generator,
    num_workers: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of training batches: shuffled fixed features, or features of fresh views of the dataset's items."""
    if isinstance(train[0], torch.Tensor):
        x_train, y_train = train
        return _fixed_batches(x_train, y_train, batch, generator)
    feature_fn, dataset = train
    return _view_batches(feature_fn, dataset, batch, chunk, generator, num_workers)


def _train_head(
    head: ProbeHead,
    epoch_batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]],
    cfg: ProbeConfig,
    *,
    total_steps: int,
    steps_per_epoch: int,
    peak_lr: float,
) -> None:
    """Train ``head`` with LARS for ``total_steps`` steps, the learning rate set by :func:`probe_lr` before each;
    ``epoch_batches`` gives a fresh epoch's batches each call (the last epoch may stop part-way)."""
    optimizer = LARS(
        head.parameters(),
        lr=peak_lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        trust_coefficient=cfg.trust_coefficient,
    )
    head.train()
    step = 0
    while step < total_steps:
        for xb, yb in epoch_batches():
            if step >= total_steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = probe_lr(step / steps_per_epoch, peak_lr, cfg)
            loss = F.cross_entropy(head(xb.float()), yb)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"linear probe: loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1


def _probe_method(cfg: ProbeConfig, batch: int, peak_lr: float) -> str:
    """How the probe was trained, for the result: the schedule, the batch and peak learning rate actually used."""
    views = "random-crop + flip views" if cfg.views == "random_crop" else "fixed views"
    return (
        f"LARS linear probe (BatchNorm + linear head; {cfg.epochs:g} epochs, warm-up {cfg.warmup_epochs:g}, "
        f"batch {batch}, lr {peak_lr:.4g}, {views})"
    )


def lars_probe_on_images(
    cfg: ProbeConfig,
    feature_fn: FeatureFn,
    train: Dataset,
    val: Dataset,
    features: str,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
) -> ProbeResult:
    """:func:`lars_probe` of ``feature_fn`` on image datasets: validation features of one centre crop each;
    training features of fresh random-crop + flip views every step (``cfg.views == "random_crop"``, the authors'
    way, ``train`` an image folder) or of the dataset's own fixed views, extracted once."""
    val_xy = dataset_features(feature_fn, val, batch_size, num_workers)
    if cfg.views == "random_crop":
        source: tuple[torch.Tensor, torch.Tensor] | tuple[FeatureFn, Dataset] = (feature_fn, RandomCropViews(train))
    else:
        source = dataset_features(feature_fn, train, batch_size, num_workers)
    num_classes = getattr(train, "num_classes", None)
    return lars_probe(
        source, val_xy, features, cfg, num_classes=num_classes, chunk_size=batch_size, num_workers=num_workers
    )
