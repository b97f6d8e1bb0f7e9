"""Synthetic MLflow stores for the analysis tests, tagged through :mod:`gigatok.tracking_schema`.

The experiments and runs are tagged as ``studies/run.py`` tags them (:func:`schema.experiment_tags`,
:func:`schema.run_tags`, :func:`schema.trial_tags`), never by tag names typed out here: a tag renamed in the schema
is renamed in these stores too, and a reader left behind fails the analysis tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gigatok import tracking_schema as schema


def study_experiment(client: Any, study: str, profile: str, description: str | None = None) -> str:
    """The study's experiment at ``profile``, named and tagged as a launch names and tags it."""
    from gigatok.tracking import ensure_experiment, experiment_name

    return ensure_experiment(
        client, experiment_name(study, profile), description or study, schema.experiment_tags(study, profile)
    )


def study_run_tags(
    study: str,
    profile: str,
    run_hash: str,
    factors: dict[str, Any],
    *,
    substitutes: str | None = None,
    provenance: dict[str, str] | None = None,
    artifacts: dict[str, str] | None = None,
) -> dict[str, str]:
    """A study run's tags: those it is created with, and what its stages would add (substitutes, provenance.<metric>,
    artifact.<name>)."""
    tags = schema.run_tags(
        study=study,
        profile=profile,
        run_hash=run_hash,
        tokenizer_hash="t" + run_hash,
        ar_hash="a" + run_hash,
        git_commit="abc123",
        factors=list(factors.items()),
        executor="local",
    )
    if substitutes:
        tags[schema.SUBSTITUTES] = substitutes
    tags.update({schema.provenance(k): v for k, v in (provenance or {}).items()})
    tags.update({schema.artifact(k): v for k, v in (artifacts or {}).items()})
    return tags


def log_study_run(
    client: Any,
    experiment_id: str,
    tags: dict[str, str],
    *,
    run_name: str,
    metrics: dict[str, float] | None = None,
    params: dict[str, str] | None = None,
    curves: dict[str, list[tuple[int, float]]] | None = None,
    status: str = "FINISHED",
    start_time: int | None = None,
    artifacts: list[tuple[Path, str]] = (),
) -> str:
    """One run: final ``metrics`` at step 0, ``curves`` (key -> (step, value) points), params and tags in one batch."""
    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(experiment_id, start_time=start_time, run_name=run_name)
    run_id = run.info.run_id
    history = [Metric(k, v, 0, step) for k, points in (curves or {}).items() for step, v in points]
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, 0, 0) for k, v in (metrics or {}).items()] + history,
        params=[Param(k, v) for k, v in (params or {}).items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    for local, folder in artifacts:
        client.log_artifact(run_id, str(local), folder)
    client.set_terminated(run_id, status)
    return run_id


def log_trial(
    client: Any,
    parent_run_id: str,
    study: str,
    profile: str,
    search: str,
    number: int,
    scale: float,
    state: str,
    gfid: float,
    budget: int,
    full_budget: int,
) -> str:
    """A finished CFG-search trial under ``parent_run_id``, as :class:`gigatok.cfg_search.TrialRecorder` records it."""
    from mlflow.entities import Metric, Param

    experiment_id = client.get_run(parent_run_id).info.experiment_id
    tags = schema.trial_tags(parent_run_id=parent_run_id, study=study, profile=profile, search=search)
    trial = client.create_run(experiment_id, run_name=f"cfg {scale}", tags={**tags, schema.TRIAL_STATE: state})
    client.log_batch(
        trial.info.run_id,
        metrics=[Metric("gfid", gfid, 0, budget)],
        params=[
            Param("cfg_scale", str(scale)),
            Param("cfg_schedule", "constant"),
            Param("step_fraction", "0.18"),
            Param("sample_budget", str(full_budget)),
            Param("trial_number", str(number)),
        ],
    )
    client.set_terminated(trial.info.run_id, "FINISHED")
    return trial.info.run_id


def record_best(
    client: Any, parent_run_id: str, search: str, scale: float, gfid: float, step_fraction: float | None = None
) -> None:
    """The best point of a search on the run it tuned, as the cfg_search stage logs it."""
    from mlflow.entities import Metric, RunTag

    metrics = {
        schema.CFG_BEST_SCALE: scale,
        schema.CFG_BEST_GFID: gfid,
        **({schema.CFG_BEST_STEP_FRACTION: step_fraction} if step_fraction is not None else {}),
    }
    client.log_batch(
        parent_run_id,
        metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
        tags=[RunTag(schema.CFG_SEARCH, search)],
    )
