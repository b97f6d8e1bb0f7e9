"""Images from the two-stage model: class-balanced labels -> AR tokens (KV cache, CFG) -> tokenizer decoder.

``generate_batches`` streams batches so that evaluating 50,000 samples never holds more than one batch;
``decode_cost`` measures the share of generation time spent in the tokenizer decoder (Table 4).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from gigatok.models.ar import ARModel
from gigatok.models.tokenizer import GigaTokenizer
from gigatok.sampling import SamplingConfig, class_balanced_labels, sample_tokens


def generate_batches(
    ar: ARModel,
    tokenizer: GigaTokenizer,
    num_samples: int,
    sampling: SamplingConfig,
    batch_size: int = 64,
    seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images in [-1, 1], labels) batches, class-balanced over the AR model's classes, reproducibly."""
    device = next(ar.parameters()).device
    labels = class_balanced_labels(num_samples, ar.cfg.num_classes)
    generator = torch.Generator(device=device).manual_seed(seed)
    tokenizer.eval()
    for start in range(0, num_samples, batch_size):
        batch_labels = labels[start : start + batch_size].to(device)
        tokens = sample_tokens(ar, batch_labels, sampling, generator)
        with torch.no_grad():
            images = tokenizer.decode_indices(tokens).clamp(-1, 1)
        yield images, batch_labels


@dataclass(frozen=True)
class DecodeCost:
    sampling_seconds: float
    decoding_seconds: float

    @property
    def decode_fraction(self) -> float:
        """Tokenizer decoding time as a fraction of the total generation time (Table 4's percentages)."""
        return self.decoding_seconds / (self.sampling_seconds + self.decoding_seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_cost(
    ar: ARModel, tokenizer: GigaTokenizer, sampling: SamplingConfig, batch_size: int = 16, repeats: int = 3
) -> DecodeCost:
    """Wall time of sampling tokens and of decoding them, each summed over ``repeats`` batches after a warm-up."""
    device = next(ar.parameters()).device
    labels = class_balanced_labels(batch_size, ar.cfg.num_classes).to(device)
    tokenizer.eval()
    sample_s = decode_s = 0.0
    for i in range(repeats + 1):  # the first round warms up kernels and caches and is not counted
        _sync(device)
        t0 = time.perf_counter()
        tokens = sample_tokens(ar, labels, sampling)
        _sync(device)
        t1 = time.perf_counter()
        with torch.no_grad():
            tokenizer.decode_indices(tokens)
        _sync(device)
        t2 = time.perf_counter()
        if i > 0:
            sample_s += t1 - t0
            decode_s += t2 - t1
    return DecodeCost(sample_s, decode_s)
