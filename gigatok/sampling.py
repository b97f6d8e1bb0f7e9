"""Class-conditional sampling from the AR model: KV cache, classifier-free guidance, temperature, top-k, top-p.

CFG runs the conditional and the unconditional (null-class) sequences as one batch of 2B through the model, and
mixes their logits as uncond + scale * (cond - uncond). Two schedules (Appendix B): ``constant`` (AR probing)
and ``step``, where the first ``step_fraction`` (18%) of the tokens use scale 1 and the rest the full scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from gigatok.config import ConfigError
from gigatok.models.ar import ARModel


@dataclass(frozen=True)
class SamplingConfig:
    cfg_scale: float = 1.0
    cfg_schedule: Literal["constant", "step"] = "constant"
    step_fraction: float = 0.18  # share of the first tokens sampled at scale 1 by the step schedule
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    step_counting: Literal["all", "after_first"] = "all"  # see cfg_scales

    def __post_init__(self) -> None:
        if self.cfg_scale < 0:
            raise ConfigError(f"sampling.cfg_scale: must be >= 0, got {self.cfg_scale}")
        if self.cfg_schedule not in ("constant", "step"):
            raise ConfigError(f"sampling.cfg_schedule: 'constant' or 'step', got {self.cfg_schedule!r}")
        if not 0 <= self.step_fraction <= 1:
            raise ConfigError(f"sampling.step_fraction: must be in [0, 1], got {self.step_fraction}")
        if self.step_counting not in ("all", "after_first"):
            raise ConfigError(f"sampling.step_counting: 'all' or 'after_first', got {self.step_counting!r}")
        if self.temperature <= 0:
            raise ConfigError(f"sampling.temperature: must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"sampling.top_k: must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p: must be in (0, 1], got {self.top_p}")


def cfg_scales(cfg: SamplingConfig, num_tokens: int) -> list[float]:
    """The guidance scale used for each token position.

    The step schedule's ``step_counting`` "all": the first ceil(step_fraction x n) tokens at scale 1.
    "after_first": GigaTok's autoregressive/models/generate.py, whose prefill samples the first token at the full
    scale and whose decode loop guides token p >= 1 once p / (n - 1) >= step_fraction (at 256 tokens and 0.18:
    tokens 1-45 unguided; their scale there is 1 + 1e-4, here 1).
    """
    if cfg.cfg_schedule == "constant":
        return [cfg.cfg_scale] * num_tokens
    if cfg.step_counting == "after_first":
        later = [cfg.cfg_scale if p / (num_tokens - 1) >= cfg.step_fraction else 1.0 for p in range(1, num_tokens)]
        return [cfg.cfg_scale, *later][:num_tokens]
    unguided = math.ceil(cfg.step_fraction * num_tokens)
    return [1.0 if i < unguided else cfg.cfg_scale for i in range(num_tokens)]


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the smallest nucleus of mass top_p to -inf."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row, with probabilities proportional to ``probs`` (B, V): inverse-CDF sampling, (B, 1).

    One uniform number a row, where ``torch.multinomial`` draws an exponential for every vocabulary entry: on a CPU
    that was half of a KV-cached sampling step at a 16384-code vocabulary (bench/ar_sampling.py). The CDF is summed
    in float64 so that the tail codes keep their mass.
    """
    cdf = probs.double().cumsum(dim=-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=torch.float64) * total
    # Strictly below the total, so the first CDF entry above u exists and belongs to a code of non-zero mass.
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True)


@torch.no_grad()
def sample_tokens(
    model: ARModel,
    labels: torch.Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Sample (B, num_tokens) token indices for class ``labels`` (B,).

    ``use_cache=False`` recomputes the whole prefix at every step with plain causal attention (the reference for
    the cache, and the baseline of ``bench/ar_sampling.py``).
    """
    model.eval()
    n = model.cfg.num_tokens
    b = labels.shape[0]
    scales = cfg_scales(cfg, n)
    guided = any(s != 1.0 for s in scales)
    if guided:  # one batch of 2B: conditional rows first, then null-class rows
        labels = torch.cat([labels, torch.full_like(labels, model.null_class)])
    device = labels.device
    tokens = torch.empty(b, 0, dtype=torch.long, device=device)
    cache = model.new_cache(labels.shape[0], device, model.pos_embeddings.dtype) if use_cache else None
    for i in range(n):
        if cache is not None:
            step_tokens = None if i == 0 else tokens[:, -1:].repeat(2 if guided else 1, 1)
            x = model.embed(step_tokens, labels if i == 0 else None, start=0 if i == 0 else i)
            logits = model.decode_step(x, cache, start=0 if i == 0 else i)
        else:
            prefix = tokens.repeat(2 if guided else 1, 1)
            logits = model.decode_step(model.embed(prefix, labels), None, start=0)
        logits = logits.float()
        if guided:
            cond_logits, uncond_logits = logits[:b], logits[b:]
            logits = uncond_logits + scales[i] * (cond_logits - uncond_logits)
        if cfg.temperature != 1.0:
            logits = logits / cfg.temperature
        logits = filter_logits(logits, cfg.top_k, cfg.top_p)
        nxt = draw(logits.softmax(-1), generator)
        tokens = torch.cat([tokens, nxt], dim=1)
    return tokens


def class_balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., C-1, 0, 1, ...: every class gets num_samples / C samples (FID-50k uses 50 per class)."""
    return torch.arange(num_samples) % num_classes
