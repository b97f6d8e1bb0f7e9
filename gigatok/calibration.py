"""Measured training throughput per GPU type and model family: what turns the analytic FLOP counts
(:mod:`gigatok.flops`) into GPU-hours (:mod:`gigatok.launch.estimate`).

Every entry is a measurement, never a guess: ``python bench/gpu_mfu.py`` on one GPU, each training step's FLOPs
(``FlopCounterMode``: the FLOPs :mod:`gigatok.flops` counts, docs/flops.md) over its median wall time, default
performance switches (SDPA attention, NCHW), eager or compiled (``compiled``), per-GPU batches of an 8-GPU job. A GPU
type with no entry has no estimate: add its rows after running the bench there. A size with no entry of its own
borrows the nearest measured size of its family, and a step compiled (or eager) with no such entry in its family the
other form's (:func:`lookup` says so); a precision with no entry in the family has none.

No torch: the dry run prices a whole plan with this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gigatok.config import AR_SIZE_NAMES, SIZE_NAMES, Part, parse_tokenizer_name

Family = Part
Precision = Literal["bf16", "fp32"]

# The --gpu choices: the GPU types bench/gpu_mfu.py knows a dense bf16 peak for. Measured ones have entries below.
GPU_TYPES = ("a100", "h100", "h200")

H200_BF16_PEAK_TFLOPS = 989.0  # dense, no sparsity (bench/gpu_mfu.py PEAK_BF16_TFLOPS)
GPU_MFU_BENCH = "python bench/gpu_mfu.py"


class CalibrationError(ValueError):
    """No measured throughput for what was asked (GPU type, family at that precision, profile)."""


@dataclass(frozen=True)
class Throughput:
    """One measured training throughput: ``achieved_tflops`` of the analytic FLOPs a second on one GPU."""

    gpu: str  # one of GPU_TYPES
    family: Family
    size: str  # a tokenizer name ("S-S") or an AR size ("B"), as the bench ran it
    precision: Precision
    achieved_tflops: float
    peak_tflops: float  # the GPU's dense bf16 peak, which MFU is taken against (fp32 rows too)
    batch_per_gpu: int
    profile: str  # the sizes' profile (the bench runs the paper's on a GPU)
    kind: str  # what the bench built besides the size: the tokenizer's kind, or "" for the AR model
    measured: str  # date, ISO
    source: str  # the command that measured it
    note: str = ""
    compiled: bool = False  # the step under torch.compile (performance.compile), else eager

    @property
    def mfu(self) -> float:
        return self.achieved_tflops / self.peak_tflops

    @property
    def label(self) -> str:
        name = f"{self.family} {self.size}" if self.family == "tokenizer" else f"AR-{self.size}"
        return f"{name} compiled" if self.compiled else name


def _h200(
    family: Family,
    size: str,
    precision: Precision,
    tflops: float,
    batch: int,
    note: str = "",
    measured: str = "2026-11-28",
    compiled: bool = False,
    source: str = GPU_MFU_BENCH,
) -> Throughput:
    return Throughput(
        gpu="h200",
        family=family,
        size=size,
        precision=precision,
        achieved_tflops=tflops,
        peak_tflops=H200_BF16_PEAK_TFLOPS,
        batch_per_gpu=batch,
        profile="paper",
        kind="1d" if family == "tokenizer" else "",
        measured=measured,
        source=source,
        note=note,
        compiled=compiled,
    )


# One H200, 2026-11-28 (README, Benchmarks, "GPU MFU"): the bench's cases "tokenizer S-S bf16", "tokenizer S-S fp32",
# "tokenizer B-L bf16" (1D, batch 16), "AR-B bf16", "AR-L bf16" (batch 32), all eager then. Where the README gives
# MFU, the rate is MFU x 989. 2026-12-04: AR-B compiled, what the AR step runs by default on a GPU since.
CALIBRATION: tuple[Throughput, ...] = (
    _h200("tokenizer", "S-S", "bf16", 117.0, 16),  # 11.8% MFU
    _h200("tokenizer", "S-S", "fp32", 91.0, 16),
    _h200("tokenizer", "B-L", "bf16", 0.120 * H200_BF16_PEAK_TFLOPS, 16),
    _h200(
        "ar",
        "B",
        "bf16",
        0.11 * H200_BF16_PEAK_TFLOPS,
        32,
        "the low end of 11-16% MFU over two runs (noisy 32-45 ms steps): its GPU-hours err high",
    ),
    _h200("ar", "L", "bf16", 0.205 * H200_BF16_PEAK_TFLOPS, 32),
    _h200(
        "ar",
        "B",
        "bf16",
        325.0,  # 32.9% MFU: 15.6 ms a step against 40.1 ms eager in the same run
        32,
        "2 warm-up and 5 timed steps after compilation",
        measured="2026-12-04",
        compiled=True,
        source=f"{GPU_MFU_BENCH} --quick --models ar:B:32 --variants compile",
    ),
)


def calibrated_gpus(table: tuple[Throughput, ...] = CALIBRATION) -> list[str]:
    return sorted({t.gpu for t in table})


def check_gpu(gpu: str, table: tuple[Throughput, ...] = CALIBRATION) -> None:
    """A :class:`CalibrationError` naming ``gpu`` and the calibrated types unless ``gpu`` has measurements."""
    if not any(t.gpu == gpu for t in table):
        raise CalibrationError(
            f"--gpu {gpu}: no throughput measured on {gpu}; calibrated GPU types: "
            f"{', '.join(calibrated_gpus(table))} (run {GPU_MFU_BENCH} on one and add its rows to "
            "gigatok/calibration.py)"
        )


def size_rank(family: Family, size: str) -> int:
    """Where a size sits in its family's order: an AR size's index, a tokenizer's encoder and decoder indices summed
    (the analysis's size rank), so S-B is nearer S-S than B-L."""
    if family == "ar":
        return AR_SIZE_NAMES.index(size)
    encoder, decoder = parse_tokenizer_name(size)
    return SIZE_NAMES.index(encoder) + SIZE_NAMES.index(decoder)


def lookup(
    gpu: str,
    family: Family,
    size: str,
    precision: Precision,
    profile: str,
    table: tuple[Throughput, ...] = CALIBRATION,
    compiled: bool = False,
) -> tuple[Throughput, str | None]:
    """The measured throughput for ``size`` of ``family`` on ``gpu`` at ``precision``, compiled or eager, and a note
    when it is another size's (the nearest measured; on a tie the larger) or the other form's (where the family has
    none of this form). :class:`CalibrationError` where nothing was measured at that precision."""
    check_gpu(gpu, table)
    on_gpu = [t for t in table if t.gpu == gpu]
    at_profile = [t for t in on_gpu if t.profile == profile]
    if not at_profile:
        measured = ", ".join(sorted({t.profile for t in on_gpu}))
        raise CalibrationError(
            f"--profile {profile}: the {gpu} throughputs were measured at the {measured} profile's sizes only "
            f"(pass --profile {measured.split(', ')[0]}, or --here to time this plan on this machine)"
        )
    candidates = [t for t in at_profile if t.family == family and t.precision == precision]
    if not candidates:
        what = "tokenizer" if family == "tokenizer" else "AR"
        autocast = "off" if precision == "fp32" else precision
        raise CalibrationError(
            f"no {what} throughput measured on {gpu} at {precision} (performance.autocast={autocast}); measured: "
            + ", ".join(sorted({f"{t.label} {t.precision}" for t in at_profile}))
        )
    what = f"tokenizer {size}" if family == "tokenizer" else f"AR-{size}"
    form = "compiled" if compiled else "eager"
    same_form = [t for t in candidates if t.compiled == compiled]
    notes = [] if same_form else [f"{what}: no {form} step measured on {gpu}; priced at the other form's rate"]
    rank = size_rank(family, size)
    best = min(
        same_form or candidates, key=lambda t: (abs(size_rank(family, t.size) - rank), -size_rank(family, t.size))
    )
    if best.size != size:
        notes.append(f"{what}: throughput of {best.label} (nearest measured)")
    return best, "; ".join(notes) or None
