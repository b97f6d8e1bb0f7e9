"""How long a training step takes on this machine, measured by running it: what ``studies/run.py --dry-run --estimate
--here`` prices a plan at where the GPU calibration does not apply (a CPU machine, a tiny profile, a GPU type with
no measurements).

The step is the training loop's own: :func:`gigatok.train.tokenizer_loop.training_step` for a tokenizer (semantic
target, forward, perceptual term, losses, backward, clipping, AdamW, and the discriminator's update once the GAN is
on), and the AR loop's loss, backward, clipping and AdamW. It runs on random images or tokens of the run's shapes (a
step's cost does not depend on the values), with the run's performance switches, on the device and with the
threads a local worker has. A network whose weights are not on the machine is timed as its random-initialised
stand-in, which costs what it does; nothing is downloaded or written.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gigatok.config import ARRunConfig, TokenizerRunConfig

if TYPE_CHECKING:
    from gigatok.train.tokenizer_loop import StepModules


@dataclass(frozen=True)
class StepTime:
    """One kind of training step, timed: its median wall seconds and its analytic FLOPs (:mod:`gigatok.flops`)."""

    seconds: float
    flops: float

    @property
    def gflops_per_s(self) -> float:
        return self.flops / self.seconds / 1e9


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones (allocations, first-call
    set-up); ``fn`` waits for the device itself."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: time at least one call")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(statistics.median(times))


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` (a local worker's) for the block, then restored."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _tokenizer_modules(cfg: TokenizerRunConfig, images: torch.Tensor, weights_dir: str | None) -> StepModules:
    """The modules :func:`~gigatok.train.tokenizer_loop.training_step` runs, built as the loop builds them, stand-ins
    for missing weights allowed; a cached semantic target looked up from features of ``images``."""
    from gigatok.models.discriminator import build_discriminator
    from gigatok.models.tokenizer import build_tokenizer
    from gigatok.perceptual import build_perceptual_network, perceptual_active
    from gigatok.performance import maybe_compile, prepare_module
    from gigatok.semantic_encoders import build_semantic_encoder
    from gigatok.semantic_targets import SemanticTargets
    from gigatok.train.optimizer import build_optimizer
    from gigatok.train.tokenizer_loop import StepModules

    perf, device, loss = cfg.performance, images.device, cfg.loss
    torch.manual_seed(0)
    model = prepare_module(build_tokenizer(cfg.tokenizer).to(device), perf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a stand-in's warning: it is timed, never trained or reported
        disc = build_discriminator(
            loss.discriminator,
            channels=loss.disc_channels,
            layers=loss.disc_layers,
            weights_dir=weights_dir,
            allow_substitute=True,
        )
        disc = prepare_module(disc.to(device), perf)
        perceptual = None
        if perceptual_active(cfg):
            perceptual = prepare_module(build_perceptual_network(cfg, weights_dir, True).to(device), perf)
        semantic = None
        if (sem := cfg.tokenizer.semantic).enabled:
            encoder = build_semantic_encoder(sem.encoder, sem.encoder_resolution, weights_dir, True).to(device)
            semantic = SemanticTargets(encoder, cfg.tokenizer.grid_size, device)
            if sem.cache_features:  # the loop looks the batch's features up: computing them is not the step's
                semantic.cache = semantic.compute(images).cpu()
    opt_g = build_optimizer(cfg, model.parameters())
    opt_d = build_optimizer(cfg, [p for p in disc.parameters() if p.requires_grad])
    net, disc_net = maybe_compile(model, perf, device, "tokenizer"), maybe_compile(disc, perf, device, "tokenizer")
    return StepModules(model, disc, perceptual, semantic, opt_g, opt_d, net, disc_net)


def time_tokenizer_steps(
    cfg: TokenizerRunConfig,
    steps: Sequence[int],
    device: torch.device,
    weights_dir: str | None,
    repeats: int,
    warmup: int,
) -> list[StepTime]:
    """The training step of ``cfg`` (``loss.perceptual`` settled) timed at each of ``steps`` (0-based: the step
    picks the phase, shortcut or not, GAN or not), on one global batch, on ``device``."""
    from gigatok.flops import tokenizer_step_flops
    from gigatok.train.tokenizer_loop import training_step

    size, batch = cfg.tokenizer.image_size, cfg.train.batch_size
    images = (torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    indices = torch.arange(batch)
    modules = _tokenizer_modules(cfg, images, weights_dir)
    out = []
    for step in steps:

        def call(step: int = step) -> None:
            terms = training_step(cfg, modules, images, indices, step)
            float(terms["total_loss"].detach())  # waits for the device

        out.append(StepTime(median_seconds(call, repeats, warmup), tokenizer_step_flops(cfg, step)["total"]))
    return out


def time_ar_step(cfg: ARRunConfig, device: torch.device, repeats: int, warmup: int) -> StepTime:
    """One AR training step of ``cfg`` (teacher-forced loss, backward, clipping, AdamW) on a global batch of random
    tokens and class labels, on ``device``."""
    from gigatok.flops import ar_step_flops
    from gigatok.fsdp import clip_gradients
    from gigatok.models.ar import build_ar_model
    from gigatok.performance import autocast, maybe_compile, prepare_module
    from gigatok.train.optimizer import build_ar_optimizer

    perf, model_cfg, batch = cfg.performance, cfg.model, cfg.train.batch_size
    torch.manual_seed(0)
    model = prepare_module(build_ar_model(model_cfg).to(device), perf)
    opt = build_ar_optimizer(model, cfg.train)
    loss_fn = maybe_compile(model.loss, perf, device, "ar")
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(model_cfg.vocab_size, (batch, model_cfg.num_tokens), generator=generator).to(device)
    labels = torch.randint(model_cfg.num_classes, (batch,), generator=generator).to(device)

    def call() -> None:
        with autocast(perf, device):
            loss = loss_fn(tokens, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model.parameters(), cfg.train.grad_clip)
        opt.step()
        float(loss.detach())

    return StepTime(median_seconds(call, repeats, warmup), ar_step_flops(cfg))


def time_tokenizer_passes(
    cfg: TokenizerRunConfig, batch: int, device: torch.device, repeats: int, warmup: int
) -> tuple[float, float]:
    """Seconds an image of a trained tokenizer's two inference passes, ``batch`` images a call (the evaluations'
    batch): images to token indices (the token cache, the probes' encoder features, half of a reconstruction) and
    indices to images (the other half, and each generated sample)."""
    from gigatok.models.tokenizer import build_tokenizer
    from gigatok.performance import prepare_module

    torch.manual_seed(0)
    model = prepare_module(build_tokenizer(cfg.tokenizer).to(device), cfg.performance).eval()
    size = cfg.tokenizer.image_size
    images = (torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    with torch.inference_mode():
        indices = model.tokenize(images)
        # .cpu() waits for the device, as the stages' own copies of tokens and images off it do
        encode = median_seconds(lambda: model.tokenize(images).cpu(), repeats, warmup)
        decode = median_seconds(lambda: model.decode_indices(indices).cpu(), repeats, warmup)
    return encode / batch, decode / batch


def time_inception_image(
    input_size: int, image_size: int, device: torch.device, weights_dir: str | None, repeats: int, warmup: int
) -> float:
    """Seconds an image of the Inception feature network the evaluations score with (FID, precision/recall), at
    ``input_size``, on a batch of ``image_size`` images. Raises MissingWeightsError where its file is not here."""
    from gigatok.metrics.features import load_feature_network

    network = load_feature_network("auto", weights_dir, device, input_size)
    batch = 8  # small enough to time quickly on a CPU (0.36 s an image at 299 px on one thread), past the per-call cost
    images = (torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)) * 255).to(
        torch.uint8
    )
    return median_seconds(lambda: network(images), repeats, warmup) / batch
