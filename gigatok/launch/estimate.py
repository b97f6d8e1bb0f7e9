"""What a plan will cost before anything runs: each planned run's training FLOPs per stage (the analytic model,
:func:`gigatok.flops.run_training_flops`), divided by the throughput measured for that model family on the GPU type
(:mod:`gigatok.calibration`): GPU-hours, and wall time on a number of GPUs.

A stage costs what the real launch would spend on it: nothing when it is not among the run's stages, when its result
is on disk (a finished stage is never redone, whichever study trained it: its folder is named by the hash of what it
depends on), when the run is FINISHED in MLflow (the launch skips it), or when it converts a released checkpoint; a
tokenizer (or AR model) that several runs of the plan share is paid by the first of them, as it is trained once.
Only the training stages are priced; the generation stage's AR sampling is counted in FLOPs but has no measured
throughput, so it is left out of the GPU-hours, and so is every other evaluation and the token cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gigatok.calibration import CalibrationError, Family, Precision, Throughput, check_gpu, lookup
from gigatok.config import PerformanceConfig, ar_parallelism, compiles_step, tokenizer_parallelism
from gigatok.launch.common import UsageError
from gigatok.runs.spec import RunContext, RunSpec

SECONDS_PER_HOUR = 3600.0
DEFAULT_GPU, DEFAULT_GPUS = "h200", 8  # the measured GPU, and the job its per-GPU batches are of
# Why a stage costs nothing, as the estimate shows it.
FREE = {
    "-": "not a stage of the run",
    "finished": "the run is FINISHED in MLflow (the launch skips it)",
    "done": "its result is on disk (from this study or another)",
    "released": "converted from a released checkpoint",
    "shared": "another run of the plan trains the same one (paid once, by the first)",
}
LEFT_OUT = (
    "not priced: evaluation (reconstruction, probes, CFG search; of generation only the AR sampling is counted, in "
    "FLOPs: no sampling throughput is measured), the token cache, the semantic-feature cache, and time lost to "
    "communication, data loading or waiting"
)


def gpu_hours(flops: float, achieved_tflops: float) -> float:
    """GPU-hours to compute ``flops`` at ``achieved_tflops`` a GPU: FLOPs / achieved FLOP/s / 3600."""
    return flops / (achieved_tflops * 1e12) / SECONDS_PER_HOUR


def wall_hours(hours_of_gpu: float, gpus: int) -> float:
    """Wall-clock hours of ``hours_of_gpu`` GPU-hours spread over ``gpus`` GPUs (at the measured per-GPU rate)."""
    return hours_of_gpu / gpus


def precision_of(perf: PerformanceConfig) -> Precision:
    """The precision a run trains at on a GPU: autocast "auto" is bf16 on CUDA."""
    return "fp32" if perf.autocast == "off" else "bf16"


def compiled_on_gpu(cfg: Any, stage: Family) -> bool:
    """Whether the stage's training step runs compiled on a GPU (performance.compile, "auto" resolved as there)."""
    sharded = (tokenizer_parallelism(cfg) if stage == "tokenizer" else ar_parallelism(cfg)) == "fsdp"
    return compiles_step(cfg.performance, stage, cuda=True, sharded=sharded)


@dataclass(frozen=True)
class StageCost:
    """A training stage of one run: its analytic FLOPs, and what this run pays for it."""

    stage: Family
    flops: float  # the stage's training FLOPs, whoever pays them
    why: str  # why it costs nothing, a key of FREE; "" when this run pays for it
    throughput: Throughput | None  # the measured rate it is priced at (None when not paid)
    gpu_hours: float
    paid_by: str | None = None  # a shared stage: the run that pays for it

    @property
    def paid(self) -> bool:
        return not self.why

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops": self.flops,
            "cost_flops": self.flops if self.paid else 0.0,
            "gpu_hours": self.gpu_hours,
            "free": self.why or None,
            "free_because": FREE[self.why] if self.why else None,
            "paid_by": self.paid_by,
            "throughput_of": self.throughput.label if self.throughput else None,
            "achieved_tflops": self.throughput.achieved_tflops if self.throughput else None,
        }


@dataclass(frozen=True)
class RunEstimate:
    hash: str
    factors: dict[str, Any]
    stages: dict[str, StageCost]  # "tokenizer", "ar" (absent without an AR model)
    sampling_flops: float  # the generation stage's AR sampling, not priced

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages.values())


@dataclass(frozen=True)
class Estimate:
    gpu: str
    gpus: int
    runs: list[RunEstimate]
    used: list[Throughput]  # the measured rates the plan is priced at
    notes: list[str] = field(default_factory=list)  # borrowed sizes, batches unlike the measured ones

    @property
    def gpu_hours(self) -> float:
        return sum(r.gpu_hours for r in self.runs)

    @property
    def wall_hours(self) -> float:
        return wall_hours(self.gpu_hours, self.gpus)

    def stage_flops(self, stage: str) -> float:
        return sum(r.stages[stage].flops for r in self.runs if stage in r.stages and r.stages[stage].paid)

    def stage_gpu_hours(self, stage: str) -> float:
        return sum(r.stages[stage].gpu_hours for r in self.runs if stage in r.stages)

    @property
    def sampling_flops(self) -> float:
        return sum(r.sampling_flops for r in self.runs)

    def free_reasons(self) -> list[str]:
        """The reasons (keys of :data:`FREE`) some stage of the plan costs nothing, in FREE's order."""
        seen = {s.why for r in self.runs for s in r.stages.values()}
        return [why for why in FREE if why in seen]

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "gpus": self.gpus,
            "runs": [
                {
                    "hash": r.hash,
                    "factors": r.factors,
                    "stages": {name: s.to_dict() for name, s in r.stages.items()},
                    "gpu_hours": r.gpu_hours,
                    "wall_hours": wall_hours(r.gpu_hours, self.gpus),
                    "sampling_flops_not_priced": r.sampling_flops,
                }
                for r in self.runs
            ],
            "total": {
                "tokenizer_flops": self.stage_flops("tokenizer"),
                "ar_flops": self.stage_flops("ar"),
                "tokenizer_gpu_hours": self.stage_gpu_hours("tokenizer"),
                "ar_gpu_hours": self.stage_gpu_hours("ar"),
                "gpu_hours": self.gpu_hours,
                "wall_hours": self.wall_hours,
                "sampling_flops_not_priced": self.sampling_flops,
            },
            "calibration": [
                {
                    "throughput_of": t.label,
                    "gpu": t.gpu,
                    "precision": t.precision,
                    "compiled": t.compiled,
                    "achieved_tflops": t.achieved_tflops,
                    "mfu": t.mfu,
                    "batch_per_gpu": t.batch_per_gpu,
                    "measured": t.measured,
                    "source": t.source,
                    "note": t.note,
                }
                for t in self.used
            ],
            "notes": self.notes,
            "left_out": LEFT_OUT,
        }


class _Pricer:
    """Prices the stages of a plan's runs in order, remembering which stage folders are already paid for."""

    def __init__(self, gpu: str, gpus: int) -> None:
        self.gpu, self.gpus = gpu, gpus
        self.paid_by: dict[str, str] = {}  # stage folder -> the run that pays for it
        self.used: dict[tuple[str, str, str, bool], Throughput] = {}
        self.notes: dict[str, None] = {}  # ordered set

    def stage(self, spec: RunSpec, stage: Family, flops: float, free: str, folder: str) -> StageCost:
        if free:
            return StageCost(stage, flops, free, None, 0.0)
        if folder in self.paid_by:
            return StageCost(stage, flops, "shared", None, 0.0, paid_by=self.paid_by[folder])
        self.paid_by[folder] = spec.hash
        rate = self.throughput(spec, stage)
        return StageCost(stage, flops, "", rate, gpu_hours(flops, rate.achieved_tflops))

    def throughput(self, spec: RunSpec, stage: Family) -> Throughput:
        cfg: Any = spec.tokenizer if stage == "tokenizer" else spec.ar
        size = spec.tokenizer.tokenizer.name if stage == "tokenizer" else cfg.size
        try:
            rate, borrowed = lookup(
                self.gpu, stage, size, precision_of(cfg.performance), spec.profile, compiled=compiled_on_gpu(cfg, stage)
            )
        except CalibrationError as exc:
            raise UsageError(str(exc)) from None
        self.used[(rate.family, rate.size, rate.precision, rate.compiled)] = rate
        if borrowed:
            self.notes[borrowed] = None
        kind = spec.tokenizer.tokenizer.kind
        if stage == "tokenizer" and rate.kind and kind != rate.kind:
            self.notes[f"{kind.upper()} tokenizers: throughput measured on a {rate.kind.upper()} one"] = None
        per_gpu = cfg.train.batch_size / self.gpus
        if per_gpu != rate.batch_per_gpu:
            what = f"tokenizer {size}" if stage == "tokenizer" else f"AR-{size}"
            self.notes[
                f"{what}: global batch {cfg.train.batch_size} is {per_gpu:g} a GPU on {self.gpus} GPUs; "
                f"{rate.label} was measured at {rate.batch_per_gpu} a GPU"
            ] = None
        return rate


def free_because(spec: RunSpec, stage: str, done: list[str], finished: bool) -> str:
    """Why ``stage`` of ``spec`` costs nothing in the plan (a key of :data:`FREE`), or "" if it is to be computed."""
    if stage not in spec.stages:
        return "-"
    if finished:
        return "finished"
    if stage in done:
        return "done"
    cfg = spec.tokenizer if stage == "tokenizer" else spec.ar
    return "released" if cfg is not None and cfg.source else ""


def estimate_plan(specs: list[RunSpec], ctx: RunContext, tracked: dict[str, Any], gpu: str, gpus: int) -> Estimate:
    """Price ``specs`` (a study's plan) on ``gpus`` GPUs of type ``gpu``; ``tracked`` is the study's runs in MLflow
    by run hash (:func:`gigatok.launch.common.peek_tracked`). :class:`UsageError` where nothing was measured."""
    from gigatok.flops import ar_sampling_flops, run_training_flops
    from gigatok.runs.layout import ar_dir_of
    from gigatok.runs.stages import completed_stages

    if gpus < 1:
        raise UsageError(f"--gpus {gpus}: expected a positive number of GPUs")
    try:
        check_gpu(gpu)  # before any stage is priced: a plan with nothing to do is no answer for an unmeasured GPU
    except CalibrationError as exc:
        raise UsageError(str(exc)) from None
    pricer = _Pricer(gpu, gpus)
    runs = []
    for spec in specs:
        record = tracked.get(spec.hash)
        finished = record is not None and record.status == "FINISHED"
        done = [] if finished else completed_stages(spec, ctx)
        flops = run_training_flops(spec)
        stages = {
            "tokenizer": pricer.stage(
                spec,
                "tokenizer",
                flops["tokenizer"],
                free_because(spec, "tokenizer", done, finished),
                str(ctx.tokenizer_dir(spec.tokenizer)),
            )
        }
        if spec.ar is not None:
            free = free_because(spec, "ar", done, finished)
            stages["ar"] = pricer.stage(spec, "ar", flops["ar"], free, str(ar_dir_of(spec, ctx)))
        sampling = 0.0
        if spec.ar is not None and "generation" in spec.stages and "generation" not in done and not finished:
            sampling = ar_sampling_flops(spec.ar, spec.eval.gen_samples, cfg_guidance=spec.eval.cfg_scale != 1.0)
        runs.append(RunEstimate(spec.hash, spec.factor_dict, stages, sampling))
    return Estimate(gpu, gpus, runs, list(pricer.used.values()), list(pricer.notes))
