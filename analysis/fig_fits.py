"""The fit figure of a study: its runs, the power law fitted to each group, the 95% band, the extrapolation.

One row of panels per N (parameters, training FLOPs), one panel per metric. Each run is a faint dot; each N's mean
over seeds a marker with its seed spread (95% interval, :mod:`analysis.seeds`); the fitted curve is solid over the
trained range with its bootstrap band, dashed beyond it (to 4x the largest N) with a lighter band, unless the fit is
undetermined (alpha at a bound or its interval spanning the bounds: no extrapolation); the legend gives each group's
exponent with its interval. A group whose fit was refused keeps its points and shows, in the panel,
why (``not fitted: 2 points < 3 parameters``). Probe accuracy is drawn as accuracy (%), its curve ``1 - fit``.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

from analysis.figures import Plot, log_ticks, profile_heading, single_profile
from analysis.fit_scaling import METRICS, FitMetric, FitStudy, StudyFit, fit_study
from analysis.power_law import CI_LEVEL, EXTRAPOLATE, N_BOOT
from analysis.seeds import summary
from analysis.theme import house_theme

AXIS_WORDS = {"params": "parameter count", "flops": "training FLOPs"}
FIT_DATA_COLUMNS = ["figure", "panel", "axis", "series", "run_id", "run_name", "size", "x", "value", "y", "substitute"]


@dataclass(frozen=True, eq=False)
class FitPlot(Plot):
    fits: tuple[StudyFit, ...] = ()  # every fit drawn, for the exponent table


def axis_label(axis: str, metric: FitMetric) -> tuple[str, float]:
    """The x label of a panel and the unit its N is drawn in."""
    if axis == "params":
        return "tokenizer parameters (M, log scale)", 1e6
    stages = "tokenizer" if metric.stage == "tokenizer" else "tokenizer + AR probe"
    return f"training FLOPs, {stages} (log scale)", 1.0


def drawn(metric: FitMetric, fitted: np.ndarray | pd.Series) -> np.ndarray:
    """A fitted quantity as the panel draws it: accuracy (%) from a probe's error, the value itself otherwise."""
    values = np.asarray(fitted, dtype="float64")
    return (1 - values) * 100 if metric.accuracy else values


def fit_plot(runs: pd.DataFrame, spec: FitStudy, n_boot: int = N_BOOT) -> FitPlot:
    """The fit figure of ``spec``'s study from ``runs`` (one profile)."""
    name = f"fits_{spec.study}"
    fits, notes = fit_study(runs, spec, n_boot)
    if not fits:
        raise ValueError(f"{name}: no FINISHED run of {spec.study} logged a metric to fit")
    profile = single_profile(runs[runs["study"] == spec.study], name)
    metrics = [m for m in METRICS if any(f.metric == m for f in fits)]
    # An N no run logged (FLOPs, for runs registered before they were) has no row: its fits stay in the table.
    axes = [a for a in spec.axes if any(len(f.points) for f in fits if f.axis == a)]
    notes += [f"no fits against {a}: no run logged its {AXIS_WORDS[a]}" for a in spec.axes if a not in axes]
    if not axes:
        raise ValueError(f"{name}: no run of {spec.study} logged its {' or '.join(AXIS_WORDS[a] for a in spec.axes)}")
    order = spec.order(runs)
    records: list[dict] = []
    with house_theme():
        fig = Figure(figsize=(4.4 * len(metrics), 3.9 * len(axes) + 0.9), layout="constrained")
        grid = fig.subplots(len(axes), len(metrics), squeeze=False)
        for row, axis in zip(grid, axes, strict=True):
            for ax, metric in zip(row, metrics, strict=True):
                here = [f for f in fits if f.axis == axis and f.metric == metric]
                records += _draw_panel(ax, here, metric, axis, order, name)
    substitutes = any(bool(f.points["substitute"].any()) for f in fits)
    heading = profile_heading(f"Scaling-law fits: {spec.study}", profile, substitutes, "(see index)")
    fig.suptitle(
        f"{heading}\nmetric = E + A N^-alpha, fitted per group; bands: {CI_LEVEL}% bootstrap interval over runs "
        f"({n_boot} resamples); dashed: extrapolated to {EXTRAPOLATE:g}x the largest N trained",
        fontsize=10,
    )
    notes += [f"{f.metric.column} vs {f.axis}, {f.group}: {f.fit.note}" for f in fits if f.fit.note]
    data = pd.DataFrame.from_records(records, columns=FIT_DATA_COLUMNS)
    return FitPlot(name, fig, data, tuple(notes), fits=tuple(fits))


def _draw_panel(ax: Axes, fits: list[StudyFit], metric: FitMetric, axis: str, order: list[str], name: str) -> list:
    label, unit = axis_label(axis, metric)
    records: list[dict] = []
    refused: list[str] = []
    shown: list[np.ndarray] = []  # every drawn y that should fit in the panel (points and curves, not bands)
    for f in fits:
        color = f"C{order.index(f.group) if f.group in order else len(order)}"
        x, y = f.points["n"].to_numpy() / unit, drawn(metric, f.points["y"])
        shown.append(y)
        _draw_points(ax, x, y, color)
        if f.fit.fitted:
            shown.append(_draw_curve(ax, f, metric, unit, color))
        else:
            ax.plot([], [], "o", color=color, label=f"{_short(f.group)}: not fitted")
            refused.append(textwrap.fill(f"{_short(f.group)}: {f.fit.note}", 60, subsequent_indent="    "))
        records += [
            {"figure": name, "panel": metric.column, "axis": axis, "series": f.group, **r, "x": r["n"] / unit}
            for r in f.points.assign(y=y)[["run_id", "run_name", "size", "n", "value", "y", "substitute"]].to_dict(
                "records"
            )
        ]
    if not records:
        ax.set_axis_off()
        ax.set_title(_title(metric, axis), fontsize=9)
        ax.text(0.5, 0.5, "\n".join(refused), transform=ax.transAxes, ha="center", fontsize=7, color="0.35", wrap=True)
        return records
    if refused:
        text = ax.text(0.02, 0.03, "\n".join(refused), transform=ax.transAxes, fontsize=6.5, color="0.25", va="bottom")
        text.set_in_layout(False)  # a long note must not shrink the panel
    _style(ax, metric, axis, label, np.concatenate([f.points["n"].to_numpy() / unit for f in fits]), shown)
    return records


def _title(metric: FitMetric, axis: str) -> str:
    return f"{metric.label.split(' (')[0]} vs {'parameters' if axis == 'params' else 'training FLOPs'}"


def _short(group: str) -> str:
    return group.split(" (")[0]


def _draw_points(ax: Axes, x: np.ndarray, y: np.ndarray, color: str) -> None:
    """Each run a faint dot; each N the mean over its seeds, with their 95% interval where there are several."""
    ax.scatter(x, y, s=12, color=color, alpha=0.35, linewidths=0, zorder=3)
    for n in np.unique(x):
        s = summary(y[x == n])
        err = None if s["n"] < 2 else [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]]
        ax.errorbar([n], [s["mean"]], yerr=err, fmt="o", ms=5, color=color, capsize=2.5, lw=1, zorder=4)


def _draw_curve(ax: Axes, f: StudyFit, metric: FitMetric, unit: float, color: str) -> np.ndarray:
    """The fitted curve (solid where trained, dashed beyond) with its band; returns the curve as drawn."""
    p = f.fit
    grid, curve = p.grid / unit, drawn(metric, p.curve)
    trained = p.grid <= p.n_max * (1 + 1e-9)
    beyond = ~trained
    beyond[max(int(trained.sum()) - 1, 0)] = True  # the two parts meet at the largest N
    interval = "" if np.isnan(p.alpha_ci[0]) else f" [{p.alpha_ci[0]:.2f}, {p.alpha_ci[1]:.2f}]"
    # An undetermined fit (alpha at a bound, or an interval spanning the bounds) says nothing beyond the data: its
    # curve only joins the points, and the legend says so instead of extrapolating a guess.
    verdict = "" if p.extrapolates else ", undetermined: not extrapolated"
    label = f"{_short(f.group)}: α={p.alpha:.2f}{interval}{verdict}"
    ax.plot(grid[trained], curve[trained], "-", color=color, lw=1.6, label=label)
    if p.extrapolates:
        ax.plot(grid[beyond], curve[beyond], "--", color=color, lw=1.3)
    if len(p.band[0]):
        low, high = drawn(metric, p.band[0]), drawn(metric, p.band[1])
        ax.fill_between(grid[trained], low[trained], high[trained], color=color, alpha=0.2, lw=0)
        if p.extrapolates:
            ax.fill_between(grid[beyond], low[beyond], high[beyond], color=color, alpha=0.08, lw=0, hatch="///")
    return np.where(trained | p.extrapolates, curve, np.nan)


def _style(ax: Axes, metric: FitMetric, axis: str, label: str, x: np.ndarray, shown: list[np.ndarray]) -> None:
    ax.set_xscale("log")
    if axis == "params" and len(x):
        ticks = log_ticks(float(x.min()), float(x.max()) * EXTRAPOLATE)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())  # unlabelled minor ticks show nothing in the theme (no marks)
    elif len(x) and x.max() < 10 * x.min():
        # FLOPs spanning under a decade (the tiny profile's sizes differ by a few %): matplotlib labels every minor
        # tick there, and the labels overlap. A few plain ticks instead.
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(label, fontsize=8)
    ylabel = "top-1 accuracy (%), fit to 1 - acc" if metric.accuracy else metric.label
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(_title(metric, axis), fontsize=9)
    values = np.concatenate([v[np.isfinite(v)] for v in shown]) if shown else np.empty(0)
    if len(values):
        # Bands far outside the data (an extrapolation's) would squash the points: the panel follows points and curves.
        low, high = float(values.min()), float(values.max())
        pad = 0.12 * (high - low) or 0.05 * abs(high) or 1.0
        ax.set_ylim(low - pad, high + pad)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6.5, loc="best")
