"""Scaling-law fits and compute frontiers (analysis/fit_scaling.py, power_law.py, fig_fits.py, fig_frontier.py)
from synthetic MLflow stores whose metrics follow a known power law plus noise (nothing is trained): the fit must
recover the exponent within its interval, refuse too few points with a clear note, and plot_scaling must write the
fit figure, the exponent table and the frontier figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tracking_store import log_study_run, study_experiment, study_run_tags

from analysis import fit_scaling, plot_scaling, power_law
from analysis.fig_fits import fit_plot
from analysis.fig_frontier import FRONTIER_STUDIES, frontier_plot, pareto_envelope
from analysis.fit_scaling import FIT_STUDY, exponent_differences, exponent_table, fit_study, n_column
from analysis.load import load_runs
from analysis.power_law import fit_power_law
from gigatok import tracking_schema as schema

pytest.importorskip("mlflow")

PROFILE = "tiny"
SIZES = {"S-S": 1e6, "S-B": 3e6, "S-L": 1e7, "B-L": 3e7, "XL-XXL": 1e8}  # size -> params_tokenizer as logged
TOKENS = 5e8  # training FLOPs = 6 N D: proportional to N, so the law in FLOPs has the same exponent
# semreg -> metric -> (E, value at N = 1e6, alpha); probe accuracy's law is that of its error 1 - acc.
LAWS = {
    False: {
        "rfid": (1.0, 9.0, 0.40),
        "gfid": (5.0, 20.0, 0.15),
        "ar_val_loss": (3.0, 5.5, 0.3),
        "ar_probe_acc": (0.5, 0.9, 0.3),
    },
    True: {
        "rfid": (1.2, 9.0, 0.35),
        "gfid": (3.0, 20.0, 0.45),
        "ar_val_loss": (2.8, 5.5, 0.3),
        "ar_probe_acc": (0.3, 0.9, 0.3),
    },
}
NOISE = 0.01  # relative
SEEDS = 3


def law(metric: str, semreg: bool, n: float) -> float:
    e, at_1m, alpha = LAWS[semreg][metric]
    return e + (at_1m - e) * (n / 1e6) ** (-alpha)


def _log(client, exp: str, study: str, factors: dict, size: str, metrics: dict, params: dict | None = None) -> str:
    run_hash = study + "".join(f"{k}{v}" for k, v in factors.items())
    return log_study_run(
        client,
        exp,
        study_run_tags(study, PROFILE, run_hash, factors),
        run_name=" ".join(f"{k}={v}" for k, v in factors.items()),
        metrics=metrics,
        params={
            "tokenizer.profile": PROFILE,
            "tokenizer.tokenizer.name": size,
            "tokenizer.tokenizer.kind": "1d",
            "tokenizer.tokenizer.semantic.weight": str(0.5 if factors.get("semreg", True) else 0.0),
            "tokenizer.train.seed": str(factors.get("seed", 0)),
            **(params or {}),
        },
    )


def _semreg_runs(client) -> None:
    rng = np.random.default_rng(7)
    exp = study_experiment(client, "scaling_semreg", PROFILE)
    for size, n in SIZES.items():
        for reg in (False, True):
            for seed in range(SEEDS):
                metrics = {m: law(m, reg, n) * (1 + NOISE * rng.standard_normal()) for m in LAWS[reg]}
                metrics["ar_probe_acc"] = 1 - metrics["ar_probe_acc"]
                metrics |= {
                    schema.PARAMS_TOKENIZER: n,
                    schema.FLOPS_TOKENIZER_TRAIN: 6 * n * TOKENS,
                    schema.FLOPS_TRAIN: 2 * 6 * n * TOKENS,  # an AR probe costing the tokenizer's FLOPs again
                }
                _log(client, exp, "scaling_semreg", {"size": size, "semreg": reg, "seed": seed}, size, metrics)


def _frontier_runs(client) -> None:
    # train_duration: S-S trained 40-120 epochs; rFID improves with epochs, with semreg a little worse.
    exp = study_experiment(client, "train_duration", PROFILE)
    for epochs in (40, 80, 120):
        for reg in (False, True):
            flops = 1e15 * epochs
            metrics = {
                "rfid": 10 - epochs / 20 + reg,
                "gfid": 30 - epochs / 10,
                "ar_val_loss": 5.0,
                "ar_probe_acc": 0.2,
            }
            metrics |= {schema.FLOPS_TOKENIZER_TRAIN: flops, schema.FLOPS_TRAIN: flops + 1e15}
            _log(client, exp, "train_duration", {"epochs": epochs, "semreg": reg}, "S-S", metrics)
    # tokenizer_checkpoints: every checkpoint's run logs its tokenizer's whole schedule, 1e17 (B-L) and 1e18 FLOPs.
    exp = study_experiment(client, "tokenizer_checkpoints", PROFILE)
    for size, full, rfids in (("B-L", 1e17, (8.0, 6.0, 5.0)), ("XL-XXL", 1e18, (9.0, 4.0, 2.0))):
        for checkpoint, rfid in zip((100, 200, 300), rfids, strict=True):
            metrics = {"rfid": rfid, schema.FLOPS_TOKENIZER_TRAIN: full, schema.FLOPS_TRAIN: full + 1e15}
            params = {"tokenizer.train.epochs": "3.0", "tokenizer_snapshot": str(checkpoint / 100)}
            _log(client, exp, "tokenizer_checkpoints", {"size": size, "checkpoint": checkpoint}, size, metrics, params)
    # scaling_vanilla with two sizes: nothing to fit.
    exp = study_experiment(client, "scaling_vanilla", PROFILE)
    for size in ("S-S", "S-B"):
        metrics = {"rfid": 5.0, "gfid": 20.0, "ar_val_loss": 5.0, schema.PARAMS_TOKENIZER: SIZES[size]}
        _log(client, exp, "scaling_vanilla", {"size": size, "semreg": False}, size, metrics)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from gigatok.tracking import connect

    uri = f"sqlite:///{tmp_path_factory.mktemp('fits') / 'mlflow.db'}"
    client = connect(uri)
    _semreg_runs(client)
    _frontier_runs(client)
    return uri


@pytest.fixture(scope="module")
def runs(store: str) -> pd.DataFrame:
    return load_runs(store)


# ----------------------------------------------------------------------------------------------------------
# The fit itself
# ----------------------------------------------------------------------------------------------------------


def test_fit_recovers_a_known_power_law_within_its_interval() -> None:
    rng = np.random.default_rng(0)
    n = np.repeat([1e6, 3e6, 1e7, 3e7, 1e8], 3)
    y = 2.0 + 40.0 * n**-0.3 * (1 + 0.02 * rng.standard_normal(len(n)))
    fit = fit_power_law(n, y)
    assert fit.fitted and fit.note == ""
    assert fit.alpha_ci[0] < 0.3 < fit.alpha_ci[1] and fit.alpha_ci[1] - fit.alpha_ci[0] < 0.5
    assert fit.E_ci[0] < 2.0 < fit.E_ci[1]
    assert (fit.n_points, fit.n_runs, fit.n_boot) == (5, 15, power_law.N_BOOT)
    # The curve reaches 4x the largest N, inside its band, and the point fit is curve_fit's least squares.
    assert fit.grid[-1] == pytest.approx(4e8) and np.all(fit.band[0] <= fit.curve) and np.all(fit.curve <= fit.band[1])
    sse = np.sum((fit.predict(n) - y) ** 2)
    assert sse <= np.sum((2.0 + 40.0 * n**-0.3 - y) ** 2)
    # A redraw gives the same numbers (fixed bootstrap seed).
    assert fit_power_law(n, y).alpha_ci == fit.alpha_ci


def test_only_a_determined_fit_extrapolates() -> None:
    rng = np.random.default_rng(0)
    n = np.repeat([1e6, 3e6, 1e7, 3e7, 1e8], 3)
    clean = fit_power_law(n, 2.0 + 40.0 * n**-0.3 * (1 + 0.02 * rng.standard_normal(len(n))))
    assert clean.extrapolates
    # Three sizes of pure noise: the bootstrap cannot place alpha, so the curve must not run past the data.
    noise = fit_power_law(np.repeat([1e6, 1e7, 1e8], 2), [5.0, 3.0, 4.1, 4.9, 3.2, 5.1])
    assert noise.fitted and not noise.extrapolates
    assert "undetermined" in noise.note or "bound" in noise.note


def test_the_interval_covers_the_truth_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(5)
    n = np.repeat([1e6, 3e6, 1e7, 3e7, 1e8], 2)
    hits = 0
    for trial in range(40):
        y = (3.0 + 17.0 * (n / 1e6) ** -0.3) * (1 + 0.01 * rng.standard_normal(len(n)))
        low, high = fit_power_law(n, y, n_boot=300, seed=trial).alpha_ci
        hits += low <= 0.3 <= high
    assert hits >= 34  # 38 expected; a percentile interval too narrow by half would cover about 27


def test_single_seed_still_fits_with_a_wider_interval() -> None:
    rng = np.random.default_rng(1)
    n = np.repeat([1e6, 3e6, 1e7, 3e7, 1e8], 3)
    y = 1.0 + 30.0 * n**-0.25 + 0.02 * rng.standard_normal(len(n))
    three, one = fit_power_law(n, y), fit_power_law(n[::3], y[::3])
    assert one.fitted and three.fitted and one.n_runs == 5
    assert one.alpha_ci[1] - one.alpha_ci[0] > three.alpha_ci[1] - three.alpha_ci[0]


def test_too_few_points_are_refused_with_a_note() -> None:
    fit = fit_power_law([1e6, 1e6, 1e7, 1e7], [5.0, 5.1, 4.0, 4.1])
    assert not fit.fitted and fit.note == "not fitted: 2 points < 3 parameters" and np.isnan(fit.alpha)
    fit = fit_power_law([1e6, 1e7, 1e8], [5.0, 4.0, 3.5])
    assert not fit.fitted and fit.note == "not fitted: 3 runs, no residual for the bootstrap (needs > 3)"
    # NaNs and non-positive N are no points.
    assert fit_power_law([1e6, 0.0, np.nan, 1e7], [1, 2, 3, np.nan]).note == "not fitted: 1 points < 3 parameters"


def test_a_fit_that_does_not_converge_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Optimal parameters not found: The maximum number of function evaluations is exceeded.")

    monkeypatch.setattr(power_law, "curve_fit", fail)
    fit = fit_power_law([1e6, 3e6, 1e7, 3e7], [5.0, 4.0, 3.5, 3.3])
    assert not fit.fitted and fit.note.startswith("not fitted: the fit did not converge (Optimal parameters")


def test_a_metric_that_worsens_with_size_has_negative_a() -> None:
    n = np.array([1e6, 3e6, 1e7, 3e7, 1e8])
    fit = fit_power_law(n, 10.0 - 50.0 * n**-0.2)
    assert fit.fitted and fit.A < 0 and fit.alpha == pytest.approx(0.2, abs=0.01) and "A < 0" in fit.note


# ----------------------------------------------------------------------------------------------------------
# Studies from MLflow
# ----------------------------------------------------------------------------------------------------------


def test_study_fits_recover_each_groups_exponent(runs: pd.DataFrame) -> None:
    fits, notes = fit_study(runs[runs["profile"] == PROFILE], FIT_STUDY["scaling_semreg"])
    assert notes == [] and len(fits) == 2 * 4 * 2  # axes x metrics x groups
    covered = 0
    for f in fits:
        semreg = f.group.startswith("with")
        alpha = LAWS[semreg][f.metric.column][2]
        low, high = f.fit.alpha_ci
        assert f.fit.fitted, f.fit.note
        assert high - low < 0.3 and abs(f.fit.alpha - alpha) < 0.1, (f.metric.column, f.axis, f.group, low, high)
        covered += low <= alpha <= high
        assert f.fit.n_points == len(SIZES) and f.fit.n_runs == len(SIZES) * SEEDS
        if f.axis == "params":
            assert sorted(f.points["n"].unique()) == sorted(SIZES.values())
    # 95% intervals: about one in twenty misses the truth (16 fits: 15.2 expected to cover it).
    assert covered >= 14
    table = exponent_table(fits)
    assert set(table["x_axis"]) == {"params", "flops"} and table["fitted"].all()
    assert (table.loc[table["metric"].str.startswith("ar_probe_acc"), "metric"] == "ar_probe_acc (1 - acc)").all()
    # Semantic regularization changes the generation exponent (0.15 -> 0.45): a difference whose interval excludes 0.
    diff = exponent_differences(fits)
    gfid = diff[(diff["metric"] == "gfid") & (diff["x_axis"] == "params")].iloc[0]
    assert gfid["delta"] == pytest.approx(0.3, abs=0.1) and gfid["excludes_zero"] and gfid["low"] > 0


def test_checkpoint_runs_count_their_share_of_the_tokenizers_flops(runs: pd.DataFrame) -> None:
    ckpt = runs[runs["study"] == "tokenizer_checkpoints"]
    rfid = fit_scaling.METRICS[0]
    share = ckpt["factor_checkpoint"] / 300
    full = ckpt["tokenizer_name"].map({"B-L": 1e17, "XL-XXL": 1e18})
    assert np.allclose(n_column(ckpt, rfid, "flops"), full * share)
    assert np.allclose(n_column(ckpt, fit_scaling.METRICS[1], "flops"), full * share + 1e15)


def test_two_sizes_are_refused_in_the_figure(runs: pd.DataFrame) -> None:
    plot = fit_plot(runs, FIT_STUDY["scaling_vanilla"])
    assert not any(f.fit.fitted for f in plot.fits)
    assert all(f.fit.note == "not fitted: 2 points < 3 parameters" for f in plot.fits if f.axis == "params")
    texts = [t.get_text() for ax in plot.figure.axes for t in ax.texts]
    assert any("not fitted: 2 points < 3 parameters" in t for t in texts)
    assert len(plot.data[plot.data["axis"] == "params"]) == 2 * 3  # the points are still drawn: 2 runs, 3 metrics


def test_pareto_envelope_of_a_hand_example() -> None:
    front = pareto_envelope([1, 2, 3, 4, 5], [5.0, 6.0, 3.0, 3.0, 1.0])
    assert front.to_dict("list") == {"x": [1.0, 3.0, 5.0], "best": [5.0, 3.0, 1.0]}
    # Ties in FLOPs: the better value counts; unordered input; NaN ignored.
    front = pareto_envelope([2, 1, 1, 3, 4], [3.5, 4.0, 3.0, np.nan, 2.0])
    assert front.to_dict("list") == {"x": [1.0, 4.0], "best": [3.0, 2.0]}
    # Higher is better (accuracy): the upper envelope.
    front = pareto_envelope([1, 2, 3], [0.2, 0.1, 0.3], lower_is_better=False)
    assert front.to_dict("list") == {"x": [1.0, 3.0], "best": [0.2, 0.3]}


def test_frontier_of_checkpoints_runs_over_both_sizes(runs: pd.DataFrame) -> None:
    spec = next(s for s in FRONTIER_STUDIES if s.study == "tokenizer_checkpoints")
    plot = frontier_plot(runs, spec)
    rfid = plot.data[plot.data["panel"] == "rfid"].sort_values("x")
    assert rfid["x"].tolist() == pytest.approx([1e17 / 3, 2e17 / 3, 1e17, 1e18 / 3, 2e18 / 3, 1e18])
    # The drawn step line: B-L's checkpoints until XL-XXL's second one beats them.
    step = next(line for line in plot.figure.axes[0].get_lines() if line.get_drawstyle() == "steps-post")
    assert step.get_ydata().tolist() == [8.0, 6.0, 5.0, 4.0, 2.0, 2.0]


def test_plot_scaling_writes_fit_figures_exponent_table_and_frontier(store: str, tmp_path) -> None:
    out = tmp_path / "figs"
    assert plot_scaling.main(["--tracking-uri", store, "--out", str(out)]) == 0
    for name in ("fits_scaling_semreg", "fits_train_duration", "fits_tokenizer_checkpoints", "fits_scaling_vanilla"):
        assert (out / f"{name}-{PROFILE}.png").is_file() and not (out / f"{name}-{PROFILE}.pdf").exists()
    for name in ("frontier_scaling_semreg", "frontier_train_duration", "frontier_tokenizer_checkpoints"):
        assert (out / f"{name}-{PROFILE}.png").is_file()
    table = pd.read_csv(out / f"exponents-{PROFILE}.csv")
    assert list(table.columns) == fit_scaling.TABLE_COLUMNS
    semreg = table[(table["study"] == "scaling_semreg") & table["fitted"]]
    assert len(semreg) == 16 and semreg["alpha_low"].le(semreg["alpha"]).all()
    assert table.loc[table["study"] == "scaling_vanilla", "note"].str.startswith("not fitted").all()
    markdown = (out / f"exponents-{PROFILE}.md").read_text()
    assert "| scaling_semreg | with semantic regularization | gfid | params |" in markdown
    assert "Exponent differences between groups" in markdown
    index = (out / "index.md").read_text()
    assert f"exponents-{PROFILE}.csv" in index and f"fits_scaling_semreg-{PROFILE}.png" in index


def test_fit_scaling_command_prints_the_table(store: str, capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    csv = tmp_path / "exponents.csv"
    assert fit_scaling.main(["--tracking-uri", store, "--study", "scaling_semreg", "--csv", str(csv)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Scaling-law exponents") and "| scaling_semreg | vanilla" in printed
    assert len(pd.read_csv(csv)) == 16
    assert fit_scaling.main(["--tracking-uri", store, "--study", "align_layer"]) == 2
    assert "no size or compute axis to fit in study align_layer" in capsys.readouterr().err
