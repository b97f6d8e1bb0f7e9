"""The CFG-scale search: grid and TPE over a shared Optuna journal, pruning, resuming, workers, MLflow records, the
cfg_search command line and the cfg_search stage.

Most tests score points with :class:`Bowl`, a synthetic gFID curve, so they exercise the search machinery in
seconds; the slow test at the end searches a tiny trained model end to end.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from services import run_cli, study_cli
from tracking_store import study_experiment, study_run_tags

import studies.catalog  # noqa: F401  (registers the studies)
from gigatok.cfg_search import (
    SearchError,
    SearchPlan,
    SearchPoint,
    SearchWorker,
    WorkerOptions,
    run_here,
    run_worker,
)
from gigatok.cfg_search.plan import grid_values
from gigatok.cfg_search.trials import claim_lock, find_study, open_storage
from gigatok.config import CfgSearchConfig, ConfigError
from gigatok.pipeline import RunContext, RunSpec, generation_eval, stage_result_path
from gigatok.study import Planner, apply_overrides, get_study

SMALL, FULL = 8, 16


# ----------------------------------------------------------------------------------------------------------
# A synthetic objective and a parent run to record under
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Bowl:
    """gFID = 10 + 4 (scale - 2)^2 on the full budget and 2 more on the small one (FID is biased up by few
    samples). Appends "<scale> <budget>" to ``log`` for every budget it reaches, so a test can see what ran, even in
    another process."""

    log: Path
    seconds: float = 0.0  # time a point takes (for the workers to overlap)
    fail_at: float | None = None  # a scale whose scoring raises

    def __call__(self, point: SearchPoint, report: Any) -> dict[str, float]:
        if self.fail_at == point.cfg_scale:
            raise RuntimeError(f"scale {point.cfg_scale} is broken")
        full = 10 + 4 * (point.cfg_scale - 2.0) ** 2
        self._note(point, SMALL)
        report(SMALL, full + 2)  # raises optuna.TrialPruned when the pruner stops the point
        time.sleep(self.seconds)
        self._note(point, FULL)
        return {"gfid": full, "precision": 0.5}

    def _note(self, point: SearchPoint, samples: int) -> None:
        with self.log.open("a") as f:
            f.write(f"{point.cfg_scale} {samples}\n")

    def reached(self) -> list[tuple[float, int]]:
        if not self.log.exists():
            return []
        return [(float(a), int(b)) for a, b in (line.split() for line in self.log.read_text().splitlines())]


def tiny_spec(stages: tuple[str, ...] | None = None) -> RunSpec:
    spec = get_study("scaling_1d_vs_2d").plan(Planner("tiny"))[0]
    spec = apply_overrides(spec, (("eval.gen_samples", str(FULL)), ("eval.batch_size", str(SMALL))))
    return dataclasses.replace(spec, stages=stages) if stages else spec


def make_parent(ctx: RunContext, spec: RunSpec) -> str:
    from gigatok.tracking import connect

    client = connect(ctx.tracking_uri)
    experiment = study_experiment(client, spec.study, spec.profile, "test")
    run = client.create_run(
        experiment, run_name=spec.label, tags=study_run_tags(spec.study, spec.profile, spec.hash, spec.factor_dict)
    )
    return run.info.run_id


def make_plan(tmp_path: Path, parent: bool = True, **search: Any) -> SearchPlan:
    spec = tiny_spec()
    ctx = RunContext(str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}", progress=False)
    settings = {"scale_min": 1.0, "scale_max": 3.0, "low_fraction": 0.5, "startup_trials": 2, **search}
    return SearchPlan(
        spec, ctx, CfgSearchConfig(**settings), "constant", parent_run_id=make_parent(ctx, spec) if parent else None
    )


def children(plan: SearchPlan) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(plan.ctx.tracking_uri)
    parent = client.get_run(plan.parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{plan.parent_run_id}'"
    )
    return runs


def gfid_steps(plan: SearchPlan, run_id: str) -> list[int]:
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(plan.ctx.tracking_uri).get_metric_history(run_id, "gfid"))


# ----------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------


def test_grid_and_study_name() -> None:
    assert grid_values(1.0, 3.0, 0.25) == (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0)
    assert grid_values(1.5, 1.5, 0.25) == (1.5,)
    ctx = RunContext("/tmp/runs", "sqlite:///tmp/mlflow.db")
    spec = tiny_spec()
    plan = SearchPlan(spec, ctx, CfgSearchConfig(), "constant")
    assert plan.full_samples == FULL and plan.low_samples == 2  # a tenth of the full budget, rounded
    assert SearchPlan(spec, ctx, CfgSearchConfig(low_fraction=0.5), "constant").low_samples == SMALL
    assert SearchPlan(spec, ctx, CfgSearchConfig(low_fraction=0.05), "constant").low_samples is None  # below 2
    name = plan.study_name
    assert name.startswith(f"cfg-{spec.ar.hash()}-constant-")
    assert SearchPlan(spec, ctx, CfgSearchConfig(), "constant").study_name == name  # stable: resumable
    for changed in (CfgSearchConfig(scale_max=2.0), CfgSearchConfig(scale_step=0.5), CfgSearchConfig(seed=1)):
        assert SearchPlan(spec, ctx, changed, "constant").study_name != name
    assert SearchPlan(spec, ctx, CfgSearchConfig(), "step").study_name != name
    step2d = SearchPlan(spec, ctx, CfgSearchConfig(fraction_min=0.1, fraction_max=0.3, fraction_step=0.1), "step")
    assert len(step2d.points) == 9 * 3 and step2d.search_space == {
        "cfg_scale": list(plan.scales),
        "step_fraction": [0.1, 0.2, 0.3],
    }
    # The study's default storage and result live beside the AR model they are about.
    assert plan.storage_location == f"/tmp/runs/ar-{spec.ar.hash()}/cfg-search/optuna.journal"
    assert plan.result_path.parent == Path(f"/tmp/runs/ar-{spec.ar.hash()}/eval")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"scale_min": 3.0, "scale_max": 1.0}, "eval.cfg_search.scale_max: the range 3.0:1.0 is empty"),
        ({"scale_step": 0}, "eval.cfg_search.scale_step: must be > 0"),
        ({"sampler": "tpe"}, "eval.cfg_search.trials: the TPE sampler needs a budget"),
        ({"trials": 4}, "only the TPE sampler takes a budget"),
        ({"fraction_min": 0.1}, "set fraction_min and fraction_max together"),
        ({"low_fraction": 1.0}, "eval.cfg_search.low_fraction"),
    ],
)
def test_bad_search_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        CfgSearchConfig(**settings)


def test_search_settings_are_in_the_hash_of_searched_runs_only() -> None:
    plain = get_study("scaling_1d_vs_2d").plan(Planner("tiny"))[0]
    changed = apply_overrides(plain, (("eval.cfg_search.scale_max", "4.0"),))
    assert changed.hash == plain.hash  # runs without the stage kept their hashes when the search came
    assert not any(k.startswith("eval.cfg_search.") for k in plain.params())
    searched = get_study("ar_probe_vs_large").plan(Planner("tiny"))[0]
    assert apply_overrides(searched, (("eval.cfg_search.scale_max", "4.0"),)).hash != searched.hash
    assert "eval.cfg_search.scale_max" in searched.params()


def test_searched_studies_and_stage_order() -> None:
    for name, schedule in (("ar_probe_vs_large", "constant"), ("system_level", "step")):
        for spec in get_study(name).plan(Planner("paper")):
            stages = spec.ordered_stages()
            assert stages.index("cfg_search") == stages.index("generation") - 1, name
            assert spec.eval.cfg_schedule == schedule and spec.eval.step_fraction == 0.18
    for name in ("scaling_1d_vs_2d", "reg_weight", "decode_cost"):
        assert not any("cfg_search" in s.stages for s in get_study(name).plan(Planner("tiny")))
    tiny = get_study("ar_probe_vs_large").plan(Planner("tiny"))[0].eval.cfg_search
    assert grid_values(tiny.scale_min, tiny.scale_max, tiny.scale_step) == (1.0, 1.25, 1.5, 1.75, 2.0)


def test_generation_samples_at_the_searched_point(tmp_path: Path) -> None:
    """With the cfg_search stage, the generation stage's result is the search's trial result at its best point."""
    spec = get_study("ar_probe_vs_large").plan(Planner("tiny"))[0]
    ctx = RunContext(str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert generation_eval(spec, ctx) is None
    assert stage_result_path(spec, ctx, "generation").name == "generation-after-cfg-search.json"
    plan = SearchPlan.for_run(spec, ctx)
    assert stage_result_path(spec, ctx, "cfg_search") == plan.result_path
    plan.result_path.parent.mkdir(parents=True)
    plan.result_path.write_text(json.dumps({"best_scale": 1.25, "best_step_fraction": 0.18, "schedule": "constant"}))
    assert generation_eval(spec, ctx).cfg_scale == 1.25
    trial = plan.trial_spec(SearchPoint(1.25, 0.18), spec.eval.gen_samples)
    assert stage_result_path(spec, ctx, "generation") == stage_result_path(trial, ctx, "generation")


def test_the_small_budget_is_scored_from_the_streamed_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GenerationScorer runs the generation stage at the trial's settings and reports the FID of the stream's first
    ``low_samples`` feature rows, which the stage hands to its ``on_features`` hook on their way."""
    import numpy as np

    from gigatok.cfg_search import GenerationScorer, scoring
    from gigatok.metrics.accumulators import FeatureMoments
    from gigatok.metrics.fid import frechet_distance_gaussians
    from gigatok.runs.context import StageOutcome

    plan = make_plan(tmp_path, parent=False)
    assert plan.low_samples == SMALL
    rows = np.random.default_rng(0).standard_normal((FULL, 4)).astype(np.float32)
    calls: list[tuple[RunSpec, Any]] = []

    def generation_at(sc: Any, e: Any, on_features: Any = None) -> StageOutcome:
        calls.append((sc.spec, e))
        for start in range(0, FULL, 4):  # batches of 4 feature rows
            if on_features is not None:
                on_features(rows[start : start + 4])
        return StageOutcome("generation", {"gfid": 3.0})

    monkeypatch.setattr(scoring, "generation_at", generation_at)
    scorer = GenerationScorer(plan, workspace=object())  # type: ignore[arg-type]
    # The reference summary's moments are all the small-budget FID reads (and prepare() skips a set reference).
    scorer.reference = reference = SimpleNamespace(mean=np.zeros(4), covariance=np.eye(4), all_rows=lambda: None)
    reports: list[tuple[int, float]] = []
    assert scorer(SearchPoint(1.5, 0.18), lambda samples, gfid: reports.append((samples, gfid))) == {"gfid": 3.0}
    moments = FeatureMoments(4)
    moments.update(rows[:SMALL])
    expected = frechet_distance_gaussians(moments.mean, moments.covariance, reference.mean, reference.covariance)
    assert reports == [(SMALL, pytest.approx(expected))]
    spec, e = calls[0]
    assert spec.stages == ("generation",) and e == spec.eval and (e.cfg_scale, e.gen_samples) == (1.5, FULL)
    assert scorer.rescore(SearchPoint(1.5, 0.18), 4) == {"gfid": 3.0} and calls[1][1].gen_samples == 4


def test_evaluate_generation_shows_on_features_the_generated_batches_only() -> None:
    import torch

    from gigatok.metrics.features import FeatureNetworkInfo
    from gigatok.metrics.generation import evaluate_generation

    class Network:  # 8 numbers of each uint8 image
        info = FeatureNetworkInfo(
            registry_name="stub",
            filename="stub.pt",
            sha256="0" * 64,
            title="stub",
            has_logits=False,
            input_size=8,
            layer="8",
        )
        has_logits = False

        def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
            return images.flatten(1)[:, :8].float() / 255, None

    images = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seen: list[int] = []
    evaluate_generation(
        [images[:4], images[4:]],
        [images.flip(-1)],
        Network(),
        samples_description="10 images",
        reference_description="10 flipped",
        progress=False,
        on_features=lambda f: seen.append(len(f)),
    )
    assert seen == [4, 6]


# ----------------------------------------------------------------------------------------------------------
# The search machinery, on a synthetic objective
# ----------------------------------------------------------------------------------------------------------


def test_pruning_records_and_resuming(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    bowl = Bowl(tmp_path / "bowl.log")
    summary = run_here(plan, bowl, log=lambda line: None)

    trials = find_study(plan)
    assert len(trials) == 9 and {plan.point_of(t.params) for t in trials} == set(plan.points)
    states = {plan.point_of(t.params).cfg_scale: t.state.name for t in trials}
    pruned = [s for s, state in states.items() if state == "PRUNED"]
    assert pruned and states[2.0] == "COMPLETE"  # the median rule stopped some points, never the best
    reached_full = {s for s, n in bowl.reached() if n == FULL}
    assert reached_full == {s for s, state in states.items() if state == "COMPLETE"}  # pruned: small budget only

    assert summary["best_scale"] == 2.0 and summary["best_gfid"] == 10.0 and summary["best_gfid_samples"] == FULL
    assert json.loads(plan.result_path.read_text())["best_scale"] == 2.0

    runs = children(plan)
    assert len(runs) == 9 and sorted(int(r.data.params["trial_number"]) for r in runs) == list(range(9))
    for run in runs:
        tags, params = run.data.tags, run.data.params
        assert tags["gigatok.kind"] == "cfg_trial" and "gigatok.run_hash" not in tags
        assert tags["gigatok.study"] == "scaling_1d_vs_2d" and tags["gigatok.profile"] == "tiny"
        assert tags["gigatok.cfg_search"] == plan.study_name
        assert params["cfg_schedule"] == "constant" and params["sample_budget"] == str(FULL)
        assert float(params["step_fraction"]) == 0.18
        state = states[float(params["cfg_scale"])]
        assert tags["gigatok.trial_state"] == state and run.info.status == "FINISHED"
        if state == "COMPLETE":
            assert gfid_steps(plan, run.info.run_id) == [SMALL, FULL]
            assert run.data.metrics["gfid"] == 10 + 4 * (float(params["cfg_scale"]) - 2) ** 2  # latest = full
        else:
            assert gfid_steps(plan, run.info.run_id) == [SMALL]

    from mlflow import MlflowClient

    parent = MlflowClient(plan.ctx.tracking_uri).get_run(plan.parent_run_id)
    assert parent.data.metrics["cfg_best_scale"] == 2.0 and parent.data.metrics["cfg_best_gfid"] == 10.0
    assert parent.data.tags["gigatok.cfg_search"] == plan.study_name
    assert parent.data.tags["gigatok.cfg_schedule"] == "constant"

    # Invoked again: the same study, nothing left to run, nothing recorded twice.
    calls = len(bowl.reached())
    again = run_here(plan, bowl, log=lambda line: None)
    assert again["best_scale"] == 2.0 and len(bowl.reached()) == calls
    assert len(find_study(plan)) == 9 and len(children(plan)) == 9
    history = MlflowClient(plan.ctx.tracking_uri).get_metric_history(plan.parent_run_id, "cfg_best_scale")
    assert len(history) == 1


@pytest.mark.slow  # two worker processes, ~30 s on two busy cores (nothing is trained)
def test_two_local_workers_share_one_journal(tmp_path: Path) -> None:
    """Two Submitit local processes pull the nine points of one grid from one journal: each point runs once."""
    import cloudpickle

    from gigatok.cfg_search import prepare
    from gigatok.dispatch import make_executor

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    plan = make_plan(tmp_path, pruner="none")
    bowl = Bowl(tmp_path / "bowl.log", seconds=1.0)
    prepare(plan)
    executor = make_executor("local", tmp_path / "jobs")
    jobs = [executor.submit(SearchWorker(plan, i, bowl)) for i in range(2)]
    reports = [job.result() for job in jobs]

    ran = sorted(n for r in reports for n, state in r.trials)
    assert ran == list(range(9))  # neither lost nor duplicated
    assert all(r.trials for r in reports), "one worker did all the work: they did not overlap"
    trials = find_study(plan)
    assert len(trials) == 9 and all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(plan.point_of(t.params) for t in trials) == plan.points
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert sorted(s for s, n in bowl.reached() if n == FULL) == list(plan.scales)
    runs = children(plan)
    assert sorted(int(r.data.params["trial_number"]) for r in runs) == list(range(9))
    assert json.loads(plan.result_path.read_text())["best_scale"] == 2.0  # the last worker to end wrote it
    assert not list(plan.heartbeat_dir.glob("*.alive"))  # both ended normally


def test_failed_trials_are_retried_on_the_next_invocation(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, scale_max=2.0, pruner="none")
    with pytest.raises(SearchError, match=r"incomplete: 1 points without a result; 1 failed .*scale 1.5 is broken"):
        run_here(plan, Bowl(tmp_path / "bowl.log", fail_at=1.5), log=lambda line: None)
    assert not plan.result_path.exists()
    failed = [r for r in children(plan) if r.data.tags["gigatok.trial_state"] == "FAIL"]
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "scale 1.5 is broken" in failed[0].data.tags["gigatok.error"]

    bowl = Bowl(tmp_path / "fixed.log")
    summary = run_here(plan, bowl, log=lambda line: None)
    assert bowl.reached() == [(1.5, SMALL), (1.5, FULL)]  # only the failed point ran again
    assert summary["best_scale"] == 2.0
    assert len(find_study(plan)) == 6 and len(children(plan)) == 6  # the failed trial stays on record


@dataclasses.dataclass
class Interrupted(Bowl):
    """Ctrl-C (or a job's time limit) while a point is being scored."""

    def __call__(self, point: SearchPoint, report: Any) -> dict[str, float]:
        if point.cfg_scale == 1.25:
            raise KeyboardInterrupt
        return super().__call__(point, report)


def test_an_interrupted_trial_is_queued_again(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, scale_max=1.5, pruner="none")
    with pytest.raises(KeyboardInterrupt):
        run_here(plan, Interrupted(tmp_path / "first.log"), log=lambda line: None)
    states = {t.state.name for t in find_study(plan)}
    assert "FAIL" in states and "WAITING" in states and "RUNNING" not in states
    interrupted = [r for r in children(plan) if r.data.tags["gigatok.trial_state"] == "FAIL"]
    assert len(interrupted) == 1 and interrupted[0].data.tags["gigatok.error"] == "interrupted (KeyboardInterrupt)"
    bowl = Bowl(tmp_path / "second.log")
    assert run_here(plan, bowl, log=lambda line: None)["best_scale"] == 1.5
    assert (1.25, FULL) in bowl.reached()


def test_a_dead_workers_trial_is_failed_and_run_again(tmp_path: Path) -> None:
    from gigatok.cfg_search import prepare
    from gigatok.cfg_search.trials import claim, load_study

    plan = make_plan(tmp_path, scale_max=1.5, pruner="none")
    prepare(plan)
    storage = open_storage(plan)
    study = load_study(plan, storage)
    with claim_lock(plan):
        _, lost_point = claim(plan, study, "ghost-worker")  # claimed by a worker that never sends a heartbeat
    time.sleep(0.3)
    bowl = Bowl(tmp_path / "bowl.log")
    run_worker(plan, bowl, options=WorkerOptions(grace_s=0.2), log=lambda line: None)

    trials = find_study(plan)
    lost = [t for t in trials if t.user_attrs.get("worker") == "ghost-worker"]
    assert (
        len(lost) == 1 and lost[0].state.name == "FAIL" and "stopped sending heartbeats" in lost[0].user_attrs["error"]
    )
    assert sorted(s for s, n in bowl.reached() if n == FULL) == [1.0, 1.25, 1.5]
    assert lost_point.cfg_scale in {s for s, _ in bowl.reached()}
    assert json.loads(plan.result_path.read_text())["best_scale"] == 1.5


def test_tpe_spends_its_budget_without_scoring_a_point_twice(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, sampler="tpe", trials=8, scale_max=2.0, pruner="none")
    bowl = Bowl(tmp_path / "bowl.log")
    summary = run_here(plan, bowl, log=lambda line: None)
    trials = find_study(plan)
    assert len(trials) == 8 and summary["best_scale"] == 2.0
    full = [s for s, n in bowl.reached() if n == FULL]
    assert len(full) == len(set(full)) <= 5  # five points: proposals seen before reuse their score
    duplicates = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(duplicates) == 8 - len(full)
    assert len(children(plan)) == len(full)  # a reused score is not a new measurement


def test_two_dimensional_step_schedule_search(tmp_path: Path) -> None:
    spec = tiny_spec()
    ctx = RunContext(str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}")
    search = CfgSearchConfig(
        scale_min=1.5,
        scale_max=2.0,
        fraction_min=0.1,
        fraction_max=0.2,
        fraction_step=0.1,
        low_fraction=0.5,
        pruner="none",
    )
    plan = SearchPlan(spec, ctx, search, "step", parent_run_id=make_parent(ctx, spec))
    summary = run_here(plan, Bowl(tmp_path / "bowl.log"), log=lambda line: None)
    assert len(find_study(plan)) == 6 and summary["best_scale"] == 2.0 and summary["best_step_fraction"] == 0.1
    fractions = {r.data.params["step_fraction"] for r in children(plan)}
    assert fractions == {"0.1", "0.2"}
    from mlflow import MlflowClient

    parent = MlflowClient(ctx.tracking_uri).get_run(plan.parent_run_id)
    assert parent.data.metrics["cfg_best_step_fraction"] == 0.1 and parent.data.tags["gigatok.cfg_schedule"] == "step"
    # ... and reaches the analysis table with the search's other numbers (its trials are no rows of it)
    from analysis.load import load_runs

    row = load_runs(ctx.tracking_uri).set_index("run_id").loc[plan.parent_run_id]
    assert (row["cfg_best_step_fraction"], row["cfg_best_scale"]) == (0.1, 2.0)


def test_the_objective_is_named_and_each_trial_leads_to_its_runs(tmp_path: Path) -> None:
    """optuna-dashboard and ``optuna studies`` show "gfid", not "Objective 0"; a trial names the study run searched
    (MLflow run id and run hash) and its own child run."""
    import optuna

    from gigatok.cfg_search.trials import load_study

    plan = make_plan(tmp_path, scale_max=1.5, pruner="none")
    run_here(plan, Bowl(tmp_path / "bowl.log"), log=lambda line: None)
    study = optuna.load_study(study_name=plan.study_name, storage=open_storage(plan))
    assert study.metric_names == ["gfid"]
    children_by_number = {int(r.data.params["trial_number"]): r.info.run_id for r in children(plan)}
    assert len(study.trials) == 3
    for t in study.trials:
        assert t.user_attrs["mlflow_run_id"] == plan.parent_run_id and t.user_attrs["run_hash"] == plan.spec.hash
        assert t.user_attrs["mlflow_trial_run_id"] == children_by_number[t.number]

    # A study made before the name came (or by another tool) is named when the workbench loads it.
    older = dataclasses.replace(make_plan(tmp_path / "older", parent=False), storage=str(tmp_path / "older.journal"))
    optuna.create_study(storage=open_storage(older), study_name=older.study_name, direction="minimize")
    assert optuna.load_study(study_name=older.study_name, storage=open_storage(older)).metric_names is None
    assert load_study(older, open_storage(older)).metric_names == ["gfid"]
    run_here(older, Bowl(tmp_path / "older.log"), log=lambda line: None)  # no MLflow parent: no run id to record
    trial = find_study(older)[0]
    assert trial.user_attrs["run_hash"] == older.spec.hash and "mlflow_run_id" not in trial.user_attrs


# ----------------------------------------------------------------------------------------------------------
# The command line: dry run and bad input (nothing is trained)
# ----------------------------------------------------------------------------------------------------------

TARGET = ["cfg_search", "--study", "scaling_1d_vs_2d", "--only", "size=S-S,kind=1d,seed=0"]


def fake_trained_ar(tmp_path: Path) -> None:
    """The file that says the AR stage finished (the checks before a search look no further)."""
    spec = get_study("scaling_1d_vs_2d").plan(Planner("tiny"))[0]
    path = stage_result_path(spec, RunContext(str(tmp_path / "runs"), ""), "ar")
    path.parent.mkdir(parents=True)
    path.write_text("{}")


def test_dry_run_lists_the_trials_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        [*TARGET, "--dry-run", "--range", "1.0:2.0", "--low-samples", "24"], tmp_path, monkeypatch, capsys
    )
    assert code == 0
    assert "Optuna study  cfg-" in out and "optuna.journal (new)" in out
    assert "24 samples first, then 96 samples" in out and "NOT TRAINED" in out
    assert out.count("TO RUN") == 5 and "5 trials to run" in out
    code, out, _ = run_cli(
        [
            *TARGET,
            "--dry-run",
            "--json",
            "--schedule",
            "step",
            "--fraction-range",
            "0.1:0.2",
            "--fraction-step",
            "0.1",
            "--range",
            "1.5:2.0",
        ],
        tmp_path,
        monkeypatch,
        capsys,
    )
    preview = json.loads(out)
    assert code == 0 and preview["schedule"] == "step" and len(preview["points"]) == 3 * 2
    assert preview["fractions"] == [0.1, 0.2] and preview["to_run"] == 6
    assert not any(tmp_path.iterdir())  # no store, no journal, no runs folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--range", "3:1"], "--range 3:1: the range is empty (3 is above 1)"),
        (["--range", "one:two"], "--range one:two: expected LO:HI"),
        (["--step", "0"], "--step 0: must be > 0"),
        (["--sampler", "tpe"], "--sampler tpe needs a budget: --trials N"),
        (["--trials", "5"], "--trials applies to --sampler tpe"),
        (["--fraction-range", "0.1:0.3"], "add --schedule step"),
        (["--low-samples", "96"], "small budget 96 samples: must be at least 2 and below the full budget (96"),
        (["--workers", "0"], "--workers 0: must be >= 1"),
        ([], "has no trained AR model"),
        (["--storage", "{fake}/journal.log/here"], "not writable"),
        (["--storage", "{fake}"], "is a directory, not a file"),
        (["--executor", "kubernetes"], "unknown executor 'kubernetes'"),
        ([], "has no MLflow run in experiment scaling_1d_vs_2d-tiny"),
    ],
)
def test_bad_input_is_one_line_and_records_nothing(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    needs_model = message.startswith(("not writable", "is a directory", "unknown executor", "has no MLflow"))
    if needs_model:
        fake_trained_ar(tmp_path)
    (tmp_path / "journal.log").write_text("")
    args = [a.replace("{fake}", str(tmp_path)) for a in args]
    code, _, err = run_cli([*TARGET, *args], tmp_path, monkeypatch, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    # No search state; the MLflow store may exist (opened to look the run up), with the lock it is opened under.
    locks = [p for p in tmp_path.rglob("*.lock") if p.name != ".mlflow.db.open.lock"]
    assert not list(tmp_path.rglob("optuna.journal")) and not locks
    if (tmp_path / "mlflow.db").exists():
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_target_must_be_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        ["cfg_search", "--study", "scaling_1d_vs_2d", "--only", "size=S-S", "--dry-run"], tmp_path, monkeypatch, capsys
    )
    assert code == 2 and "has 4 matching --only size=S-S" in err and "narrow --only" in err  # 1d, 2d; two seeds
    spec = get_study("ar_probe_vs_large").plan(Planner("tiny"))[0]
    code, out, _ = run_cli(["cfg_search", "--only", spec.hash[:8], "--dry-run"], tmp_path, monkeypatch, capsys)
    assert code == 0 and f"run {spec.hash} ({spec.label}) of study ar_probe_vs_large" in out
    shared = get_study("scaling_1d_vs_2d").plan(Planner("tiny"))[0]  # the same S-S run as reg_weight's lambda=0.5
    code, _, err = run_cli(["cfg_search", "--only", shared.hash, "--dry-run"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "studies (" in err and "choose one with --study" in err
    code, _, err = run_cli(["cfg_search", "--only", "size=S-S", "--dry-run"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "name the run: --study NAME --only FILTERS" in err


def test_optuna_storage_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --storage the search uses $OPTUNA_STORAGE when it is set (a path resolved as --storage's), else the
    journal beside the AR model; --storage wins over both, and --help says so."""
    from gigatok import launch
    from studies import cfg_search as cli

    monkeypatch.chdir(tmp_path)
    spec, ctx = tiny_spec(), RunContext(str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}")

    def planned(*flags: str) -> str:
        return launch.search_plan(cli.parse_search_args(list(flags)), spec, ctx).storage_location

    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    assert planned() == str(tmp_path / "runs" / f"ar-{spec.ar.hash()}" / "cfg-search" / "optuna.journal")
    monkeypatch.setenv("OPTUNA_STORAGE", "sqlite:///shared/optuna.db")
    assert planned() == "sqlite:///shared/optuna.db"
    monkeypatch.setenv("OPTUNA_STORAGE", "shared.journal")
    assert planned() == str(Path("shared.journal").resolve())
    assert planned("--storage", "mine.journal") == str(Path("mine.journal").resolve())
    monkeypatch.setenv("OPTUNA_STORAGE", "")  # set but empty: as if unset
    assert planned().endswith("optuna.journal") and "runs" in planned()

    # The command line: a dry run shows the storage it would use.
    monkeypatch.setenv("OPTUNA_STORAGE", "sqlite:///shared/optuna.db")
    assert cli.main([*TARGET[1:], "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["storage"] == "sqlite:///shared/optuna.db"
    with pytest.raises(SystemExit):
        cli.parse_search_args(["--help"])
    assert "$OPTUNA_STORAGE when set" in " ".join(capsys.readouterr().out.split())


def test_only_takes_the_runs_mlflow_run_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--only with a study run's MLflow run id picks the run its tags name (study and run hash): the same run as its
    hash prefix, without --study even where several studies plan that hash."""
    spec = get_study("scaling_1d_vs_2d").plan(Planner("tiny"))[0]  # also reg_weight's lambda=0.5 run
    ctx = RunContext(str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = make_parent(ctx, spec)
    by_hash = ["cfg_search", "--study", "scaling_1d_vs_2d", "--only", spec.hash[:8], "--dry-run", "--json"]
    code, out, _ = run_cli(by_hash, tmp_path, monkeypatch, capsys)
    assert code == 0
    expected = json.loads(out)
    for args in (["--only", run_id], ["--only", run_id.upper(), "--study", "scaling_1d_vs_2d"]):
        code, out, err = run_cli(["cfg_search", *args, "--dry-run", "--json"], tmp_path, monkeypatch, capsys)
        assert code == 0, err
        assert json.loads(out) == expected and expected["run_hash"] == spec.hash and expected["parent_run_id"] == run_id


def bad_ids(ctx: RunContext, spec: RunSpec, parent: str) -> dict[str, tuple[list[str], str]]:
    """MLflow run ids --only refuses, and the one line each gets."""
    from gigatok.cfg_search import TrialRecorder
    from gigatok.tracking import connect

    plan = SearchPlan(spec, ctx, CfgSearchConfig(), "constant", parent_run_id=parent)
    trial = TrialRecorder.for_plan(plan).start(0, SearchPoint(1.0, 0.18))
    client = connect(ctx.tracking_uri)
    stale = client.create_run(
        client.get_run(parent).info.experiment_id,
        tags=study_run_tags(spec.study, spec.profile, "0123456789ab", spec.factor_dict),
    ).info.run_id
    unknown = "0" * 32
    return {
        "unknown": (["--only", unknown], f"--only {unknown}: no MLflow run with this id in sqlite:///"),
        "trial": (["--only", trial], f"MLflow run {trial} is a cfg_trial run of study run {parent}"),
        "study": (["--only", parent, "--study", "reg_weight"], "is a run of study scaling_1d_vs_2d, not of reg_weight"),
        "not alone": (["--only", f"{parent},seed=0"], f"an MLflow run id ({parent}) names one run; pass it alone"),
        "not planned": (["--only", stale], "is run 0123456789ab of study scaling_1d_vs_2d, which the plan at profile"),
        "profile": (["--only", parent, "--profile", "paper"], "was run at profile tiny: pass --profile tiny"),
        "no store": (["--only", unknown, "--tracking-uri", "sqlite:///nowhere/m.db"], "(no such store"),
        "hash length": (["--only", "0123456789abcdef"], "(a run hash has 12 hex digits, an MLflow run id 32)"),
        "unknown hash": (["--only", "fedcba"], "--only fedcba: no run of any study at profile tiny has such a hash"),
    }


def test_an_unknown_or_wrong_run_id_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = get_study("scaling_1d_vs_2d").plan(Planner("tiny"))[0]
    ctx = RunContext(str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name, (args, message) in bad_ids(ctx, spec, make_parent(ctx, spec)).items():
        code, _, err = run_cli(["cfg_search", *args, "--dry-run"], tmp_path, monkeypatch, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (name, err)
    assert not (tmp_path / "nowhere").exists()  # a store that is not there is not created


# ----------------------------------------------------------------------------------------------------------
# End to end on a tiny trained model
# ----------------------------------------------------------------------------------------------------------

SHORT = [
    "--set",
    "tokenizer.train.max_steps=6",
    "--set",
    "ar.train.max_steps=6",
    "--set",
    "eval.recon_images=16",
    "--set",
    "eval.reference_images=16",
    "--set",
    f"eval.gen_samples={FULL}",
    "--set",
    f"eval.batch_size={SMALL}",
    "--set",
    "eval.probe_max_iter=200",
    "--set",
    "eval.grid_images=0",
    "--set",
    "eval.inception_input=75",
    "--set",
    "eval.cfg_search.scale_max=1.5",  # 75 px: Inception is the cost
    "--seeds",
    "1",
]


@pytest.mark.slow
def test_tiny_search_in_a_study_and_from_the_command_line(tmp_path: Path) -> None:
    """ar_probe_vs_large searches its CFG scale as a stage and reports gFID at the best one; the cfg_search command
    then finds that search done, and a wider search reuses the points already sampled."""
    from mlflow import MlflowClient

    target = ["--only", "size=S-S,ar_size=B"]
    run = study_cli(["ar_probe_vs_large", *target, "--executor", "debug", *SHORT], tmp_path, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ar_probe_vs_large-tiny")
    everything = client.search_runs([experiment.experiment_id])
    parent = next(r for r in everything if "gigatok.run_hash" in r.data.tags)
    trials = [r for r in everything if r.data.tags.get("gigatok.kind") == "cfg_trial"]
    assert parent.info.status == "FINISHED" and len(everything) == 1 + 3
    assert {float(r.data.params["cfg_scale"]) for r in trials} == {1.0, 1.25, 1.5}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    complete = {
        float(r.data.params["cfg_scale"]): r.data.metrics["gfid"]
        for r in trials
        if r.data.tags["gigatok.trial_state"] == "COMPLETE"
    }
    best_scale = min(complete, key=complete.__getitem__)
    m = parent.data.metrics
    assert m["cfg_best_scale"] == best_scale and m["cfg_best_gfid"] == complete[best_scale]
    # The reported gFID is the best point's: the generation stage found the trial's result instead of sampling.
    assert m["gfid"] == m["cfg_best_gfid"] and parent.data.tags["gigatok.cfg_scale"] == str(best_scale)
    search_name = parent.data.tags["gigatok.cfg_search"]
    for r in trials:
        expected = [SMALL] if r.data.tags["gigatok.trial_state"] == "PRUNED" else [SMALL, FULL]
        assert sorted(x.step for x in client.get_metric_history(r.info.run_id, "gfid")) == expected

    # The same search from the command line: already complete, no new trial.
    search = ["cfg_search", "--study", "ar_probe_vs_large", *target, *SHORT, "--executor", "debug"]
    again = study_cli(search, tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"nothing to do: search {search_name}" in again.stdout and f"best: cfg {best_scale:g}" in again.stdout
    assert len(client.search_runs([experiment.experiment_id])) == 4

    # A wider range is a new study, here with two local worker processes: the three points sampled before are
    # read from disk, two are new.
    wider = study_cli(
        [*search[:-2], "--executor", "local", "--workers", "2", "--range", "1.0:2.0"], tmp_path, timeout=900
    )
    assert wider.returncode == 0, wider.stdout[-3000:] + wider.stderr[-3000:]
    parent = client.get_run(parent.info.run_id)
    new_name = parent.data.tags["gigatok.cfg_search"]
    assert new_name != search_name
    new_trials = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("gigatok.cfg_search") == new_name and "mlflow.parentRunId" in r.data.tags
    ]
    assert sorted(float(r.data.params["cfg_scale"]) for r in new_trials) == [1.0, 1.25, 1.5, 1.75, 2.0]
    assert parent.data.metrics["cfg_best_scale"] in (1.0, 1.25, 1.5, 1.75, 2.0)
    assert (
        "2 local worker(s)" in wider.stderr  # a log line
        and wider.stdout.count(" COMPLETE ") + wider.stdout.count(" PRUNED ") == 5
        and "best: cfg" in wider.stdout
    )
