"""AR training on a tokenizer's token cache: AdamW, WSD schedule, resumable like the tokenizer loop.

Run directory: ``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``ar.pt`` and ``summary.json`` (with the
teacher-forced validation loss), as for tokenizer runs. Several processes (see gigatok.distributed) split each
global batch and average gradients, as in the tokenizer loop; rank 0 alone writes. With ``performance.parallelism``
fsdp (by default for AR-XXL) the model is sharded, one unit per transformer block (gigatok.fsdp), and checkpoints
are sharded (gigatok.train.sharded); ``ar.pt`` is the whole model either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gigatok.config import ARRunConfig, ARTrainConfig, ar_parallelism, ar_run_config_from_dict
from gigatok.distributed import RankShard, main_first, wrap_ddp
from gigatok.fsdp import clip_gradients, is_sharded, shard_model
from gigatok.models.ar import ARModel, build_ar_model
from gigatok.performance import autocast, autocast_dtype, maybe_compile, prepare_module
from gigatok.token_cache import TokenCache, build_token_cache
from gigatok.train.loop import (
    Cadence,
    LogFn,
    Pair,
    Run,
    Stateful,
    checkpointer,
    claim_run_dir,
    load_saved,
    resume,
    save_final,
    saved_states,
    start_run,
    train_steps,
)
from gigatok.train.optimizer import build_ar_optimizer
from gigatok.train.run_dir import finished_summary
from gigatok.train.sampling import ResumableBatchSampler, view_choice
from gigatok.train.steps import ar_steps_per_epoch, ar_total_steps
from gigatok.train.trained import read_run_config

__all__ = [
    "ARTrainResult",
    "OneViewPerImage",
    "train_ar",
    "validation_loss",
    "wsd_schedule",
]


@dataclass
class ARTrainResult:
    run_dir: Path
    steps: int
    finished: bool
    val_loss: float | None
    final_metrics: dict[str, float]


class _TrainingLoss(nn.Module):
    """``ARModel.loss`` as a module's forward: DistributedDataParallel only averages gradients of its forward."""

    def __init__(self, model: ARModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model.loss(tokens, labels)


class OneViewPerImage:
    """Each global batch of image indices as rows of the token cache, at one view of each image drawn uniformly by
    (seed, step): an epoch visits every image once, as LlamaGen's CustomDataset draws one of an image's ten-crop
    codes each time it is read. The global batch is drawn before it is split over ranks."""

    def __init__(self, batches: ResumableBatchSampler, cache: TokenCache, seed: int) -> None:
        self.batches, self.table, self.seed = batches, cache.view_table(), seed

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for step, images in enumerate(self.batches, start=self.batches.start_step):
            choice = view_choice(self.seed, step, len(images), self.table.shape[1])
            yield self.table[torch.tensor(images), choice].tolist()


def wsd_schedule(train: ARTrainConfig, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate factor of each step: a linear warm-up (``warmup_steps``, else ``warmup_epochs``), stable at
    the base LR, then over the last ``decay_fraction`` of the steps a decay down to ``min_lr``, of ``decay_shape``:
    linear 1 - p or sqrt 1 - sqrt(p) of its progress p (the authors' wsd_lr with decay_type="sqrt").

    ``decay_fraction`` 0 is a constant rate after the warm-up: the authors' AR probe, a 300-epoch WSD schedule that
    stops at 50 epochs, long before its decay starts at 240.
    """
    warm = train.warmup_steps if train.warmup_steps is not None else round(train.warmup_epochs * steps_per_epoch)
    warmup = min(total_steps, warm)
    decay_start = total_steps - round(train.decay_fraction * total_steps)
    floor = train.min_lr / train.lr
    shape = math.sqrt if train.decay_shape == "sqrt" else (lambda p: p)

    start = train.warmup_from

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup if start is None else start + (1 - start) * step / warmup
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start + 1) / max(1, total_steps - decay_start))
        return floor + (1 - floor) * (1 - shape(progress))

    return factor


@torch.no_grad()
def validation_loss(model: ARModel, cache: TokenCache, batch_size: int = 256) -> float:
    """Mean token cross-entropy, teacher-forced, over the whole cache (the paper's AR validation loss)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(cache), batch_size):
        tokens, labels = cache.batch(torch.arange(start, min(len(cache), start + batch_size)))
        tokens, labels = tokens.to(device), labels.to(device)
        logits = model(tokens, labels).float()
        total += nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="sum").item()
        count += tokens.numel()
    model.train(was_training)
    return total / count


def _tokenizer_hash(cfg: ARRunConfig, tokenizer_run_dir: Path) -> str:
    """The hash of the tokenizer run in ``tokenizer_run_dir``, refused unless it is the tokenizer ``cfg`` names."""
    tok_hash = read_run_config(tokenizer_run_dir).hash()
    if tok_hash != cfg.tokenizer.hash():
        raise ValueError(
            f"{tokenizer_run_dir}: holds tokenizer {tok_hash}, but this AR run needs {cfg.tokenizer.hash()}"
        )
    return tok_hash


def _token_caches(cfg: ARRunConfig, tokenizer_run_dir: Path, run: Run) -> tuple[TokenCache, TokenCache]:
    """The train and val token caches: rank 0 tokenizes the data and writes them; the other ranks then read them."""

    def token_cache(split: str) -> TokenCache:
        return build_token_cache(
            tokenizer_run_dir, split, views=cfg.train.views, device=run.device, progress=run.progress
        )

    return main_first(run.env, lambda: token_cache("train")), main_first(run.env, lambda: token_cache("val"))


def _schedule_steps(t: ARTrainConfig, train_cache: TokenCache) -> tuple[int, int]:
    """Steps per epoch, and in the whole schedule (at most ``max_steps``)."""
    # An epoch is every cached view, or (one_view_per_image) every image once at one of its views.
    steps_per_epoch = ar_steps_per_epoch(t, train_cache.num_images, len(train_cache))
    return steps_per_epoch, ar_total_steps(t, steps_per_epoch)


def _batch_sampler(
    t: ARTrainConfig, train_cache: TokenCache, start_step: int, end: int
) -> ResumableBatchSampler | OneViewPerImage:
    """The global batches of cache rows from ``start_step`` to ``end``, as the seed draws them."""
    if t.one_view_per_image:
        images = ResumableBatchSampler(train_cache.num_images, t.batch_size, t.seed, start_step, end)
        return OneViewPerImage(images, train_cache, t.seed)
    return ResumableBatchSampler(len(train_cache), t.batch_size, t.seed, start_step, end)


def _step_fn(
    cfg: ARRunConfig, run: Run, model: ARModel, opt: torch.optim.Optimizer, train_cache: TokenCache
) -> Callable[[list[int], int], dict[str, torch.Tensor]]:
    """The step train_steps runs: one update on a batch of cache rows, at the LR already set. The loss goes through
    DDP, whose constructor broadcasts rank 0's weights: built after the resume, so every rank starts from them. A
    sharded model is called as it is: its loss calls its forward, where FSDP gathers and reduces."""
    device, perf, grad_clip = run.device, cfg.performance, cfg.train.grad_clip
    loss_fn = model.loss if is_sharded(model) else wrap_ddp(_TrainingLoss(model), run.env)
    training_loss = maybe_compile(loss_fn, perf, device, "ar", sharded=is_sharded(model))

    def one_step(indices: list[int], at: int) -> dict[str, torch.Tensor]:
        tokens, labels = train_cache.batch(torch.tensor(indices))
        tokens, labels = tokens.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(perf, device):  # the loss itself is taken on fp32 logits (ARModel.loss)
            loss = training_loss(tokens, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_gradients(model.parameters(), grad_clip)
        opt.step()
        return {"train_loss": loss, "grad_norm": grad_norm}

    return one_step


def train_ar(
    cfg: ARRunConfig,
    run_dir: str | Path,
    tokenizer_run_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    stop_at_step: int | None = None,
    progress: bool = True,
    log_fn: LogFn | None = None,
) -> ARTrainResult:
    """Train (or resume) the AR model of ``cfg`` on the token cache of the finished tokenizer run."""
    tokenizer_run_dir = Path(tokenizer_run_dir)
    run = start_run(run_dir, device, progress)
    tok_hash = _tokenizer_hash(cfg, tokenizer_run_dir)
    if (summary := finished_summary(run.dir, cfg.hash())) is not None:  # already finished: nothing to redo
        return ARTrainResult(run.dir, summary["steps"], True, summary["val_loss"], summary["final_metrics"])

    # The token caches first, then config.json, each written by rank 0 before the other ranks read it.
    train_cache, val_cache = _token_caches(cfg, tokenizer_run_dir, run)
    t = cfg.train
    claim_run_dir(run, cfg.hash(), cfg.to_dict(), ar_run_config_from_dict, t.seed)

    steps_per_epoch, total_steps = _schedule_steps(t, train_cache)
    model = prepare_module(build_ar_model(cfg.model).to(run.device), cfg.performance)
    fsdp = ar_parallelism(cfg) == "fsdp"
    if fsdp:  # sharded before its optimizer is built over the shards
        shard_model(model, model.layers, run.env, run.device, autocast_dtype(cfg.performance, run.device))
    opt = build_ar_optimizer(model, t)
    schedule = wsd_schedule(t, total_steps, steps_per_epoch)
    saved: dict[str, Stateful] = {"model": model, "opt": opt}  # what a checkpoint holds of the run, in its order
    pairs = [Pair("model", model, "opt", opt)]

    resume(run, t.seed, lambda state: load_saved(saved, state, pairs))
    one_step = _step_fn(cfg, run, model, opt, train_cache)
    checkpoint = checkpointer(
        run, cfg.hash(), t.keep_checkpoints, lambda: saved_states(saved), sharded=pairs if fsdp else ()
    )

    cadence = Cadence.of(t, total_steps, stop_at_step)
    shards = RankShard(_batch_sampler(t, train_cache, run.step, cadence.end), t.batch_size, run.env)
    model.train()
    last = train_steps(
        run,
        shards,
        one_step,
        cadence,
        checkpoint,
        lr_at=lambda at: t.lr * schedule(at),
        optimizers=(opt,),
        desc=f"AR-{cfg.size}",
        postfix=lambda last: {"loss": f"{last['train_loss']:.3f}"},
        log_fn=log_fn,
    )

    if run.step < total_steps:
        return ARTrainResult(run.dir, run.step, False, None, last)
    val = validation_loss(model, val_cache)  # on every rank (identical weights), so every rank returns it
    save_final(
        run,
        "ar.pt",
        model,
        {
            "hash": cfg.hash(),
            "steps": run.step,
            "val_loss": val,
            "final_metrics": last,
            "tokenizer_hash": tok_hash,
        },
    )
    return ARTrainResult(run.dir, run.step, True, val, last)
