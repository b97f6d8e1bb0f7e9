"""A study on a real Slurm cluster: a job array, a preempted job, a failing run, re-submission, the figure.

Needs the single-node cluster of ``scripts/slurm-cluster up`` (``.ci/run`` starts it); skipped where ``sbatch`` is
missing. The runs log to a real MLflow server on loopback, the setup the README recommends for Slurm.

The tests form one story, in file order, on one study (``entropy_loss``: two tokenizer runs, so a two-task array):

1. Submit it with one run's folder holding a truncated checkpoint (its only one), and preempt the other run's job
   in the middle of tokenizer training with Submitit's ``job._interrupt()`` (SIGTERM then USR2, as Slurm does
   before preempting), with no periodic checkpoint before the end: the loop finishes its step, checkpoints and is
   requeued, and resumes from that checkpoint (the steps trained twice are printed): its metric history has every
   step once, and its curve and weights equal those of an uninterrupted run of the same config. The damaged run
   fails, and ``--status`` shows its error, naming the file, while the other task finishes.
2. Remove the damaged file and submit again: only the failed run is submitted; then the figure is drawn.
3. Submit once more: nothing is submitted.

Runs are shrunk with ``--set`` (``services.SMALL_RUN``: 12 steps of batch 4, one transformer layer, 8 images
scored at 75 px) so that the whole story takes a few minutes on two cores. ``--time-min`` is 30 because below 10
minutes Submitit counts every interruption as a time-out (``has_timed_out()`` is then always true) and would stop
requeuing after three.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from services import (
    ROOT,
    SMALL_RUN,
    SMALL_STEPS,
    MlflowServer,
    listening_addresses,
    need,
    non_loopback_address,
    reachable,
    study_cli,
)

pytestmark = pytest.mark.cluster

STUDY = "entropy_loss"
STEPS = SMALL_STEPS
LOG_EVERY = 2
# No periodic checkpoint before the end (SMALL_RUN's every 4 steps made 1,000): the preemption falls between
# periodic checkpoints, and the checkpoint written on its signal is what the requeued job resumes from.
SHORT = [
    "tokenizer.train.checkpoint_every=1000" if arg == "tokenizer.train.checkpoint_every=4" else arg for arg in SMALL_RUN
]
SLURM = ["--executor", "slurm", "--gpus-per-node", "0", "--cpus-per-task", "1", "--time-min", "30"]
LOGGED = list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))


def _slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.fixture(scope="module")
def cluster() -> None:
    need(shutil.which("sbatch") is not None, "no Slurm here (sbatch missing); start one: sudo scripts/slurm-cluster up")
    try:
        states = _slurm("sinfo", "-h", "-o", "%T").split()
    except (subprocess.SubprocessError, OSError) as exc:
        states = [f"sinfo failed: {exc}"]
    need(
        any(s in ("idle", "mixed") for s in states),
        f"Slurm is installed but no node is idle ({states}); start the cluster: sudo scripts/slurm-cluster up",
    )


@dataclass
class Study:
    folder: Path
    uri: str

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return study_cli([STUDY, "--tracking-uri", self.uri, *args, *SHORT], self.folder, timeout=timeout)

    def plan(self) -> dict[bool, dict]:
        """The dry-run rows, keyed by the run's ``entropy`` factor."""
        result = self.cli("--dry-run", "--json", timeout=300)
        assert result.returncode == 0, result.stderr
        return {row["factors"]["entropy"]: row for row in json.loads(result.stdout)["runs"]}

    def tokenizer_dir(self, row: dict) -> Path:
        return self.folder / "runs" / f"tokenizer-{row['tokenizer_hash']}"

    def runs(self) -> dict[str, object]:
        from mlflow import MlflowClient

        client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name(f"{STUDY}-tiny")
        return {r.data.tags["gigatok.run_hash"]: r for r in client.search_runs([experiment.experiment_id])}


@pytest.fixture(scope="module")
def study(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    folder = tmp_path_factory.mktemp("cluster-study")
    with MlflowServer(folder / "mlflow-server") as server:
        yield Study(folder, server.uri)
    # Leave no job behind if a test failed half-way (the cluster outlives this module).
    for line in _slurm("squeue", "-h", "-o", "%A %o").splitlines():
        job, command = line.split(maxsplit=1)
        if str(folder) in command:
            subprocess.run(["scancel", job], timeout=60)


def _submitted_jobs(stdout: str) -> list[str]:
    match = re.search(r"submitted \d+ Slurm jobs: (.+)", stdout)
    assert match, stdout
    return match.group(1).split()


def _queued(jobs: list[str]) -> list[str]:
    """Which of the array tasks ``jobs`` are still queued or running (a pending array shows as ``12_[0-1]``)."""
    arrays = {j.split("_")[0] for j in jobs}
    return [j for j in _slurm("squeue", "-h", "-o", "%i").split() if j.split("_")[0] in arrays]


def _wait_for_jobs(jobs: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _queued(jobs):
        assert time.monotonic() < deadline, _slurm("squeue", "-o", "%i %T %r")
        time.sleep(2)


def _job_log(study: Study, job: str) -> str:
    return "".join(p.read_text() for p in sorted((study.folder / "runs" / "jobs" / job).glob("*_log.*")))


def _run_report(study: Study, run: Any, job: str) -> str:
    """What to read when a run's MLflow record is not what its job should have left: the record, Slurm's history of
    the job, the job's log, what it left in its tracking spool, and the server's last requests."""
    info = run.info
    spool = study.folder / "runs" / "tracking-spool" / f"{info.run_id}.jsonl"
    server_log = study.folder / "mlflow-server" / "server.log"
    history = subprocess.run(
        ["sacct", "-n", "-D", "-X", "-j", job, "-o", "JobID,JobIDRaw,State,Start,End"], capture_output=True, text=True
    )
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(study.uri)
    experiment = client.get_experiment_by_name(f"{STUDY}-tiny")
    every = [
        (r.data.tags.get("gigatok.run_hash"), r.info.run_id, r.info.status, r.info.lifecycle_stage)
        for r in client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    ]
    return "\n".join(
        [
            f"MLflow run {info.run_id}: {info.status}, tags {sorted(run.data.tags)}",
            f"every run of the experiment (hash, id, status, stage): {every}",
            f"sacct:\n{history.stdout}{history.stderr}",
            f"job log:\n{_job_log(study, job)[-6000:]}",
            f"spool {spool}:\n{spool.read_text()[-3000:] if spool.exists() else '(none)'}",
            "server log, last 80 lines:\n" + "\n".join(server_log.read_text().splitlines()[-80:]),
        ]
    )


def _truncated_checkpoint(path: Path) -> None:
    """A checkpoint file cut short, as a copy interrupted by a full disk leaves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 4, "model": {"w": torch.zeros(4096)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_cluster_services_answer_loopback_clients_only(cluster: None) -> None:
    """MariaDB (Slurm's accounting store) listens on 127.0.0.1 only. Slurm 22.05's daemons have no listen-address
    setting and bind every interface, so ``scripts/slurm-cluster up`` adds an iptables chain refusing their ports to
    non-loopback clients: each answers on 127.0.0.1 and refuses a connection made to this machine's own network
    address (whose source is that address, not loopback)."""
    db_port = int(os.environ.get("GIGATOK_SLURM_DB_PORT", "3307"))
    assert listening_addresses(db_port) == {"127.0.0.1"}
    _slurm("sacct", "-n", "-X", "-S", "now-1minutes", "-o", "JobID")  # raises unless accounting answers
    outside = non_loopback_address()
    need(outside is not None, "this machine has no non-loopback address to connect from")
    for port in (6817, 6818, 6819, db_port):  # slurmctld, slurmd, slurmdbd, MariaDB
        assert listening_addresses(port), f"nothing listens on port {port}"
        assert reachable("127.0.0.1", port), f"port {port} refuses loopback"
        assert not reachable(outside, port), f"port {port} answers on {outside}, not only on loopback"


def test_a_submission_sbatch_refuses_is_one_line_and_leaves_no_run(study: Study) -> None:
    result = study.cli(*SLURM, "--partition", "no-such-partition", timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    # One error line (the launch's own log lines, such as the tiny profile's note, may come before it).
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: sbatch refused the submission: "), result.stderr
    assert result.stderr.strip().splitlines()[-1] == lines[0], result.stderr
    assert "partition" in lines[0], lines
    assert study.runs() == {}  # the runs registered for the refused array were taken back


def test_job_array_survives_preemption_and_a_failing_run(
    study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = study.plan()
    preempted, damaged = plan[True], plan[False]
    bad_file = study.tokenizer_dir(damaged) / "checkpoints" / "step-00000004.pt"
    _truncated_checkpoint(bad_file)

    # No --gpus-per-node: a tiny study asks for no GPU by default (this cluster has none), and an extra sbatch
    # option reaches the job.
    no_gpu_flag = [a for a in SLURM if a not in ("--gpus-per-node", "0")]
    submit = study.cli(*no_gpu_flag, "--slurm-extra", "comment=gigatok-ci", timeout=300)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    jobs = _submitted_jobs(submit.stdout)
    assert len(jobs) == 2 and len({j.split("_")[0] for j in jobs}) == 1, jobs  # one array of two tasks
    shown = _slurm("scontrol", "show", "job", jobs[0].split("_")[0])
    assert f"JobName={STUDY}" in shown and "Comment=gigatok-ci" in shown, shown  # squeue tells studies apart
    assert "gres/gpu" not in shown, shown
    job_of = {h: r.data.tags["gigatok.slurm_job_id"] for h, r in study.runs().items()}
    job = job_of[preempted["hash"]]

    # Preempt in the middle of training, far from any periodic checkpoint (none before the end).
    metrics_file = study.tokenizer_dir(preempted) / "metrics.jsonl"
    deadline = time.monotonic() + 900
    while True:
        steps = [json.loads(x)["step"] for x in metrics_file.read_text().splitlines()] if metrics_file.exists() else []
        if steps and steps[-1] >= 6:
            break
        assert time.monotonic() < deadline, "the preempted run never reached step 6:\n" + _job_log(study, job)
        time.sleep(0.2)
    import submitit

    submitit.SlurmJob(study.folder / "runs" / "jobs" / "%j", job)._interrupt()
    interrupted_at = steps[-1]
    _wait_for_jobs(jobs, timeout=1200)

    runs = study.runs()
    # The preempted job was requeued, resumed from a checkpoint taken before its end, and finished.
    assert "REQUEUED" in _slurm("sacct", "-n", "-D", "-X", "-j", job, "-o", "State").split()
    log = _job_log(study, job)
    assert "this job is preempted" in log, log
    resumed = re.findall(r"resuming tokenizer-\w+ from step-(\d+)\.pt", log)
    assert resumed and int(resumed[-1]) < STEPS, log
    assert interrupted_at < STEPS  # the signal came in the middle of training
    # It stopped at the end of the step the signal came in, checkpointed there, and resumed from that checkpoint:
    # the steps trained twice are those between the stop and the checkpoint resumed from.
    stopped = re.findall(r"training stopped at step (\d+) on SIGUSR2, checkpointed", log)
    assert stopped, log
    lost = int(stopped[-1]) - int(resumed[-1])
    with capsys.disabled():  # in CI's output, not only on failure
        print(
            f"\npreempted at step {stopped[-1]} (no periodic checkpoint before step {STEPS}), resumed from step "
            f"{int(resumed[-1])}: {lost} steps trained twice (allowed: one logging interval, {LOG_EVERY})"
        )
    assert 0 <= lost <= LOG_EVERY, log
    done = runs[preempted["hash"]]
    assert done.info.status == "FINISHED"
    assert _slurm("sacct", "-n", "-X", "-j", job, "-o", "State").split() == ["COMPLETED"]

    # Its history has every logged step exactly once, in MLflow and on disk.
    from mlflow import MlflowClient

    client = MlflowClient(study.uri)
    for key in ("tokenizer/total_loss", "tokenizer/codebook_usage", "tokenizer/lr"):
        steps = [m.step for m in client.get_metric_history(done.info.run_id, key)]
        assert sorted(steps) == LOGGED, f"{key}: {sorted(steps)}"
    on_disk = [json.loads(x) for x in metrics_file.read_text().splitlines()]
    assert [r["step"] for r in on_disk] == LOGGED

    # And it trained exactly what an uninterrupted run of the same config trains (one thread, as the job had).
    from gigatok.train.tokenizer_loop import train_tokenizer
    from gigatok.train.trained import read_run_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = train_tokenizer(
            read_run_config(metrics_file.parent), tmp_path / "uninterrupted", allow_substitutes=True, progress=False
        )
    finally:
        torch.set_num_threads(threads)
    expected = [json.loads(x) for x in (tmp_path / "uninterrupted" / "metrics.jsonl").read_text().splitlines()]
    for got, want in zip(on_disk, expected, strict=True):
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (got["step"], key)
    for key, value in reference.final_metrics.items():
        assert done.data.metrics[f"tokenizer/{key}"] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    weights = torch.load(metrics_file.parent / "tokenizer.pt", weights_only=True)
    for name, tensor in torch.load(tmp_path / "uninterrupted" / "tokenizer.pt", weights_only=True).items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=1e-5, msg=name)

    # The damaged run failed, saying which file, and the study status shows it with Slurm's view.
    failed = runs[damaged["hash"]]
    failed_job = job_of[damaged["hash"]]
    assert failed.info.status == "FAILED", _run_report(study, failed, failed_job)
    assert str(bad_file) in failed.data.tags["gigatok.error"]
    assert failed.data.tags["gigatok.failed_stage"] == "tokenizer"
    assert _slurm("sacct", "-n", "-X", "-j", failed_job, "-o", "State").split() == ["FAILED"]
    status = study.cli("--status", timeout=300)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(damaged["hash"]))
    assert "FAILED" in lines[row] and f"slurm={failed_job}:FAILED" in lines[row]
    assert lines[row + 1].strip().startswith("error: tokenizer: CheckpointError:") and str(bad_file) in lines[row + 1]
    ok_row = next(line for line in lines if line.startswith(preempted["hash"]))
    assert "FINISHED" in ok_row and f"slurm={job}:COMPLETED" in ok_row


def test_resubmission_submits_only_the_failed_run(study: Study, tmp_path: Path) -> None:
    plan = study.plan()
    damaged = plan[False]
    before = study.runs()
    assert before[damaged["hash"]].info.status == "FAILED", "needs the previous test's state"
    shutil.rmtree(study.tokenizer_dir(damaged) / "checkpoints")  # the operator's fix: the run starts over

    # Submitted twice at once (two users, or a re-submission while the first array still runs): two arrays, one
    # MLflow run, each stage run and logged by one job while the other waits for it, and both launches see it done.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        launches = list(pool.map(lambda _: study.cli(*SLURM, "--wait", timeout=1200), range(2)))
    for again in launches:
        assert again.returncode == 0, again.stdout + again.stderr
        assert "1 runs to go, 1 already finished" in again.stdout
        assert len(_submitted_jobs(again.stdout)) == 1
    jobs = [_submitted_jobs(again.stdout)[0] for again in launches]
    assert len({j.split("_")[0] for j in jobs}) == 2, jobs  # two arrays
    after = study.runs()
    assert {h: r.info.status for h, r in after.items()} == {h: "FINISHED" for h in before}
    assert after[damaged["hash"]].info.run_id == before[damaged["hash"]].info.run_id  # the same MLflow run, resumed
    assert "gigatok.error" not in after[damaged["hash"]].data.tags
    metrics_file = study.tokenizer_dir(damaged) / "metrics.jsonl"
    assert [json.loads(x)["step"] for x in metrics_file.read_text().splitlines()] == LOGGED  # trained once
    from mlflow import MlflowClient

    history = MlflowClient(study.uri).get_metric_history(after[damaged["hash"]].info.run_id, "tokenizer/total_loss")
    assert sorted(m.step for m in history) == LOGGED  # logged once
    logs = "".join(_job_log(study, job) for job in jobs)
    assert re.search(r"waiting for the \w+ stage of MLflow run \w+: another process holds", logs), logs

    # Fig. 5 from what the cluster's runs logged.
    figures = tmp_path / "figures"
    plot = subprocess.run(
        [
            sys.executable,
            str(ROOT / "analysis" / "plot_scaling.py"),
            "--study",
            STUDY,
            "--tracking-uri",
            study.uri,
            "--out",
            str(figures),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=study.folder,
    )
    assert plot.returncode == 0, plot.stdout + plot.stderr
    assert (figures / "fig5_entropy_curves-tiny.png").stat().st_size > 10_000
    index = (figures / "index.md").read_text()
    assert all(h in index for h in after)


def test_resubmitting_a_finished_study_submits_nothing(study: Study) -> None:
    assert {r.info.status for r in study.runs().values()} == {"FINISHED"}, "needs the previous tests' state"
    since = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    jobs_dirs = sorted((study.folder / "runs" / "jobs").iterdir())
    result = study.cli(*SLURM, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing to do" in result.stdout and "submitted" not in result.stdout
    assert sorted((study.folder / "runs" / "jobs").iterdir()) == jobs_dirs
    assert _slurm("sacct", "-n", "-X", "-S", since, "-o", "JobID").split() == []
