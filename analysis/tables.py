"""The paper's tables reproduced from tracked runs, each number beside the paper's and their difference.

The paper's numbers live in ``analysis/paper_values.csv`` (one row per table, row key, metric), transcribed from
the paper as printed, with a ``unit`` column: accuracies and decoding times are percent there, fractions in our runs,
so reproduced values are converted to the paper's unit before the difference is taken.

A table is built from the FINISHED runs of its study at one profile, the newest run per row and seed. Where a row
has several seeds (``studies/run.py --seeds N``) the reproduced value is their mean, shown as mean ± std (n
seeds); a row of one seed shows its value alone. A row whose run used a random stand-in network is marked
:data:`SUBSTITUTE_MARK`; a row or metric without a run shows :data:`MISSING`; a metric its run could not compute
(e.g. LPIPS without the VGG16 file) shows :data:`UNAVAILABLE` and says why.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.figures import UNAVAILABLE, finished_runs, missing_runs_reason, unavailable_reason
from analysis.seeds import newest_per_seed

PAPER_VALUES = Path(__file__).with_name("paper_values.csv")
SUBSTITUTE_MARK = "†SUBSTITUTE"
MISSING = "—"

# Paper unit -> from the value a run logs to the value as the paper prints it.
UNIT_SCALE: dict[str, float] = {"": 1.0, "dB": 1.0, "%": 100.0, "M params": 1e-6, "B params": 1e-9}

METRIC_LABELS = {
    "rfid": "rFID",
    "lpips": "LPIPS",
    "psnr": "PSNR",
    "ssim": "SSIM",
    "gfid": "gFID",
    "ar_probe_acc": "Lin Acc.",
    "decode_fraction": "decoding time",
    "inception_score": "IS",
    "precision": "Precision",
    "recall": "Recall",
    "tokenizer_params": "tokenizer params",
}

# reproduced: the mean over the row's seeds (std: their standard deviation, NaN for one; n: seeds with the metric);
# run_id: the newest of the row's runs, run_ids: all of them, comma-separated.
COLUMNS = [
    "row",
    "label",
    "metric",
    "unit",
    "reproduced",
    "std",
    "n",
    "paper",
    "difference",
    "substitute",
    "run_id",
    "run_ids",
    "unavailable",
]  # unavailable: why the runs have no value for the metric, when they say so


@dataclass(frozen=True)
class TableSpec:
    name: str  # file stem: "table5_align_layer"
    source: str  # as in paper_values.csv: "Table 5"
    study: str
    factors: tuple[str, ...]  # the study's factors that make the row key, joined by "/"
    about: str
    extra_metrics: tuple[str, ...] = ()  # measured beside the printed ones, which the source does not print


TABLES: tuple[TableSpec, ...] = (
    TableSpec("table2_enc_dec", "Table 2", "enc_dec_asymmetry", ("size",), "encoder/decoder scaling"),
    TableSpec(
        "table4_decode_cost",
        "Table 4",
        "decode_cost",
        ("decoder", "ar_size"),
        "share of generation time spent decoding; rows decoder/AR size",
    ),
    TableSpec("table5_align_layer", "Table 5", "align_layer", ("align_layer",), "semantic alignment layer (S-S)"),
    TableSpec("table6_semantic_encoder", "Table 6", "semantic_encoder", ("encoder",), "semantic teacher (S-B)"),
    TableSpec("table7_reg_weight", "Table 7", "reg_weight", ("lambda",), "semantic regularization weight (S-S)"),
    TableSpec(
        "table10_system_level",
        "Table 10",
        "system_level",
        ("size", "ar_size"),
        "final tokenizers and AR models; rows tokenizer/AR size",
    ),
    # The authors' released checkpoints evaluated here, beside the numbers their README prints for them.
    TableSpec(
        "released_checkpoints",
        "README",
        "released_checkpoints",
        ("size", "disc", "ar_size"),
        "the authors' released models; rows tokenizer/discriminator/AR size",
        extra_metrics=("psnr", "ssim", "inception_score", "precision", "recall"),
    ),
)


@cache
def paper_values(path: Path = PAPER_VALUES) -> pd.DataFrame:
    """The transcribed numbers: source, row, label, metric, value (float, as printed), unit, comment."""
    with open(path, newline="") as f:
        records = list(csv.DictReader(f))
    df = pd.DataFrame(records, columns=["source", "row", "label", "metric", "value", "unit", "comment"])
    return df.astype({"value": "float64"}).fillna({"unit": "", "comment": ""})


def row_key(values: Sequence[object]) -> str:
    """The CSV's row key for a run's factor values: ``0.5`` not ``0.50``, text as is, joined by ``/``."""
    return "/".join(str(float(v)) if isinstance(v, float) else str(v) for v in values)


def runs_per_row(runs: pd.DataFrame, spec: TableSpec) -> dict[str, pd.DataFrame]:
    """The FINISHED runs of each row of ``spec``, the newest of each seed, oldest first (rows without a run are
    absent)."""
    done = finished_runs(runs[runs["study"] == spec.study])
    columns = [f"factor_{f}" for f in spec.factors]
    if done.empty or not set(columns) <= set(done.columns):
        return {}
    done = done[done[columns].notna().all(axis=1)]
    keys = pd.Series(
        [
            row_key([v.item() if hasattr(v, "item") else v for v in values])
            for values in done[columns].itertuples(index=False)
        ],
        index=done.index,
        dtype="object",
    )
    done, _older = newest_per_seed(done.assign(row_=keys), ["row_"])  # a re-run of a row and seed: the newest wins
    done = done.sort_values("start_time", kind="stable") if "start_time" in done else done
    return {key: group.drop(columns="row_") for key, group in done.groupby("row_", sort=False)}


def build_table(spec: TableSpec, runs: pd.DataFrame, profile: str, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """One line per (row, metric) of the paper's table: reproduced value (in the paper's unit), paper, difference.

    Every row has every metric of the table: a cell the paper leaves blank has no paper value, and rows our runs
    have that the paper lacks come last.
    """
    paper = paper_values() if paper is None else paper
    printed = paper[paper["source"] == spec.source]
    at_profile = runs[runs["profile"] == profile]
    found = runs_per_row(at_profile, spec)
    units = dict(zip(printed["metric"][::-1], printed["unit"][::-1], strict=True))  # first printed unit wins
    labels = dict(zip(printed["row"], printed["label"], strict=True))
    values = {
        (r, m): (u, v)
        for r, m, u, v in zip(printed["row"], printed["metric"], printed["unit"], printed["value"], strict=True)
    }
    metrics = list(dict.fromkeys([*printed["metric"], *spec.extra_metrics]))
    rows = list(labels) + [key for key in found if key not in labels]  # the paper's rows, then any others we ran
    cells = [
        (key, labels.get(key, key), m, *values.get((key, m), (units.get(m, ""), math.nan)))
        for key in rows
        for m in metrics
    ]
    out = []
    for key, label, metric, unit, value in cells:
        group = found.get(key)
        logged = (
            group[metric].astype("float64").dropna() * UNIT_SCALE[unit]
            if group is not None and metric in group.columns
            else pd.Series(dtype="float64")
        )
        reproduced = float(logged.mean()) if len(logged) else math.nan
        out.append(
            {
                "row": key,
                "label": label,
                "metric": metric,
                "unit": unit,
                "reproduced": reproduced,
                "std": float(logged.std(ddof=1)) if len(logged) > 1 else math.nan,
                "n": len(logged),
                "paper": value,
                "difference": reproduced - value,
                "substitute": bool(group is not None and group["substitute"].any()),
                "run_id": None if group is None else group["run_id"].iloc[-1],
                "run_ids": None if group is None else ",".join(group["run_id"].astype(str)),
                "unavailable": (
                    unavailable_reason(group.iloc[-1], metric) if group is not None and not len(logged) else None
                ),
            }
        )
    df = pd.DataFrame(out, columns=COLUMNS)
    ids = {i for joined in df["run_ids"].dropna() for i in joined.split(",")}
    df.attrs.update(
        source=spec.source,
        study=spec.study,
        profile=profile,
        about=spec.about,
        runs=len(ids),
        seeds=int(df["n"].max()) if len(df) else 0,
    )
    return df


def _table(source: str) -> Callable[[pd.DataFrame, str], pd.DataFrame]:
    spec = next(s for s in TABLES if s.source == source)

    def build(runs: pd.DataFrame, profile: str) -> pd.DataFrame:
        return build_table(spec, runs, profile)

    build.__doc__ = f"{spec.source} ({spec.about}) from the runs of study {spec.study} at ``profile``."
    return build


table2 = _table("Table 2")
table4 = _table("Table 4")
table5 = _table("Table 5")
table6 = _table("Table 6")
table7 = _table("Table 7")
table10 = _table("Table 10")
released_checkpoints = _table("README")


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------


def _number(value: float, spec: str = ".4g") -> str:
    return MISSING if pd.isna(value) else f"{value:{spec}}"


def _reproduced(r: Any) -> str:
    """The value alone for one seed; ``mean ± std (n=N)`` over several."""
    if r.n > 1:
        return f"{_number(r.reproduced)} ± {_number(r.std, '.2g')} (n={r.n})"
    return _number(r.reproduced)


def _rendered(df: pd.DataFrame) -> list[list[str]]:
    lines = []
    for r in df.itertuples(index=False):
        metric = METRIC_LABELS.get(r.metric, r.metric) + (f" ({r.unit})" if r.unit else "")
        why = r.unavailable if isinstance(r.unavailable, str) else ""  # pandas may hold a missing reason as NaN
        reproduced = UNAVAILABLE if why else _reproduced(r)
        note = "; ".join(n for n in (SUBSTITUTE_MARK if r.substitute else "", why) if n)
        lines.append([r.label, metric, reproduced, _number(r.paper, ".6g"), _number(r.difference, "+.4g"), note])
    return lines


HEADER = ["row", "metric", "reproduced", "paper", "difference", "note"]


def _title(df: pd.DataFrame) -> str:
    a = df.attrs
    return f"{a.get('source', 'Table')} ({a.get('about', '')}), profile {a.get('profile', '?')}"


def _caveat(df: pd.DataFrame) -> str:
    profile = df.attrs.get("profile", "?")
    scale = "" if profile == "paper" else f" {profile}-scale models: compare trends, not values."
    seeds = (
        "newest per row and seed; reproduced = mean ± std over n seeds"
        if df.attrs.get("seeds", 1) > 1
        else "newest per row"
    )
    return (
        f"Study {df.attrs.get('study', '?')}, {df.attrs.get('runs', 0)} FINISHED runs ({seeds}); "
        f"difference = reproduced - paper; {MISSING}: no run or no paper value; {UNAVAILABLE}: the run could "
        f"not compute the metric (the note says why); {SUBSTITUTE_MARK}: a random stand-in network was used."
        f"{scale}"
    )


def to_markdown(df: pd.DataFrame) -> str:
    """The table as GitHub markdown, titled with its source and profile."""
    lines = [f"# {_title(df)}", "", _caveat(df), "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in _rendered(df)]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for old, new in (
        ("\\", r"\textbackslash{}"),
        ("±", r"$\pm$"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("&", r"\&"),
        ("#", r"\#"),
        (SUBSTITUTE_MARK, r"$^\dagger$SUBSTITUTE"),
        (MISSING, "---"),
        ("‡", r"$^\ddagger$"),
    ):
        text = text.replace(old, new)
    return text


def to_latex(df: pd.DataFrame) -> str:
    """The table as a LaTeX ``table`` (booktabs), captioned with its source and profile."""
    lines = [
        f"% {_title(df)}: generated by analysis/tables.py",
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{llrrrl}",
        r"\toprule",
        " & ".join(HEADER) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(_latex_escape(c) for c in cells) + r" \\" for cells in _rendered(df)]
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{_latex_escape(_title(df) + '. ' + _caveat(df))}}}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# Writing every table (called by analysis/plot_scaling.py)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenTable:
    spec: TableSpec
    profile: str
    paths: tuple[Path, ...]
    runs: int


@dataclass(frozen=True)
class SkippedTable:
    spec: TableSpec
    profile: str
    reason: str


def write_tables(
    df: pd.DataFrame, out: Path, studies: Sequence[str] = ()
) -> tuple[list[WrittenTable], list[SkippedTable]]:
    """``<table>-<profile>.md`` and ``.tex`` for every table whose study has FINISHED runs at a profile."""
    written, skipped = [], []
    for profile in sorted(df["profile"].dropna().unique()):
        at_profile = df[df["profile"] == profile]
        for spec in TABLES:
            if studies and spec.study not in studies:
                continue
            runs = at_profile[at_profile["study"] == spec.study]
            if (reason := missing_runs_reason(runs, spec.study)) is not None:
                skipped.append(SkippedTable(spec, profile, reason))
                continue
            table = build_table(spec, df, profile)
            stem = out / f"{spec.name}-{profile}"
            paths = (stem.with_suffix(".md"), stem.with_suffix(".tex"))
            paths[0].write_text(to_markdown(table))
            paths[1].write_text(to_latex(table))
            written.append(WrittenTable(spec, profile, paths, table.attrs["runs"]))
    return written, skipped


def index_lines(profile: str, written: Sequence[WrittenTable], skipped: Sequence[SkippedTable]) -> list[str]:
    """The tables section of ``index.md`` for one profile."""
    here = [t for t in written if t.profile == profile]
    gaps = [s for s in skipped if s.profile == profile]
    lines = []
    if here:
        lines += ["| table | reproduces | study | runs | files |", "|---|---|---|---|---|"]
        lines += [
            f"| {t.spec.name} | {t.spec.source} | {t.spec.study} | {t.runs} | "
            + " ".join(f"[{p.suffix[1:]}]({p.name})" for p in t.paths)
            + " |"
            for t in here
        ] + [""]
    if gaps:
        lines += ["Skipped tables:", ""] + [f"- {s.spec.name} ({s.spec.source}): {s.reason}" for s in gaps] + [""]
    return lines
