"""Loading tracked runs and drawing the scaling figures, on a synthetic MLflow store (nothing is trained).

The store mimics what ``studies/run.py`` writes: one experiment per study and profile, one run per planned run
with the ``gigatok.*`` tags (built from the tracking schema by ``tracking_store``), the flattened config as params,
final metrics at step 0 and a training curve.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from tracking_store import log_study_run, study_experiment, study_run_tags

from analysis import plot_scaling
from analysis.figures import SUBSTITUTE_NOTE, fig9_1d_vs_2d, scaling_semreg
from analysis.load import (
    FINAL_METRICS,
    StoreError,
    load_curves,
    load_runs,
    load_snapshot,
    parse_value,
    save_snapshot,
    tokenizer_parameters,
)

pytest.importorskip("mlflow")

PROFILE = "tiny"
# (size, kind) -> rfid, gfid, AR validation loss, AR linear-probe accuracy. B-L 2D used substitute networks.
FIG9 = {
    ("S-S", "1d"): (9.0, 40.0, 5.50, 0.20),
    ("S-B", "1d"): (8.0, 38.0, 5.40, 0.22),
    ("B-L", "1d"): (7.0, 35.0, 5.30, 0.25),
    ("S-S", "2d"): (9.5, 42.0, 5.60, 0.18),
    ("S-B", "2d"): (8.7, 41.0, 5.55, 0.19),
    ("B-L", "2d"): (8.1, 40.5, 5.52, 0.21),
}
SUBSTITUTE_RUN = ("B-L", "2d")
SEMREG = {
    ("S-S", False): (12.0, 50.0),
    ("S-S", True): (10.0, 45.0),
    ("S-B", False): (11.0, 52.0),
    ("S-B", True): (9.0, 43.0),
}


def _log_run(
    client,
    experiment_id: str,
    study: str,
    factors: dict,
    kind: str,
    size: str,
    semantic_weight: float,
    metrics: dict[str, float],
    status: str = "FINISHED",
    substitutes: str | None = None,
) -> str:
    run_hash = f"{study[:4]}{size}{kind}{semantic_weight}{factors.get('seed', '')}".replace(".", "")  # seeds differ
    tags = study_run_tags(
        study,
        PROFILE,
        run_hash,
        factors,
        substitutes=substitutes,
        provenance={"rfid": "inception-v3-compat (torch-fidelity), 299 px, reconstructions vs val"},
    )
    params = {
        "tokenizer.profile": PROFILE,
        "tokenizer.tokenizer.name": size,
        "tokenizer.tokenizer.kind": kind,
        "tokenizer.tokenizer.semantic.weight": str(semantic_weight),
        "tokenizer.tokenizer.semantic.layer": "3",
        "tokenizer.tokenizer.semantic.encoder": "inception",
        "tokenizer.tokenizer.quantizer.entropy_weight": "0.05",
        "tokenizer.train.epochs": "1",
        "ar.size": "B",
        "ar.train.epochs": "2",
    }
    curve = [(step, 1.0 / (step + 1)) for step in range(0, 30, 10)]
    return log_study_run(
        client,
        experiment_id,
        tags,
        run_name=" ".join(f"{k}={v}" for k, v in factors.items()),
        metrics=metrics,
        params=params,
        curves={"tokenizer/total_loss": curve},
        status=status,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A SQLite store with Fig. 9's six runs (one FAILED extra) and four Fig. 7 runs."""
    from gigatok.tracking import connect

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = connect(uri)
    fig9 = study_experiment(client, "scaling_1d_vs_2d", PROFILE, "Fig. 9")
    run_ids = {}
    for (size, kind), (rfid, gfid, val_loss, acc) in FIG9.items():
        metrics = {"rfid": rfid, "gfid": gfid, "ar_val_loss": val_loss, "ar_probe_acc": acc, "lpips": 0.3}
        subs = "vgg16 (random SUBSTITUTE)" if (size, kind) == SUBSTITUTE_RUN else None
        run_ids[size, kind] = _log_run(
            client, fig9, "scaling_1d_vs_2d", {"size": size, "kind": kind}, kind, size, 0.5, metrics, substitutes=subs
        )
    failed = _log_run(
        client,
        fig9,
        "scaling_1d_vs_2d",
        {"size": "S-L", "kind": "1d"},
        "1d",
        "S-L",
        0.5,
        {"rfid": 1.0},
        status="FAILED",
    )
    semreg = study_experiment(client, "scaling_semreg", PROFILE, "Figs. 1 and 7")
    for (size, reg), (rfid, gfid) in SEMREG.items():
        _log_run(
            client,
            semreg,
            "scaling_semreg",
            {"size": size, "semreg": reg},
            "1d",
            size,
            0.5 if reg else 0.0,
            {"rfid": rfid, "gfid": gfid},
        )
    return {"uri": uri, "run_ids": run_ids, "failed": failed}


@pytest.fixture(scope="module")
def runs(store: dict) -> pd.DataFrame:
    return load_runs(store["uri"])


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def test_one_row_per_run_with_typed_columns(runs: pd.DataFrame, store: dict) -> None:
    assert len(runs) == 6 + 1 + 4
    assert set(runs["study"]) == {"scaling_1d_vs_2d", "scaling_semreg"}
    assert set(runs["profile"]) == {PROFILE}
    assert (runs.loc[runs["run_id"] == store["failed"], "status"] == "FAILED").all()
    assert runs["factor_semreg"].dtype == "boolean"
    assert runs["semantic_weight"].dtype == "float64" and runs["align_layer"].dtype == "Int64"
    assert set(FINAL_METRICS) <= set(runs.columns)
    assert all(runs[m].dtype == "float64" for m in FINAL_METRICS)
    assert math.isnan(runs["inception_score"].iloc[0])  # never logged: NaN, not absent
    # The CFG search's metrics are columns of every table, searched or not (cfg_best_step_fraction was left out)
    assert {"cfg_best_scale", "cfg_best_gfid", "cfg_best_step_fraction"} <= set(FINAL_METRICS)
    assert runs["cfg_best_step_fraction"].isna().all()
    assert "tokenizer/total_loss" not in runs.columns  # curves are not final metrics
    assert runs["provenance.rfid"].str.startswith("inception").all()
    assert runs["substitute"].sum() == 1


def test_filters_and_parameter_counts(store: dict) -> None:
    fig9 = load_runs(store["uri"], studies=["scaling_1d_vs_2d"], profile=PROFILE)
    assert set(fig9["study"]) == {"scaling_1d_vs_2d"}
    s_s = fig9[(fig9["tokenizer_name"] == "S-S") & (fig9["tokenizer_kind"] == "1d")]
    assert s_s["tokenizer_params"].iloc[0] == tokenizer_parameters(PROFILE, "S-S", "1d") > 0
    with pytest.raises(StoreError, match="no runs .*at profile paper.*it holds scaling_1d_vs_2d"):
        load_runs(store["uri"], profile="paper")


def test_factor_values_are_typed_from_their_text() -> None:
    assert parse_value("True") is True and parse_value("False") is False
    assert parse_value("40") == 40 and isinstance(parse_value("40"), int)
    assert parse_value("0.5") == 0.5
    assert parse_value("S-B") == "S-B" and parse_value("1d") == "1d"


def test_curves_are_fetched_on_request(store: dict) -> None:
    run_id = store["run_ids"]["S-S", "1d"]
    curves = load_curves(store["uri"], [run_id], ["tokenizer/total_loss"])
    assert curves["step"].tolist() == [0, 10, 20]
    assert curves["value"].tolist() == pytest.approx([1.0, 1 / 11, 1 / 21])


def test_snapshot_round_trips(runs: pd.DataFrame, tmp_path: Path) -> None:
    back = load_snapshot(save_snapshot(runs, tmp_path / "snap" / "runs.parquet"))
    pd.testing.assert_frame_equal(back, runs)


def test_missing_and_empty_stores_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no MLflow store at"):
        load_runs(f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()  # reading must not create a store
    with pytest.raises(StoreError, match="no snapshot at"):
        load_snapshot(tmp_path / "absent.parquet")


def test_sqlite_tables_read_as_mlflow_search_returns(store: dict, tmp_path: Path) -> None:
    # The direct read of a SQLite store's tables is a speed-up only: the same table as MLflow's search_runs.
    pd.testing.assert_frame_equal(load_runs(store["uri"]), load_runs(store["uri"], direct_sql=False))
    from gigatok.tracking import connect

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = connect(uri)
    experiment = study_experiment(client, "scaling_1d_vs_2d", PROFILE, "Fig. 9")
    kept = _log_run(
        client,
        experiment,
        "scaling_1d_vs_2d",
        {"size": "S-S", "kind": "1d"},
        "1d",
        "S-S",
        0.5,
        {"rfid": math.nan, "gfid": 40.0},
    )
    deleted = _log_run(
        client, experiment, "scaling_1d_vs_2d", {"size": "S-B", "kind": "1d"}, "1d", "S-B", 0.5, {"rfid": 8.0}
    )
    client.delete_run(deleted)
    fast = load_runs(uri)
    pd.testing.assert_frame_equal(fast, load_runs(uri, direct_sql=False))
    assert fast["run_id"].tolist() == [kept]  # deleted runs stay out
    assert math.isnan(fast["rfid"].iloc[0]) and fast["gfid"].iloc[0] == 40.0  # NaN comes back as NaN


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------


def test_fig9_draws_exactly_the_finished_runs(runs: pd.DataFrame, store: dict) -> None:
    plot = fig9_1d_vs_2d(runs)
    data = plot.data
    assert store["failed"] not in set(data["run_id"])  # FAILED S-L is not drawn
    assert set(data["panel"]) == {"rfid", "gfid", "ar_val_loss", "ar_probe_acc"}
    for metric, index in (("rfid", 0), ("gfid", 1), ("ar_val_loss", 2), ("ar_probe_acc", 3)):
        drawn = data[data["panel"] == metric]
        assert len(drawn) == 6
        for row in drawn.itertuples():
            kind = "1d" if row.series.startswith("1D") else "2d"
            assert row.value == FIG9[row.size, kind][index]
            assert row.y == row.value * (100 if metric == "ar_probe_acc" else 1)
            assert row.x == tokenizer_parameters(PROFILE, row.size, kind) / 1e6
    # Within each line, points go from the smallest tokenizer to the largest.
    rfid = data[data["panel"] == "rfid"]
    assert rfid[rfid["series"].str.startswith("1D")]["size"].tolist() == ["S-S", "S-B", "B-L"]
    assert PROFILE in plot.figure._suptitle.get_text()
    assert not plot.notes


def test_substitute_runs_are_marked(runs: pd.DataFrame, store: dict) -> None:
    plot = fig9_1d_vs_2d(runs)
    flagged = plot.data[plot.data["substitute"]]
    assert set(flagged["run_id"]) == {store["run_ids"][SUBSTITUTE_RUN]}
    assert SUBSTITUTE_NOTE in plot.figure._suptitle.get_text()
    legend = plot.figure.axes[0].get_legend()
    assert SUBSTITUTE_NOTE in [t.get_text() for t in legend.get_texts()]


def test_missing_metric_skips_its_panel_with_a_note(runs: pd.DataFrame) -> None:
    plot = fig9_1d_vs_2d(runs.assign(ar_probe_acc=float("nan")))
    assert "ar_probe_acc" not in set(plot.data["panel"])
    assert any("skipped" in note and "ar_probe_acc" in note for note in plot.notes)


def test_semreg_lines(runs: pd.DataFrame) -> None:
    plot = scaling_semreg(runs)
    rfid = plot.data[plot.data["panel"] == "rfid"]
    got = {(r.size, r.series.startswith("with")): r.value for r in rfid.itertuples()}
    assert got == {key: values[0] for key, values in SEMREG.items()}
    # Both lines share x: the count is of the size, not of whether its projector was trained.
    assert rfid.groupby("size")["x"].nunique().eq(1).all()


def test_a_configuration_finished_twice_is_drawn_once(runs: pd.DataFrame, store: dict) -> None:
    newest = runs[runs["run_id"] == store["run_ids"]["S-S", "1d"]]
    older = newest.assign(run_id="older-run", rfid=99.0, start_time=newest["start_time"] - pd.Timedelta(days=1))
    data = fig9_1d_vs_2d(pd.concat([runs, older], ignore_index=True)).data
    assert "older-run" not in set(data["run_id"]) and len(data[data["panel"] == "rfid"]) == 6


def test_figures_refuse_mixed_profiles(runs: pd.DataFrame) -> None:
    mixed = runs.copy()
    first = mixed.index[(mixed["study"] == "scaling_1d_vs_2d") & (mixed["status"] == "FINISHED")][0]
    mixed.loc[first, "profile"] = "paper"
    with pytest.raises(ValueError, match="several profiles"):
        fig9_1d_vs_2d(mixed)


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def test_cli_writes_figures_index_and_snapshot(
    store: dict, runs: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out, snap = tmp_path / "figures", tmp_path / "runs.parquet"
    assert plot_scaling.main(["--tracking-uri", store["uri"], "--out", str(out), "--snapshot", str(snap)]) == 0
    printed = capsys.readouterr().out
    for name in ("fig9_1d_vs_2d-tiny", "fig7_scaling_semreg-tiny"):
        assert (out / f"{name}.png").stat().st_size > 1000
        assert not (out / f"{name}.pdf").exists()  # PDF only on request (--formats)
    assert "skipped fig3_scaling_vanilla (Fig. 3, tiny): no runs of study scaling_vanilla" in printed
    index = (out / "index.md").read_text()
    assert "fig9_1d_vs_2d" in index and "Profile `tiny`" in index and "FAILED" in index
    # The snapshot is read in place of the store (drawing from it is the same code, tested above).
    assert load_snapshot(snap)["run_id"].tolist() == runs["run_id"].tolist()
    assert plot_scaling.main(["--from-snapshot", str(snap), "--study", "scaling_vanilla"]) == 2
    assert capsys.readouterr().err.startswith(f"error: snapshot {snap} holds no runs of the requested studies")


def test_cli_formats_add_pdf_on_request_and_refuse_unknown_ones(
    store: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "figures"
    options = ["--tracking-uri", store["uri"], "--out", str(out), "--study", "scaling_1d_vs_2d"]
    assert plot_scaling.main([*options, "--formats", "png,pdf"]) == 0
    assert (out / "fig9_1d_vs_2d-tiny.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "fig9_1d_vs_2d-tiny.pdf").read_bytes().startswith(b"%PDF")
    assert "[png](fig9_1d_vs_2d-tiny.png) [pdf](fig9_1d_vs_2d-tiny.pdf)" in (out / "index.md").read_text()
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert plot_scaling.main([*options[:2], "--out", str(bad), "--formats", "png,jpg"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --formats 'png,jpg': jpg is not one of png, pdf, svg\n"
    assert not bad.exists()  # refused before reading the store or writing anything
    assert plot_scaling.main([*options[:2], "--out", str(bad), "--formats", ","]) == 2
    assert "no format is not one of" in capsys.readouterr().err


def test_cli_jobs_draw_the_same_files_in_worker_processes(
    store: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    printed, folders = [], []
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        assert plot_scaling.main(["--tracking-uri", store["uri"], "--out", str(out), "--jobs", jobs]) == 0
        printed.append(capsys.readouterr().out.replace(str(out), "OUT"))
        folders.append(out)
    pngs = sorted(p.name for p in folders[0].glob("*.png"))
    assert len(pngs) >= 4 and pngs == sorted(p.name for p in folders[1].glob("*.png"))
    for name in pngs:  # the figures (and their order in the output and the index) do not depend on where drawn
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes(), name
    assert printed[0] == printed[1]
    assert plot_scaling.main(["--tracking-uri", store["uri"], "--out", str(tmp_path / "none"), "--jobs", "0"]) == 2
    assert capsys.readouterr().err == "error: --jobs 0: must be at least 1\n"


def test_cli_exits_2_on_an_empty_store(store: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from gigatok.tracking import connect

    # A copy of the store with its experiments deleted: a new database would cost seconds of schema migrations.
    empty = tmp_path / "empty.db"
    shutil.copy(store["uri"].removeprefix("sqlite:///"), empty)
    uri = f"sqlite:///{empty}"
    client = connect(uri)
    for experiment in client.search_experiments():
        client.delete_experiment(experiment.experiment_id)
    assert plot_scaling.main(["--tracking-uri", uri, "--out", str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no runs in") and "no gigatok studies" in err
    assert plot_scaling.main(["--tracking-uri", f"sqlite:///{tmp_path / 'absent.db'}"]) == 2
    assert capsys.readouterr().err.startswith("error: no MLflow store at")


def test_measured_cost_is_a_column_on_both_reads(tmp_path: Path) -> None:
    from gigatok import tracking_schema as schema
    from gigatok.tracking import connect

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = connect(uri)
    experiment = study_experiment(client, "scaling_1d_vs_2d", PROFILE, "Fig. 9")
    tags = {**study_run_tags("scaling_1d_vs_2d", PROFILE, "h1", {"size": "S-S"}), schema.DEVICE_TYPE: "cuda"}
    timing = {
        schema.QUEUE_S: 30.0,
        schema.stage_wall_s("tokenizer"): 7200.0,
        schema.stage_device_hours("tokenizer"): 16.0,
        schema.WALL_S: 9000.0,
        schema.DEVICE_HOURS: 20.0,
        schema.DEVICES: 8.0,
    }
    log_study_run(client, experiment, tags, run_name="S-S", metrics=timing)
    for direct_sql in (True, False):
        runs = load_runs(uri, direct_sql=direct_sql)
        assert set(schema.TIMING_METRICS) <= set(runs.columns)
        row = runs.iloc[0]
        assert {name: row[name] for name in timing} == timing
        assert row["device_type"] == "cuda" and math.isnan(row[schema.stage_wall_s("generation")])
