"""Runs replicated over seeds (``studies/run.py --seeds N``) in figures and tables, from a synthetic MLflow store
(nothing is trained): each point is the mean over its seeds with a 95% band, tables show mean ± std (n), and the
figure says which of its differences stand above the seed spread."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from test_analysis import _log_run as log_fig9_run
from test_analysis_figures import _log_run as log_curve_run
from test_analysis_tables import _log_run as log_table_run
from tracking_store import study_experiment

from analysis import plot_scaling
from analysis.fig_curves import fig5_entropy_curves
from analysis.figures import fig9_1d_vs_2d
from analysis.load import load_runs
from analysis.seeds import ci95, run_seeds, summary
from analysis.sources import StoreSource
from analysis.tables import table5, to_latex, to_markdown

pytest.importorskip("mlflow")

PROFILE = "tiny"
# (size, kind) -> rFID of seeds 0 and 1. 1D vs 2D: within the spread at S-S, beyond it at S-B and B-L; along 2D,
# S-B to B-L is within it; every other step is beyond it.
RFID = {
    ("S-S", "1d"): (9.0, 9.4),
    ("S-S", "2d"): (9.2, 9.6),
    ("S-B", "1d"): (8.0, 8.2),
    ("S-B", "2d"): (8.6, 8.8),
    ("B-L", "1d"): (7.0, 7.2),
    ("B-L", "2d"): (8.5, 8.7),
}
ALIGN = {2: (9.0, 10.0), 3: (8.5, None)}  # align_layer -> rFID of seeds 0 and 1 (layer 3 ran one seed)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from gigatok.tracking import connect

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = connect(uri)
    fig9 = study_experiment(client, "scaling_1d_vs_2d", PROFILE, "Fig. 9")
    for (size, kind), values in RFID.items():
        for seed, rfid in enumerate(values):
            # The S-S 1D seed-0 run was made before seeds were a factor: it has no seed factor, and is seed 0.
            old = (size, kind, seed) == ("S-S", "1d", 0)
            factors = {"size": size, "kind": kind, **({} if old else {"seed": seed})}
            metrics = {"rfid": rfid, "gfid": 40.0 + seed, "ar_val_loss": 5.0, "ar_probe_acc": 0.2}
            log_fig9_run(client, fig9, "scaling_1d_vs_2d", factors, kind, size, 0.5, metrics)
    align = study_experiment(client, "align_layer", PROFILE, "Table 5")
    for layer, values in ALIGN.items():
        for seed, rfid in enumerate(values):
            if rfid is not None:
                log_table_run(
                    client,
                    align,
                    "align_layer",
                    {"align_layer": layer, "seed": seed},
                    {"rfid": rfid, "gfid": 40.0},
                    1000 + 10 * layer + seed,
                )
    entropy = study_experiment(client, "entropy_loss", PROFILE)
    for on in (False, True):
        for seed in (0, 1):
            usage = [(step, (0.5 if on else 0.1) + 0.1 * seed) for step in (10, 20, 30)]
            log_curve_run(
                client,
                entropy,
                "entropy_loss",
                {"size": "XL-XXL", "entropy": on, "seed": seed},
                {},
                size="XL-XXL",
                entropy=0.005 if on else 0.0,
                curves={"tokenizer/codebook_usage": usage},
            )
    return uri


@pytest.fixture(scope="module")
def runs(store: str) -> pd.DataFrame:
    return load_runs(store)


def test_statistics_over_seeds() -> None:
    assert ci95([1.0, 2.0]) == (1.0, 2.0)  # two seeds: the bootstrap interval of the mean is their range
    low, high = ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    assert 1.0 < low < 3.0 < high < 5.0 and ci95([1.0, 2.0, 3.0, 4.0, 5.0]) == (low, high)  # deterministic
    assert all(math.isnan(v) for v in ci95([3.0]))
    s = summary([1.0, 3.0, math.nan])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(math.sqrt(2)) and s["n"] == 2
    one = summary([5.0])
    assert one["n"] == 1 and one["mean"] == 5.0 and math.isnan(one["std"])


def test_seed_of_each_run(runs: pd.DataFrame) -> None:
    fig9 = runs[runs["study"] == "scaling_1d_vs_2d"]
    seeds = run_seeds(fig9)
    assert sorted(seeds.tolist()) == [0] * 6 + [1] * 6  # the run without a seed factor is seed 0
    assert fig9["factor_seed"].isna().sum() == 1


def test_fig9_draws_the_mean_with_a_band_over_seeds(runs: pd.DataFrame) -> None:
    plot = fig9_1d_vs_2d(runs)
    rfid = plot.data[plot.data["panel"] == "rfid"]
    assert len(rfid) == 12 and set(rfid["n"]) == {2}  # every seed is a row; each point has two
    for (size, kind), values in RFID.items():
        rows = rfid[(rfid["size"] == size) & rfid["series"].str.startswith(kind.upper())]
        assert sorted(rows["y"]) == pytest.approx(sorted(values)) and sorted(rows["seed"]) == [0, 1]
        assert rows["mean"].iloc[0] == pytest.approx(np.mean(values))
        assert rows["std"].iloc[0] == pytest.approx(np.std(values, ddof=1))
        assert (rows["ci_low"].iloc[0], rows["ci_high"].iloc[0]) == pytest.approx((min(values), max(values)))
    ax = plot.figure.axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # one 95% band per line
    # The mean line of each series goes through the means; each seed is a faint dot.
    lines = {line.get_label(): line for line in ax.get_lines()}
    one_d = next(line for label, line in lines.items() if label.startswith("1D"))
    assert list(one_d.get_ydata()) == pytest.approx([np.mean(RFID[s, "1d"]) for s in ("S-S", "S-B", "B-L")])
    faint = [
        c
        for c in ax.collections
        if c.get_alpha() is not None and c.get_alpha() < 0.5 and not isinstance(c, PolyCollection)
    ]
    assert sorted(len(c.get_offsets()) for c in faint) == [6, 6]
    assert "mean over up to 2 seeds" in plot.figure._suptitle.get_text()


def test_fig9_says_which_differences_exceed_the_seed_spread(runs: pd.DataFrame) -> None:
    plot = fig9_1d_vs_2d(runs)
    rfid = plot.comparisons[plot.comparisons["panel"] == "rfid"]
    between = {r.at: bool(r.beyond_spread) for r in rfid.itertuples() if r.compares == "series"}
    assert between == {"S-S": False, "S-B": True, "B-L": True}
    along = {(r.at, r.a, r.b): bool(r.beyond_spread) for r in rfid.itertuples() if r.compares == "positions"}
    assert along == {
        ("1D tokenizer", "S-S", "S-B"): True,
        ("1D tokenizer", "S-B", "B-L"): True,
        ("1D tokenizer", "S-S", "B-L"): True,  # largest against smallest
        ("2D tokenizer", "S-S", "S-B"): True,
        ("2D tokenizer", "S-B", "B-L"): False,
        ("2D tokenizer", "S-S", "B-L"): True,
    }
    note = next(line for line in plot.spread if line.startswith("Reconstruction, rfid"))
    beyond, within = note.split("within it: ")
    assert "1D tokenizer vs 2D tokenizer at S-B (8.1 vs 8.7)" in beyond and "2D tokenizer S-S to B-L" in beyond
    assert "1D tokenizer vs 2D tokenizer at S-S (9.2 vs 9.4)" in within and "2D tokenizer S-B to B-L" in within
    # gFID is 40 at seed 0 and 41 at seed 1 everywhere: nothing stands above that spread.
    gfid = next(line for line in plot.spread if line.startswith("AR Probing: generation"))
    assert "beyond the seed spread: none" in gfid


def test_one_seed_looks_as_before(runs: pd.DataFrame) -> None:
    plot = fig9_1d_vs_2d(runs[run_seeds(runs) == 0])
    rfid = plot.data[plot.data["panel"] == "rfid"]
    assert len(rfid) == 6 and set(rfid["n"]) == {1} and (rfid["y"] == rfid["mean"]).all()
    assert not plot.spread and not plot.comparisons["beyond_spread"].notna().any()
    assert not [c for c in plot.figure.axes[0].collections if isinstance(c, PolyCollection)]
    assert "seeds" not in plot.figure._suptitle.get_text()


def test_a_rerun_of_a_seed_replaces_the_older(runs: pd.DataFrame) -> None:
    seed1 = runs[(runs["study"] == "scaling_1d_vs_2d") & (run_seeds(runs) == 1)].iloc[[0]]
    older = seed1.assign(
        run_id="older", run_hash="other-config", rfid=99.0, start_time=seed1["start_time"] - pd.Timedelta(days=1)
    )
    plot = fig9_1d_vs_2d(pd.concat([runs, older], ignore_index=True))
    assert "older" not in set(plot.data["run_id"]) and any("same point and seed" in n for n in plot.notes)


def test_tables_show_mean_std_and_n(runs: pd.DataFrame) -> None:
    table = table5(runs, PROFILE)
    rfid = table[table["metric"] == "rfid"].set_index("row")
    assert rfid.loc["2", "reproduced"] == 9.5 and rfid.loc["2", "std"] == pytest.approx(math.sqrt(0.5))
    assert rfid.loc["2", "n"] == 2 and len(rfid.loc["2", "run_ids"].split(",")) == 2
    assert rfid.loc["3", "reproduced"] == 8.5 and rfid.loc["3", "n"] == 1 and math.isnan(rfid.loc["3", "std"])
    assert table.attrs["runs"] == 3 and table.attrs["seeds"] == 2
    markdown = to_markdown(table)
    assert "| 9.5 ± 0.71 (n=2) |" in markdown and "| 8.5 |" in markdown
    assert "mean ± std over n seeds" in markdown
    assert r"9.5 $\pm$ 0.71 (n=2)" in to_latex(table)


def test_cli_prints_and_indexes_the_spread(store: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "figures"
    assert plot_scaling.main(["--tracking-uri", store, "--out", str(out), "--study", "scaling_1d_vs_2d"]) == 0
    printed = capsys.readouterr().out
    assert "    spread: Reconstruction, rfid, 2 seeds a point" in printed
    index = (out / "index.md").read_text()
    assert "Seed spread in fig9_1d_vs_2d (Fig. 9):" in index and "- Reconstruction, rfid" in index
    assert (out / "fig9_1d_vs_2d-tiny.png").stat().st_size > 1000


def test_fig5_draws_the_mean_curve_over_seeds(store: str, runs: pd.DataFrame) -> None:
    plot = fig5_entropy_curves(runs, StoreSource(store))
    usage = plot.data[plot.data["panel"] == "tokenizer/codebook_usage"]
    assert usage["run_id"].nunique() == 4
    ax = plot.figure.axes[0]
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2  # a band per setting
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["XL-XXL without entropy loss, mean of 2 seeds", "XL-XXL with entropy loss, mean of 2 seeds"]
    means = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines() if "mean" in line.get_label()}
    assert means["XL-XXL with entropy loss, mean of 2 seeds"] == pytest.approx([55.0] * 3)  # percent
