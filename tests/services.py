"""Real services for the server, cluster and browser tests, and the writer processes of the concurrency tests.

A test that needs a service this machine lacks (no ``sbatch``, no Chromium) is skipped with the reason, so a
developer without them can run everything else. CI sets ``GIGATOK_REQUIRE_SERVICES=1``: a missing service then
fails the test, so CI can never pass by skipping.

Run as a script, this module is one writer process: ``python tests/services.py write URI RUN_ID STEPS``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_ENV = "GIGATOK_REQUIRE_SERVICES"
WRITER_KEYS = ("loss", "grad_norm", "lr", "usage", "perplexity", "pixel")
# A tokenizer run a few times cheaper than the tiny profile's, for tests of dispatch, tracking and recovery (not of
# what a model learns): 12 steps of batch 4, one transformer layer each side, no semantic teacher, 8 images scored
# at Inception's smallest input. Logged every 2 steps, checkpointed every 4.
SMALL_STEPS = 12
SMALL_RUN = [
    "--set",
    f"tokenizer.train.max_steps={SMALL_STEPS}",
    "--set",
    "tokenizer.train.log_every=2",
    "--set",
    "tokenizer.train.checkpoint_every=4",
    "--set",
    "tokenizer.train.batch_size=4",
    "--set",
    "tokenizer.tokenizer.semantic.weight=0",
    "--set",
    "tokenizer.tokenizer.encoder.depth=1",
    "--set",
    "tokenizer.tokenizer.decoder.depth=1",
    "--set",
    "eval.recon_images=8",
    "--set",
    "eval.reference_images=8",
    "--set",
    "eval.inception_input=75",
    "--set",
    "eval.batch_size=8",
    "--set",
    "eval.grid_images=0",
    "--seeds",
    "1",  # one replica of each run (the tiny profile plans two)
]


def need(available: bool, reason: str) -> None:
    """Skip (or, under CI, fail) unless ``available``."""
    if available:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} (and {REQUIRE_ENV}=1: this run must have it)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses with a socket listening on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:  # four little-endian 32-bit words
                    raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 32, 8))
                    found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


def non_loopback_address() -> str | None:
    """This machine's address on its default route (None without one): a client connecting to it is not on
    loopback as far as a listener or a firewall can tell. A UDP connect sends no packet; it only picks the route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))  # TEST-NET-2, a unicast address: only used to choose the route
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` is accepted (refused, reset or timed out: False)."""
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError:
        return False
    return True


class MlflowServer:
    """``scripts/mlflow-server`` on a free loopback port with its own SQLite store under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "GIGATOK_MLFLOW_PORT": str(self.port), "PYTHON": sys.executable}
        self.env.pop("GIGATOK_MLFLOW_HOST", None)  # the default (loopback) is what is under test

    def _script(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / "scripts" / "mlflow-server"), command, str(self.folder)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> MlflowServer:
        result = self._script("up", timeout=240)
        assert result.returncode == 0, f"mlflow server did not start: {result.stderr}"
        assert result.stdout.strip() == self.uri
        return self

    def stop(self) -> None:
        self._script("down", timeout=60)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def study_cli(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python studies/run.py ARGS`` in ``cwd`` (no inherited MLFLOW_TRACKING_URI or OPTUNA_STORAGE: each test names
    its store)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONBREAKPOINT": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("OPTUNA_STORAGE", None)  # a CFG search's storage is the test's too
    return subprocess.run(
        [sys.executable, str(ROOT / "studies" / "run.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(
    args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """``studies/run.py``'s ``main(args)`` in this process, in ``cwd``, with no inherited MLFLOW_TRACKING_URI: (exit
    code, stdout, stderr)."""
    from studies import run as cli

    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def start_writers(uri: str, run_ids: list[str], steps: int) -> list[subprocess.Popen[str]]:
    """One writer process per run, all logging at once (a start time a few seconds ahead lines them up after their
    imports)."""
    start_at = time.time() + 8
    return [
        subprocess.Popen(
            [sys.executable, __file__, "write", uri, run_id, str(steps), str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        for run_id in run_ids
    ]


def _write(uri: str, run_id: str, steps: int, start_at: float) -> None:
    """Log ``steps`` steps of :data:`WRITER_KEYS` the way the training loops do (RunLogger: asynchronous batches,
    one flush at the end), then mark the run FINISHED."""
    from gigatok.tracking import RunLogger, connect

    logger = RunLogger(connect(uri), run_id)
    time.sleep(max(0.0, start_at - time.time()))
    logger.set_status("RUNNING")
    for step in range(1, steps + 1):
        logger.metrics({k: step + i / 10 for i, k in enumerate(WRITER_KEYS)}, step=step, prefix="tokenizer/")
    logger.flush()
    logger.set_status("FINISHED")


if __name__ == "__main__":
    if sys.argv[1] == "write":
        _write(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
