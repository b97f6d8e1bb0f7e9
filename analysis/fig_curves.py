"""Fig. 5: tokenizer training curves with and without the entropy loss, from the runs' MLflow metric histories.

Only the histories this figure draws are fetched (one request per run and key), never every curve of a study.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.figures import (
    DATA_COLUMNS,
    SUBSTITUTE_NOTE,
    Plot,
    finished_runs,
    profile_heading,
    single_profile,
    skip_panel,
)
from analysis.seeds import ci95
from analysis.sources import Source


@dataclass(frozen=True)
class CurvePanel:
    key: str  # MLflow metric history, e.g. "tokenizer/codebook_usage"
    title: str
    ylabel: str
    scale: float = 1.0


FIG5_PANELS = (
    CurvePanel("tokenizer/codebook_usage", "Codebook usage", "codebook usage (% of entries, latest codes)", 100.0),
    CurvePanel("tokenizer/perceptual_loss", "Perceptual loss", "LPIPS perceptual loss"),
    CurvePanel("tokenizer/pixel_loss", "Reconstruction loss", "L2 pixel loss"),
)
ENTROPY_LABELS = {False: "without entropy loss", True: "with entropy loss"}


def entropy_series(runs: pd.DataFrame) -> pd.Series:
    """The study's ``entropy`` factor where it has one, else whether the entropy weight is above zero."""
    on = runs["entropy_weight"].gt(0).where(runs["entropy_weight"].notna())
    if "factor_entropy" in runs:
        on = runs["factor_entropy"].astype("object").where(runs["factor_entropy"].notna(), on)
    return on.map(lambda v: ENTROPY_LABELS.get(bool(v)) if pd.notna(v) else None)


def fig5_entropy_curves(df: pd.DataFrame, source: Source, study: str | None = "entropy_loss") -> Plot:
    """Fig. 5: codebook usage and losses against the training step, one line per run, with and without entropy."""
    name = "fig5_entropy_curves"
    runs = finished_runs(df if study is None else df[df["study"] == study])
    if runs.empty:
        raise ValueError(f"{name}: no FINISHED runs" + (f" of study {study}" if study else ""))
    runs = runs.assign(series=entropy_series(runs))
    runs = runs[runs["series"].notna()]
    if runs.empty:
        raise ValueError(f"{name}: no FINISHED run says whether it used the entropy loss")
    profile = single_profile(runs, name)
    curves = source.curves(list(runs["run_id"]), [p.key for p in FIG5_PANELS])
    if curves.empty:
        raise ValueError(f"{name}: no run of study {study} logged {', '.join(p.key for p in FIG5_PANELS)}")
    order = list(ENTROPY_LABELS.values())
    substitutes = bool(runs["substitute"].any())
    fig = Figure(figsize=(4.3 * len(FIG5_PANELS), 3.8), layout="constrained")
    axes = fig.subplots(1, len(FIG5_PANELS), squeeze=False)[0]
    records: list[dict] = []
    notes: list[str] = []
    for ax, panel in zip(axes, FIG5_PANELS, strict=True):
        here = curves[curves["key"] == panel.key]
        if here.empty:
            notes.append(skip_panel(ax, panel.title, panel.key))
            continue
        ordered = runs.sort_values("series", key=lambda s: s.map(order.index))
        replicas = ordered.groupby(["tokenizer_name", "series"])["run_id"].transform("size")  # seeds of its line
        for run, seeds in zip(ordered.itertuples(index=False), replicas, strict=True):
            points = here[here["run_id"] == run.run_id].sort_values("step")
            if points.empty:
                notes.append(f"panel '{panel.title}': {run.run_name} did not log {panel.key}")
                continue
            y = points["value"] * panel.scale
            label = f"{run.tokenizer_name} {run.series}" + (f" ({SUBSTITUTE_NOTE})" if run.substitute else "")
            if seeds > 1:  # each seed faint; the mean and its band once per line, below
                label, faint = None, {"alpha": 0.35, "linewidth": 0.8}
            else:
                faint = {}
            ax.plot(
                points["step"],
                y,
                color=f"C{order.index(run.series)}",
                label=label,
                linestyle="--" if run.substitute else "-",
                **faint,
            )
            records += [
                {
                    "figure": name,
                    "panel": panel.key,
                    "series": run.series,
                    "run_id": run.run_id,
                    "run_name": run.run_name,
                    "size": run.tokenizer_name,
                    "x": int(step),
                    "value": float(value),
                    "y": float(value) * panel.scale,
                    "substitute": bool(run.substitute),
                }
                for step, value in zip(points["step"], points["value"], strict=True)
            ]
        _seed_means(ax, runs, here, panel, order)
        ax.set_xlabel("tokenizer training step")
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    heading = profile_heading(
        "Fig. 5: training curves with and without entropy loss", profile, substitutes, "dashed lines"
    )
    fig.suptitle(heading, fontsize=10)
    return Plot(name, fig, pd.DataFrame.from_records(records, columns=DATA_COLUMNS), tuple(notes))


def _seed_means(ax: Axes, runs: pd.DataFrame, curves: pd.DataFrame, panel: CurvePanel, order: list[str]) -> None:
    """For each line run with several seeds: the mean curve over seeds with its 95% band (seaborn)."""
    ordered = runs.sort_values("series", key=lambda s: s.map(order.index), kind="stable")
    for (size, series), group in ordered.groupby(["tokenizer_name", "series"], sort=False):
        if len(group) < 2:
            continue
        points = curves[curves["run_id"].isin(group["run_id"])].assign(y=lambda c: c["value"] * panel.scale)
        if points.empty:
            continue
        label = f"{size} {series}, mean of {points['run_id'].nunique()} seeds"
        sns.lineplot(
            data=points,
            x="step",
            y="y",
            estimator="mean",
            errorbar=ci95,
            color=f"C{order.index(series)}",
            label=label,
            ax=ax,
            legend=False,
            err_kws={"alpha": 0.2, "linewidth": 0},
        )
