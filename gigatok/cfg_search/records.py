"""MLflow records of a CFG search: one child run per trial under the run it tunes, and the best point on that run.

What ``analysis`` reads (keep it stable):

- a trial is a run in the parent's experiment, tagged ``mlflow.parentRunId`` (the parent, passed explicitly, never
  through ``MLFLOW_RUN_ID``), ``gigatok.kind = cfg_trial``, ``gigatok.study`` and ``gigatok.profile`` (the parent's),
  ``gigatok.cfg_search`` (the Optuna study name) and, once it ends, ``gigatok.trial_state`` = COMPLETE, PRUNED or
  FAIL. It has no ``gigatok.run_hash``: a trial is never mistaken for a run of the study.
- params ``cfg_scale``, ``cfg_schedule``, ``step_fraction``, ``sample_budget`` (the full budget), ``trial_number``;
- metric ``gfid`` at step = samples scored: the small-budget score at the small budget, the full-budget score at
  the full budget, so a COMPLETE trial's latest ``gfid`` is its full-budget score;
- the parent gets metrics ``cfg_best_scale`` and ``cfg_best_gfid`` (and ``cfg_best_step_fraction`` when the
  fraction is searched) and tags ``gigatok.cfg_search`` and ``gigatok.cfg_schedule``.

The Optuna storage is the record of what was evaluated; :meth:`TrialRecorder.sync` brings MLflow in line with it
(a trial another run's search evaluated for the same AR model, or one whose worker died before saying how it ended).
"""

from __future__ import annotations

import time
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from gigatok import tracking_schema as schema
from gigatok.cfg_search.plan import SearchPlan, SearchPoint
from gigatok.tracking import connect

TRIAL_KIND = schema.CFG_TRIAL
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _metric(key: str, value: float, step: int) -> Any:
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), step)


class TrialRecorder:
    """Writes the child runs of one search under one parent run."""

    def __init__(self, client: Any, plan: SearchPlan, parent_run_id: str) -> None:
        self.client = client
        self.plan = plan
        self.parent_run_id = parent_run_id
        parent = client.get_run(parent_run_id)
        self.experiment_id = parent.info.experiment_id
        self.study = parent.data.tags.get(schema.STUDY, plan.spec.study)
        self.profile = parent.data.tags.get(schema.PROFILE, plan.spec.profile)

    @classmethod
    def for_plan(cls, plan: SearchPlan) -> TrialRecorder | None:
        if plan.parent_run_id is None:
            return None
        return cls(connect(plan.ctx.tracking_uri), plan, plan.parent_run_id)

    # -- one trial --------------------------------------------------------------------------------------------
    def start(self, number: int, point: SearchPoint, origin: str | None = None) -> str:
        from mlflow.entities import Param

        tags = schema.trial_tags(
            parent_run_id=self.parent_run_id, study=self.study, profile=self.profile, search=self.plan.study_name
        )
        if origin:
            tags[schema.CFG_TRIAL_ORIGIN] = origin
        name = f"{point.label(self.plan.searches_fraction)} (trial {number})"
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        params = {
            "cfg_scale": point.cfg_scale,
            "cfg_schedule": self.plan.schedule,
            "step_fraction": point.step_fraction,
            "sample_budget": self.plan.full_samples,
            "trial_number": number,
        }
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()], synchronous=True)
        return run.info.run_id

    def intermediate(self, run_id: str, samples: int, gfid: float) -> None:
        self.client.log_batch(run_id, metrics=[_metric("gfid", gfid, samples)], synchronous=True)

    def finish(
        self, run_id: str, state: TrialState, metrics: dict[str, float] | None = None, error: str | None = None
    ) -> None:
        """The trial's end: its full-budget metrics (COMPLETE), its state and, for FAIL, the error."""
        if metrics:
            batch = [_metric(k, v, self.plan.full_samples) for k, v in metrics.items() if v == v]
            self.client.log_batch(run_id, metrics=batch, synchronous=True)
        if error:
            self.client.set_tag(run_id, schema.ERROR, error[:1000])
        self.client.set_tag(run_id, schema.TRIAL_STATE, state.name)
        self.client.set_terminated(run_id, "FAILED" if state == TrialState.FAIL else "FINISHED")

    # -- in line with the storage -----------------------------------------------------------------------------
    def children(self) -> dict[int, Any]:
        """This search's child runs under the parent, by trial number."""
        query = (
            f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and "
            f"tags.`{schema.CFG_SEARCH}` = '{self.plan.study_name}'"
        )
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=50_000)
        return {int(r.data.params["trial_number"]): r for r in runs if "trial_number" in r.data.params}

    def sync(self, trials: list[FrozenTrial]) -> int:
        """Give every ended trial a finished child run; returns how many runs were created or completed."""
        children = self.children()
        changed = 0
        for t in trials:
            if t.state not in ENDED or not t.params or "duplicate_of" in t.user_attrs:
                continue
            child = children.get(t.number)
            if child is not None and schema.TRIAL_STATE in child.data.tags:
                continue
            if child is None:
                run_id = self.start(t.number, self.plan.point_of(t.params), origin="copied from the Optuna storage")
                logged = False
            else:
                run_id, logged = child.info.run_id, "gfid" in child.data.metrics
            if not logged:
                for step, value in sorted(t.intermediate_values.items()):
                    self.intermediate(run_id, step, value)
            self.finish(run_id, t.state, trial_metrics(t), t.user_attrs.get("error"))
            changed += 1
        return changed

    def record_best(self, summary: dict[str, Any]) -> None:
        """The best point on the parent run (skipped when the parent already says the same)."""
        from mlflow.entities import Metric

        parent = self.client.get_run(self.parent_run_id)
        metrics = {schema.CFG_BEST_SCALE: summary["best_scale"], schema.CFG_BEST_GFID: summary["best_gfid"]}
        if self.plan.searches_fraction:
            metrics[schema.CFG_BEST_STEP_FRACTION] = summary["best_step_fraction"]
        tags = {schema.CFG_SEARCH: self.plan.study_name, schema.CFG_SCHEDULE: self.plan.schedule}
        now = int(time.time() * 1000)
        new = [Metric(k, float(v), now, 0) for k, v in metrics.items() if parent.data.metrics.get(k) != float(v)]
        if new:
            self.client.log_batch(self.parent_run_id, metrics=new, synchronous=True)
        for key, value in tags.items():
            if parent.data.tags.get(key) != value:
                self.client.set_tag(self.parent_run_id, key, value)


def trial_metrics(trial: FrozenTrial) -> dict[str, float] | None:
    """A COMPLETE trial's full-budget metrics: gFID and what else the score stored."""
    if trial.state != TrialState.COMPLETE or trial.value is None:
        return None
    return {"gfid": float(trial.value), **trial.user_attrs.get("metrics", {})}
