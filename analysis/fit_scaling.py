"""Scaling laws fitted to the studies' runs: ``metric = E + A * N**(-alpha)``, with 95% bootstrap intervals.

    python analysis/fit_scaling.py                          the exponent table of every study in ./mlflow.db
    python analysis/fit_scaling.py --study scaling_semreg --profile paper --csv exponents.csv
    python analysis/fit_scaling.py --from-snapshot runs.parquet

For each study that varies the tokenizer's size (:data:`FIT_STUDIES`), and for each group of its runs (with and
without semantic regularization, 1D and 2D, AR-B and AR-XL probes), the four metrics of the scaling figures are
fitted against two N, separately:

- ``params``: the tokenizer's parameter count (the ``params_tokenizer`` metric a run logs when it is registered,
  else the count of its size's standard configuration, ``tokenizer_params``). The study varies the tokenizer, so
  it is the N of the AR-probe metrics too;
- ``flops``: training FLOPs, of the tokenizer (``flops_tokenizer_train``) for rFID, of tokenizer and AR probe
  together (``flops_train``) for the AR metrics. A run probing a tokenizer checkpoint counts the tokenizer's FLOPs
  up to that checkpoint (its share of the training epochs; the logged metric counts the whole schedule).

Linear-probe accuracy rises with N; it is fitted as its error, ``1 - acc``, so that every fit reads the same way
(E is the error left at infinite N, A > 0 means the metric improves with N) and ``E >= 0`` is the natural bound.
The fit itself, its bounds and its refusals are :mod:`analysis.power_law`'s. Only FINISHED runs count, the newest of
each configuration and seed, each seed a point; every number comes from MLflow (or a snapshot of it).
"""

from __future__ import annotations

import argparse
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.figures import (
    KIND_LABELS,
    SEMREG_LABELS,
    SIZE_ORDER,
    ar_size_order,
    ar_size_series,
    finished_runs,
    kind_series,
    semreg_series,
    size_series,
    unavailable_reasons,
)
from analysis.load import StoreError, load_runs
from analysis.power_law import BOOT_SEED, CI_LEVEL, EXTRAPOLATE, N_BOOT, PowerLawFit, fit_power_law, refused
from analysis.seeds import newest_per_seed

AXES = ("params", "flops")


@dataclass(frozen=True)
class FitMetric:
    column: str
    label: str
    stage: str  # "tokenizer" or "ar": whose training FLOPs are its N on the flops axis
    accuracy: bool = False  # fitted as the error 1 - acc


METRICS: tuple[FitMetric, ...] = (
    FitMetric("rfid", "rFID", "tokenizer"),
    FitMetric("gfid", "gFID", "ar"),
    FitMetric("ar_val_loss", "AR validation loss", "ar"),
    FitMetric("ar_probe_acc", "AR linear-probe accuracy (fitted as its error, 1 - acc)", "ar", accuracy=True),
)


@dataclass(frozen=True)
class FitStudy:
    study: str
    axes: tuple[str, ...]
    series: Callable[[pd.DataFrame], pd.Series]  # each run's group (a fit each); NA: left out
    order: Callable[[pd.DataFrame], list[str]]  # the groups in display order (colours follow it)


def _fixed(labels: dict) -> Callable[[pd.DataFrame], list[str]]:
    return lambda _runs: list(labels.values())


FIT_STUDIES: tuple[FitStudy, ...] = (
    FitStudy("scaling_vanilla", AXES, semreg_series, _fixed(SEMREG_LABELS)),
    FitStudy("scaling_semreg", AXES, semreg_series, _fixed(SEMREG_LABELS)),
    FitStudy("scaling_1d_vs_2d", AXES, kind_series, _fixed(KIND_LABELS)),
    FitStudy("enc_dec_asymmetry", AXES, kind_series, _fixed(KIND_LABELS)),
    FitStudy("ar_probe_vs_large", AXES, ar_size_series, ar_size_order),
    FitStudy("system_level", AXES, ar_size_series, ar_size_order),
    # One size, five lengths: a law in training compute only (a params fit would have one point).
    FitStudy("train_duration", ("flops",), semreg_series, _fixed(SEMREG_LABELS)),
    # Two sizes, five checkpoints each: in compute, one law per size; in parameters two points, always refused.
    FitStudy("tokenizer_checkpoints", ("flops",), size_series, lambda _runs: [f"{n} tokenizer" for n in SIZE_ORDER]),
)
FIT_STUDY = {s.study: s for s in FIT_STUDIES}


@dataclass(frozen=True, eq=False)
class StudyFit:
    """One fit: a group of one study's runs, one metric, one N."""

    study: str
    profile: str
    group: str
    metric: FitMetric
    axis: str
    fit: PowerLawFit
    points: pd.DataFrame  # the runs fitted: run_id, run_name, size, seed, n, value (as logged), y (as fitted)


# ----------------------------------------------------------------------------------------------------------
# The runs' N and values
# ----------------------------------------------------------------------------------------------------------


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs[name].astype("float64") if name in runs else pd.Series(np.nan, index=runs.index)


def n_column(runs: pd.DataFrame, metric: FitMetric, axis: str) -> pd.Series:
    """Each run's N for ``metric`` on ``axis`` (NaN where the run did not log it)."""
    if axis == "params":
        return _column(runs, "params_tokenizer").fillna(_column(runs, "tokenizer_params"))
    tokenizer = _column(runs, "flops_tokenizer_train") * checkpoint_share(runs)
    if metric.stage == "tokenizer":
        return tokenizer
    return tokenizer + (_column(runs, "flops_train") - _column(runs, "flops_tokenizer_train"))


def checkpoint_share(runs: pd.DataFrame) -> pd.Series:
    """The share of the tokenizer's training a run's checkpoint had done (``tokenizer_snapshot`` of the
    ``tokenizer_epochs``; 1 for a run of the finished tokenizer)."""
    share = _column(runs, "tokenizer_snapshot") / _column(runs, "tokenizer_epochs")
    return share.where(share.between(0, 1, inclusive="right"), 1.0)


def study_runs(runs: pd.DataFrame, spec: FitStudy) -> tuple[pd.DataFrame, list[str]]:
    """The FINISHED runs of ``spec``'s study a fit may use, with their group (``series``) and seed; notes on runs
    left out."""
    runs = finished_runs(runs[runs["study"] == spec.study])
    notes: list[str] = []
    if "factor_size" in runs:
        # A size factor that names more than a size (system_level's B-L-dino) is a variant at that size, not a size.
        variant = runs["factor_size"].notna() & (runs["factor_size"] != runs["tokenizer_name"])
        if variant.any():
            notes.append(f"left out, variants of a size: {', '.join(runs.loc[variant, 'run_name'].astype(str))}")
            runs = runs[~variant]
    runs = runs.assign(series=spec.series(runs))
    runs = runs[runs["series"].notna()]
    keys = [c for c in runs.columns if c.startswith("factor_") and c != "factor_seed"] or ["run_hash"]
    runs, older = newest_per_seed(runs, keys)
    if not older.empty:
        notes.append(f"left out, a newer run has the same point and seed: {', '.join(older['run_name'].astype(str))}")
    return runs, notes


def metric_points(runs: pd.DataFrame, metric: FitMetric, axis: str) -> pd.DataFrame:
    """The runs' (N, value) for one fit: n, value as logged, y as fitted (``1 - acc`` for accuracies); runs
    without either are left out."""
    value = _column(runs, metric.column)
    points = runs.assign(n=n_column(runs, metric, axis), value=value, y=1 - value if metric.accuracy else value)
    columns = ["run_id", "run_name", "tokenizer_name", "seed", "series", "substitute", "n", "value", "y"]
    return points.loc[points["n"].notna() & points["y"].notna(), columns].rename(columns={"tokenizer_name": "size"})


def _missing_note(runs: pd.DataFrame, metric: FitMetric, axis: str) -> str:
    """Why a group's runs have fewer points than runs: which runs lack the metric or their N."""
    lacking = runs[_column(runs, metric.column).isna()]
    parts = []
    if len(lacking):
        why = unavailable_reasons(lacking, metric.column)
        parts.append(f"{len(lacking)} runs without {metric.column}" + (f" ({'; '.join(sorted(why))})" if why else ""))
    no_n = runs[n_column(runs, metric, axis).isna()]
    if len(no_n):
        logged = "parameter count" if axis == "params" else "training FLOPs"
        parts.append(f"{'no' if len(no_n) == len(runs) else len(no_n)} runs logged their {logged}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------------------


def fit_seed(study: str, group: str, metric: str, axis: str) -> int:
    """The bootstrap's seed of one fit: fixed (a redraw gives the same numbers) and different for every fit, so two
    groups' resamples are independent and the interval of their exponents' difference is honest."""
    return BOOT_SEED + zlib.crc32(f"{study}|{group}|{metric}|{axis}".encode())


def fit_study(runs: pd.DataFrame, spec: FitStudy, n_boot: int = N_BOOT) -> tuple[list[StudyFit], list[str]]:
    """Every fit of one study at one profile (``runs``: that profile's runs), and notes on runs left out. A metric
    no run logged has no fit."""
    chosen, notes = study_runs(runs, spec)
    profile = str(chosen["profile"].dropna().iloc[0]) if chosen["profile"].notna().any() else "unknown"
    groups = [g for g in spec.order(chosen) if (chosen["series"] == g).any()]
    fits = []
    for axis in spec.axes:
        for metric in METRICS:
            if metric.column not in chosen or chosen[metric.column].isna().all():
                continue
            for group in groups:
                members = chosen[chosen["series"] == group]
                points = metric_points(members, metric, axis)
                missing = _missing_note(members, metric, axis)
                if points.empty:
                    fit = refused(missing or "no runs", 0, 0)
                else:
                    seed = fit_seed(spec.study, group, metric.column, axis)
                    fit = fit_power_law(points["n"], points["y"], n_boot=n_boot, seed=seed)
                    fit = _noted(fit, missing) if missing else fit
                fits.append(StudyFit(spec.study, profile, group, metric, axis, fit, points))
    return fits, notes


def _noted(fit: PowerLawFit, note: str) -> PowerLawFit:
    import dataclasses

    return dataclasses.replace(fit, note="; ".join(n for n in (fit.note, note) if n))


def fit_runs(df: pd.DataFrame, studies: Sequence[str] = (), n_boot: int = N_BOOT) -> list[StudyFit]:
    """Every fit of every study in ``df`` (or of ``studies``), each profile separately."""
    fits = []
    for profile in sorted(df["profile"].dropna().unique()):
        at_profile = df[df["profile"] == profile]
        for spec in FIT_STUDIES:
            if studies and spec.study not in studies:
                continue
            if finished_runs(at_profile[at_profile["study"] == spec.study]).empty:
                continue
            fits.extend(fit_study(at_profile, spec, n_boot)[0])
    return fits


# ----------------------------------------------------------------------------------------------------------
# The exponent table
# ----------------------------------------------------------------------------------------------------------

TABLE_COLUMNS = [
    "profile",
    "study",
    "group",
    "metric",
    "x_axis",
    "alpha",
    "alpha_low",
    "alpha_high",
    "E",
    "E_low",
    "E_high",
    "A",
    "A_low",
    "A_high",
    "n_points",
    "n_runs",
    "n_boot",
    "fitted",
    "note",
]
DIFFERENCE_COLUMNS = ["profile", "study", "metric", "x_axis", "a", "b", "delta", "low", "high", "excludes_zero"]


def exponent_table(fits: Sequence[StudyFit]) -> pd.DataFrame:
    """One row a fit: alpha, E, A with their 95% intervals (NaN where not fitted), points, runs and the note."""
    rows = []
    for f in fits:
        p = f.fit
        rows.append(
            {
                "profile": f.profile,
                "study": f.study,
                "group": f.group,
                "metric": f.metric.column + (" (1 - acc)" if f.metric.accuracy else ""),
                "x_axis": f.axis,
                "alpha": p.alpha,
                "alpha_low": p.alpha_ci[0],
                "alpha_high": p.alpha_ci[1],
                "E": p.E,
                "E_low": p.E_ci[0],
                "E_high": p.E_ci[1],
                "A": p.A,
                "A_low": p.A_ci[0],
                "A_high": p.A_ci[1],
                "n_points": p.n_points,
                "n_runs": p.n_runs,
                "n_boot": p.n_boot,
                "fitted": p.fitted,
                "note": p.note,
            }
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def exponent_differences(fits: Sequence[StudyFit]) -> pd.DataFrame:
    """Between neighbouring groups of one study, metric and N: alpha(b) - alpha(a) with the 95% interval of the
    difference of their (independent) bootstrap exponents, and whether it excludes 0."""
    rows = []

    def key(f: StudyFit) -> tuple[str, str, str, str]:
        return f.profile, f.study, f.metric.column, f.axis

    for k in dict.fromkeys(key(f) for f in fits):
        done = [f for f in fits if key(f) == k and len(f.fit.alpha_boot)]
        for a, b in zip(done, done[1:], strict=False):
            m = min(len(a.fit.alpha_boot), len(b.fit.alpha_boot))
            low, high = np.percentile(
                b.fit.alpha_boot[:m] - a.fit.alpha_boot[:m], [(100 - CI_LEVEL) / 2, 50 + CI_LEVEL / 2]
            )
            delta = b.fit.alpha - a.fit.alpha
            values = [*k, a.group, b.group, delta, low, high, low > 0 or high < 0]
            rows.append(dict(zip(DIFFERENCE_COLUMNS, values, strict=True)))
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)


def _num(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.3g}"


def _with_ci(value: float, low: float, high: float) -> str:
    return _num(value) if pd.isna(low) else f"{_num(value)} [{_num(low)}, {_num(high)}]"


def to_markdown(table: pd.DataFrame, differences: pd.DataFrame | None = None) -> str:
    """The exponent table (and the differences between groups) as markdown, one section per profile."""
    lines = [
        "# Scaling-law exponents",
        "",
        f"metric = E + A * N^-alpha, N in parameters (params) or training FLOPs (flops); [low, high]: {CI_LEVEL}% "
        f"bootstrap interval over runs ({N_BOOT} resamples); probe accuracy fitted as its error 1 - acc; curves "
        f"extrapolated to {EXTRAPOLATE:g}x the largest N in the figures. Fitted by `analysis/fit_scaling.py`.",
        "",
    ]
    for profile in table["profile"].drop_duplicates():
        rows = table[table["profile"] == profile]
        lines += [f"## Profile `{profile}`", ""]
        if profile != "paper":
            lines += [f"{profile}-scale models: the method's numbers, not the paper's exponents.", ""]
        lines += [
            "| study | group | metric | x-axis | alpha (95% CI) | E (95% CI) | A (95% CI) | points | runs | note |"
        ]
        lines += ["|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows.itertuples(index=False):
            cells = [r.study, r.group, r.metric, r.x_axis, _with_ci(r.alpha, r.alpha_low, r.alpha_high)]
            cells += [_with_ci(r.E, r.E_low, r.E_high), _with_ci(r.A, r.A_low, r.A_high), str(r.n_points)]
            cells += [str(r.n_runs), r.note or "-"]
            lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
        lines.append("")
        diff = differences[differences["profile"] == profile] if differences is not None else pd.DataFrame()
        if len(diff):
            lines += ["Exponent differences between groups (b - a; interval of the bootstrap difference):", ""]
            lines += [
                "| study | metric | x-axis | a | b | delta alpha (95% CI) | excludes 0 |",
                "|---|---|---|---|---|---|---|",
            ]
            for d in diff.itertuples(index=False):
                cells = [d.study, d.metric, d.x_axis, d.a, d.b, _with_ci(d.delta, d.low, d.high)]
                lines.append("| " + " | ".join(cells) + f" | {'yes' if d.excludes_zero else 'no'} |")
            lines.append("")
    return "\n".join(lines)


def write_exponents(fits: Sequence[StudyFit], out: Path, profile: str) -> tuple[Path, Path]:
    """``exponents-<profile>.csv`` (the table) and ``.md`` (with the differences between groups)."""
    here = [f for f in fits if f.profile == profile]
    table = exponent_table(here)
    stem = out / f"exponents-{profile}"
    table.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".md").write_text(to_markdown(table, exponent_differences(here)))
    return stem.with_suffix(".csv"), stem.with_suffix(".md")


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="analysis/fit_scaling.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--study", action="append", default=[], help="only this study (repeatable)")
    p.add_argument("--profile", default=None, help="only runs of this profile")
    p.add_argument("--from-snapshot", type=Path, default=None, help="read runs from a snapshot instead of MLflow")
    p.add_argument("--csv", type=Path, default=None, help="also write the table as CSV here")
    args = p.parse_args(argv)
    unknown = [s for s in args.study if s not in FIT_STUDY]
    if unknown:
        print(
            f"error: no size or compute axis to fit in study {unknown[0]} (fitted: {', '.join(FIT_STUDY)})",
            file=sys.stderr,
        )
        return 2
    try:
        df = _read(args)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fits = fit_runs(df, args.study)
    if not fits:
        print("error: no FINISHED runs of a study with a size or compute axis", file=sys.stderr)
        return 2
    table = exponent_table(fits)
    if args.csv is not None:
        table.to_csv(args.csv, index=False)
    print(to_markdown(table, exponent_differences(fits)))
    return 0


def _read(args: argparse.Namespace) -> pd.DataFrame:
    if args.from_snapshot is None:
        return load_runs(args.tracking_uri, args.study or list(FIT_STUDY), args.profile)
    from analysis.sources import SnapshotSource

    df = SnapshotSource(args.from_snapshot).runs()
    return df if args.profile is None else df[df["profile"] == args.profile]


if __name__ == "__main__":
    sys.exit(main())
