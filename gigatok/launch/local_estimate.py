"""What a plan will cost on this machine, from its own steps timed here (``--dry-run --estimate --here``): the
forecast for the local executor, where :mod:`gigatok.launch.estimate`'s GPU calibration does not apply (a CPU
machine, the tiny profiles; machines of one kind differ by 2.4x and more, so a fixed table would be wrong).

Each distinct training step of the plan (a tokenizer at each phase of its schedule, an AR model) is run and timed
once (:mod:`gigatok.step_timing`) with the threads a local worker gets; replicas that differ only by their seed share
the timing. A stage's seconds are its steps times the timed step, phase by phase. Evaluation is priced by what
dominates it on a CPU, the Inception network FID and precision/recall read: the images each run scores
(reconstructions, samples, and each reference set once a plan, as it is cached) times an image timed here. A stage
costs nothing for the same reasons as in the GPU estimate (done, finished, released, shared:
:data:`gigatok.launch.estimate.FREE`). The local workers' wall time follows the launch's own dealing of the runs onto
the workers (:func:`gigatok.dispatch.spread`): the busiest worker's sum.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gigatok.config import ARRunConfig, DataConfig, TokenizerRunConfig
from gigatok.launch.common import UsageError
from gigatok.launch.estimate import FREE, free_because
from gigatok.runs.spec import RunContext, RunSpec

if TYPE_CHECKING:
    import torch

    from gigatok.step_timing import StepTime

# A step above this many FLOPs is not timed on a CPU: at the 8-20 GFLOP/s a CPU core reaches on these models, one
# such step takes minutes (a paper-profile tokenizer step is ~1e14). Such a plan is priced with --gpu instead.
CPU_STEP_FLOPS_LIMIT = 2e11
WARMUP, REPEATS = 1, 3  # untimed calls of each step first, then the median of the timed ones
INCEPTION = "Inception features"
# Why a stage costs nothing here: the GPU estimate's reasons, and one of this forecast's own.
FREE_HERE = {**FREE, "no-weights": "the Inception weights are not on this machine, so its scoring is not timed"}
IMAGENET_VAL_IMAGES = 50_000  # a split of None: the whole ImageNet val split (eval.recon_images, reference_images)
IMAGENET_TRAIN_IMAGES = 1_281_167  # the token cache's and the probes' training split on an image folder
TOKENIZE, DECODE = "images to tokens", "tokens to images"  # the tokenizer's two inference passes
LEFT_OUT_HERE = (
    "not timed: the rest of evaluation (AR sampling, the AR probe, the probes' classifier fits, LPIPS, PSNR/SSIM, "
    "a CFG search), the semantic-feature cache, start-up, and two workers slowing each other down on shared cores"
)


@dataclass(frozen=True)
class Phase:
    """Steps ``start`` to ``end`` (0-based, end excluded) of a stage, all costing one timed step; in the evaluation,
    ``end`` images of one timed pass, ``what`` naming the pass."""

    start: int
    end: int
    step: StepTime
    what: str = ""

    @property
    def seconds(self) -> float:
        return (self.end - self.start) * self.step.seconds


@dataclass(frozen=True)
class TimedStage:
    """A training stage of one run: its steps, their timed phases, and what this run pays for it."""

    stage: str  # "tokenizer", "ar" or "evaluation"
    label: str  # what is timed, as the output names it: "tokenizer S-S 2d", "AR-B", "Inception features"
    steps: int  # optimizer steps; for evaluation, the images scored
    phases: tuple[Phase, ...]  # empty when not paid
    why: str = ""  # why it costs nothing, a key of FREE_HERE; "" when this run pays for it
    paid_by: str | None = None

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.label,
            "steps": self.steps,
            "seconds": self.seconds,
            "free": self.why or None,
            "free_because": FREE_HERE[self.why] if self.why else None,
            "paid_by": self.paid_by,
            "phases": [
                {
                    "start": p.start,
                    "end": p.end,
                    "step_seconds": p.step.seconds,
                    "step_flops": p.step.flops,
                    **({"pass": p.what} if p.what else {}),
                }
                for p in self.phases
            ],
        }


@dataclass(frozen=True)
class TimedRun:
    hash: str
    factors: dict[str, Any]
    stages: dict[str, TimedStage]

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages.values())


@dataclass(frozen=True)
class LocalEstimate:
    device: str  # "cpu" or "cuda"
    workers: int
    threads: int
    runs: list[TimedRun]
    worker_seconds: list[float]  # each local worker's share, as the launch deals the runs
    repeats: int = REPEATS
    warmup: int = WARMUP

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs)

    @property
    def wall_seconds(self) -> float:
        return max(self.worker_seconds, default=0.0)

    def free_reasons(self) -> list[str]:
        seen = {s.why for r in self.runs for s in r.stages.values()}
        return [why for why in FREE_HERE if why in seen]

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "workers": self.workers,
            "threads_per_worker": self.threads,
            "timed_steps": {"repeats": self.repeats, "warmup": self.warmup},
            "runs": [
                {
                    "hash": r.hash,
                    "factors": r.factors,
                    "seconds": r.seconds,
                    "stages": {k: s.to_dict() for k, s in r.stages.items()},
                }
                for r in self.runs
            ],
            "total": {
                "seconds": self.seconds,
                "worker_seconds": self.worker_seconds,
                "wall_seconds": self.wall_seconds,
            },
            "left_out": LEFT_OUT_HERE,
        }


class _Timer:
    """Times each distinct step once (seedless configs as keys) and remembers which stage folders are paid."""

    def __init__(self, ctx: RunContext, device: torch.device, repeats: int, warmup: int) -> None:
        self.ctx, self.device, self.repeats, self.warmup = ctx, device, repeats, warmup
        self.tokenizer_steps: dict[tuple[TokenizerRunConfig, int], StepTime] = {}
        self.ar_steps: dict[tuple[Any, ...], StepTime] = {}
        self.paid_by: dict[str, str] = {}
        self.inception_images: dict[tuple[int, int], StepTime | None] = {}
        self.passes: dict[tuple[Any, ...], tuple[StepTime, StepTime]] = {}
        self.references: set[tuple[Any, ...]] = set()
        self.results: set[str] = set()  # evaluation results already priced: runs sharing a tokenizer share them

    def _check_size(self, label: str, flops: float) -> None:
        if self.device.type == "cpu" and flops > CPU_STEP_FLOPS_LIMIT:
            raise UsageError(
                f"--here: a {label} step is {flops:.2e} FLOPs, minutes a step on a CPU: price this plan with "
                "--gpu instead (or run --here on the machine with the GPU)"
            )

    @contextmanager
    def _fits(self, label: str, batch: int) -> Iterator[None]:
        """A step that does not fit in the GPU's memory as a one-line error, as the run itself would fail."""
        import torch

        try:
            yield
        except torch.OutOfMemoryError:
            raise UsageError(
                f"--here: a {label} step of batch {batch} does not fit in this {self.device.type} device's memory "
                "(a local run would fail the same way)"
            ) from None

    def tokenizer(self, cfg: TokenizerRunConfig, label: str) -> tuple[int, tuple[Phase, ...]]:
        from gigatok.dispatch import seedless_tokenizer
        from gigatok.flops import tokenizer_phases, tokenizer_step_flops
        from gigatok.step_timing import time_tokenizer_steps

        key, ranges = seedless_tokenizer(cfg), tokenizer_phases(cfg)
        missing = [start for start, _ in ranges if (key, start) not in self.tokenizer_steps]
        for start in missing:
            self._check_size(label, tokenizer_step_flops(key, start)["total"])
        if missing:
            with self._fits(label, cfg.train.batch_size):
                timed = time_tokenizer_steps(key, missing, self.device, self.ctx.weights_dir, self.repeats, self.warmup)
            self.tokenizer_steps.update({(key, s): t for s, t in zip(missing, timed, strict=True)})
        phases = tuple(Phase(start, end, self.tokenizer_steps[(key, start)]) for start, end in ranges)
        return (ranges[-1][1] if ranges else 0), phases

    def ar(self, cfg: ARRunConfig, label: str) -> tuple[int, tuple[Phase, ...]]:
        from gigatok.flops import ar_step_flops, ar_training_steps
        from gigatok.step_timing import time_ar_step

        # The step is the model's on a batch of tokens: the tokenizer behind them, the seed and the schedule do not
        # change what it computes.
        key, steps = (cfg.model, cfg.train.batch_size, cfg.performance), ar_training_steps(cfg)
        if key not in self.ar_steps:
            self._check_size(label, ar_step_flops(cfg))
            with self._fits(label, cfg.train.batch_size):
                self.ar_steps[key] = time_ar_step(cfg, self.device, self.repeats, self.warmup)
        return steps, ((Phase(0, steps, self.ar_steps[key]),) if steps else ())

    def inception(self, spec: RunSpec) -> StepTime | None:
        """Seconds an image of the evaluations' Inception network (None where its weights are not here)."""
        from gigatok.step_timing import StepTime, time_inception_image
        from gigatok.weights import MissingWeightsError

        key = (spec.eval.inception_input, spec.tokenizer.tokenizer.image_size)
        if key not in self.inception_images:
            try:
                seconds = time_inception_image(*key, self.device, self.ctx.weights_dir, self.repeats, self.warmup)
                self.inception_images[key] = StepTime(seconds, 0.0)
            except MissingWeightsError:
                self.inception_images[key] = None
        return self.inception_images[key]

    def tokenizer_passes(self, spec: RunSpec) -> tuple[StepTime, StepTime]:
        """Seconds an image of the tokenizer's encoding and decoding passes, timed once a tokenizer architecture."""
        from gigatok.step_timing import StepTime, time_tokenizer_passes

        tok, batch = spec.tokenizer, spec.eval.batch_size
        key = (tok.tokenizer, tok.performance, batch)
        if key not in self.passes:
            with self._fits(f"tokenizer {tok.tokenizer.name} pass", batch):
                encode, decode = time_tokenizer_passes(tok, batch, self.device, self.repeats, self.warmup)
            self.passes[key] = (StepTime(encode, 0.0), StepTime(decode, 0.0))
        return self.passes[key]

    def evaluation(self, spec: RunSpec, todo: list[str], finished: bool) -> TimedStage:
        """The images the run's Inception network scores (reconstructions, generated samples, and each reference
        set the first time the plan meets it, as it is cached for the later runs) and those its tokenizer encodes
        and decodes (token cache, reconstructions, probe features, samples). A result two runs share (same
        tokenizer) is priced once, for the first."""
        from gigatok.runs.stages import stage_result_path

        fresh = []
        for stage in todo:
            path = str(stage_result_path(spec, self.ctx, stage))
            if path not in self.results:
                self.results.add(path)
                fresh.append(stage)
        images = self._inception_images(spec, fresh)
        encoded, decoded = _tokenizer_pass_images(spec, fresh)
        if not images and not encoded and not decoded:
            scored = {"reconstruction", "generation"} & set(spec.stages)
            return TimedStage("evaluation", INCEPTION, 0, (), "finished" if finished else "done" if scored else "-")
        step = self.inception(spec) if images else None
        if images and step is None:  # the run cannot score its images here either
            return TimedStage("evaluation", INCEPTION, images, (), "no-weights")
        encode, decode = self.tokenizer_passes(spec)
        who = _label(spec, "tokenizer")
        passes = tuple(
            Phase(0, n, pass_time, f"{who}, {what}")
            for n, pass_time, what in ((encoded, encode, TOKENIZE), (decoded, decode, DECODE))
            if n
        )
        scoring = (Phase(0, images, step, INCEPTION),) if step is not None else ()
        return TimedStage("evaluation", INCEPTION, images, scoring + passes)

    def _inception_images(self, spec: RunSpec, todo: list[str]) -> int:
        e, images = spec.eval, 0
        if "reconstruction" in todo:
            images += _split_count(spec, e.recon_images) + self._reference(spec, "val", e.recon_images)
        if "generation" in todo and spec.ar is not None:
            images += e.gen_samples
            if e.gen_reference != "adm":  # ADM's reference batch is a file of statistics
                images += self._reference(spec, e.gen_reference, e.reference_images)
        return images

    def _reference(self, spec: RunSpec, split: str, count: int | None) -> int:
        tok = spec.tokenizer
        # What the reference's cache key (val_subset's description) depends on: not the run's seed, as the
        # validation crops are drawn at a fixed one. A reference already in the cache folder is counted too.
        key = (split, count, tok.data, tok.tokenizer.image_size)
        if key in self.references:
            return 0
        self.references.add(key)
        return _split_count(spec, count, split)

    def stage(self, spec: RunSpec, stage: str, free: str, folder: str) -> TimedStage:
        label = _label(spec, stage)
        if not free and folder in self.paid_by:
            free = "shared"
        if free:
            return TimedStage(stage, label, 0, (), free, self.paid_by.get(folder) if free == "shared" else None)
        self.paid_by[folder] = spec.hash
        if stage == "tokenizer":
            steps, phases = self.tokenizer(spec.tokenizer, label)
        else:
            assert spec.ar is not None
            steps, phases = self.ar(spec.ar, label)
        return TimedStage(stage, label, steps, phases)


def _split_count(spec: RunSpec, count: int | None, split: str = "val") -> int:
    """Images of a split's first ``count`` (None: the whole split: the built-in set's, or ImageNet's)."""
    if count is not None:
        return count
    tok = spec.tokenizer
    if tok.data.dataset == "builtin":
        return _builtin_split_size(tok.data, split, tok.tokenizer.image_size, tok.train.seed)
    return IMAGENET_TRAIN_IMAGES if split == "train" else IMAGENET_VAL_IMAGES


@functools.cache
def _builtin_split_size(data: DataConfig, split: str, image_size: int, seed: int) -> int:
    """The built-in split's length, built once a plan (~0.5 s a build; every run of a plan asks for both splits)."""
    from gigatok.data import build_dataset

    return len(build_dataset(data, split, image_size, seed=seed))


def _tokenizer_pass_images(spec: RunSpec, todo: list[str]) -> tuple[int, int]:
    """Images the tokenizer encodes and decodes in the run's evaluation stages still to do."""
    from gigatok.token_views import view_set

    e, encoded, decoded = spec.eval, 0, 0
    train, val = (_split_count(spec, None, split) for split in ("train", "val"))
    if "token_cache" in todo and spec.ar is not None:  # every view of every training image, and val once
        encoded += train * len(view_set(spec.ar.train.views).crops) + val
    if "reconstruction" in todo:
        recon = _split_count(spec, e.recon_images)
        encoded, decoded = encoded + recon, decoded + recon
    if "tokenizer_probe" in todo:  # features of each split; fresh views every epoch for a LARS probe on crops
        fresh_views = e.probe.method == "lars" and e.probe.views == "random_crop"
        encoded += (round(e.probe.epochs * train) if fresh_views else train) + val
    if "generation" in todo and spec.ar is not None:
        decoded += e.gen_samples
    return encoded, decoded


def _label(spec: RunSpec, stage: str) -> str:
    if stage == "tokenizer":
        return f"tokenizer {spec.tokenizer.tokenizer.name} {spec.tokenizer.tokenizer.kind}"
    assert spec.ar is not None
    return f"AR-{spec.ar.size}"


def estimate_here(
    specs: list[RunSpec],
    ctx: RunContext,
    tracked: dict[str, Any],
    workers: int,
    threads: int,
    repeats: int = REPEATS,
    warmup: int = WARMUP,
) -> LocalEstimate:
    """Time ``specs``' training steps here (``threads`` torch threads, the run context's device) and price the plan
    on ``workers`` local workers; ``tracked`` is the study's runs in MLflow by run hash (a FINISHED one costs
    nothing). :class:`UsageError` for a step too large to time on a CPU."""
    import torch

    from gigatok.dispatch import group_by_tokenizer, spread
    from gigatok.runs.layout import ar_dir_of
    from gigatok.runs.stages import completed_stages
    from gigatok.step_timing import torch_threads

    device = torch.device(ctx.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    timer = _Timer(ctx, device, repeats, warmup)
    runs = []
    finished_runs = {h for h, record in tracked.items() if record.status == "FINISHED"}
    with torch_threads(threads):
        for spec in specs:
            finished = spec.hash in finished_runs
            done = [] if finished else completed_stages(spec, ctx)
            free = free_because(spec, "tokenizer", done, finished)
            stages = {"tokenizer": timer.stage(spec, "tokenizer", free, str(ctx.tokenizer_dir(spec.tokenizer)))}
            if spec.ar is not None:
                free = free_because(spec, "ar", done, finished)
                stages["ar"] = timer.stage(spec, "ar", free, str(ar_dir_of(spec, ctx)))
            todo = [] if finished else [stage for stage in spec.stages if stage not in done]
            stages["evaluation"] = timer.evaluation(spec, todo, finished)
            runs.append(TimedRun(spec.hash, spec.factor_dict, stages))
    seconds = {r.hash: r.seconds for r in runs}
    to_run = [s for s in specs if s.hash not in finished_runs]  # the launch skips FINISHED runs
    shares = spread(group_by_tokenizer(to_run), workers) if to_run else []
    worker_seconds = [sum(seconds[s.hash] for s in share) for share in shares]
    return LocalEstimate(device.type, workers, threads, runs, worker_seconds, repeats, warmup)
