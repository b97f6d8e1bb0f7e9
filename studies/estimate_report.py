"""The cost forecasts of ``studies/run.py --dry-run --estimate`` as text: the GPU-hours of a plan priced from the
calibration (:mod:`gigatok.launch.estimate`), and a plan timed on this machine (``--here``,
:mod:`gigatok.launch.local_estimate`)."""

from __future__ import annotations

import textwrap

from gigatok import launch
from gigatok.launch.estimate import FREE, LEFT_OUT
from gigatok.launch.local_estimate import FREE_HERE, LEFT_OUT_HERE, LocalEstimate, TimedStage


def _sci(x: float) -> str:
    return f"{x:.2e}".replace("e+", "e") if x else "0"


def _stage_cells(stage: launch.StageCost | None) -> tuple[str, str]:
    """A stage's FLOPs and GPU-hours cells: the numbers where this run pays, else why it costs nothing."""
    if stage is None:
        return "-", "-"
    if not stage.paid:
        return stage.why, "0"
    return _sci(stage.flops), f"{stage.gpu_hours:,.1f}"


def print_estimate(study: str, profile: str, est: launch.Estimate) -> None:
    """The estimate as a table, one row per run and the total, then what it rests on and what it leaves out."""
    width = max([34, *(len(" ".join(f"{k}={v}" for k, v in r.factors.items())) for r in est.runs)])
    row = f"{{:12}}  {{:{width}}} {{:>9}} {{:>9}} {{:>10}} {{:>9}} {{:>10}} {{:>11}}"
    print(f"study {study} at profile {profile}: {len(est.runs)} runs, training on {est.gpus} x {est.gpu}")
    print(row.format("hash", "factors", "tok FLOPs", "AR FLOPs", "tok GPU-h", "AR GPU-h", "GPU-h", f"wall {est.gpus}x"))
    for r in est.runs:
        (tok_flops, tok_h), (ar_flops, ar_h) = _stage_cells(r.stages["tokenizer"]), _stage_cells(r.stages.get("ar"))
        factors = " ".join(f"{k}={v}" for k, v in r.factors.items())
        hours = (f"{r.gpu_hours:,.1f}", f"{r.gpu_hours / est.gpus:,.1f} h")
        print(row.format(r.hash, factors, tok_flops, ar_flops, tok_h, ar_h, *hours))
    flops = [_sci(est.stage_flops(s)) for s in ("tokenizer", "ar")]
    totals = [f"{h:,.1f}" for h in (est.stage_gpu_hours("tokenizer"), est.stage_gpu_hours("ar"), est.gpu_hours)]
    wall = f"{est.wall_hours:,.1f} h"
    print(row.format("total", "", *flops, *totals, wall) + f" ({est.wall_hours / 24:,.1f} days)")
    for why in est.free_reasons():
        print(f"  {why}: {FREE[why]}")
    if est.used:
        print("throughput measured per GPU (MFU against the dense bf16 peak), default performance switches:")
    for t in est.used:
        print(
            f"  {t.label} {t.precision}: {t.achieved_tflops:.1f} TFLOP/s = {t.mfu:.1%} of {t.peak_tflops:g}, batch "
            f"{t.batch_per_gpu} a GPU ({t.gpu}, {t.measured}, {t.source})"
        )
        if t.note:
            print(f"    {t.note}")
    for note in est.notes:
        print(f"  {note}")
    print(f"evaluation: the generation stage's AR sampling is {_sci(est.sampling_flops)} FLOPs")
    print(textwrap.fill(LEFT_OUT, 118))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:,.1f}"


def _timed_cells(stage: TimedStage | None) -> tuple[str, str, str]:
    """A timed stage's steps, seconds a step and minutes, or why it costs nothing."""
    if stage is None:
        return "-", "-", "-"
    if stage.why:
        return stage.why, "-", "0"
    per_step = stage.seconds / stage.steps if stage.steps else 0.0
    return str(stage.steps), f"{per_step:.3f}", _minutes(stage.seconds)


def print_local_estimate(study: str, profile: str, est: LocalEstimate) -> None:
    """The forecast as a table, one row per run and the total, the steps it was timed on, what it leaves out."""
    width = max([34, *(len(" ".join(f"{k}={v}" for k, v in r.factors.items())) for r in est.runs)])
    row = f"{{:12}}  {{:{width}}}" + " {:>9} {:>10} {:>8}" * 2 + " {:>9} {:>8} {:>8}"
    print(
        f"study {study} at profile {profile}: {len(est.runs)} runs, timed here ({est.device}) for {est.workers} local "
        f"worker(s) of {est.threads} thread(s)"
    )
    head = ("tok steps", "tok s/step", "tok min", "AR steps", "AR s/step", "AR min", "eval imgs", "eval min", "min")
    print(row.format("hash", "factors", *head))
    for r in est.runs:
        factors = " ".join(f"{k}={v}" for k, v in r.factors.items())
        tok, ar, ev = (_timed_cells(r.stages.get(stage)) for stage in ("tokenizer", "ar", "evaluation"))
        print(row.format(r.hash, factors, *tok, *ar, ev[0], ev[2], _minutes(r.seconds)))
    print(row.format("total", "", *[""] * 8, _minutes(est.seconds)))
    shares = ", ".join(_minutes(s) for s in est.worker_seconds) or "nothing to run"
    wall = _minutes(est.wall_seconds)
    print(f"wall time on {est.workers} local worker(s): {wall} min (shares: {shares} min)")
    for why in est.free_reasons():
        print(f"  {why}: {FREE_HERE[why]}")
    print(f"timed here (median of {est.repeats} after {est.warmup} untimed; random inputs of the runs' shapes):")
    seen: set[tuple[str, int, float]] = set()
    for r in est.runs:
        for stage in r.stages.values():
            for phase in stage.phases:
                key = (phase.what or stage.label, phase.start, phase.step.seconds)
                if key in seen:
                    continue
                seen.add(key)
                if stage.stage == "evaluation":
                    print(f"  {phase.what}: {phase.step.seconds:.4f} s an image")
                    continue
                print(
                    f"  {stage.label}, steps from {phase.start}: {phase.step.seconds:.3f} s a step, "
                    f"{phase.step.flops:.2e} FLOPs ({phase.step.gflops_per_s:.1f} GFLOP/s)"
                )
    print(textwrap.fill(LEFT_OUT_HERE, 118))
