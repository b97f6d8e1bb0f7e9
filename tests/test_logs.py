"""-v/-q: the flags parse on every command that takes them, and set what the gigatok logger lets through."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import studies.catalog  # noqa: F401  (registers the studies)
from gigatok import cli, logs
from gigatok.runs.spec import RunContext
from studies import cfg_search, run


@pytest.fixture(autouse=True)
def default_level(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(logs.LEVEL_ENV, raising=False)
    yield
    logs.configure(0)


@pytest.mark.parametrize("flags, verbosity", [([], None), (["-v"], 1), (["--verbose"], 1), (["-q"], -1)])
def test_the_flags_parse(flags: list[str], verbosity: int | None) -> None:
    assert run.parse_args(["scaling_1d_vs_2d", *flags]).verbosity == verbosity
    assert cfg_search.parse_search_args(["--only", "abc", *flags]).verbosity == verbosity


def test_verbose_and_quiet_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run.parse_args(["scaling_1d_vs_2d", "-v", "-q"])
    assert "not allowed with" in capsys.readouterr().err


def test_quiet_drops_info_and_verbose_adds_debug(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("gigatok.test")
    logs.configure(-1)
    log.info("an info line")
    log.warning("a warning")
    assert capsys.readouterr().err == "a warning\n"
    logs.configure(0)
    log.info("an info line")
    log.debug("a debug line")
    assert capsys.readouterr().err == "an info line\n"
    logs.configure(1)
    log.debug("a debug line")
    assert "a debug line" in capsys.readouterr().err
    assert logging.getLogger("mlflow").level == logging.INFO  # -v lets MLflow speak too
    logs.configure(0)
    assert logging.getLogger("mlflow").level == logging.WARNING


def test_a_job_logs_at_its_command_level(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(-1)  # the command's -q, through the environment its jobs inherit
    logging.getLogger(logs.LOGGER).handlers.clear()  # a job process starts with nothing configured
    logs.configure_job()
    logging.getLogger("gigatok.train.loop").info("resuming")
    assert capsys.readouterr().err == ""


def _announce(args: argparse.Namespace, tmp_path: Path) -> None:
    ctx = RunContext(str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}", weights_dir=str(tmp_path))
    study = SimpleNamespace(todo=[1, 2], finished=[], executor="local", ctx=ctx, experiment_id="1", spooled=None)
    run.announce(args, study)  # type: ignore[arg-type]


def test_quiet_study_command_keeps_its_output_and_drops_the_hints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = run.parse_args(["scaling_1d_vs_2d", "-q"])
    logs.configure(args.verbosity)
    _announce(args, tmp_path)
    out, err = capsys.readouterr()
    assert "2 runs to go" in out and "mlflow ui" in out  # the command's answer and the link stay
    assert "tiny profile" not in out + err
    logs.configure(0)
    _announce(args, tmp_path)
    out, err = capsys.readouterr()
    assert "tiny profile" in err and "tiny profile" not in out


def test_verbose_dry_run_shows_a_debug_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["scaling_1d_vs_2d", "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]
    assert run.main(argv) == 0
    assert "planned 12 runs" not in capsys.readouterr().err
    assert run.main([*argv, "-v"]) == 0
    out, err = capsys.readouterr()
    assert "planned 12 runs of study scaling_1d_vs_2d" in err and "planned" not in out  # two seeds at tiny
    assert cli.main(["-v", "run", *argv]) == 0  # the console script's own flag, before the command
    assert "planned 12 runs" in capsys.readouterr().err
