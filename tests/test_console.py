"""The ``gigatok`` command dispatches to each workbench command with its own flags."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from gigatok.cli import COMMANDS, main


def test_the_console_script_is_declared() -> None:
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("gigatok") == "gigatok.cli:main"


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS), out


def test_no_command_or_an_unknown_one_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2 and "usage: gigatok [-v|-q] COMMAND" in capsys.readouterr().err
    assert main(["trian"]) == 2
    assert capsys.readouterr().err.strip().startswith("gigatok: unknown command 'trian'; known: run,")


def test_every_command_module_has_a_main() -> None:
    import importlib

    for name, command in COMMANDS.items():
        assert callable(getattr(importlib.import_module(command.module), "main", None)), name


def test_run_is_studies_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--list"]) == 0
    assert "scaling_1d_vs_2d" in capsys.readouterr().out


def test_python_dash_m_gigatok() -> None:
    out = subprocess.run([sys.executable, "-m", "gigatok", "--help"], capture_output=True, text=True, check=True)
    assert "cfg-search" in out.stdout
