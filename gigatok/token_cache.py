"""Token cache: a dataset tokenized once by a trained tokenizer, reused by every AR run on that tokenizer.

The training split is stored with a horizontally flipped copy of every image (the AR models' only augmentation);
the validation split without. Tokens are stored as int16 when the codebook fits (16384 codes: 512 bytes an
image at 256 tokens), with the labels, in ``<tokenizer run>/token_cache/<split>.pt``, written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from gigatok.data import build_dataset
from gigatok.models.tokenizer import GigaTokenizer
from gigatok.train.checkpoint import atomic_write_bytes
from gigatok.train.tokenizer_loop import load_trained_tokenizer, read_run_config

CACHE_VERSION = 1


@dataclass
class TokenCache:
    tokens: torch.Tensor  # (M, num_tokens), int16 or int32 on disk; index with .long()
    labels: torch.Tensor  # (M,) int64
    flipped: torch.Tensor  # (M,) bool: the sample is the flipped copy

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[indices].long(), self.labels[indices]


def cache_path(tokenizer_run_dir: Path, split: str) -> Path:
    return Path(tokenizer_run_dir) / "token_cache" / f"{split}.pt"


@torch.no_grad()
def _tokenize(model: GigaTokenizer, dataset, batch_size: int, flips: bool, device: torch.device,
              progress: bool) -> TokenCache:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    dtype = torch.int16 if model.cfg.quantizer.codebook_size <= 2**15 else torch.int32
    tokens, labels, flipped = [], [], []
    for images, y in tqdm(loader, desc="tokenizing", disable=not progress, leave=False):
        images = images.to(device)
        variants = [(images, False), (images.flip(-1), True)] if flips else [(images, False)]
        for batch, is_flipped in variants:
            tokens.append(model.tokenize(batch).to("cpu", dtype))
            labels.append(y.long())
            flipped.append(torch.full((len(y),), is_flipped))
    return TokenCache(torch.cat(tokens), torch.cat(labels), torch.cat(flipped))


def build_token_cache(
    tokenizer_run_dir: str | Path,
    split: str,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TokenCache:
    """Load ``split``'s token cache of a finished tokenizer run, building it first if it is not there yet."""
    run_dir = Path(tokenizer_run_dir)
    path = cache_path(run_dir, split)
    if path.is_file():
        return load_token_cache(run_dir, split)
    if not (run_dir / "summary.json").is_file():
        raise FileNotFoundError(f"{run_dir}: the tokenizer run has not finished (no summary.json); train it first")
    cfg = read_run_config(run_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_trained_tokenizer(run_dir, device)
    dataset = build_dataset(cfg.data, split, cfg.tokenizer.image_size, seed=cfg.train.seed)
    cache = _tokenize(model, dataset, batch_size, flips=split == "train", device=device, progress=progress)
    payload = {
        "version": CACHE_VERSION, "tokenizer_hash": cfg.hash(), "split": split,
        "tokens": cache.tokens, "labels": cache.labels, "flipped": cache.flipped,
    }
    atomic_write_bytes(path, lambda f: torch.save(payload, f))
    return cache


def load_token_cache(tokenizer_run_dir: str | Path, split: str) -> TokenCache:
    path = cache_path(Path(tokenizer_run_dir), split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no token cache; build it with build_token_cache")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("version") != CACHE_VERSION:
        raise ValueError(f"{path}: token cache version {payload.get('version')} is not {CACHE_VERSION}; rebuild it")
    return TokenCache(payload["tokens"], payload["labels"], payload["flipped"])
