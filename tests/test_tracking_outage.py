"""The tracking server killed and restarted under a training run: training goes on, and the run ends FINISHED in
MLflow with every logged step exactly once.

A small tokenizer run (services.SMALL_RUN, lengthened so that the outage falls mid-training) is launched with the
debug executor against a real ``scripts/mlflow-server``. Once its metrics.jsonl shows training under way, the
server is stopped; the test waits until training has gone on for several logged steps and past a failed retry
(the job retries every 5 s here, 30 s by default), then starts the server again on the same port and store. What the
job logged meanwhile waits in its spool file (``RUNS/tracking-spool/<run id>.jsonl``) and is sent by the job itself
when the server answers.

So that the outage falls inside training on a machine of any speed, the study runs through a small wrapper that
makes each training step last at least 0.2 s and holds the step before the last few until the server is back (on a
slow machine the hold is never reached).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from services import ROOT, SMALL_RUN, MlflowServer, study_cli

from gigatok.tracking_delivery import RETRY_ENV
from gigatok.tracking_spool import spool_path

pytestmark = pytest.mark.server

STEPS = 100  # under the tiny schedule's 150 at batch 4
RETRY_S = 5
HOLD_AT = STEPS - 10
LOGGED = list(range(2, STEPS + 1, 2))
ARGS = [
    "entropy_loss",
    "--only",
    "entropy=True",
    "--executor",
    "debug",
    *SMALL_RUN,
    "--set",
    f"tokenizer.train.max_steps={STEPS}",
    "--set",
    "tokenizer.train.checkpoint_every=40",
]
PACED = """
import os, runpy, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from gigatok.train import tokenizer_loop
real, gate = tokenizer_loop.training_step, Path({gate!r})
def paced(cfg, m, images, indices, step):
    time.sleep(0.2)
    while step >= {hold} and not gate.exists():
        time.sleep(0.2)
    return real(cfg, m, images, indices, step)
tokenizer_loop.training_step = paced
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def _steps(path: Path) -> list[int]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(x)["step"] for x in lines if x.endswith("}")]


def _wait(condition: object, what: str, cli: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert cli.poll() is None, f"the study ended before {what}: " + log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_server_restart_mid_training_loses_and_repeats_nothing(tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "mlflow-server").start()
    args = [*ARGS, "--tracking-uri", server.uri]
    plan = json.loads(study_cli([*args, "--dry-run", "--json"], tmp_path, 300).stdout)
    (run,) = plan["runs"]
    metrics = tmp_path / "runs" / f"tokenizer-{run['tokenizer_hash']}" / "metrics.jsonl"
    log, gate, wrapper = tmp_path / "study.log", tmp_path / "server-back", tmp_path / "paced_run.py"
    script = str(ROOT / "studies" / "run.py")
    wrapper.write_text(PACED.format(root=str(ROOT), gate=str(gate), hold=HOLD_AT, script=script))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE")}
    started = time.monotonic()
    with log.open("w") as out:
        cli = subprocess.Popen(
            [sys.executable, str(wrapper), *args],
            cwd=tmp_path,
            env={**env, "PYTHONUNBUFFERED": "1", RETRY_ENV: str(RETRY_S)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait(lambda: len(_steps(metrics)) >= 3, "training to start", cli, log, 600)
        server.stop()
        down_at, stopped = _steps(metrics)[-1], time.monotonic()
        _wait(
            lambda: _steps(metrics)[-1] >= down_at + 12 and time.monotonic() - stopped > 2 * RETRY_S + 5,
            "training to go on while the server is away",
            cli,
            log,
            600,
        )
        server.start()  # the same port and store
        up_at, outage = _steps(metrics)[-1], time.monotonic() - stopped
        gate.touch()
        assert cli.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        server.stop()
    server.start()  # to read what the run left in the store
    try:
        from mlflow import MlflowClient

        client = MlflowClient(server.uri)
        (tracked,) = client.search_runs([client.get_experiment_by_name("entropy_loss-tiny").experiment_id])
        history = {
            key: [m.step for m in client.get_metric_history(tracked.info.run_id, key)]
            for key in ("tokenizer/total_loss", "tokenizer/lr", "tokenizer/grad_norm")
        }
    finally:
        server.stop()
    text = log.read_text()
    print(
        f"server stopped at step {down_at}, restarted at step {up_at} after {outage:.0f} s; "
        f"study exited 0 after {time.monotonic() - started:.0f} s"
    )
    assert _steps(metrics) == LOGGED  # training never stopped
    assert tracked.info.status == "FINISHED" and tracked.data.tags["gigatok.stage"] == "done"
    for key, steps in history.items():
        assert sorted(steps) == LOGGED, f"{key}: steps missing or logged twice"
    assert "rfid" in tracked.data.metrics and tracked.data.tags["gigatok.logged.tokenizer"] == "1"
    assert "store unreachable" in text and "spooled operations sent" in text  # spooled, then sent by the job
    assert "operation lost" not in text and "refused by the store" not in text
    assert not spool_path(tmp_path / "runs", tracked.info.run_id).read_text()  # nothing left waiting
