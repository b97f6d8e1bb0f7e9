"""Tracked runs as one pandas table: one row per MLflow run, typed columns, and parquet snapshots of it.

One search query per study experiment (MLflow's SQL stores return up to 50,000 runs a page), never one call per
run, so a study of thousands of runs loads in seconds. Training curves are metric histories, which MLflow serves
one (run, key) at a time: :func:`load_curves` fetches them only for the runs and keys a figure asks for.

Columns of :func:`load_runs`:

- identity: ``run_id``, ``run_name``, ``experiment``, ``study``, ``profile``, ``status``, ``run_hash``,
  ``tokenizer_hash``, ``ar_hash``, ``git_commit``, ``stage``, ``error``, ``device_type``, ``start_time`` (the first
  stage's start where the store allowed it to be moved there, else the submission), ``end_time``;
- ``factor_<name>``: what the study varies, typed (bool, int, float or text) from the run's ``gigatok.factors``
  (the tag names are :mod:`gigatok.tracking_schema`'s);
- configuration: ``tokenizer_name``, ``tokenizer_kind``, ``semantic_weight``, ``semantic_encoder``,
  ``align_layer``, ``entropy_weight``, ``tokenizer_epochs``, ``ar_size``, ``ar_epochs``, ``seed`` (the training
  seed; studies run with ``--seeds N`` also have the factor ``factor_seed``), ``tokenizer_snapshot`` (the epoch of
  the tokenizer checkpoint a run probes; NaN for the finished tokenizer) and ``tokenizer_params``;
- every final metric (``rfid``, ``gfid``, ..., ``cfg_best_step_fraction``: the schema's ``FINAL_METRICS``, as
  floats, NaN where a run did not log it), and the size metrics a run logs when it is registered
  (``params_tokenizer``, ``flops_tokenizer_train``, ``flops_train``, ...: the schema's ``SIZE_METRICS``);
- measured cost (the schema's ``TIMING_METRICS``): ``queue_s`` (the wait from SCHEDULED to the job's start),
  ``wall_s`` and ``device_hours`` of the whole run, ``devices`` (with ``device_type``, cuda or cpu), and
  ``<stage>_wall_s``, ``<stage>_device_hours`` of each stage, summed over its attempts (NaN where not logged);
- ``substitute`` (True when any number came from a random stand-in network), ``substitutes`` (which ones), and
  ``provenance.<metric>`` (the feature network and sets behind each metric), ``artifact.<name>`` (where a run's
  stored arrays are, e.g. Fig. 8's PCA maps);
- CFG-search trials (child runs tagged ``gigatok.kind=cfg_trial``) are not rows: :func:`load_trials` reads them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from gigatok import tracking_schema as schema
from gigatok.tracking import SEARCH_PAGE, TrackingError, connect, experiment_runs, resolve_tracking_uri

CFG_TRIAL = schema.CFG_TRIAL  # the kind of the child runs a CFG search records under the AR run it tunes
FINAL_METRICS: tuple[str, ...] = schema.FINAL_METRICS  # as the stages log them (gigatok.tracking_schema)
FACTOR_PREFIX = "factor_"
PROVENANCE_PREFIX = "provenance."
ARTIFACT_PREFIX = "artifact."  # artifact.<name>: where a run's stored arrays are (Fig. 8's PCA maps)

# Table column -> (MLflow param, type). Params are stored as text; these are the ones the figures and tables use.
PARAMS: dict[str, tuple[str, type]] = {
    "tokenizer_name": ("tokenizer.tokenizer.name", str),
    "tokenizer_kind": ("tokenizer.tokenizer.kind", str),
    "semantic_weight": ("tokenizer.tokenizer.semantic.weight", float),
    "semantic_encoder": ("tokenizer.tokenizer.semantic.encoder", str),
    "align_layer": ("tokenizer.tokenizer.semantic.layer", int),
    "entropy_weight": ("tokenizer.tokenizer.quantizer.entropy_weight", float),
    "tokenizer_epochs": ("tokenizer.train.epochs", float),
    "ar_size": ("ar.size", str),
    "ar_epochs": ("ar.train.epochs", float),
    "seed": ("tokenizer.train.seed", int),  # its AR probe's too (studies/run.py --seeds)
    "tokenizer_snapshot": ("tokenizer_snapshot", float),  # the checkpoint (epochs) a run probes, if not the last
}

PARAM_DTYPES = {str: "string", int: "Int64", float: "float64"}

# Column -> the tag it comes from.
IDENTITY_TAGS = {
    "run_hash": schema.RUN_HASH,
    "tokenizer_hash": schema.TOKENIZER_HASH,
    "ar_hash": schema.AR_HASH,
    "git_commit": schema.GIT_COMMIT,
    "stage": schema.STAGE,
    "error": schema.ERROR,
    "device_type": schema.DEVICE_TYPE,  # what the devices of the timing columns were: cuda or cpu
}


class StoreError(RuntimeError):
    """The runs cannot be loaded: no store, an unreachable server, or no matching runs. The message is one line."""


# ----------------------------------------------------------------------------------------------------------
# Reading the store
# ----------------------------------------------------------------------------------------------------------


def open_store(tracking_uri: str | None) -> Any:
    """A client for an existing store. Unlike training, analysis must not create an empty SQLite file."""
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise StoreError(f"no MLflow store at {path} (run a study first, or pass --tracking-uri)")
    try:
        return connect(uri)
    except TrackingError as exc:
        raise StoreError(str(exc)) from None


def _pages(search: Any, **kwargs: Any) -> Iterable[Any]:
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


def study_experiments(client: Any, studies: Sequence[str] | None = None, profile: str | None = None) -> list[Any]:
    """The experiments written by ``studies/run.py`` (tagged ``gigatok.study``), optionally filtered."""
    found = []
    for experiment in _pages(client.search_experiments, max_results=1000):
        tags = experiment.tags or {}
        study = tags.get(schema.STUDY)
        if study is None or (studies and study not in studies):
            continue
        if profile and tags.get(schema.PROFILE, profile) != profile:
            continue
        found.append(experiment)
    return found


def load_runs(
    tracking_uri: str | None = None,
    studies: Sequence[str] | None = None,
    profile: str | None = None,
    direct_sql: bool = True,
) -> pd.DataFrame:
    """Every run of the selected studies and profile, one row each (see the module docstring for the columns).

    ``direct_sql`` reads a SQLite store's tables directly (:func:`gigatok.tracking.sqlite_runs`: the same rows,
    ~20x faster); False always goes through MLflow's ``search_runs``.
    """
    client = open_store(tracking_uri)
    uri = resolve_tracking_uri(tracking_uri)
    experiments = study_experiments(client, studies, profile)
    rows = []
    for experiment in experiments:
        # One query per experiment. Curves ("stage/key") are not final metrics: run_row leaves them out.
        runs = (
            experiment_runs(client, experiment.experiment_id, params=ROW_PARAMS, curves=False)
            if direct_sql
            else _pages(client.search_runs, experiment_ids=[experiment.experiment_id], max_results=SEARCH_PAGE)
        )
        for run in runs:
            if run.data.tags.get(schema.KIND) == CFG_TRIAL:
                continue  # a CFG-search trial is a child of a study run, not a run of the study: load_trials
            row = run_row(run, experiment)
            if (studies and row["study"] not in studies) or (profile and row["profile"] != profile):
                continue
            rows.append(row)
    if not rows:
        raise StoreError(_nothing_found(client, uri, studies, profile))
    df = runs_frame(rows)
    df.attrs["source"] = uri
    return df


# The params run_row reads: a direct read of a SQLite store leaves the other ~110 of each run unread.
ROW_PARAMS = (*(key for key, _ in PARAMS.values()), "tokenizer.profile")


def _nothing_found(client: Any, uri: str, studies: Sequence[str] | None, profile: str | None) -> str:
    present = sorted(
        f"{e.tags[schema.STUDY]} ({e.tags.get(schema.PROFILE, '?')})"
        for e in _pages(client.search_experiments, max_results=1000)
        if schema.STUDY in (e.tags or {})
    )
    wanted = " ".join(
        filter(
            None,
            [
                f"of {', '.join(studies)}" if studies else "",
                f"at profile {profile}" if profile else "",
            ],
        )
    )
    holds = f"it holds {', '.join(present)}" if present else "it holds no gigatok studies"
    return f"no runs {wanted + ' ' if wanted else ''}in {uri}; {holds}"


# ----------------------------------------------------------------------------------------------------------
# One run -> one row
# ----------------------------------------------------------------------------------------------------------


def parse_value(text: str) -> bool | int | float | str:
    """A factor value from its tag text: ``True``/``False``, integers and numbers as such, anything else as text."""
    if text in ("True", "False"):
        return text == "True"
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


def run_factors(tags: dict[str, str]) -> dict[str, Any]:
    """The study's factors with their types: from the JSON tag, else from the one-per-factor text tags."""
    raw = tags.get(schema.FACTORS)
    if raw:
        try:
            factors = json.loads(raw)
            if isinstance(factors, dict):
                return factors
        except json.JSONDecodeError:
            pass
    return {k: parse_value(v) for k, v in schema.family(tags, schema.FACTOR_PREFIX).items()}


def _param(params: dict[str, str], key: str, kind: type) -> Any:
    text = params.get(key)
    if text is None or text in ("None", ""):
        return None
    try:
        return kind(float(text)) if kind is int else kind(text)
    except ValueError:
        return None


def run_row(run: Any, experiment: Any) -> dict[str, Any]:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    experiment_tags = experiment.tags or {}
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment": experiment.name,
        "study": tags.get(schema.STUDY) or experiment_tags.get(schema.STUDY),
        "profile": tags.get(schema.PROFILE) or params.get("tokenizer.profile") or experiment_tags.get(schema.PROFILE),
        "status": run.info.status,
        **{column: tags.get(tag) for column, tag in IDENTITY_TAGS.items()},
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "factors": run_factors(tags),
    }
    row.update({column: _param(params, key, kind) for column, (key, kind) in PARAMS.items()})
    # Final metrics are logged at step 0 under plain names; curves carry a "stage/" prefix and stay out.
    row.update({name: metrics.get(name, math.nan) for name in FINAL_METRICS})
    row.update({name: metrics.get(name, math.nan) for name in schema.TIMING_METRICS})
    row.update({name: value for name, value in metrics.items() if "/" not in name and name not in row})
    substitutes = tags.get(schema.SUBSTITUTES, "").strip()
    row["substitute"] = bool(substitutes)
    row["substitutes"] = substitutes or None
    row.update({PROVENANCE_PREFIX + k: v for k, v in schema.family(tags, schema.PROVENANCE_PREFIX).items()})
    row.update({ARTIFACT_PREFIX + k: v for k, v in schema.family(tags, schema.ARTIFACT_PREFIX).items()})
    return row


def typed_column(values: Sequence[Any]) -> pd.Series:
    """Bool, integer or float columns where every present value is one (missing values kept); text otherwise."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="Int64")
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pd.Series([math.nan if v is None else v for v in values], dtype="float64")
    return pd.Series([None if v is None else str(v) for v in values], dtype="string")


def runs_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The table from :func:`run_row` dicts: factors spread into typed columns, parameter counts added."""
    factor_dicts = [row["factors"] for row in rows]
    df = pd.DataFrame([{k: v for k, v in row.items() if k != "factors"} for row in rows])
    for column in ("start_time", "end_time"):
        df[column] = pd.to_datetime(df[column], unit="ms", utc=True)
    for column, (_, kind) in PARAMS.items():
        df[column] = df[column].astype(PARAM_DTYPES[kind])
    names = list(dict.fromkeys(name for factors in factor_dicts for name in factors))
    factor_columns = {FACTOR_PREFIX + name: typed_column([f.get(name) for f in factor_dicts]) for name in names}
    df["tokenizer_params"] = pd.Series(
        [
            tokenizer_parameters(p, n, k)
            for p, n, k in zip(df["profile"], df["tokenizer_name"], df["tokenizer_kind"], strict=True)
        ],
        dtype="Int64",
    )
    identity = [
        "run_id",
        "run_name",
        "experiment",
        "study",
        "profile",
        "status",
        *IDENTITY_TAGS,
        "start_time",
        "end_time",
    ]
    config = [*PARAMS, "tokenizer_params"]
    metrics = [
        c
        for c in df.columns
        if c not in identity
        and c not in config
        and c not in ("substitute", "substitutes")
        and not c.startswith((PROVENANCE_PREFIX, ARTIFACT_PREFIX))
    ]
    provenance = sorted(c for c in df.columns if c.startswith((PROVENANCE_PREFIX, ARTIFACT_PREFIX)))
    factors = pd.DataFrame(factor_columns, index=df.index)
    substitute = df[["substitute", "substitutes"]]
    out = pd.concat(
        [df[identity], factors, df[config], df[metrics].astype("float64"), substitute, df[provenance]], axis=1
    )
    for column in ("run_name", "experiment", "study", "profile", "status", *IDENTITY_TAGS, "substitutes", *provenance):
        out[column] = out[column].astype("string")
    out["substitute"] = out["substitute"].astype(bool)
    return out


@cache
def tokenizer_parameters(profile: Any, name: Any, kind: Any) -> int | None:
    """Parameters of tokenizer ``name`` at ``profile``, as Table 9 counts them (None when they cannot be rebuilt).

    The count is of the size's standard configuration (semantic projector included, as in Table 9), so runs with
    and without semantic regularization share one x position in the scaling figures.
    """
    if not all(isinstance(v, str) for v in (profile, name, kind)):
        return None
    from gigatok.config import ConfigError, tokenizer_run
    from gigatok.models.tokenizer import build_tokenizer

    try:
        cfg = tokenizer_run(name, profile=profile, kind=kind)  # type: ignore[arg-type]
    except (ConfigError, KeyError, ValueError):
        return None
    return build_tokenizer(cfg.tokenizer, "meta").parameter_counts()["total"]


@cache
def ar_parameters(profile: str, size: str) -> int | None:
    """Parameters of the AR model of ``size`` at ``profile`` on the S-S tokenizer's vocabulary (None when it
    cannot be rebuilt); Table 8 counts these."""
    from gigatok.config import ConfigError, ar_run, tokenizer_run
    from gigatok.models.ar import ar_parameter_count

    try:
        cfg = ar_run(tokenizer_run("S-S", profile=profile), size)
    except (ConfigError, KeyError, ValueError):
        return None
    return ar_parameter_count(cfg.model)


# ----------------------------------------------------------------------------------------------------------
# Curves and snapshots
# ----------------------------------------------------------------------------------------------------------


def load_curves(tracking_uri: str | None, run_ids: Iterable[str], keys: Iterable[str]) -> pd.DataFrame:
    """Metric histories (``tokenizer/total_loss``, ``ar/train_loss``, ...) as rows of run_id, key, step, value."""
    client = open_store(tracking_uri)
    keys = list(keys)
    rows = [
        (run_id, key, m.step, m.value, m.timestamp)
        for run_id in run_ids
        for key in keys
        for m in client.get_metric_history(run_id, key)
    ]
    df = pd.DataFrame(rows, columns=["run_id", "key", "step", "value", "timestamp"])
    df = df.astype({"run_id": "string", "key": "string", "step": "int64", "value": "float64", "timestamp": "int64"})
    return df.sort_values(["run_id", "key", "step"], ignore_index=True)


def save_snapshot(df: pd.DataFrame, path: str | Path) -> Path:
    """The table as parquet, so figures and tables can be remade without the store."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return path


def load_snapshot(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no snapshot at {path}")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise StoreError(f"{path} is not a runs snapshot: {str(exc).splitlines()[0][:200]}") from None
    missing = {"run_id", "study", "profile", "status"} - set(df.columns)
    if missing:
        raise StoreError(f"{path} is not a runs snapshot: no {', '.join(sorted(missing))} column")
    if df.empty:
        raise StoreError(f"snapshot {path} holds no runs")
    return df


# ----------------------------------------------------------------------------------------------------------
# CFG-search trials
# ----------------------------------------------------------------------------------------------------------

TRIAL_COLUMNS = [
    "parent_run_id",
    "run_id",
    "study",
    "profile",
    "search",
    "trial_number",
    "state",
    "cfg_scale",
    "cfg_schedule",
    "step_fraction",
    "sample_budget",
    "gfid",
]


def load_trials(tracking_uri: str | None, experiments: Iterable[str]) -> pd.DataFrame:
    """The CFG-search trials recorded under the runs of ``experiments`` (names): one query per experiment.

    Each trial is a child run (``mlflow.parentRunId``) with the scale it tried; ``gfid`` is its latest value, the
    full-budget score of a COMPLETE trial and the small-budget score a PRUNED trial was stopped at.
    """
    client = open_store(tracking_uri)
    rows = []
    for name in dict.fromkeys(experiments):
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            continue
        query = f"tags.`{schema.KIND}` = '{CFG_TRIAL}'"
        for run in _pages(
            client.search_runs, experiment_ids=[experiment.experiment_id], filter_string=query, max_results=SEARCH_PAGE
        ):
            tags, params = run.data.tags, run.data.params
            rows.append(
                {
                    "parent_run_id": tags.get("mlflow.parentRunId"),
                    "run_id": run.info.run_id,
                    "study": tags.get(schema.STUDY),
                    "profile": tags.get(schema.PROFILE),
                    "search": tags.get(schema.CFG_SEARCH),
                    "trial_number": _param(params, "trial_number", int),
                    "state": tags.get(schema.TRIAL_STATE),
                    "cfg_scale": _param(params, "cfg_scale", float),
                    "cfg_schedule": params.get("cfg_schedule"),
                    "step_fraction": _param(params, "step_fraction", float),
                    "sample_budget": _param(params, "sample_budget", int),
                    "gfid": run.data.metrics.get("gfid", math.nan),
                }
            )
    df = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
    return df.astype(
        {
            "trial_number": "Int64",
            "sample_budget": "Int64",
            "cfg_scale": "float64",
            "step_fraction": "float64",
            "gfid": "float64",
        }
    )
