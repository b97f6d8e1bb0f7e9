"""Token cache: a dataset tokenized once by a trained tokenizer, reused by every AR run on that tokenizer.

The training split is stored as several views of every image (the AR models' only augmentation), chosen by
``ARTrainConfig.views`` (:data:`gigatok.token_views.VIEW_SETS`); the validation split as the image alone. Tokens are
stored as int16 when the codebook fits (16384 codes: 512 bytes an image at 256 tokens), with the labels, the image
each row is a view of and which view, in ``<tokenizer run>/token_cache/<split>.pt`` (``train-<views>.pt`` for
views other than "flip"), written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from gigatok.data import build_dataset
from gigatok.io import atomic_write_bytes
from gigatok.models.tokenizer import GigaTokenizer
from gigatok.token_views import DEFAULT_VIEWS, MIRRORED, PLAIN, ViewSet, view_set
from gigatok.train.trained import load_trained_tokenizer, read_run_config

CACHE_VERSION = 1


@dataclass
class TokenCache:
    tokens: torch.Tensor  # (M, num_tokens), int16 or int32 on disk; index with .long()
    labels: torch.Tensor  # (M,) int64
    flipped: torch.Tensor  # (M,) bool: the sample is a mirrored view
    image: torch.Tensor | None = None  # (M,) int64: the dataset index of the image the row is a view of
    view: torch.Tensor | None = None  # (M,) int64: the position of the row's view in its view set
    _table: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[indices].long(), self.labels[indices]

    @property
    def num_images(self) -> int:
        if self.image is None:  # a cache written before rows named their image: the "flip" set
            return int((~self.flipped).sum())
        return int(self.image.max()) + 1 if len(self) else 0

    def view_table(self) -> torch.Tensor:
        """(images, views) row indices: row ``table[i, v]`` is view ``v`` of image ``i``."""
        if self._table is None:
            if self.image is None or self.view is None:
                raise ValueError(
                    "this token cache does not record which image each row is a view of; rebuild it "
                    "(delete the token_cache folder of the tokenizer run)"
                )
            table = torch.full((self.num_images, int(self.view.max()) + 1), -1, dtype=torch.long)
            table[self.image, self.view] = torch.arange(len(self))
            if bool((table < 0).any()):
                raise ValueError("token cache: some image lacks one of the views; rebuild it")
            self._table = table
        return self._table

    def one_view(self, position: int) -> TokenCache:
        """The rows of view ``position`` only, one per image in the cache's order."""
        view = self.view if self.view is not None else self.flipped.long()
        rows = (view == position).nonzero().flatten()
        return TokenCache(
            self.tokens[rows],
            self.labels[rows],
            self.flipped[rows],
            None if self.image is None else self.image[rows],
            torch.zeros(len(rows), dtype=torch.long),
        )


def cache_path(tokenizer_run_dir: Path, split: str, views: str = DEFAULT_VIEWS) -> Path:
    """The cache file of ``split``; the training split has one per view set, validation one in all."""
    name = split if split != "train" or views == DEFAULT_VIEWS else f"{split}-{views}"
    return Path(tokenizer_run_dir) / "token_cache" / f"{name}.pt"


def crop_views(images: torch.Tensor, views: ViewSet, image_size: int) -> list[torch.Tensor]:
    """The views of a batch of images already centre-cropped to ``views.crop_size(image_size)``, in set order."""
    crops = TF.ten_crop(images, [image_size, image_size])
    return [crops[k] for k in views.crops]


@torch.no_grad()
def _tokenize(
    model: GigaTokenizer, dataset, batch_size: int, views: ViewSet, device: torch.device, progress: bool
) -> TokenCache:
    """Rows in loader batches, each batch's views one after another (for "flip": a batch, then its mirror)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    dtype = torch.int16 if model.cfg.quantizer.codebook_size <= 2**15 else torch.int32
    image_size = model.cfg.image_size
    tokens, labels, flipped, image, view = [], [], [], [], []
    start = 0
    for images, y in tqdm(loader, desc="tokenizing", disable=not progress, leave=False):
        images = images.to(device)
        index = torch.arange(start, start + len(y))
        for position, (crop, k) in enumerate(zip(crop_views(images, views, image_size), views.crops, strict=True)):
            tokens.append(model.tokenize(crop.contiguous()).to("cpu", dtype))
            labels.append(y.long())
            flipped.append(torch.full((len(y),), k >= MIRRORED))
            image.append(index)
            view.append(torch.full((len(y),), position, dtype=torch.long))
        start += len(y)
    return TokenCache(torch.cat(tokens), torch.cat(labels), torch.cat(flipped), torch.cat(image), torch.cat(view))


def build_token_cache(
    tokenizer_run_dir: str | Path,
    split: str,
    *,
    views: str = DEFAULT_VIEWS,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TokenCache:
    """Load ``split``'s token cache of a finished tokenizer run, building it first if it is not there yet.

    ``views`` names the training split's view set (:data:`gigatok.token_views.VIEW_SETS`); the validation split is
    the image alone.
    """
    run_dir = Path(tokenizer_run_dir)
    chosen = view_set(views) if split == "train" else PLAIN
    path = cache_path(run_dir, split, views)
    if path.is_file():
        return load_token_cache(run_dir, split, views)
    if not (run_dir / "summary.json").is_file():
        raise FileNotFoundError(f"{run_dir}: the tokenizer run has not finished (no summary.json); train it first")
    cfg = read_run_config(run_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_trained_tokenizer(run_dir, device)
    size = cfg.tokenizer.image_size
    dataset = build_dataset(cfg.data, split, chosen.crop_size(size), seed=cfg.train.seed)
    cache = _tokenize(model, dataset, batch_size, chosen, device=device, progress=progress)
    payload = {
        "version": CACHE_VERSION,
        "tokenizer_hash": cfg.hash(),
        "split": split,
        "views": chosen.name,
        "tokens": cache.tokens,
        "labels": cache.labels,
        "flipped": cache.flipped,
        "image": cache.image,
        "view": cache.view,
    }
    atomic_write_bytes(path, lambda f: torch.save(payload, f))
    return cache


def load_token_cache(tokenizer_run_dir: str | Path, split: str, views: str = DEFAULT_VIEWS) -> TokenCache:
    path = cache_path(Path(tokenizer_run_dir), split, views)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no token cache; build it with build_token_cache")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("version") != CACHE_VERSION:
        raise ValueError(f"{path}: token cache version {payload.get('version')} is not {CACHE_VERSION}; rebuild it")
    return TokenCache(
        payload["tokens"], payload["labels"], payload["flipped"], payload.get("image"), payload.get("view")
    )
