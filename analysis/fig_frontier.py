"""Compute frontiers: each metric against training FLOPs, for the studies that vary size and training length.

Points are coloured by tokenizer size (a sequential palette, small to large) and shaped by group (with or without
semantic regularization); each configuration is the mean over its seeds (each seed a faint dot). The step line is
the lower envelope of a group's configurations, the Pareto frontier: at each FLOP budget, the best value any
configuration reached with at most that budget (the highest, for probe accuracy). FLOPs are those of
:func:`analysis.fit_scaling.n_column`: the tokenizer's for rFID, tokenizer and AR probe together for the AR metrics,
a checkpoint counting its share of the tokenizer's training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.fig_fits import axis_label, drawn
from analysis.figures import SEMREG_LABELS, SIZE_ORDER, Plot, profile_heading, semreg_series, single_profile
from analysis.fit_scaling import METRICS, FitMetric, FitStudy, metric_points, study_runs
from analysis.theme import house_theme

ALL_RUNS = "all runs"
FRONTIER_STUDIES: tuple[FitStudy, ...] = (
    FitStudy("scaling_semreg", ("flops",), semreg_series, lambda _runs: list(SEMREG_LABELS.values())),
    FitStudy("train_duration", ("flops",), semreg_series, lambda _runs: list(SEMREG_LABELS.values())),
    # One frontier over both sizes' checkpoints: which size is best at each budget.
    FitStudy(
        "tokenizer_checkpoints",
        ("flops",),
        lambda runs: pd.Series(ALL_RUNS, index=runs.index, dtype="object"),
        lambda _runs: [ALL_RUNS],
    ),
)
MARKERS = ("o", "s", "^", "D")
LINESTYLES = ("-", "--", ":", "-.")
FRONTIER_COLUMNS = ["figure", "panel", "series", "run_id", "run_name", "size", "x", "value", "y", "substitute"]


def pareto_envelope(x: np.ndarray | pd.Series, y: np.ndarray | pd.Series, lower_is_better: bool = True) -> pd.DataFrame:
    """The frontier of points (x, y): the points where the best y reached at an x no larger improves, by x
    ascending (columns ``x``, ``best``). Ties in x: the better y counts; NaNs are ignored."""
    points = pd.DataFrame({"x": np.asarray(x, dtype="float64"), "y": np.asarray(y, dtype="float64")}).dropna()
    points = points.sort_values(["x", "y"], ascending=[True, lower_is_better], kind="stable")
    best = points["y"].cummin() if lower_is_better else points["y"].cummax()
    improved = best.ne(best.shift()) & points["y"].eq(best)
    return pd.DataFrame({"x": points["x"][improved], "best": best[improved]}).reset_index(drop=True)


def frontier_plot(runs: pd.DataFrame, spec: FitStudy) -> Plot:
    """The compute-frontier figure of ``spec``'s study from ``runs`` (one profile)."""
    name = f"frontier_{spec.study}"
    chosen, notes = study_runs(runs, spec)
    metrics = [m for m in METRICS if m.column in chosen and chosen[m.column].notna().any()]
    if chosen.empty or not metrics:
        raise ValueError(f"{name}: no FINISHED run of {spec.study} logged a metric")
    profile = single_profile(chosen, name)
    sizes = [s for s in SIZE_ORDER if (chosen["tokenizer_name"] == s).any()]
    sizes += sorted(set(chosen["tokenizer_name"].dropna()) - set(sizes))
    palette = dict(zip(sizes, sns.color_palette("viridis", max(len(sizes), 2)), strict=False))
    groups = [g for g in spec.order(chosen) if (chosen["series"] == g).any()]
    records: list[dict] = []
    with house_theme():
        fig = Figure(figsize=(4.4 * len(metrics), 4.2), layout="constrained")
        for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True):
            points = metric_points(chosen, metric, "flops")
            if points.empty:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"{metric.label}\nno run logged its FLOPs", ha="center", transform=ax.transAxes)
                notes.append(f"panel {metric.column}: no run logged its training FLOPs")
                continue
            records += _draw_frontiers(ax, points, metric, groups, palette, name)
        _legend(fig.axes[0], sizes, palette, groups)
    substitutes = bool(chosen["substitute"].any())
    heading = profile_heading(f"Compute frontier: {spec.study}", profile, substitutes, "(see index)")
    fig.suptitle(
        f"{heading}\nstep line: the best value reached at or below each FLOP budget (per group); markers: the mean "
        "over seeds, faint dots: single seeds",
        fontsize=10,
    )
    return Plot(name, fig, pd.DataFrame.from_records(records, columns=FRONTIER_COLUMNS), tuple(notes))


def _draw_frontiers(
    ax: Axes, points: pd.DataFrame, metric: FitMetric, groups: list[str], palette: dict, name: str
) -> list[dict]:
    label, unit = axis_label("flops", metric)
    points = points.assign(x=points["n"] / unit, y=drawn(metric, points["y"]))
    x_max = float(points["x"].max())
    for i, group in enumerate(groups):
        members = points[points["series"] == group]
        if members.empty:
            continue
        configs = members.groupby(["size", "x"], as_index=False)["y"].mean()
        marker, style = MARKERS[i % len(MARKERS)], LINESTYLES[i % len(LINESTYLES)]
        colors = [palette.get(s, "0.5") for s in configs["size"]]
        ax.scatter(members["x"], members["y"], s=12, c=[palette.get(s, "0.5") for s in members["size"]], alpha=0.35)
        ax.scatter(
            configs["x"], configs["y"], s=40, c=colors, marker=marker, edgecolors="0.15", linewidths=0.6, zorder=4
        )
        front = pareto_envelope(configs["x"], configs["y"], lower_is_better=not metric.accuracy)
        xs, ys = [*front["x"], x_max], [*front["best"], front["best"].iloc[-1]]
        ax.step(xs, ys, where="post", color="0.2", lw=1.3, ls=style, zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel(label, fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)" if metric.accuracy else metric.label, fontsize=8)
    ax.set_title(f"{metric.label.split(' (')[0]} against training compute", fontsize=9)
    return [
        {"figure": name, "panel": metric.column, **r}
        for r in points[["series", "run_id", "run_name", "size", "x", "value", "y", "substitute"]].to_dict("records")
    ]


def _legend(ax: Axes, sizes: list[str], palette: dict, groups: list[str]) -> None:
    handles = [Line2D([], [], marker="o", ls="none", color=palette[s], label=s) for s in sizes]
    if len(groups) > 1 or groups != [ALL_RUNS]:
        handles += [
            Line2D([], [], marker=MARKERS[i % 4], ls=LINESTYLES[i % 4], color="0.2", label=g.split(" (")[0])
            for i, g in enumerate(groups)
        ]
    ax.legend(handles=handles, fontsize=6.5, loc="best")
