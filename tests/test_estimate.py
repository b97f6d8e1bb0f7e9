"""The plan's cost forecast (``studies/run.py STUDY --dry-run --estimate``): the arithmetic, what costs nothing, the
calibration lookup and the command line's refusals (fast: nothing is trained)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from services import run_cli

import studies.catalog  # noqa: F401  (registers the studies)
from gigatok.calibration import CALIBRATION, CalibrationError, calibrated_gpus, lookup
from gigatok.flops import ar_sampling_flops, run_training_flops
from gigatok.launch import UsageError, estimate_plan, plan_study
from gigatok.launch.estimate import gpu_hours, wall_hours
from gigatok.runs.layout import ar_dir_of
from gigatok.runs.spec import RunContext, RunSpec


def paper_plan(study: str, only: str | None = None) -> list[RunSpec]:
    return plan_study(study, "paper", None, [], None, None, only)


def context(tmp_path: Path) -> RunContext:
    return RunContext(str(tmp_path / "runs"), f"sqlite:///{tmp_path}/mlflow.db")


def rate(family: str, size: str, compiled: bool = False) -> float:
    """The measured TFLOP/s of the calibration entry of exactly this size and form on the H200."""
    key = ("h200", family, size, "bf16", compiled)
    (entry,) = [t for t in CALIBRATION if (t.gpu, t.family, t.size, t.precision, t.compiled) == key]
    return entry.achieved_tflops


# ----------------------------------------------------------------------------------------------------------
# The arithmetic and the calibration
# ----------------------------------------------------------------------------------------------------------


def test_gpu_hours_are_flops_over_achieved_rate_and_wall_time_spreads_them() -> None:
    assert gpu_hours(117e12 * 3600, 117.0) == pytest.approx(1.0)
    assert gpu_hours(3e20, 100.0) == pytest.approx(3e20 / 100e12 / 3600)
    assert wall_hours(24.0, 8) == pytest.approx(3.0)
    assert wall_hours(24.0, 1) == pytest.approx(24.0)


def test_each_stage_is_priced_at_its_familys_measured_rate(tmp_path: Path) -> None:
    (spec,) = paper_plan("scaling_semreg", "size=S-S,semreg=True")
    est = estimate_plan([spec], context(tmp_path), {}, "h200", 8)
    flops = run_training_flops(spec)
    (run,) = est.runs
    assert run.stages["tokenizer"].flops == flops["tokenizer"]
    assert run.stages["tokenizer"].gpu_hours == pytest.approx(
        flops["tokenizer"] / (rate("tokenizer", "S-S") * 1e12) / 3600
    )
    # The AR step runs compiled on a GPU by default (performance.compile "auto"): priced at the compiled rate.
    assert run.stages["ar"].gpu_hours == pytest.approx(flops["ar"] / (rate("ar", "B", compiled=True) * 1e12) / 3600)
    assert est.gpu_hours == pytest.approx(run.stages["tokenizer"].gpu_hours + run.stages["ar"].gpu_hours)
    assert est.wall_hours == pytest.approx(est.gpu_hours / 8)
    # Eight GPUs or sixteen: the same GPU-hours, half the wall time.
    wider = estimate_plan([spec], context(tmp_path), {}, "h200", 16)
    assert wider.gpu_hours == pytest.approx(est.gpu_hours) and wider.wall_hours == pytest.approx(est.wall_hours / 2)
    # The generation stage's sampling: counted in FLOPs (50,000 samples with CFG), not priced.
    assert run.sampling_flops == ar_sampling_flops(spec.ar, spec.eval.gen_samples, cfg_guidance=True) > 0
    assert est.notes == []  # S-S and AR-B were measured, at this per-GPU batch (128 and 256 over 8)


def test_unmeasured_sizes_borrow_the_nearest_measured_one_and_say_so() -> None:
    assert lookup("h200", "ar", "L", "bf16", "paper") == (lookup("h200", "ar", "L", "bf16", "paper")[0], None)
    entry, note = lookup("h200", "ar", "XXL", "bf16", "paper")
    assert entry.size == "L" and note == "AR-XXL: throughput of AR-L (nearest measured)"
    assert lookup("h200", "ar", "XL", "bf16", "paper")[0].size == "L"
    assert lookup("h200", "tokenizer", "S-B", "bf16", "paper")[0].size == "S-S"  # rank 1: nearer S-S (0) than B-L (3)
    entry, note = lookup("h200", "tokenizer", "XL-XXL", "bf16", "paper")
    assert entry.size == "B-L" and note == "tokenizer XL-XXL: throughput of tokenizer B-L (nearest measured)"
    # Compiled: AR-B's own; AR-L borrows AR-B's compiled rate before its own eager one; a compiled tokenizer, with
    # none measured, takes the eager rate and says so.
    assert lookup("h200", "ar", "B", "bf16", "paper", compiled=True)[0].compiled
    entry, note = lookup("h200", "ar", "L", "bf16", "paper", compiled=True)
    assert (entry.size, entry.compiled) == (
        "B",
        True,
    ) and note == "AR-L: throughput of AR-B compiled (nearest measured)"
    entry, note = lookup("h200", "tokenizer", "S-S", "bf16", "paper", compiled=True)
    assert (
        not entry.compiled
        and note == "tokenizer S-S: no compiled step measured on h200; priced at the other form's rate"
    )
    with pytest.raises(CalibrationError, match="no AR throughput measured on h200 at fp32"):
        lookup("h200", "ar", "B", "fp32", "paper")
    with pytest.raises(CalibrationError, match="--profile tiny"):
        lookup("h200", "ar", "B", "bf16", "tiny")


def test_the_calibration_holds_measurements_only() -> None:
    assert calibrated_gpus() == ["h200"]
    for t in CALIBRATION:
        assert t.source.startswith("python bench/gpu_mfu.py") and t.profile == "paper"
        assert t.measured == ("2026-12-04" if t.compiled else "2026-11-28")
        assert 0 < t.mfu < 1 and t.batch_per_gpu in (16, 32)
    # The README's numbers: S-S 117 TFLOP/s = 11.8%, B-L 12.0%, AR-L 20.5% MFU of the H200's 989.
    assert rate("tokenizer", "S-S") == 117.0 and round(rate("tokenizer", "S-S") / 989, 3) == 0.118
    assert rate("tokenizer", "B-L") / 989 == pytest.approx(0.120)
    assert rate("ar", "L") / 989 == pytest.approx(0.205)
    assert rate("ar", "B", compiled=True) == 325.0  # 2026-12-04: AR-B compiled, 32.9% MFU


# ----------------------------------------------------------------------------------------------------------
# What costs nothing
# ----------------------------------------------------------------------------------------------------------


def test_stages_done_on_disk_or_finished_runs_cost_nothing(tmp_path: Path) -> None:
    specs = paper_plan("scaling_semreg", "size=S-S")
    ctx = context(tmp_path)
    done, other = specs
    tokenizer_done = ctx.tokenizer_dir(done.tokenizer) / "summary.json"
    tokenizer_done.parent.mkdir(parents=True)
    tokenizer_done.write_text("{}")
    est = estimate_plan(specs, ctx, {}, "h200", 8)
    first = est.runs[0]
    assert first.stages["tokenizer"].why == "done" and first.stages["tokenizer"].gpu_hours == 0
    assert first.stages["ar"].paid and first.gpu_hours == first.stages["ar"].gpu_hours > 0
    assert est.stage_flops("tokenizer") == run_training_flops(other)["tokenizer"]  # the other run's only

    ar_done = ar_dir_of(done, ctx) / "summary.json"
    ar_done.parent.mkdir(parents=True)
    ar_done.write_text("{}")
    assert estimate_plan(specs, ctx, {}, "h200", 8).runs[0].gpu_hours == 0

    finished = {other.hash: SimpleNamespace(status="FINISHED")}
    est = estimate_plan(specs, ctx, finished, "h200", 8)
    assert est.gpu_hours == 0 and {s.why for s in est.runs[1].stages.values()} == {"finished"}
    assert est.sampling_flops == ar_sampling_flops(done.ar, done.eval.gen_samples)  # the finished run samples no more
    running = {other.hash: SimpleNamespace(status="RUNNING")}  # unfinished: resumed, so priced in full
    assert estimate_plan(specs, ctx, running, "h200", 8).runs[1].gpu_hours > 0


def test_a_tokenizer_shared_by_several_runs_is_paid_once(tmp_path: Path) -> None:
    specs = paper_plan("system_level", "size=B-L")  # B-L with AR-B and with AR-XXL: one tokenizer
    assert len(specs) == 2 and specs[0].tokenizer.hash() == specs[1].tokenizer.hash()
    est = estimate_plan(specs, context(tmp_path), {}, "h200", 8)
    first, second = est.runs
    assert first.stages["tokenizer"].paid and first.stages["tokenizer"].gpu_hours > 0
    assert second.stages["tokenizer"].why == "shared" and second.stages["tokenizer"].paid_by == first.hash
    assert second.stages["tokenizer"].gpu_hours == 0 and second.stages["ar"].gpu_hours > 0
    assert est.stage_flops("tokenizer") == run_training_flops(specs[0])["tokenizer"]
    assert "AR-XXL: throughput of AR-L (nearest measured)" in est.notes


def test_snapshots_share_the_tokenizer_and_train_an_ar_model_each(tmp_path: Path) -> None:
    specs = paper_plan("tokenizer_checkpoints", "size=B-L")
    est = estimate_plan(specs, context(tmp_path), {}, "h200", 8)
    assert [r.stages["tokenizer"].paid for r in est.runs] == [True] + [False] * (len(specs) - 1)
    assert all(r.stages["ar"].paid for r in est.runs)  # one AR folder per snapshot


def test_released_checkpoints_and_stages_a_run_lacks_cost_nothing(tmp_path: Path) -> None:
    est = estimate_plan(paper_plan("released_checkpoints"), context(tmp_path), {}, "h200", 8)
    assert est.gpu_hours == 0 and {s.why for r in est.runs for s in r.stages.values()} == {"released"}
    est = estimate_plan(paper_plan("decode_cost"), context(tmp_path), {}, "h200", 8)
    assert est.gpu_hours == 0 and {s.why for r in est.runs for s in r.stages.values()} == {"-"}


def test_an_unmeasured_gpu_is_refused_even_when_nothing_is_to_do(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no throughput measured on h100; calibrated GPU types: h200"):
        estimate_plan(paper_plan("decode_cost"), context(tmp_path), {}, "h100", 8)


# ----------------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------------

PAPER_ESTIMATE = ["scaling_semreg", "--profile", "paper", "--dry-run", "--estimate"]


def test_estimate_of_a_study_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli([*PAPER_ESTIMATE, "--gpu", "h200"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "study scaling_semreg at profile paper: 8 runs, training on 8 x h200"
    specs = paper_plan("scaling_semreg")
    for spec in specs:
        assert any(line.startswith(spec.hash) for line in lines)
    total = next(line for line in lines if line.startswith("total"))
    assert "days" in total
    assert "tokenizer XL-XXL: throughput of tokenizer B-L (nearest measured)" in out
    assert "tokenizer S-S bf16: 117.0 TFLOP/s" in out and "python bench/gpu_mfu.py" in out and "2026-11-28" in out
    assert "AR-B compiled bf16: 325.0 TFLOP/s = 32.9% of 989" in out  # the AR step's default form on a GPU
    assert "not priced: evaluation" in out
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()  # a dry run writes nothing

    code, out, _ = run_cli([*PAPER_ESTIMATE, "--json"], tmp_path, monkeypatch, capsys)
    assert code == 0
    plan = json.loads(out)
    assert plan["gpu"] == "h200" and plan["gpus"] == 8 and len(plan["runs"]) == 8
    expected = (
        sum(
            flops["tokenizer"]
            / (rate("tokenizer", "S-S" if s.tokenizer.tokenizer.name in ("S-S", "S-B") else "B-L") * 1e12)
            + flops["ar"] / (rate("ar", "B", compiled=True) * 1e12)
            for s in specs
            for flops in [run_training_flops(s)]
        )
        / 3600
    )
    assert plan["total"]["gpu_hours"] == pytest.approx(expected)
    assert plan["total"]["gpu_hours"] == pytest.approx(sum(r["gpu_hours"] for r in plan["runs"]))
    assert plan["total"]["wall_hours"] == pytest.approx(expected / 8)
    assert f"{expected:,.1f}" in total  # the text's total is the JSON's


def test_a_finished_run_in_the_store_costs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tracking_store import log_study_run, study_experiment, study_run_tags

    from gigatok.tracking import connect

    spec = paper_plan("scaling_semreg", "size=S-S,semreg=True")[0]
    client = connect(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = study_experiment(client, "scaling_semreg", "paper")
    tags = study_run_tags("scaling_semreg", "paper", spec.hash, spec.factor_dict)
    log_study_run(client, experiment, tags, run_name=spec.label)
    code, out, err = run_cli([*PAPER_ESTIMATE, "--json", "--only", "size=S-S"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    runs = {r["hash"]: r for r in json.loads(out)["runs"]}
    assert runs[spec.hash]["gpu_hours"] == 0
    assert runs[spec.hash]["stages"]["tokenizer"]["free"] == "finished"
    assert [r["gpu_hours"] > 0 for h, r in runs.items() if h != spec.hash] == [True]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*PAPER_ESTIMATE, "--gpu", "h100"], "--gpu h100: no throughput measured on h100; calibrated GPU types: h200"),
        ([*PAPER_ESTIMATE, "--gpu", "a100"], "--gpu a100: no throughput measured on a100; calibrated GPU types: h200"),
        ([*PAPER_ESTIMATE, "--gpus", "0"], "--gpus 0: expected a positive number of GPUs"),
        ([*PAPER_ESTIMATE, "--show-config"], "--estimate and --show-config: choose one"),
        ([*PAPER_ESTIMATE, "--set", "ar.performance.autocast=off"], "no AR throughput measured on h200 at fp32"),
        # estimate flags without a priced dry run
        (["scaling_semreg", "--estimate"], "--estimate goes with --dry-run"),
        (["scaling_semreg", "--dry-run", "--gpu", "h200"], "--gpu goes with --dry-run --estimate"),
        (["scaling_semreg", "--dry-run", "--gpus", "4"], "--gpus goes with --dry-run --estimate"),
        (
            ["scaling_semreg", "--dry-run", "--estimate"],
            "--profile tiny: the h200 throughputs were measured at the paper profile's",
        ),
    ],
)
def test_what_cannot_be_priced_is_a_one_line_error(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(args, tmp_path, monkeypatch, capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err, err


def test_an_unknown_gpu_type_is_an_argparse_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli([*PAPER_ESTIMATE, "--gpu", "v100"], tmp_path, monkeypatch, capsys)
    assert exit_info.value.code == 2 and "invalid choice: 'v100'" in capsys.readouterr().err
