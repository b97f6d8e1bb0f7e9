"""The CFG curve: gFID against the classifier-free-guidance scale, from the trials of the CFG searches.

Each trial is a child run of the AR run it tuned (see ``gigatok/cfg_search``). A completed trial is drawn at its
full-budget gFID; a pruned one as a cross at the small-budget gFID it was stopped at (a noisier estimate on fewer
samples, so never joined to the line); the best scale of each search is starred. One panel per guidance schedule.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.figures import DATA_COLUMNS, SUBSTITUTE_NOTE, Plot, finished_runs, profile_heading, single_profile
from analysis.sources import Source

SCHEDULE_TITLES = {"constant": "constant CFG (AR probing)", "step": "step CFG (system level)"}


def cfg_curve(df: pd.DataFrame, source: Source) -> Plot:
    """gFID against CFG scale for every searched AR run among ``df``'s runs (one profile)."""
    name = "cfg_curve"
    runs = finished_runs(df)
    profile = single_profile(runs, name)
    trials = _searched_trials(runs, source, name)
    parents = runs.set_index("run_id")
    schedules = sorted(trials["cfg_schedule"].fillna("constant").unique(), key=lambda s: (s != "constant", s))
    fig = Figure(figsize=(5.2 * len(schedules), 4.0), layout="constrained")
    axes = fig.subplots(1, len(schedules), squeeze=False)[0]
    records: list[dict] = []
    substitutes = False
    for ax, schedule in zip(axes, schedules, strict=True):
        here = trials[trials["cfg_schedule"].fillna("constant") == schedule]
        for index, ((parent_id, _search), group) in enumerate(
            here.groupby(["parent_run_id", "search"], sort=True, dropna=False)
        ):
            parent = parents.loc[parent_id]
            label = f"{parent['run_name']} [{parent['study']}]"
            if parent["substitute"]:
                label += f" ({SUBSTITUTE_NOTE})"
                substitutes = True
            _draw_search(ax, group, label, color=f"C{index % 10}", dashed=bool(parent["substitute"]))
            records += _trial_records(group, parent_id, parent, figure=name, panel=schedule, series=label)
        _style_panel(ax, schedule)
    fig.suptitle(profile_heading("gFID against CFG scale", profile, substitutes, "dashed lines"), fontsize=10)
    columns = [*DATA_COLUMNS, "state", "sample_budget", "trial_run_id"]
    return Plot(name, fig, pd.DataFrame.from_records(records, columns=columns))


def _searched_trials(runs: pd.DataFrame, source: Source, name: str) -> pd.DataFrame:
    """The CFG-search trials with a gFID whose AR run is among ``runs`` (finished ones); raises when there are none,
    saying whether no search was recorded at all or none belongs to a finished run."""
    trials = source.trials(sorted(runs["experiment"].dropna().unique())) if not runs.empty else pd.DataFrame()
    if trials.empty:
        raise ValueError(f"{name}: no CFG-search trials recorded (run `python studies/run.py cfg_search ...`)")
    trials = trials[trials["parent_run_id"].isin(runs.set_index("run_id").index) & trials["gfid"].notna()]
    if trials.empty:
        raise ValueError(f"{name}: no CFG-search trial with a gFID belongs to a FINISHED run")
    return trials


def _draw_search(ax: Axes, group: pd.DataFrame, label: str, *, color: str, dashed: bool) -> None:
    """One search's trials: completed ones joined by a line with the best starred; pruned ones as bare crosses, never
    joined (their gFID is a small-budget estimate). The label goes on the line, or on the crosses if nothing
    completed, so every search is in the legend once."""
    done = group[group["state"] == "COMPLETE"].sort_values("cfg_scale")
    pruned = group[group["state"] == "PRUNED"]
    if not done.empty:
        ax.plot(
            done["cfg_scale"],
            done["gfid"],
            marker="o",
            color=color,
            markersize=4,
            label=label,
            linestyle="--" if dashed else "-",
        )
        _star_best(ax, done, color)
    if not pruned.empty:
        ax.scatter(
            pruned["cfg_scale"],
            pruned["gfid"],
            marker="x",
            s=30,
            color=color,
            label=None if not done.empty else label,
        )


def _star_best(ax: Axes, done: pd.DataFrame, color: str) -> None:
    """A star, annotated with its scale, at the completed trial of lowest gFID: the scale the search settles on."""
    best = done.loc[done["gfid"].idxmin()]
    ax.scatter([best["cfg_scale"]], [best["gfid"]], marker="*", s=160, color=color, zorder=4)
    ax.annotate(
        f"best {best['cfg_scale']:g}",
        (best["cfg_scale"], best["gfid"]),
        textcoords="offset points",
        xytext=(5, -11),
        fontsize=7,
        color=color,
    )


def _trial_records(
    group: pd.DataFrame, parent_id: str, parent: pd.Series, *, figure: str, panel: str, series: str
) -> list[dict]:
    """The plot's data rows for one search, a row per trial (pruned ones too, with their state and budget)."""
    return [
        {
            "figure": figure,
            "panel": panel,
            "series": series,
            "run_id": parent_id,
            "run_name": parent["run_name"],
            "size": parent["tokenizer_name"],
            "x": float(t.cfg_scale),
            "value": float(t.gfid),
            "y": float(t.gfid),
            "substitute": bool(parent["substitute"]),
            "state": t.state,
            "sample_budget": t.sample_budget,
            "trial_run_id": t.run_id,
        }
        for t in group.itertuples(index=False)
    ]


def _style_panel(ax: Axes, schedule: str) -> None:
    """Axis labels, title and legend of one schedule's panel, with a legend entry explaining the pruned crosses."""
    ax.scatter([], [], marker="x", color="0.3", label="pruned (small-budget gFID)")
    ax.set_xlabel("CFG scale")
    ax.set_ylabel("gFID (lower is better)")
    ax.set_title(SCHEDULE_TITLES.get(schedule, f"{schedule} CFG"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
