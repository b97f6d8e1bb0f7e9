"""Tokenizer training: a thin recipe of named steps, resumable from the newest checkpoint in the run directory.

Run directory layout::

    config.json         the resolved run config and its hash (a different config in the same folder is refused)
    metrics.jsonl       one JSON record per logged step (records after the resumed step are dropped on resume)
    checkpoints/        step-NNNNNNNN.pt: model, discriminator, optimizers, step, RNG state (the LR is a function
                        of the step)
    tokenizer.pt        final weights (written last, atomically)
    summary.json        final metrics, the perceptual term trained with (or why none) and the substitute networks
                        used, if any (its presence means finished)
    snapshots/epoch-E/  with ``train.snapshot_epochs``: the model as it was at epoch E, laid out as a finished
                        run directory (config.json, tokenizer.pt, summary.json) so anything that evaluates a
                        tokenizer run can evaluate it

Started as several processes (see gigatok.distributed), each rank trains on its shard of every global batch behind
DistributedDataParallel; rank 0 alone writes the run directory, logs metrics averaged over the ranks, and shows
progress. Checkpoints hold the unwrapped modules, so they resume with any number of processes.

With ``performance.parallelism`` fsdp (by default for XL-XXL), the generator is sharded instead (gigatok.fsdp) and
checkpoints are sharded (``step-NNNNNNNN.dcp/``, gigatok.train.sharded). The discriminator stays under DDP: a few
million parameters (PatchGAN) or a frozen backbone with a small head (DINO), whose sharding would save little memory
for an all-gather in each of its three passes a step; LPIPS and the semantic teacher are frozen, have no gradients
or optimizer states to shard, and run replicated. ``tokenizer.pt`` is the whole generator either way.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gigatok.config import TokenizerRunConfig, run_config_from_dict, tokenizer_parallelism
from gigatok.data import BuiltinImages, ImageFolderDataset, build_dataset
from gigatok.distributed import DistEnv, RankShard, main_first, wrap_ddp
from gigatok.fsdp import clip_gradients, full_state_dict, is_sharded, shard_model
from gigatok.io import atomic_write_bytes, atomic_write_json
from gigatok.losses import (
    adversarial_active,
    generator_loss,
    hinge_discriminator_loss,
    shortcut_active,
    shortcut_direct_active,
)
from gigatok.models.discriminator import DinoDiscriminator, PatchDiscriminator, build_discriminator
from gigatok.models.tokenizer import GigaTokenizer, build_tokenizer
from gigatok.perceptual import (
    FrozenImageDistance,
    build_perceptual_network,
    describe_perceptual,
    perceptual_active,
    perceptual_weight_file,
    resolve_perceptual,
)
from gigatok.performance import autocast, autocast_dtype, maybe_compile, prepare_images, prepare_module
from gigatok.semantic_encoders import build_semantic_encoder
from gigatok.semantic_targets import SemanticTargets
from gigatok.train.codebook_usage import CodebookUsageWindow, default_window
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
from gigatok.train.optimizer import build_optimizer
from gigatok.train.run_dir import finished_summary
from gigatok.train.sampling import IndexedDataset, KeyedBatches, ResumableBatchSampler, flip_mask
from gigatok.train.steps import tokenizer_total_steps
from gigatok.weights import resolve_weight

log = logging.getLogger(__name__)

__all__ = [
    "StepModules",
    "TrainResult",
    "train_tokenizer",
    "training_step",
]


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    finished: bool
    final_metrics: dict[str, float]
    substitutes: list[str] = field(default_factory=list)
    # The perceptual term the run trained with, or why it had none (gigatok.perceptual.describe_perceptual).
    perceptual: str = ""


def cosine_schedule(cfg: TokenizerRunConfig, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up from ``warmup_start_factor``, then cosine decay from lr to min_lr over the
    remaining steps (scheduler.py's cosine_schedule_with_warmup_v2)."""
    o = cfg.optim
    floor = o.min_lr / o.lr
    start = o.warmup_start_factor

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return start + (1 - start) * (step + 1) / o.warmup_steps
        span = max(1, total_steps - o.warmup_steps)
        progress = min(1.0, (step - o.warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def total_steps_for(cfg: TokenizerRunConfig, dataset_size: int) -> int:
    """The run's optimizer steps over a training split of ``dataset_size`` images (:mod:`gigatok.train.steps`)."""
    return tokenizer_total_steps(cfg.train, dataset_size)


@dataclass
class StepModules:
    """What one training step runs and updates. The passes go through ``net`` and ``disc_net`` (DDP-wrapped and/or
    compiled forms); ``model`` and ``disc`` are the bare modules whose gradients are clipped and that are saved."""

    model: GigaTokenizer
    disc: PatchDiscriminator | DinoDiscriminator
    perceptual: nn.Module | None  # None when the objective has no perceptual term
    semantic: SemanticTargets | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    net: Callable[..., Any]
    disc_net: Callable[..., Any]
    usage: CodebookUsageWindow | None = None  # the latest code indices, for the logged codebook usage


def training_step(
    cfg: TokenizerRunConfig, m: StepModules, images: torch.Tensor, indices: torch.Tensor, step: int
) -> dict[str, torch.Tensor]:
    """One generator update and, once the GAN is on, one discriminator update, at the LR already set.

    Returns the loss terms and the codebook statistics, as tensors (reading them would synchronise a GPU).
    """
    perf = cfg.performance
    images = prepare_images(images, perf)
    gan_on = adversarial_active(cfg, step)
    shortcut = shortcut_active(cfg, step)
    with autocast(perf, images.device):  # forward and losses only: backward follows the forward's dtypes
        target = m.semantic(images, indices) if m.semantic is not None else None
        out = m.net(images)
        # The shortcut's direct decoding (vq_vit_model.py: dir_dec = self.decoder(spatial)), through the bare CNN
        # decoder: its gradients join the forward's in the same backward, so DDP still reduces each weight once.
        direct = m.model.cnn_decoder(out.cnn_features) if shortcut_direct_active(cfg, step) else None
        # The unwrapped discriminator: this pass only carries gradients to the generator (its own are discarded).
        fake_logits = m.disc(out.reconstruction) if gan_on else None
        direct_logits = m.disc(direct) if gan_on and direct is not None else None
        terms = generator_loss(
            cfg,
            images,
            out,
            m.perceptual,
            target,
            fake_logits,
            shortcut=shortcut,
            direct=direct,
            direct_fake_logits=direct_logits,
        )
    m.opt_g.zero_grad(set_to_none=True)
    terms["total_loss"].backward()
    grad_norm = clip_gradients(m.model.parameters(), cfg.optim.grad_clip)  # over the shards when sharded
    m.opt_g.step()

    if gan_on:
        with autocast(perf, images.device):
            real_logits = m.disc_net(images)
            d_loss = hinge_discriminator_loss(real_logits, m.disc_net(out.reconstruction.detach()))
            if direct is not None:  # vq_loss.py's d_d_adversarial_loss: the direct decoding is a fake as well
                d_loss = d_loss + hinge_discriminator_loss(real_logits, m.disc_net(direct.detach()))
            d_loss = cfg.loss.disc_loss_weight * d_loss
        m.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        nn.utils.clip_grad_norm_(m.disc.parameters(), cfg.optim.grad_clip)
        m.opt_d.step()
        terms["discriminator_loss"] = d_loss.detach()

    if m.usage is not None:
        m.usage.add(out.quant.indices)
    # This rank's batch alone (at most its tokens / codebook size); ``codebook_usage`` is logged from ``m.usage``.
    terms.update(codebook_usage_batch=out.quant.usage, codebook_perplexity=out.quant.perplexity, grad_norm=grad_norm)
    return terms


def _semantic_targets(
    cfg: TokenizerRunConfig,
    dataset: Any,
    device: torch.device,
    weights_dir: str | None,
    allow_substitutes: bool,
    progress: bool,
    env: DistEnv,
) -> tuple[SemanticTargets | None, list[str]]:
    sem = cfg.tokenizer.semantic
    if not sem.enabled:
        return None, []
    encoder = build_semantic_encoder(sem.encoder, sem.encoder_resolution, weights_dir, allow_substitutes).to(device)
    targets = SemanticTargets(encoder, cfg.tokenizer.grid_size, device)
    if sem.cache_features:
        key = {
            "encoder": encoder.network_name,
            "resolution": sem.encoder_resolution,
            "grid": cfg.tokenizer.grid_size,
            "image_size": cfg.tokenizer.image_size,
            "data": {k: v for k, v in cfg.to_dict()["data"].items() if k != "num_workers"},
            "seed": cfg.train.seed,
            "split": "train",
            "n": len(dataset),
        }
        # Rank 0 computes and saves the features; the others then load them from disk.
        main_first(env, lambda: targets.fill_cache(dataset, key, progress))
    return targets, [encoder.network_name] if encoder.substitute else []


@dataclass(frozen=True)
class _Built:
    """What a tokenizer run builds before it resumes: the networks, their optimizers and the codebook-usage window,
    with the substitutes and the perceptual term the run reports."""

    model: GigaTokenizer
    disc: PatchDiscriminator | DinoDiscriminator
    perceptual: FrozenImageDistance | None  # None when the objective has no perceptual term
    semantic: SemanticTargets | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    usage: CodebookUsageWindow
    substitutes: list[str]  # stand-ins for missing pretrained networks: every metric logged is marked with them
    perceptual_note: str

    def saved(self) -> dict[str, Stateful]:
        """What a checkpoint holds of the run, by key, in the order its entries are written."""
        return {"model": self.model, "discriminator": self.disc, "opt_g": self.opt_g, "opt_d": self.opt_d}

    def pairs(self) -> list[Pair]:
        """The same, each module with its optimizer, as a sharded checkpoint holds them."""
        return [Pair("model", self.model, "opt_g", self.opt_g), Pair("discriminator", self.disc, "opt_d", self.opt_d)]

    def load(self, state: dict[str, Any], env: DistEnv) -> None:
        """A checkpoint's entries into the modules and optimizers, and this rank's codebook-usage window."""
        load_saved(self.saved(), state, self.pairs())
        if windows := state.get("usage_window"):  # one state per rank; another world size starts from rank 0's
            self.usage.load(windows[env.rank] if len(windows) == env.world_size else windows[0])


def _finished_result(run_dir: Path, cfg: TokenizerRunConfig, perceptual_note: str) -> TrainResult | None:
    """The result of a run that already finished (its summary.json is there), or None."""
    if (summary := finished_summary(run_dir, cfg.hash())) is None:
        return None
    return TrainResult(
        run_dir,
        summary["steps"],
        True,
        summary["final_metrics"],
        summary["substitutes"],
        summary.get("perceptual", perceptual_note),
    )


def _open_data(
    cfg: TokenizerRunConfig, weights_dir: str | None, allow_substitutes: bool
) -> BuiltinImages | ImageFolderDataset:
    """The training set, opened before the run directory is touched: bad input leaves nothing behind."""
    dataset = build_dataset(cfg.data, "train", cfg.tokenizer.image_size, seed=cfg.train.seed, augment=True)
    if perceptual_active(cfg) and not allow_substitutes:
        # A missing or wrong VGG16 (or Inception) file fails here too, before any model is built or anything is
        # written (the network itself is built in _build, where it always was: its random init draws from the
        # seeded generator).
        resolve_weight(perceptual_weight_file(cfg), weights_dir)
    return dataset


def _build(
    cfg: TokenizerRunConfig,
    run: Run,
    dataset: Dataset[Any],
    weights_dir: str | None,
    allow_substitutes: bool,
    perceptual_note: str,
) -> _Built:
    """The networks, optimizers and usage window of the run. Each random init draws from the generator
    claim_run_dir seeded, so the order they are built in is part of the run's numbers."""
    device, env = run.device, run.env
    perf = cfg.performance  # kernels, memory format, autocast, compile: set before the optimizers see the weights
    model: GigaTokenizer = prepare_module(build_tokenizer(cfg.tokenizer).to(device), perf)
    disc = build_discriminator(
        cfg.loss.discriminator,
        channels=cfg.loss.disc_channels,
        layers=cfg.loss.disc_layers,
        weights_dir=weights_dir,
        allow_substitute=allow_substitutes,
    )
    disc = prepare_module(disc.to(device), perf)
    perceptual = None
    if perceptual_active(cfg):
        perceptual = prepare_module(build_perceptual_network(cfg, weights_dir, allow_substitutes).to(device), perf)
        if perceptual.substitute:
            perceptual_note = f"{perceptual.network_name} (weight {cfg.loss.perceptual_weight:g})"
    if run.main:  # in the job log, as the run's params and summary say it
        log.info(f"tokenizer {run.dir.name}: perceptual: {perceptual_note}")
    substitutes = [perceptual.network_name] if perceptual is not None and perceptual.substitute else []
    substitutes += [cast(str, disc.network_name)] if getattr(disc, "substitute", False) else []
    semantic, sem_subs = _semantic_targets(cfg, dataset, device, weights_dir, allow_substitutes, run.progress, env)
    substitutes += sem_subs

    if tokenizer_parallelism(cfg) == "fsdp":  # sharded before its optimizer is built over the shards
        blocks = [*model.encoder.stack.blocks, *model.decoder.stack.blocks]
        shard_model(model, blocks, env, device, autocast_dtype(perf, device), fp32_units=[model.quantizer])
    opt_g = build_optimizer(cfg, model.parameters())
    opt_d = build_optimizer(cfg, [p for p in disc.parameters() if p.requires_grad])  # not a frozen backbone
    usage = CodebookUsageWindow(
        cfg.tokenizer.quantizer.codebook_size,
        default_window(cfg.tokenizer.quantizer.codebook_size, cfg.train.usage_window),
        env,
    )
    return _Built(model, disc, perceptual, semantic, opt_g, opt_d, usage, substitutes, perceptual_note)


def _step_modules(built: _Built, cfg: TokenizerRunConfig, env: DistEnv, device: torch.device) -> StepModules:
    """The modules a step runs, its passes behind DDP (which averages the gradients in backward). DDP's constructor
    broadcasts rank 0's weights, so this comes after the resume: every rank starts from the checkpoint's."""
    perf = cfg.performance
    sharded = is_sharded(built.model)
    generator = built.model if sharded else wrap_ddp(built.model, env)
    net = maybe_compile(generator, perf, device, "tokenizer", sharded)
    disc_net = maybe_compile(wrap_ddp(built.disc, env), perf, device, "tokenizer")
    return StepModules(
        built.model, built.disc, built.perceptual, built.semantic, built.opt_g, built.opt_d, net, disc_net, built.usage
    )


def _train_loader(
    cfg: TokenizerRunConfig, dataset: BuiltinImages | ImageFolderDataset, run: Run, cadence: Cadence
) -> DataLoader[Any]:
    """This rank's share of the global batches from the resumed step to ``cadence.end``, as the seed draws them."""
    sampler = ResumableBatchSampler(len(dataset), cfg.train.batch_size, cfg.train.seed, run.step, cadence.end)
    # Random training crops are drawn from (seed, step, index); centre-cropped data reads plain indices as before.
    batches = KeyedBatches(sampler) if cfg.data.train_crop != "center" else sampler
    shards = RankShard(batches, cfg.train.batch_size, run.env)
    return DataLoader(
        IndexedDataset(dataset),
        batch_sampler=shards,
        num_workers=cfg.data.num_workers,
        pin_memory=run.device.type == "cuda",
        persistent_workers=False,
    )


def _step_fn(
    cfg: TokenizerRunConfig, modules: StepModules, run: Run
) -> Callable[[tuple[torch.Tensor, torch.Tensor, torch.Tensor], int], dict[str, torch.Tensor]]:
    """The step train_steps runs: the batch onto the device, flipped as (seed, step) draws it, then
    :func:`training_step` (looked up when called, so a test can replace it)."""
    device, env = run.device, run.env

    def one_step(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], at: int) -> dict[str, torch.Tensor]:
        images, _labels, indices = batch
        images = images.to(device, non_blocking=True)
        if cfg.data.hflip:
            flip = flip_mask(cfg.train.seed, at, cfg.train.batch_size)[env.rank :: env.world_size].to(device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return training_step(cfg, modules, images, indices, at)

    return one_step


def _postfix(last: dict[str, float]) -> dict[str, str]:
    """The progress bar's view of a log record."""
    shown = {
        "loss": last["total_loss"],
        "pix": last["pixel_loss"],
        "perc": last.get("perceptual_loss"),
        "usage": last["codebook_usage"],
    }
    return {k: f"{v:.4g}" for k, v in shown.items() if v is not None}


def _finish(run: Run, cfg: TokenizerRunConfig, built: _Built, last: dict[str, float], total_steps: int) -> TrainResult:
    """The result of this call; at the end of the schedule, the final weights and summary.json are written first."""
    finished = run.step >= total_steps
    if finished:
        save_final(
            run,
            "tokenizer.pt",
            built.model,
            {
                "hash": cfg.hash(),
                "steps": run.step,
                "final_metrics": last,
                "substitutes": built.substitutes,
                "discriminator": getattr(built.disc, "network_name", "patchgan"),
                "perceptual": built.perceptual_note,
            },
        )
    return TrainResult(run.dir, run.step, finished, last, built.substitutes, built.perceptual_note)


def train_tokenizer(
    cfg: TokenizerRunConfig,
    run_dir: str | Path,
    *,
    weights_dir: str | None = None,
    allow_substitutes: bool = False,
    device: str | torch.device | None = None,
    stop_at_step: int | None = None,
    progress: bool = True,
    log_fn: LogFn | None = None,
) -> TrainResult:
    """Train (or resume training) the tokenizer of ``cfg`` in ``run_dir``.

    ``stop_at_step`` ends the process early with a checkpoint at that step, as a preemption would; calling again
    resumes. ``allow_substitutes`` lets randomly initialised stand-ins replace missing pretrained networks; every
    metric logged is then marked with the substitutes used.

    A ``loss.perceptual`` of "auto" is settled here (:func:`~gigatok.perceptual.resolve_perceptual`): the run
    directory's config.json and hash are those of the settled config, so name the directory after
    ``resolve_perceptual(cfg, weights_dir).hash()``, as ``studies/run.py`` does.
    """
    cfg = resolve_perceptual(cfg, weights_dir)
    run = start_run(run_dir, device, progress)
    perceptual_note = describe_perceptual(cfg, weights_dir)
    if (done := _finished_result(run.dir, cfg, perceptual_note)) is not None:  # already finished: nothing to redo
        return done
    dataset = _open_data(cfg, weights_dir, allow_substitutes)
    claim_run_dir(run, cfg.hash(), cfg.to_dict(), run_config_from_dict, cfg.train.seed)

    total_steps = total_steps_for(cfg, len(dataset))
    built = _build(cfg, run, dataset, weights_dir, allow_substitutes, perceptual_note)
    schedule = cosine_schedule(cfg, total_steps)  # the LR is a function of the step alone: nothing to save
    resume(run, cfg.train.seed, lambda state: built.load(state, run.env))
    modules = _step_modules(built, cfg, run.env, run.device)
    checkpoint = checkpointer(
        run,
        cfg.hash(),
        cfg.train.keep_checkpoints,
        lambda: saved_states(built.saved()),
        lambda: {"usage_window": built.usage.rank_states()},
        built.pairs() if tokenizer_parallelism(cfg) == "fsdp" else (),
    )

    snapshots = snapshot_steps(cfg, total_steps)
    cadence = Cadence.of(cfg.train, total_steps, stop_at_step)
    loader = _train_loader(cfg, dataset, run, cadence)
    built.model.train()
    built.disc.train()
    substitutes = built.substitutes
    last = train_steps(
        run,
        loader,
        _step_fn(cfg, modules, run),
        cadence,
        checkpoint,
        lr_at=lambda at: cfg.optim.lr * schedule(at),
        optimizers=(built.opt_g, built.opt_d),
        desc=f"tokenizer {cfg.tokenizer.name}",
        postfix=_postfix,
        log_fn=log_fn,
        # Usage as the authors log it (codebook_show_usage): the share of codes among the latest indices.
        logged=lambda: {"codebook_usage": built.usage.usage()},
        record={"substitutes": substitutes} if substitutes else None,
        snapshot_steps=snapshots,
        snapshot=lambda at, metrics: save_snapshot(
            run.dir, snapshots[at], at, full_state_dict(built.model, run.main), metrics, substitutes, run.main
        ),
    )
    return _finish(run, cfg, built, last, total_steps)


def snapshot_steps(cfg: TokenizerRunConfig, total_steps: int) -> dict[int, float]:
    """Step -> epoch of each snapshot: epoch E of an ``epochs``-long schedule is step round(E / epochs * total),
    so a schedule shortened by ``max_steps`` keeps its snapshots at the same fractions of training."""
    return {max(1, round(e / cfg.train.epochs * total_steps)): e for e in cfg.train.snapshot_epochs}


def snapshot_dir(run_dir: str | Path, epoch: float) -> Path:
    return Path(run_dir) / "snapshots" / f"epoch-{epoch:g}"


def save_snapshot(
    run_dir: Path,
    epoch: float,
    step: int,
    weights: Mapping[str, Any],
    last: dict[str, float],
    substitutes: list[str],
    main: bool = True,
) -> Path:
    """The model's ``weights`` at ``step`` as a finished run directory of its own, written by the main rank;
    summary.json is written last."""
    folder = snapshot_dir(run_dir, epoch)
    if not main:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = (run_dir / "config.json").read_bytes()
    atomic_write_bytes(folder / "config.json", lambda f: f.write(config))
    atomic_write_bytes(folder / "tokenizer.pt", lambda f: torch.save(weights, f))
    atomic_write_json(
        folder / "summary.json",
        {
            "hash": json.loads(config)["hash"],
            "steps": step,
            "snapshot_epoch": epoch,
            "final_metrics": last,
            "substitutes": substitutes,
        },
    )
    return folder
