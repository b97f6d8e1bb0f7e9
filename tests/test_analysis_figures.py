"""Figs. 5, 6, 8, 12, 13 and the CFG curve from a synthetic MLflow store (nothing is trained): each figure's
plotted data must be exactly the logged values, curves, trials and stored arrays; and every figure must be
redrawn the same from a snapshot, without the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tracking_store import log_study_run, log_trial, record_best, study_experiment, study_run_tags

from analysis import plot_scaling
from analysis.catalog import FIGURES
from analysis.fig_cfg import cfg_curve
from analysis.fig_curves import fig5_entropy_curves
from analysis.fig_features import fig8_feature_pca
from analysis.figures import fig6_ar_probe_vs_large, fig12_train_duration, fig13_checkpoint_probes
from analysis.load import load_runs
from analysis.sources import SnapshotSource, StoreSource
from gigatok.feature_pca import FeaturePCA

pytest.importorskip("mlflow")

PROFILE = "tiny"
# Fig. 5: entropy on/off -> (usage, perceptual) curves at steps 10, 20, 30.
CURVES = {True: ([0.5, 0.8, 0.9], [0.40, 0.30, 0.25]), False: ([0.1, 0.05, 0.04], [0.45, 0.44, 0.46])}
# Fig. 6: (size, ar_size) -> gfid, ar_val_loss, ar_probe_acc
FIG6 = {
    ("S-S", "B"): (40.0, 5.6, 0.20),
    ("S-L", "B"): (36.0, 5.5, 0.22),
    ("B-L", "B"): (33.0, 5.4, 0.25),
    ("S-S", "L"): (30.0, 5.2, 0.30),
    ("S-L", "L"): (27.0, 5.1, 0.33),
    ("B-L", "L"): (25.0, 5.0, 0.35),
}
# Fig. 12: (epochs, semreg) -> rfid, gfid, ar_val_loss, ar_probe_acc
FIG12 = {
    (40, False): (10.0, 50.0, 5.0, 0.10),
    (80, False): (8.0, 45.0, 5.2, 0.09),
    (40, True): (11.0, 44.0, 5.3, 0.20),
    (80, True): (9.0, 42.0, 5.4, 0.21),
}
# Fig. 13: (size, checkpoint) -> tokenizer_probe_acc, ar_probe_acc, gfid
FIG13 = {("XL-XXL", 100): (0.30, 0.20, 30.0), ("XL-XXL", 200): (0.25, 0.24, 28.0), ("XL-XXL", 300): (0.20, 0.27, 26.0)}
# CFG trials of the S-S / AR-B run of ar_probe_vs_large: scale -> (state, gfid)
TRIALS = {1.0: ("COMPLETE", 20.0), 1.25: ("COMPLETE", 17.5), 1.5: ("COMPLETE", 18.0), 3.0: ("PRUNED", 60.0)}
BEST_STEP_FRACTION = 0.18


def _experiment(client, study: str) -> str:
    return study_experiment(client, study, PROFILE)


def _log_run(
    client,
    experiment_id: str,
    study: str,
    factors: dict,
    metrics: dict[str, float],
    *,
    size: str = "S-S",
    entropy: float = 0.0,
    semantic: float = 0.5,
    curves: dict | None = None,
    stored_arrays: dict[str, str] | None = None,
    artifacts: list[tuple[Path, str]] = (),
) -> str:
    run_hash = study + "".join(f"{k}{v}" for k, v in factors.items())
    tags = study_run_tags(study, PROFILE, run_hash, factors, artifacts=stored_arrays)
    params = {
        "tokenizer.profile": PROFILE,
        "tokenizer.tokenizer.name": size,
        "tokenizer.tokenizer.kind": "1d",
        "tokenizer.tokenizer.semantic.weight": str(semantic),
        "tokenizer.tokenizer.quantizer.entropy_weight": str(entropy),
    }
    return log_study_run(
        client,
        experiment_id,
        tags,
        run_name=" ".join(f"{k}={v}" for k, v in factors.items()),
        metrics=metrics,
        params=params,
        curves=curves,
        artifacts=artifacts,
    )


def _pca_arrays(seed: int) -> FeaturePCA:
    rng = np.random.default_rng(seed)
    images = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)  # same images in both
    return FeaturePCA(images, rng.random((3, 4, 4, 3), dtype=np.float32), np.array([0.5, 0.2, 0.1]), 7, 1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from gigatok.tracking import connect

    root = tmp_path_factory.mktemp("figures")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = connect(uri)
    ids: dict = {}
    exp = _experiment(client, "entropy_loss")
    for on, (usage, lpips) in CURVES.items():
        curves = {
            "tokenizer/codebook_usage": list(zip((10, 20, 30), usage, strict=True)),
            "tokenizer/perceptual_loss": list(zip((10, 20, 30), lpips, strict=True)),
        }
        ids["entropy", on] = _log_run(
            client,
            exp,
            "entropy_loss",
            {"size": "XL-XXL", "entropy": on},
            {"rfid": 5.0},
            size="XL-XXL",
            entropy=0.005 if on else 0.0,
            curves=curves,
        )
    exp = _experiment(client, "ar_probe_vs_large")
    for (size, ar), (gfid, loss, acc) in FIG6.items():
        ids["fig6", size, ar] = _log_run(
            client,
            exp,
            "ar_probe_vs_large",
            {"size": size, "ar_size": ar},
            {"gfid": gfid, "ar_val_loss": loss, "ar_probe_acc": acc},
            size=size,
        )
    exp = _experiment(client, "train_duration")
    for (epochs, reg), (rfid, gfid, loss, acc) in FIG12.items():
        _log_run(
            client,
            exp,
            "train_duration",
            {"epochs": epochs, "semreg": reg},
            {"rfid": rfid, "gfid": gfid, "ar_val_loss": loss, "ar_probe_acc": acc},
            semantic=0.5 if reg else 0,
        )
    exp = _experiment(client, "tokenizer_checkpoints")
    for (size, ckpt), (tok_acc, ar_acc, gfid) in FIG13.items():
        _log_run(
            client,
            exp,
            "tokenizer_checkpoints",
            {"size": size, "checkpoint": ckpt},
            {"tokenizer_probe_acc": tok_acc, "ar_probe_acc": ar_acc, "gfid": gfid},
            size=size,
        )
    exp = _experiment(client, "feature_pca")
    for reg in (False, True):
        arrays = _pca_arrays(int(reg)).save(root / f"pca-{reg}" / "feature-pca-abc.npz")
        ids["pca", reg] = _log_run(
            client,
            exp,
            "feature_pca",
            {"size": "B-L", "semreg": reg},
            {"feature_pca_variance": 0.8},
            size="B-L",
            semantic=0.5 if reg else 0.0,
            stored_arrays={"feature_pca": "eval/feature_pca/feature-pca-abc.npz"},
            artifacts=[(arrays, "eval/feature_pca")],
        )
    # CFG-search trials: child runs of the S-S / AR-B run (its experiment), as gigatok/cfg_search.py records them.
    parent = ids["fig6", "S-S", "B"]
    for number, (scale, (state, gfid)) in enumerate(TRIALS.items()):
        log_trial(
            client,
            parent,
            "ar_probe_vs_large",
            PROFILE,
            "search-1",
            number,
            scale,
            state,
            gfid,
            budget=16 if state == "COMPLETE" else 4,
            full_budget=16,
        )
    record_best(client, parent, "search-1", scale=1.25, gfid=17.5, step_fraction=BEST_STEP_FRACTION)
    return {"uri": uri, "ids": ids}


@pytest.fixture(scope="module")
def runs(store: dict) -> pd.DataFrame:
    return load_runs(store["uri"])


def _study(runs: pd.DataFrame, study: str) -> pd.DataFrame:
    return runs[runs["study"] == study]


def test_trials_are_not_study_runs(runs: pd.DataFrame, store: dict) -> None:
    assert len(runs) == 2 + 6 + 4 + 3 + 2  # no row for any of the four trials
    parent = runs.set_index("run_id").loc[store["ids"]["fig6", "S-S", "B"]]
    assert parent["cfg_best_scale"] == 1.25 and parent["cfg_best_gfid"] == 17.5
    assert parent["cfg_best_step_fraction"] == BEST_STEP_FRACTION


def test_fig5_draws_the_logged_curves(runs: pd.DataFrame, store: dict) -> None:
    plot = fig5_entropy_curves(_study(runs, "entropy_loss"), StoreSource(store["uri"]))
    for on, (usage, lpips) in CURVES.items():
        mine = plot.data[plot.data["run_id"] == store["ids"]["entropy", on]]
        drawn_usage = mine[mine["panel"] == "tokenizer/codebook_usage"].sort_values("x")
        assert drawn_usage["x"].tolist() == [10, 20, 30]
        assert drawn_usage["value"].tolist() == usage
        assert drawn_usage["y"].tolist() == pytest.approx([100 * u for u in usage])
        assert mine[mine["panel"] == "tokenizer/perceptual_loss"].sort_values("x")["value"].tolist() == lpips
        assert set(mine["series"]) == {"with entropy loss" if on else "without entropy loss"}
    assert any("pixel_loss" in note for note in plot.notes)  # a panel no run logged is skipped with a note


def test_fig6_pairs_probe_and_large_model(runs: pd.DataFrame) -> None:
    plot = fig6_ar_probe_vs_large(_study(runs, "ar_probe_vs_large"))
    for metric, index in (("gfid", 0), ("ar_val_loss", 1), ("ar_probe_acc", 2)):
        drawn = plot.data[plot.data["panel"] == metric]
        assert len(drawn) == 6
        for row in drawn.itertuples():
            ar = "B" if row.series.startswith("AR-B") else "L"
            assert row.value == FIG6[row.size, ar][index]
    # The legend names the profile's own model sizes, not the paper's: AR-B is about 1M parameters at tiny.
    from analysis.figures import ar_size_label

    assert set(plot.data["series"]) == {ar_size_label(PROFILE, "B"), ar_size_label(PROFILE, "L")}
    assert not any("111M" in label or "343M" in label for label in plot.data["series"])
    # every pair moves together in this data: the correlation shown in each panel title is 1 (or close)
    titles = [ax.get_title() for ax in plot.figure.axes if ax.get_title()]
    assert sum("Pearson r" in t for t in titles) == 3


def test_fig12_against_training_epochs(runs: pd.DataFrame) -> None:
    plot = fig12_train_duration(_study(runs, "train_duration"))
    drawn = plot.data[plot.data["panel"] == "rfid"]
    assert sorted(drawn["x"]) == [40, 40, 80, 80]
    for row in drawn.itertuples():
        reg = row.series.startswith("with")
        assert row.value == FIG12[int(row.x), reg][0]
    # the last two panels draw the second series on a right-hand axis of its own, as the paper does
    assert len(plot.figure.axes) == 4 + 2


def test_fig13_over_checkpoints(runs: pd.DataFrame) -> None:
    plot = fig13_checkpoint_probes(_study(runs, "tokenizer_checkpoints"))
    for metric, index in (("tokenizer_probe_acc", 0), ("ar_probe_acc", 1), ("gfid", 2)):
        drawn = plot.data[plot.data["panel"] == metric].sort_values("x")
        assert drawn["x"].tolist() == [100, 200, 300]
        assert drawn["value"].tolist() == [FIG13["XL-XXL", c][index] for c in (100, 200, 300)]


def test_fig8_draws_the_stored_pca_maps(runs: pd.DataFrame, store: dict) -> None:
    plot = fig8_feature_pca(_study(runs, "feature_pca"), StoreSource(store["uri"]))
    for reg in (False, True):
        expected = _pca_arrays(int(reg))
        mine = plot.data[plot.data["run_id"] == store["ids"]["pca", reg]]
        assert len(mine) == 3 * 3  # 3 images x 3 components
        for row in mine.itertuples():
            assert row.mean == pytest.approx(float(expected.components[row.image][..., row.component].mean()))
            assert row.explained_variance_ratio == expected.explained_variance_ratio[row.component]
    # top row: the images; then vanilla, then semantic regularization, each the stored maps upsampled 4x
    images = [ax.images[0].get_array() for ax in plot.figure.axes]
    assert np.array_equal(images[0], _pca_arrays(0).images[0])
    assert np.allclose(np.asarray(images[3])[::4, ::4], _pca_arrays(0).components[0])
    assert np.allclose(np.asarray(images[6])[::4, ::4], _pca_arrays(1).components[0])


def test_cfg_curve_from_trials(runs: pd.DataFrame, store: dict) -> None:
    plot = cfg_curve(runs, StoreSource(store["uri"]))
    assert set(plot.data["run_id"]) == {store["ids"]["fig6", "S-S", "B"]}
    by_scale = plot.data.set_index("x")
    for scale, (state, gfid) in TRIALS.items():
        assert by_scale.loc[scale, "value"] == gfid and by_scale.loc[scale, "state"] == state


def test_cli_makes_every_figure_and_redraws_from_a_snapshot(store: dict, tmp_path: Path) -> None:
    out, snapshot = tmp_path / "figs", tmp_path / "snap" / "runs.parquet"
    # Two processes: the figures that do not declare reads_source are drawn in a worker with a NoSource (which
    # raises on any fetch), those that do in this process, whose source the snapshot records.
    options = ["--out", str(out), "--snapshot", str(snapshot), "--formats", "png,pdf", "--jobs", "2"]
    assert plot_scaling.main(["--tracking-uri", store["uri"], *options]) == 0
    expected = {
        "fig5_entropy_curves",
        "fig6_ar_probe_vs_large",
        "fig8_feature_pca",
        "fig12_train_duration",
        "fig13_checkpoint_probes",
        "cfg_curve",
    }
    for name in expected:
        for ext in ("png", "pdf"):
            assert (out / f"{name}-{PROFILE}.{ext}").stat().st_size > 1000
    index = (out / "index.md").read_text()
    assert all(name in index for name in expected)
    # Without the store: curves, trials and arrays come from the snapshot's side files, and the data is the same.
    source = SnapshotSource(snapshot)
    runs = source.runs()
    assert (
        fig5_entropy_curves(_study(runs, "entropy_loss"), source).data["value"].tolist()
        == fig5_entropy_curves(_study(load_runs(store["uri"]), "entropy_loss"), StoreSource(store["uri"]))
        .data["value"]
        .tolist()
    )
    assert len(fig8_feature_pca(_study(runs, "feature_pca"), source).data) == 18
    assert len(cfg_curve(runs, source).data) == len(TRIALS)
    redrawn = tmp_path / "redrawn"
    assert plot_scaling.main(["--from-snapshot", str(snapshot), "--out", str(redrawn)]) == 0
    assert all((redrawn / f"{name}-{PROFILE}.png").is_file() for name in expected)


def test_every_figure_is_registered_once() -> None:
    names = [spec.name for spec in FIGURES]
    assert len(names) == len(set(names))
    import studies.catalog  # noqa: F401  (registers the studies)
    from gigatok.study import STUDIES

    assert all(spec.study is None or spec.study in STUDIES for spec in FIGURES)
