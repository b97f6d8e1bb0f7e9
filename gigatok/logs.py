"""How the workbench's commands and jobs log: one call, :func:`configure`, sets the level of the ``gigatok`` logger
from ``-v``/``-q`` and quiets MLflow's (and alembic's) INFO noise.

Progress and diagnostics go through :func:`logging.getLogger` (``gigatok.<module>``) to stderr; what a command
answers (a plan table, JSON, links, job ids) stays on stdout through ``print``. The level travels to the jobs a
command starts (local worker processes and Slurm jobs inherit the environment) through :data:`LEVEL_ENV`, and a
job calls :func:`configure_job`, so a job's log file says as much as its command was asked to.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

LOGGER = "gigatok"
LEVEL_ENV = "GIGATOK_LOG_VERBOSITY"  # -1 quiet, 0 default, 1 verbose: the command's choice, for its jobs
NOISY = ("mlflow", "alembic", "optuna")  # third-party loggers held at WARNING unless -v


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (pytest's capture, a redirected job log), not the one at setup, and
    never touches an earlier one (which may be closed by now)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler's constructor and setStream assign it: always stderr
        pass


def logger(name: str) -> logging.Logger:
    """The logger of a module outside the package (``studies/``, ``analysis/``), under the ``gigatok`` logger."""
    return logging.getLogger(f"{LOGGER}.{name}")


def level_of(verbosity: int) -> int:
    """-1 (``-q``): WARNING; 0: INFO; 1 and more (``-v``): DEBUG."""
    return logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO


def configure(verbosity: int | None = 0) -> None:
    """Set up the ``gigatok`` logger once per process: plain lines on stderr at :func:`level_of` ``verbosity``.

    ``None`` keeps a level set earlier in this process (``gigatok -v run ...`` sets it before the command's own
    flags are read) and is INFO otherwise. Calling again replaces the handler: no line is ever printed twice.
    """
    logger = logging.getLogger(LOGGER)
    ours = [h for h in logger.handlers if isinstance(h, _StderrHandler)]
    if verbosity is None:
        if ours:
            return
        verbosity = 0
    for handler in ours:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if verbosity <= 0 else "%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level_of(verbosity))
    logger.propagate = False  # a root handler set by a library would print every line twice
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.INFO if verbosity > 0 else logging.WARNING)
    os.environ[LEVEL_ENV] = str(max(-1, min(1, verbosity)))


def configure_job() -> None:
    """In a job process: the level of the command that started it (INFO if it was started otherwise)."""
    try:
        verbosity = int(os.environ.get(LEVEL_ENV, "0"))
    except ValueError:
        verbosity = 0
    configure(verbosity)
