"""Without the VGG16 file: tiny runs train without the perceptual term and report LPIPS as unavailable, each with
its reason; with the file (a stand-in whose hash is pinned in the registry) the real LPIPS is used; the paper
profile refuses a missing file. No random network on the way."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from gigatok import weights
from gigatok.config import ConfigError, hashed_fields, tokenizer_run
from gigatok.perceptual import (
    LPIPSUnavailable,
    describe_perceptual,
    lpips_for_metrics,
    perceptual_active,
    resolve_perceptual,
)
from gigatok.runs.context import StageContext, workspace_for
from gigatok.runs.spec import RunContext
from gigatok.runs.stages import run_stage
from gigatok.study import Planner
from gigatok.train.run_dir import read_metrics
from gigatok.train.tokenizer_loop import train_tokenizer
from gigatok.train.trained import read_run_config
from gigatok.weights import MissingWeightsError, file_sha256

VGG_FILE = weights.REGISTRY["vgg16"].filename


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A developer's real weights folder must not decide what these tests exercise.
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "env-weights-unset"))


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    folder = tmp_path / "no-weights"
    folder.mkdir()
    return folder


@pytest.fixture
def with_vgg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A weights folder holding a stand-in VGG16 file (torchvision's layout, random weights, features only), its
    sha256 pinned in the registry as the real file's is."""
    from torchvision.models.vgg import cfgs, make_layers

    folder = tmp_path / "weights"
    folder.mkdir()
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    torch.save(state, folder / VGG_FILE)
    entry = weights.REGISTRY["vgg16"]
    monkeypatch.setitem(weights.REGISTRY, "vgg16", dataclasses.replace(entry, sha256=file_sha256(folder / VGG_FILE)))
    return folder


def short_tiny(**kwargs: object):
    """A two-step tiny S-S run without semantic regularization (its feature cache would dominate the test)."""
    cfg = tokenizer_run("S-S", profile="tiny", semantic_weight=0.0, max_steps=2, **kwargs)  # type: ignore[arg-type]
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, log_every=1, checkpoint_every=2))


def with_choice(cfg, choice: str):
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, perceptual=choice))


# ----------------------------------------------------------------------------------------------------------
# The choice and the hash
# ----------------------------------------------------------------------------------------------------------


def test_tiny_settles_auto_by_the_file_and_the_hash_says_which(empty: Path, with_vgg: Path) -> None:
    cfg = tokenizer_run("S-S", profile="tiny")
    assert cfg.loss.perceptual == "auto"
    without, with_file = resolve_perceptual(cfg, empty), resolve_perceptual(cfg, with_vgg)
    assert without.loss.perceptual == "off" and with_file.loss.perceptual == "lpips"
    assert without.hash() != with_file.hash()  # never one folder for both objectives
    # "lpips" is the field's default: a tiny run with the file keeps the hash it had before the field existed.
    assert with_file.hash() == with_choice(cfg, "lpips").hash()
    assert "perceptual" not in hashed_fields(with_file.loss) and hashed_fields(without.loss)["perceptual"] == "off"
    assert resolve_perceptual(without, with_vgg) is without  # settled choices stay as they are
    with pytest.raises(ValueError, match="resolve_perceptual"):
        perceptual_active(cfg)


def test_planner_settles_the_runs_and_their_ar_configs(empty: Path, with_vgg: Path) -> None:
    import studies.catalog  # noqa: F401  (registers the studies)
    from gigatok.study import get_study

    off = get_study("scaling_1d_vs_2d").plan(Planner("tiny", weights_dir=str(empty)))
    on = get_study("scaling_1d_vs_2d").plan(Planner("tiny", weights_dir=str(with_vgg)))
    assert {s.tokenizer.loss.perceptual for s in off} == {"off"} and {s.ar.tokenizer.loss.perceptual for s in off} == {
        "off"
    }
    assert {s.tokenizer.loss.perceptual for s in on} == {"lpips"}
    assert not {s.hash for s in off} & {s.hash for s in on}
    # An explicit override wins over the file's absence.
    forced = get_study("scaling_1d_vs_2d").plan(
        Planner("tiny", overrides=(("tokenizer.loss.perceptual", "lpips"),), weights_dir=str(empty))
    )
    assert {s.tokenizer.loss.perceptual for s in forced} == {"lpips"}


def test_paper_profile_never_drops_lpips(empty: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gigatok.train.tokenizer_loop as loop

    cfg = tokenizer_run("S-S", profile="paper")
    assert cfg.loss.perceptual == "lpips"
    assert resolve_perceptual(cfg, empty) is cfg and perceptual_active(cfg)
    with pytest.raises(ConfigError, match="loss.perceptual.*paper"):
        with_choice(cfg, "auto")
    # A paper run without the file stops before any model is built or anything is written (no ImageNet here: the
    # data opens as an empty set).
    monkeypatch.setattr(loop, "build_dataset", lambda *args, **kwargs: [])
    with pytest.raises(MissingWeightsError, match=VGG_FILE):
        train_tokenizer(cfg, empty / "run", weights_dir=str(empty), progress=False)
    assert not (empty / "run").exists()


def test_describe_says_why(empty: Path, with_vgg: Path) -> None:
    cfg = tokenizer_run("S-S", profile="tiny")
    assert describe_perceptual(resolve_perceptual(cfg, empty), empty) == (
        f"unavailable (vgg16 not found at {empty / VGG_FILE}): trained without the perceptual term"
    )
    assert describe_perceptual(resolve_perceptual(cfg, with_vgg), with_vgg) == "lpips-vgg16 (weight 1)"
    assert describe_perceptual(with_choice(cfg, "off"), with_vgg).startswith("off (loss.perceptual=off)")


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


def test_training_without_the_file_has_no_perceptual_term(
    empty: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import gigatok.train.tokenizer_loop as loop

    monkeypatch.setattr(logging.getLogger("gigatok"), "propagate", True)  # to caplog, whatever configured it before
    caplog.set_level(logging.INFO, logger="gigatok")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a perceptual network was built for a run without the term")

    monkeypatch.setattr(loop, "build_perceptual_network", refuse)
    cfg = short_tiny()
    run_dir = tmp_path / "run"
    # Substitutes allowed or not, "auto" never trains towards a random network.
    result = train_tokenizer(cfg, run_dir, weights_dir=str(empty), allow_substitutes=True, progress=False)
    assert result.finished and result.substitutes == []
    why = f"unavailable (vgg16 not found at {empty / VGG_FILE}): trained without the perceptual term"
    assert result.perceptual == why
    assert f"perceptual: {why}" in caplog.text  # the job log says it too
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["perceptual"] == why and summary["substitutes"] == []
    records = read_metrics(run_dir)
    assert records and all("perceptual_loss" not in r for r in records)
    settled = read_run_config(run_dir)
    assert (
        settled.loss.perceptual == "off" and summary["hash"] == settled.hash() == resolve_perceptual(cfg, empty).hash()
    )
    # Finished: asking again reads the reason back without training.
    assert train_tokenizer(cfg, run_dir, weights_dir=str(empty), progress=False).perceptual == why


def test_training_with_the_file_uses_real_lpips(with_vgg: Path, tmp_path: Path) -> None:
    result = train_tokenizer(short_tiny(), tmp_path / "run", weights_dir=str(with_vgg), progress=False)
    assert result.finished and result.substitutes == [] and result.perceptual == "lpips-vgg16 (weight 1)"
    records = read_metrics(tmp_path / "run")
    assert all(r["perceptual_loss"] > 0 and "substitutes" not in r for r in records)
    assert read_run_config(tmp_path / "run").loss.perceptual == "lpips"


# ----------------------------------------------------------------------------------------------------------
# The metric
# ----------------------------------------------------------------------------------------------------------


def test_metric_network_is_real_or_unavailable(empty: Path, with_vgg: Path) -> None:
    missing = lpips_for_metrics(empty)
    assert isinstance(missing, LPIPSUnavailable)
    assert missing.network_name == f"unavailable (vgg16 not found at {empty / VGG_FILE})"
    real = lpips_for_metrics(with_vgg)
    assert not isinstance(real, LPIPSUnavailable) and not real.substitute and real.network_name == "lpips-vgg16"
    with pytest.warns(UserWarning, match="SUBSTITUTE"):  # only when asked for, and labelled
        assert lpips_for_metrics(empty, allow_substitute=True).substitute


def test_run_stages_record_why_and_log_no_lpips(empty: Path, tmp_path: Path) -> None:
    """The tokenizer and reconstruction stages of a planned tiny run on a machine without the file: the tokenizer
    stage tags why it had no perceptual term, the reconstruction stage logs no ``lpips`` and tags why."""
    overrides = (
        ("tokenizer.train.max_steps", "2"),
        ("eval.recon_images", "4"),
        ("eval.inception_input", "75"),
        ("eval.grid_images", "0"),
    )
    planner = Planner("tiny", overrides=overrides, weights_dir=str(empty), study="check")
    tok = planner.tokenizer("S-S", semantic_weight=0.0)
    spec = planner.run({}, tok, stages=("tokenizer", "reconstruction"))
    ctx = RunContext(
        runs_dir=str(tmp_path / "runs"), tracking_uri="unused", weights_dir=str(empty), device="cpu", progress=False
    )
    sc = StageContext(spec, ctx, workspace_for(ctx))
    trained = run_stage("tokenizer", sc)
    assert trained.tags["gigatok.perceptual"].startswith(f"unavailable (vgg16 not found at {empty / VGG_FILE})")
    assert trained.substitutes == []
    scored = run_stage("reconstruction", sc)
    assert "lpips" not in scored.metrics and {"psnr", "ssim", "rfid"} <= set(scored.metrics)
    assert scored.tags["gigatok.provenance.lpips"] == f"unavailable (vgg16 not found at {empty / VGG_FILE})"
    assert scored.substitutes == []
    assert not any("SUBSTITUTE" in v for v in (*trained.tags.values(), *scored.tags.values()))
    assert spec.params()["tokenizer.loss.perceptual"] == "off"


# ----------------------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------------------

WHY = f"unavailable (vgg16 not found at /w/{VGG_FILE})"


def runs_frame() -> pd.DataFrame:
    """Two FINISHED Table 5 runs: layer 2 without LPIPS (unavailable), layer 3 with it."""
    return pd.DataFrame(
        {
            "run_id": ["r2", "r3"],
            "run_name": ["align_layer=2", "align_layer=3"],
            "study": ["align_layer"] * 2,
            "profile": ["tiny"] * 2,
            "status": ["FINISHED"] * 2,
            "run_hash": ["h2", "h3"],
            "start_time": pd.to_datetime([1, 2], unit="ms", utc=True),
            "factor_align_layer": [2, 3],
            "substitute": [False, False],
            "tokenizer_name": ["S-S", "S-B"],
            "tokenizer_kind": ["1d", "1d"],
            "tokenizer_params": [1e6, 2e6],
            "rfid": [9.0, 8.5],
            "lpips": [math.nan, 0.29],
            "provenance.lpips": [WHY, "lpips-vgg16"],
        }
    )


def test_table_shows_unavailable_lpips_as_na_with_why() -> None:
    from analysis.tables import TABLES, UNAVAILABLE, build_table, to_latex, to_markdown

    spec = next(t for t in TABLES if t.study == "align_layer")
    table = build_table(spec, runs_frame(), "tiny")
    cell = table[(table["row"] == "2") & (table["metric"] == "lpips")].iloc[0]
    assert math.isnan(cell["reproduced"]) and cell["unavailable"] == WHY
    other = table[(table["row"] == "3") & (table["metric"] == "lpips")].iloc[0]
    assert other["reproduced"] == pytest.approx(0.29) and pd.isna(other["unavailable"])
    assert pd.isna(table[(table["row"] == "2") & (table["metric"] == "rfid")].iloc[0]["unavailable"])
    markdown = to_markdown(table)
    lpips_line = next(line for line in markdown.splitlines() if line.startswith("| 2 | LPIPS"))
    assert f"| {UNAVAILABLE} |" in lpips_line and WHY in lpips_line
    assert UNAVAILABLE not in next(line for line in markdown.splitlines() if line.startswith("| 3 | LPIPS"))
    assert "n/a" in to_latex(table)


def test_figure_leaves_the_point_out_and_says_why() -> None:
    from analysis.figures import Panel, kind_series, scaling_plot

    plot = scaling_plot(
        runs_frame(),
        name="lpips_check",
        title="LPIPS",
        study="align_layer",
        series=kind_series,
        order=["1D tokenizer (Q-Former)", "2D tokenizer (ViT)"],
        panels=(Panel("lpips", "LPIPS", "LPIPS"),),
    )
    assert list(plot.data["run_id"]) == ["r3"]  # no point for the run without LPIPS, never a zero
    assert any("align_layer=2 did not log lpips" in n and f"n/a: {WHY}" in n for n in plot.notes)


def test_missing_pretrained_file_is_refused_before_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services import run_cli

    args = [
        "reg_weight",
        "--only",
        "lambda=0.5",
        "--executor",
        "debug",
        "--weights-dir",
        str(tmp_path / "empty"),
        "--set",
        "tokenizer.loss.perceptual=lpips",
    ]
    code, _, err = run_cli(args, tmp_path, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: pretrained file 'vgg16'") and "--allow-substitutes" in lines[0]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()
