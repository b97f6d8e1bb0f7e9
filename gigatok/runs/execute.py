"""Executing a run: its stages in order, tracked in MLflow.

Training stages run on every process of a multi-process (DDP) job; evaluation and tracking run on rank 0 only.
A run with the ``cfg_search`` stage reports gFID at the best sampler setting its search found: the generation stage
samples at that setting (and finds the search's full-budget result for it already on disk).
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from typing import TYPE_CHECKING, Any

from gigatok import tracking_schema as schema
from gigatok.file_locks import held
from gigatok.host_memory import keep_freed_host_memory
from gigatok.runs.context import StageContext, StageOutcome, workspace_for
from gigatok.runs.run_record import describe_run, record_start, system_metrics
from gigatok.runs.spec import TRAINING_STAGES, RunContext, RunSpec
from gigatok.runs.stages import run_stage
from gigatok.runs.timing import devices_in_use, read_times, stage_clock, stage_metrics, timing_path, total_metrics
from gigatok.tracking_spool import is_outage
from gigatok.train.preemption import Preempted

if TYPE_CHECKING:
    from gigatok.tracking import RunLogger


def execute_run(spec: RunSpec, ctx: RunContext, run_id: str | None, rank: int = 0) -> dict[str, float]:
    """Run every stage of ``spec``, logging to the MLflow run ``run_id`` (rank 0 only); returns its metrics.

    The MLflow run goes RUNNING -> FINISHED, or FAILED with the error in ``gigatok.error`` (and the traceback as
    an artifact) before the exception propagates, or back to SCHEDULED, its metrics sent, when a training stage
    stopped at a checkpoint for a preemption (:class:`gigatok.train.preemption.Preempted`). Stages already logged to
    this MLflow run are not logged again; a resumed training stage logs only the steps after those already in
    MLflow, so a metric history never has a step twice.

    The store must answer when the run starts (its state decides what to log); after that, a store that stops
    answering never stops the stages: what cannot be sent waits in the run's spool file under ``RUNS`` and is sent
    when the store answers again, by this job or the next invocation (:mod:`gigatok.tracking_delivery`).
    """
    from gigatok.tracking_delivery import job_http_settings

    with job_http_settings():
        logger = _job_logger(ctx, run_id) if (run_id is not None and rank == 0) else None
        try:
            return _execute(spec, ctx, logger, rank)
        finally:
            if logger is not None:
                logger.close()


def _job_logger(ctx: RunContext, run_id: str) -> RunLogger:
    """The run's logger, after sending what an earlier job of the run left in its spool (the state the run starts
    from is read next, and must include it)."""
    from gigatok.tracking import RunLogger, connect
    from gigatok.tracking_spool import Spool

    client = connect(ctx.tracking_uri)
    spool = Spool.of(ctx.root, run_id)
    if spool.pending():
        spool.replay(client)
    return RunLogger(client, run_id, spool=spool)


def _execute(spec: RunSpec, ctx: RunContext, logger: RunLogger | None, rank: int) -> dict[str, float]:
    workspace = workspace_for(ctx)
    logged: set[str] = set()
    last_step: dict[str, int] = {}
    monitor = contextlib.ExitStack()  # MLflow's system metrics while the stages run (rank 0 logs, as for the rest)
    clock = timing_path(spec, ctx)  # each stage's measured time, summed over attempts (rank 0 measures)
    devices = devices_in_use()
    # A CPU job reuses its freed activations' memory instead of faulting it in again each step (same results).
    allocator = keep_freed_host_memory() if workspace.device.type == "cpu" else None
    streamed: dict[str, set[int]] = {stage: set() for stage in TRAINING_STAGES}

    def stream(stage: str, step: int, values: dict[str, float]) -> None:
        if logger is not None and step > last_step.get(stage, -1):
            logger.metrics(values, step=step, prefix=f"{stage}/")
            last_step[stage] = step
            streamed[stage].add(step)

    sc = StageContext(spec, ctx, workspace, log=stream, run_id=logger.run_id if logger is not None else None)
    metrics: dict[str, float] = {}
    substitutes: set[str] = set()
    stage = "start"
    try:
        # Inside the try: a run that fails to start (a refused tracking call, say) is FAILED with its error, not left
        # RUNNING with none.
        if logger is not None:
            logged, found = _open_tracked_run(logger, spec)
            last_step.update(found)
            logger.tags({schema.DEVICE_TYPE: workspace.device.type})
            if allocator is not None:
                logger.tags({schema.HOST_ALLOCATOR: allocator})
            logger.metrics({schema.DEVICES: devices})
            monitor.enter_context(system_metrics(logger.run_id, ctx.tracking_uri, rank))
        stored = dict(last_step)  # the last step of each curve that MLflow held when this process started
        for stage in spec.ordered_stages():
            if rank != 0 and stage not in TRAINING_STAGES:
                continue
            with _tracked_stage_lock(ctx, logger, stage):
                if logger is not None:
                    logger.tags({schema.STAGE: stage})
                with stage_clock(clock, stage, devices) if logger is not None else contextlib.nullcontext():
                    outcome = run_stage(stage, sc)
                metrics.update(outcome.metrics)
                substitutes.update(outcome.substitutes)
                if logger is not None and stage not in logged and not _logged_meanwhile(logger, stage, streamed):
                    times = read_times(clock)
                    outcome.metrics.update(
                        {**stage_metrics(times, stage), **total_metrics(times, spec.ordered_stages())}
                    )
                    _log_stage(logger, stage, outcome, stored, streamed, substitutes)
    except Preempted:  # checkpointed at a step boundary; the job is requeued and this run resumes there
        if logger is not None:
            with contextlib.suppress(Exception):  # best effort: the requeue must not wait on the tracking store
                logger.metrics(total_metrics(read_times(clock), spec.ordered_stages()))
                logger.set_status("SCHEDULED")
        raise
    except BaseException as exc:
        if logger is not None:
            with contextlib.suppress(Exception):  # what the attempts have cost so far, failed stage included
                logger.metrics(total_metrics(read_times(clock), spec.ordered_stages()))
            _record_failure(logger, spec, ctx, stage, exc)
        raise
    finally:
        monitor.close()
    if logger is not None:
        logger.tags({schema.STAGE: schema.STAGE_DONE})
        logger.set_status("FINISHED")
    return metrics


def _tracked_stage_lock(
    ctx: RunContext, logger: RunLogger | None, stage: str
) -> contextlib.AbstractContextManager[None]:
    """Held by the job that runs and logs ``stage`` of an MLflow run, from the stage's start until what it logged
    has left the job's send queue. A second job of the same MLflow run (two launches of one study) waits here, then
    finds the stage both done and logged. Waiting on the stage's own lock instead let it in as soon as the first job
    finished the stage, while that job's last curve points still sat in its queue: both jobs then sent them, and
    MLflow kept every such point twice. Rank 0 only (the one that logs); runs of other MLflow runs that share a
    model wait on the model's own lock, as before."""
    if logger is None:
        return contextlib.nullcontext()
    lock = ctx.root / ".locks" / f"run-{logger.run_id}.lock"
    return held(lock, f"the {stage} stage of MLflow run {logger.run_id}")


def _logged_meanwhile(logger: RunLogger, stage: str, streamed: dict[str, set[int]]) -> bool:
    """Whether another job logged ``stage`` to this run before this one held the run's lock (two launches of one study
    run the same MLflow run; the other's send queue may have spooled it, not sent it); if not, the steps of its
    curve MLflow holds now join ``streamed``, so that no point is sent twice and none is skipped (the exact steps,
    not the highest: a job resumed after a kill may hold a gap below its own new points that the stage's records
    fill). A store that does not answer leaves both as they were (the spool's replay skips points the run already
    holds)."""
    try:
        tags = logger.client.get_run(logger.run_id).data.tags
        if schema.family(tags, schema.LOGGED_PREFIX).get(stage) == schema.LOGGED:
            return True
        if stage in TRAINING_STAGES:
            streamed[stage] |= {m.step for m in logger.client.get_metric_history(logger.run_id, f"{stage}/lr")}
    except Exception as exc:
        if not is_outage(exc):
            raise
    return False


def _open_tracked_run(logger: RunLogger, spec: RunSpec) -> tuple[set[str], dict[str, int]]:
    """Mark the MLflow run RUNNING on this host (and Slurm job), with its config and data described once; returns
    the stages it has already logged and, for each training stage of ``spec`` still to log, the last step of its
    curve that MLflow holds."""
    run = logger.client.get_run(logger.run_id)
    logged = {stage for stage, v in schema.family(run.data.tags, schema.LOGGED_PREFIX).items() if v == schema.LOGGED}
    last_step: dict[str, int] = {}
    for stage in TRAINING_STAGES:
        if stage in spec.stages and stage not in logged:
            last_step[stage] = logger.last_step(f"{stage}/lr")
    record_start(logger.client, run, int(time.time() * 1000))  # before the host tag: a first start has none
    env_job = _slurm_job_id()
    logger.tags({schema.HOST: os.uname().nodename, **({schema.SLURM_JOB_ID: env_job} if env_job else {})})
    if schema.ERROR in run.data.tags:  # a re-run starts clean; the old traceback stays an artifact
        delete_tag_if_present(logger.client, logger.run_id, schema.ERROR)
    logger.set_status("RUNNING")
    try:
        describe_run(logger.client, logger.run_id, spec, dict(run.data.tags))
    except Exception as exc:  # the store went away since the reads above: the next start describes the run
        if not is_outage(exc):
            raise
    return logged, last_step


def delete_tag_if_present(client: Any, run_id: str, key: str) -> None:
    """Delete the run's tag ``key``, which another job may have deleted first: two launches of one study at once
    start two jobs for a run, and both read the tag before either deletes it (MLflow then answers
    RESOURCE_DOES_NOT_EXIST, which failed the second job)."""
    from mlflow.exceptions import MlflowException

    try:
        client.delete_tag(run_id, key)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def _slurm_job_id() -> str | None:
    """The Slurm job this process runs in, if any."""
    # An array task's own id (123_4): sacct reports every task of the array for the bare array id.
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{array_task}" if array_job and array_task else os.environ.get("SLURM_JOB_ID")


def _log_stage(
    logger: RunLogger,
    stage: str,
    outcome: StageOutcome,
    stored: dict[str, int],
    streamed: dict[str, set[int]],
    substitutes: set[str],
) -> None:
    """Log a finished stage to MLflow: its missing curve points, final metrics, artifacts and tags, then mark it
    logged. ``stored`` is the last step of each curve MLflow held when this process started, ``streamed`` the steps
    this process has sent since, ``substitutes`` every substitute used by the run's stages so far."""
    # Curves: whatever MLflow lacks, i.e. what neither an earlier process stored nor this one streamed: a
    # stage finished by another run or process, or the steps a killed process still held in RunLogger's
    # buffer (up to its last few seconds, possibly before the checkpoint this process resumed from).
    missing = [(s, v) for s, v in outcome.records if s > stored.get(stage, -1) and s not in streamed.get(stage, ())]
    logger.metric_records(missing, prefix=f"{stage}/")
    logger.metrics(outcome.metrics)
    for artifact in outcome.artifacts:
        logger.artifact(artifact, f"eval/{stage}" if artifact.suffix != ".png" else "images")
    tags = dict(outcome.tags)
    if substitutes:
        tags[schema.SUBSTITUTES] = ",".join(sorted(substitutes))
    tags[schema.logged(stage)] = schema.LOGGED
    logger.flush()
    logger.tags(tags)  # the "logged" tag goes last: a crash before it means the stage is logged again
    logger.flush()  # sent while the stage's lock is held: a second job of this run, let in next, sees the tag


def _record_failure(logger: RunLogger, spec: RunSpec, ctx: RunContext, stage: str, exc: BaseException) -> None:
    """Mark the MLflow run FAILED (KILLED on an interrupt) with the failing stage and error in its tags and the
    traceback as an artifact. Called while ``exc`` is being handled (the traceback is the current one); best effort:
    a tracking error here must not hide the run's own."""
    reason = f"{stage}: {type(exc).__name__}: {exc}".splitlines()[0][:1000]
    with contextlib.suppress(Exception):
        logger.tags({schema.ERROR: reason, schema.FAILED_STAGE: stage})
        error_file = ctx.root / "errors" / f"{spec.hash}.txt"
        error_file.parent.mkdir(parents=True, exist_ok=True)
        error_file.write_text(traceback.format_exc())
        logger.artifact(error_file, "errors")
        status = "KILLED" if isinstance(exc, KeyboardInterrupt | SystemExit) else "FAILED"
        logger.set_status(status)
