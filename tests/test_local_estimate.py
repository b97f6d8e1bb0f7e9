"""The forecast of a plan on this machine (``studies/run.py STUDY --dry-run --estimate --here``): each stage is its
steps times the step timed here, each distinct step is timed once, what costs nothing, the local workers' wall time,
and the command line. The arithmetic is checked on fixed step times; one test times real tiny steps."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from services import run_cli

import studies.catalog  # noqa: F401  (registers the studies)
from gigatok import step_timing
from gigatok.dispatch import group_by_tokenizer, spread
from gigatok.flops import ar_step_flops, ar_training_steps, tokenizer_phases, tokenizer_step_flops
from gigatok.launch import UsageError, plan_study
from gigatok.launch.local_estimate import estimate_here
from gigatok.runs.layout import ar_dir_of
from gigatok.runs.spec import RunContext, RunSpec
from gigatok.step_timing import StepTime
from gigatok.weights import MissingWeightsError

TOKENIZER_SECONDS = {"S-S": 0.5, "S-B": 0.7, "B-L": 1.5}  # the fixed steps the fake timer reports, per size
SHORTCUT_EXTRA = 0.25  # and what a step inside the shortcut's direct decoding adds
AR_SECONDS = 0.3
INCEPTION_SECONDS = 0.2  # an image
ENCODE_SECONDS, DECODE_SECONDS = 0.01, 0.02  # an image through the tokenizer, each way


def tiny_plan(study: str, only: str | None = None) -> list[RunSpec]:
    return plan_study(study, "tiny", None, [], None, None, only)


def pass_images(spec: RunSpec) -> tuple[int, int]:
    """The images a tiny run's tokenizer encodes and decodes in its evaluation stages, counted from the data."""
    from gigatok.data import build_dataset
    from gigatok.token_views import view_set

    tok, e = spec.tokenizer, spec.eval
    train, val = (len(build_dataset(tok.data, split, 32, seed=tok.train.seed)) for split in ("train", "val"))
    assert spec.ar is not None and e.probe.method == "logistic_regression" and e.recon_images is not None
    views = len(view_set(spec.ar.train.views).crops)
    return (train * views + val) + e.recon_images + (train + val), e.recon_images + e.gen_samples


def context(tmp_path: Path, device: str | None = "cpu") -> RunContext:
    return RunContext(str(tmp_path / "runs"), f"sqlite:///{tmp_path}/mlflow.db", device=device)


@pytest.fixture
def fake_timer(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Step timing replaced by fixed seconds a step; returns the calls made, by kind."""
    calls: dict[str, list[Any]] = {"tokenizer": [], "ar": [], "inception": [], "passes": []}

    def tokenizer_steps(cfg: Any, steps: Any, device: Any, weights_dir: Any, repeats: int, warmup: int) -> Any:
        calls["tokenizer"].append((cfg, list(steps)))
        base = TOKENIZER_SECONDS[cfg.tokenizer.name]
        return [
            StepTime(
                base + (SHORTCUT_EXTRA if s < cfg.loss.shortcut_end_step - 1 else 0.0),
                tokenizer_step_flops(cfg, s)["total"],
            )
            for s in steps
        ]

    def ar_step(cfg: Any, device: Any, repeats: int, warmup: int) -> StepTime:
        calls["ar"].append(cfg)
        return StepTime(AR_SECONDS, ar_step_flops(cfg))

    def inception_image(input_size: int, image_size: int, *args: Any) -> float:
        calls["inception"].append((input_size, image_size))
        return INCEPTION_SECONDS

    def tokenizer_passes(cfg: Any, batch: int, *args: Any) -> tuple[float, float]:
        calls["passes"].append((cfg.tokenizer.name, cfg.tokenizer.kind, batch))
        return ENCODE_SECONDS, DECODE_SECONDS

    monkeypatch.setattr(step_timing, "time_inception_image", inception_image)
    monkeypatch.setattr(step_timing, "time_tokenizer_passes", tokenizer_passes)
    monkeypatch.setattr(step_timing, "time_tokenizer_steps", tokenizer_steps)
    monkeypatch.setattr(step_timing, "time_ar_step", ar_step)
    return calls


# ----------------------------------------------------------------------------------------------------------
# The arithmetic
# ----------------------------------------------------------------------------------------------------------


def test_each_stage_is_its_steps_times_the_step_timed_here(tmp_path: Path, fake_timer: dict[str, list[Any]]) -> None:
    specs = tiny_plan("scaling_1d_vs_2d", "size=S-S")  # 1D and 2D, two seeds each
    assert len(specs) == 4
    est = estimate_here(specs, context(tmp_path), {}, workers=2, threads=1)
    for spec, run in zip(specs, est.runs, strict=True):
        tok = run.stages["tokenizer"]
        ranges = tokenizer_phases(spec.tokenizer)
        assert [(p.start, p.end) for p in tok.phases] == ranges and len(ranges) == 2  # shortcut, then the rest
        assert tok.steps == ranges[-1][1] == 200
        shortcut_steps = spec.tokenizer.loss.shortcut_end_step - 1
        expected = shortcut_steps * (0.5 + SHORTCUT_EXTRA) + (200 - shortcut_steps) * 0.5
        assert tok.seconds == pytest.approx(expected)
        ar = run.stages["ar"]
        assert spec.ar is not None and ar.steps == ar_training_steps(spec.ar) == 112
        assert ar.seconds == pytest.approx(112 * AR_SECONDS)
        assert run.seconds == pytest.approx(expected + 112 * AR_SECONDS + run.stages["evaluation"].seconds)
    assert est.seconds == pytest.approx(sum(r.seconds for r in est.runs))
    # Evaluation: each run's 96 reconstructions and 96 samples; the 96 validation crops both FIDs and
    # precision/recall compare against once, by the first run (cached after it, whatever the seed).
    e = specs[0].eval
    assert e.gen_reference == "val" and e.reference_images == e.recon_images == 96  # one reference set for both
    scored = e.recon_images + e.gen_samples
    assert [r.stages["evaluation"].steps for r in est.runs] == [scored + e.recon_images, scored, scored, scored]
    # The tokenizer encodes every view of the training crops and the validation crops for the token cache, the
    # reconstructed crops, and both splits for the probe's features; it decodes reconstructions and samples.
    encoded, decoded = pass_images(specs[0])
    for r in est.runs:
        evaluation = r.stages["evaluation"]
        passes = {p.what: p.end for p in evaluation.phases if p.what != "Inception features"}
        assert passes == {f"tokenizer S-S {r.factors['kind']}, images to tokens": encoded} | {
            f"tokenizer S-S {r.factors['kind']}, tokens to images": decoded
        }
        inception = evaluation.steps * INCEPTION_SECONDS
        assert evaluation.seconds == pytest.approx(inception + encoded * ENCODE_SECONDS + decoded * DECODE_SECONDS)
    assert fake_timer["inception"] == [(299, 32)]  # one network, timed once
    assert fake_timer["passes"] == [("S-S", "1d", e.batch_size), ("S-S", "2d", e.batch_size)]  # once a tokenizer
    # Each distinct step timed once: the 1D and the 2D tokenizer (each at its two phases), one AR model for all.
    assert [(cfg.tokenizer.kind, steps) for cfg, steps in fake_timer["tokenizer"]] == [("1d", [0, 66]), ("2d", [0, 66])]
    assert len(fake_timer["ar"]) == 1
    # The wall time follows the launch's dealing onto the workers: the busiest worker's share.
    seconds = {r.hash: r.seconds for r in est.runs}
    shares = [sum(seconds[s.hash] for s in share) for share in spread(group_by_tokenizer(specs), 2)]
    assert est.worker_seconds == pytest.approx(shares) and len(shares) == 2
    assert est.wall_seconds == max(shares) and sum(shares) == pytest.approx(est.seconds)
    assert est.wall_seconds < est.seconds  # two workers share the runs


def test_stages_done_finished_or_shared_cost_nothing(tmp_path: Path, fake_timer: dict[str, list[Any]]) -> None:
    specs = tiny_plan("scaling_1d_vs_2d", "size=S-S,kind=2d")
    ctx = context(tmp_path)
    first, second = specs
    summary = ctx.tokenizer_dir(first.tokenizer) / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text("{}")
    finished = {second.hash: SimpleNamespace(status="FINISHED")}
    est = estimate_here(specs, ctx, finished, workers=2, threads=1)
    done_run, finished_run = est.runs
    assert done_run.stages["tokenizer"].why == "done" and done_run.stages["tokenizer"].seconds == 0
    evaluation = done_run.stages["evaluation"]
    assert (
        evaluation.steps == 2 * first.eval.recon_images + first.eval.gen_samples
        and done_run.seconds == done_run.stages["ar"].seconds + evaluation.seconds
    )
    assert {s.why for s in finished_run.stages.values()} == {"finished"} and finished_run.seconds == 0
    assert est.worker_seconds == [done_run.seconds]  # the finished run is not launched
    assert fake_timer["tokenizer"] == []  # nothing to train, nothing timed

    ar_summary = ar_dir_of(first, ctx) / "summary.json"
    ar_summary.parent.mkdir(parents=True)
    ar_summary.write_text("{}")
    est = estimate_here(specs, ctx, finished, workers=2, threads=1)
    assert est.seconds == est.runs[0].stages["evaluation"].seconds > 0  # trained: only its scoring is left

    shared = tiny_plan("system_level", "size=B-L")  # one B-L tokenizer, two AR models
    est = estimate_here(shared, context(tmp_path / "other"), {}, workers=2, threads=1)
    one, two = est.runs
    assert one.stages["tokenizer"].seconds > 0
    assert two.stages["tokenizer"].why == "shared" and two.stages["tokenizer"].paid_by == one.hash
    assert two.stages["ar"].seconds > 0 and two.stages["ar"].label != one.stages["ar"].label
    # The tokenizer's token cache, reconstructions and probe are computed once, for the first run; the second
    # scores and decodes only its own samples.
    second = two.stages["evaluation"]
    spec = shared[1]
    assert second.steps == spec.eval.gen_samples
    assert {p.what: p.end for p in second.phases} == {
        "Inception features": spec.eval.gen_samples,
        f"tokenizer B-L {spec.tokenizer.tokenizer.kind}, tokens to images": spec.eval.gen_samples,
    }


def test_without_the_inception_weights_evaluation_is_not_timed_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_timer: dict[str, list[Any]]
) -> None:
    def missing(*args: Any) -> float:
        raise MissingWeightsError("pt_inception-2015-12-05 is not on disk")

    monkeypatch.setattr(step_timing, "time_inception_image", missing)
    est = estimate_here(tiny_plan("scaling_1d_vs_2d", "size=S-S,kind=2d"), context(tmp_path), {}, 2, 1)
    assert {r.stages["evaluation"].why for r in est.runs} == {"no-weights"}
    assert all(r.seconds == r.stages["tokenizer"].seconds + r.stages["ar"].seconds for r in est.runs)
    assert "no-weights" in est.free_reasons()


def test_a_step_too_large_for_a_cpu_is_refused_before_it_is_timed(
    tmp_path: Path, fake_timer: dict[str, list[Any]]
) -> None:
    specs = plan_study("scaling_1d_vs_2d", "paper", None, [], None, None, "size=S-S,kind=1d")
    with pytest.raises(UsageError, match=r"--here: a tokenizer S-S 1d step is .* FLOPs.*price this plan with --gpu"):
        estimate_here(specs, context(tmp_path), {}, workers=2, threads=1)
    assert fake_timer["tokenizer"] == []


def test_a_step_that_does_not_fit_in_memory_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_timer: dict[str, list[Any]]
) -> None:
    def out_of_memory(*args: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(step_timing, "time_tokenizer_steps", out_of_memory)
    specs = tiny_plan("scaling_1d_vs_2d", "size=B-L,kind=2d,seed=0")
    with pytest.raises(UsageError, match=r"--here: a tokenizer B-L 2d step of batch 16 does not fit in this cpu"):
        estimate_here(specs, context(tmp_path), {}, workers=1, threads=1)


# ----------------------------------------------------------------------------------------------------------
# Real steps
# ----------------------------------------------------------------------------------------------------------


def test_real_tiny_steps_are_timed_at_each_phase() -> None:
    (spec,) = tiny_plan("scaling_1d_vs_2d", "size=S-S,kind=2d,seed=0")
    steps = [start for start, _ in tokenizer_phases(spec.tokenizer)]
    cpu = torch.device("cpu")
    with step_timing.torch_threads(1):
        timed = step_timing.time_tokenizer_steps(spec.tokenizer, steps, cpu, None, repeats=1, warmup=0)
        assert spec.ar is not None
        ar = step_timing.time_ar_step(spec.ar, cpu, repeats=1, warmup=0)
        inception = step_timing.time_inception_image(spec.eval.inception_input, 32, cpu, None, repeats=1, warmup=0)
        encode, decode = step_timing.time_tokenizer_passes(spec.tokenizer, 8, cpu, repeats=1, warmup=0)
    assert [t.flops for t in timed] == [tokenizer_step_flops(spec.tokenizer, s)["total"] for s in steps]
    assert timed[0].flops > timed[1].flops  # the shortcut decodes twice
    assert all(t.seconds > 0 and t.gflops_per_s > 0 for t in timed)
    assert ar.flops == ar_step_flops(spec.ar) and ar.seconds > 0
    assert inception > 0 and encode > 0 and decode > 0


def test_median_seconds_calls_the_warm_up_then_the_timed_calls() -> None:
    calls: list[int] = []
    seconds = step_timing.median_seconds(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and seconds >= 0
    with pytest.raises(ValueError, match="repeats=0"):
        step_timing.median_seconds(lambda: None, repeats=0, warmup=0)


def test_torch_threads_are_restored() -> None:
    before = torch.get_num_threads()
    with step_timing.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# ----------------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------------

HERE = ["scaling_1d_vs_2d", "--dry-run", "--estimate", "--here", "--device", "cpu", "--local-parallel", "2"]


def test_here_forecast_end_to_end(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_timer: dict[str, list[Any]],
) -> None:
    code, out, err = run_cli([*HERE, "--only", "size=S-S"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert (
        lines[0]
        == "study scaling_1d_vs_2d at profile tiny: 4 runs, timed here (cpu) for 2 local worker(s) of 1 thread(s)"
    )
    for spec in tiny_plan("scaling_1d_vs_2d", "size=S-S"):
        assert any(line.startswith(spec.hash) and " 200 " in line and " 112 " in line for line in lines)
    assert "wall time on 2 local worker(s):" in out
    assert "tokenizer S-S 2d, steps from 66: 0.500 s a step" in out and "AR-B, steps from 0: 0.300 s a step" in out
    assert "Inception features: 0.2000 s an image" in out
    assert "tokenizer S-S 1d, images to tokens: 0.0100 s an image" in out
    assert "tokenizer S-S 2d, tokens to images: 0.0200 s an image" in out
    assert "not timed: the rest of evaluation" in out
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()  # a dry run writes nothing

    code, out, _ = run_cli([*HERE, "--only", "size=S-S", "--json"], tmp_path, monkeypatch, capsys)
    assert code == 0
    plan = json.loads(out)
    assert plan["workers"] == 2 and plan["threads_per_worker"] == 1 and len(plan["runs"]) == 4
    assert plan["total"]["seconds"] == pytest.approx(sum(r["seconds"] for r in plan["runs"]))
    assert plan["total"]["wall_seconds"] == max(plan["total"]["worker_seconds"])
    wall = f"{plan['total']['wall_seconds'] / 60:,.1f} min"
    assert f"wall time on 2 local worker(s): {wall}" in "\n".join(lines)  # the text's is the JSON's


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["scaling_1d_vs_2d", "--dry-run", "--here"], "--here goes with --dry-run --estimate"),
        ([*HERE, "--gpu", "h200"], "--here times the plan on this machine: leave out --gpu and --gpus"),
        ([*HERE, "--gpus", "4"], "--here times the plan on this machine: leave out --gpu and --gpus"),
        ([*HERE, "--profile", "paper"], "price this plan with --gpu"),
    ],
)
def test_what_cannot_be_timed_is_a_one_line_error(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_timer: dict[str, list[Any]],
) -> None:
    code, out, err = run_cli(args, tmp_path, monkeypatch, capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err, err
