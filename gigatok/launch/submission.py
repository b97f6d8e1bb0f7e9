"""A study's launch: decide what is left to do (one MLflow query), register each run in MLflow, group the runs by
tokenizer, submit the groups to Slurm, local worker processes or this process, follow them, and take back the
registered runs when the submission itself fails."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gigatok import dispatch
from gigatok import tracking_schema as schema
from gigatok.dispatch import (
    SlurmSettings,
    group_by_tokenizer,
    job_name,
    make_executor,
    resolve_executor,
    sbatch_errors,
    spread,
)
from gigatok.launch.common import local_workers, reconciled, require_paper_data, slurm_settings
from gigatok.launch.planning import check_converted_inputs, check_pretrained_inputs, size_metrics
from gigatok.pipeline import RunContext, RunSpec, ar_dir_of, tokenizer_dir_of
from gigatok.study import get_study
from gigatok.tracking_batch import NewRun
from gigatok.tracking_spool import Reconciled, set_tag

log = logging.getLogger(__name__)


def warn_if_locks_fail(runs_dir: Path) -> None:
    """Say at start-up when file locks in the runs folder would not keep two launches of a study from training the
    same model at once (gigatok.file_locks); a single launch is unaffected."""
    from gigatok.file_locks import lock_warning

    reason = lock_warning(runs_dir)
    if reason is not None:
        log.warning(f"{reason}: two launches of a study sharing this runs folder could train the same model twice")


HEADLINE_METRICS = ("rfid", "lpips", "gfid", "ar_val_loss", "ar_probe_acc", "decode_fraction")
TERMINAL = frozenset({"FINISHED", "FAILED", "KILLED"})


@dataclass(frozen=True)
class Progress:
    """A study's state at one poll: runs ended, and each running run's stage and training step (None if unknown)."""

    done: int
    active: list[tuple[RunSpec, str | None, Any]]


@dataclass(frozen=True)
class Outcome:
    """How one run ended: MLflow status (MISSING without a run), its headline metrics, the error it recorded."""

    spec: RunSpec
    status: str
    metrics: dict[str, float]
    error: str | None


@dataclass
class StudyLaunch:
    """One launch of a study's runs: what is left to do, and the MLflow runs and jobs made for it."""

    study: str
    profile: str
    executor: str  # resolved: slurm, local or debug
    ctx: RunContext
    client: Any
    experiment_id: str
    todo: list[RunSpec]
    finished: list[RunSpec]
    local_workers: int
    threads: int
    tracked: dict[str, Any]  # the study's MLflow runs by run hash, as read before registering
    slurm: SlurmSettings | None = None
    local_tasks: int = 1
    run_ids: dict[str, str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)  # MLflow runs this launch created (taken back on failure)
    # Slurm and debug jobs: once one exists, a failed submission keeps the MLflow runs. Local workers, started as
    # they are followed, are not counted (as before this code left studies/run.py).
    submitted: list[tuple[list[RunSpec], Any]] = field(default_factory=list)
    running: list[tuple[list[RunSpec], Any]] = field(default_factory=list)  # jobs being followed
    source: str | None = None  # MLflow's Source column (default: studies/run.py STUDY)
    _executor: Any = None
    spooled: Reconciled | None = None  # the runs whose spooled tracking the launch sent, and those still pending

    @classmethod
    def prepare(
        cls,
        study: str,
        profile: str,
        specs: list[RunSpec],
        ctx: RunContext,
        *,
        executor: str,
        local_parallel: int | None,
        slurm_flags: Any,
        data: str | None,
        local_tasks: int = 1,
        about: str | None = None,
        source: str | None = None,
    ) -> StudyLaunch:
        """Check everything that can be wrong before anything is written, then read the study's runs from MLflow
        (creating its experiment) to split the plan into runs to do and runs FINISHED. ``about`` describes an
        experiment that is no study of the catalog (a single run's); ``source`` is what launched the runs."""
        from gigatok.tracking import connect, ensure_experiment, experiment_name, study_runs

        executor_name = resolve_executor(executor)
        workers, threads = local_workers(local_parallel)
        if executor_name == "local":
            ctx = dataclasses.replace(ctx, threads=threads)
        if executor_name == "debug":  # in this process: the training loops' own progress bars are the display
            ctx = dataclasses.replace(ctx, progress=True)
        slurm = slurm_settings(slurm_flags, profile) if executor_name == "slurm" else None
        require_paper_data(profile, data, "trains on")
        check_converted_inputs(specs, ctx)
        check_pretrained_inputs(specs, ctx)
        client = connect(ctx.tracking_uri)  # fails fast, before anything is written
        if about is None:
            entry = get_study(study)
            about = f"{entry.reproduces}: {entry.about}"
        experiment_id = ensure_experiment(
            client, experiment_name(study, profile), about, schema.experiment_tags(study, profile)
        )
        view_factors = list(dict.fromkeys(name for spec in specs for name, _ in spec.factors))
        view_stages = list(dict.fromkeys(stage for spec in specs for stage in spec.ordered_stages()))
        for key, value in schema.study_view(view_factors, view_stages).items():
            client.set_experiment_tag(experiment_id, key, value)
        # the one query that decides what is left to do, after sending what jobs spooled during an outage
        tracked, spooled = reconciled(client, experiment_id, ctx.root, study_runs(client, experiment_id))
        warn_if_locks_fail(Path(ctx.runs_dir))  # after every check: the runs folder is made here
        finished = [s for s in specs if tracked.get(s.hash) and tracked[s.hash].status == "FINISHED"]
        return cls(
            study,
            profile,
            executor_name,
            ctx,
            client,
            experiment_id,
            [s for s in specs if s not in finished],
            finished,
            workers,
            threads,
            tracked,
            slurm,
            local_tasks,
            source=source,
            spooled=spooled,
        )

    @property
    def groups(self) -> list[list[RunSpec]]:
        """The runs to do, one group per tokenizer (one job each at Slurm)."""
        return group_by_tokenizer(self.todo)

    def register(self) -> None:
        """An MLflow run, SCHEDULED, for each run to do: a new one (tags, params), or an unfinished one's own.

        Under a lock in the runs folder, with the study's runs read again inside it: two launches of one study at
        once give each planned run one MLflow run (the second launch takes the first's, and its jobs find the
        stages done or wait for them; gigatok.file_locks)."""
        from gigatok.file_locks import held
        from gigatok.tracking import study_runs

        lock = self.ctx.root / ".locks" / f"register-{self.experiment_id}.lock"
        with held(lock, f"the MLflow runs of {self.study}"):
            self.tracked = study_runs(self.client, self.experiment_id)
            done = [s for s in self.todo if s.hash in self.tracked and self.tracked[s.hash].status == "FINISHED"]
            self.todo = [s for s in self.todo if s not in done]
            self.finished.extend(done)
            self._register_todo()

    def _register_todo(self) -> None:
        """Every run to do SCHEDULED, its job measuring the queue from then (:data:`schema.SCHEDULED_AT`): an
        unfinished run under its own MLflow run, a new one created with its tags, params and size metrics. All in
        one store transaction on SQLite, else run by run through MLflow's API (:mod:`gigatok.tracking_batch`)."""
        from gigatok.tracking_batch import create_runs, reschedule

        resumed = [s for s in self.todo if s.hash in self.tracked]  # an unfinished run resumes under its own run
        for spec in resumed:
            self.run_ids[spec.hash] = self.tracked[spec.hash].run_id
            log.debug("run %s (%s) resumes under MLflow run %s", spec.hash, spec.label, self.run_ids[spec.hash])
        reschedule(self.client, [self.run_ids[s.hash] for s in resumed], "SCHEDULED", schema.SCHEDULED_AT)
        new = [s for s in self.todo if s.hash not in self.tracked]
        run_ids = create_runs(self.client, self.experiment_id, self.new_runs(new), "SCHEDULED", schema.SCHEDULED_AT)
        self.created.extend(run_ids)
        for spec, run_id in zip(new, run_ids, strict=True):
            self.run_ids[spec.hash] = run_id
            log.debug("run %s (%s) registered as MLflow run %s", spec.hash, spec.label, run_id)

    def new_runs(self, specs: list[RunSpec]) -> list[NewRun]:
        """The MLflow runs of ``specs``, as created: name, tags (the study's, MLflow's standard ones, the run
        folders), the config as params and the size metrics."""
        from gigatok.tracking import current_user, git_commit

        commit = git_commit()
        standard = schema.mlflow_tags(
            user=current_user(),
            source_name=self.source or f"studies/run.py {self.study}",
            source_type="JOB" if self.executor == "slurm" else "LOCAL",
            git_commit=commit,
        )
        runs = []
        for spec in specs:
            tags = schema.run_tags(
                study=self.study,
                profile=self.profile,
                run_hash=spec.hash,
                tokenizer_hash=spec.tokenizer.hash(),
                ar_hash=spec.ar.hash() if spec.ar else None,
                git_commit=commit,
                factors=spec.factors,
                executor=self.executor,
            )
            tags.update(standard)
            tags[schema.TOKENIZER_DIR] = str(tokenizer_dir_of(spec, self.ctx))
            if spec.ar is not None:
                tags[schema.AR_DIR] = str(ar_dir_of(spec, self.ctx))
            runs.append(NewRun(spec.label, tags, spec.params(), size_metrics(spec)))
        return runs

    @contextlib.contextmanager
    def submitting(self) -> Iterator[None]:
        """Make the executor; if submission itself fails before any Slurm or debug job exists, delete the MLflow
        runs this launch created: runs no job will ever pick up must not linger as SCHEDULED."""
        self._executor = make_executor(
            self.executor,
            self.ctx.root / "jobs",
            self.slurm,
            local_tasks=self.local_tasks,
            slurm_name=job_name(self.study, self.todo),
        )
        try:
            yield
        except BaseException:
            if not self.submitted:
                for run_id in self.created:
                    self.client.delete_run(run_id)
            raise

    def _job(self, group: list[RunSpec]) -> Any:
        # looked up at each submission, so that a benchmark can swap the job class (bench/orchestration.py)
        return dispatch.RunJob(group, self.ctx, [self.run_ids[s.hash] for s in group])

    def submit_slurm(self) -> list[Any]:
        """One job array over the groups; each run is tagged with its Slurm job id."""
        # Inside batch() a submission is only a placeholder until sbatch runs at its end: count the jobs as
        # submitted (which keeps the MLflow runs if a later step fails) only once sbatch has taken them.
        pending: list[tuple[list[RunSpec], Any]] = []
        with sbatch_errors(), self._executor.batch():
            for group in self.groups:
                pending.append((group, self._executor.submit(self._job(group))))
        self.submitted.extend(pending)
        for group, job in self.submitted:
            for spec in group:
                set_tag(self.client, self.run_ids[spec.hash], schema.SLURM_JOB_ID, job.job_id)  # its job may too
        self.running = list(self.submitted)
        return [job for _, job in self.submitted]

    def run_here(self) -> Iterator[Exception]:
        """The debug executor: each group in this process, in turn; yields each failed group's error."""
        for group in self.groups:
            job = self._executor.submit(self._job(group))
            self.submitted.append((group, job))
            try:
                job.result()
            except Exception as exc:
                yield exc

    def start_local(self) -> Iterator[tuple[list[RunSpec], Any]]:
        """Local workers, not followed: each worker's runs and its job, as it starts."""
        for group in spread(self.groups, self.local_workers):
            yield group, self._executor.submit(self._job(group))

    def running_jobs(self) -> list[Any]:
        return [job for _, job in self.running]

    def follow(self, poll_s: float = 2.0) -> Iterator[Progress]:
        """The study's progress, every ``poll_s`` until every job has ended; local groups are dealt onto the
        workers and started here. One MLflow query per poll, whatever the study's size."""
        from gigatok.tracking import study_runs

        pending = spread(self.groups, self.local_workers) if self.executor == "local" else []
        parallel = len(pending) or len(self.running)
        specs = self.todo
        while True:
            self.running[:] = [(g, j) for g, j in self.running if not j.done()]
            while pending and len(self.running) < parallel:
                group = pending.pop(0)
                self.running.append((group, self._executor.submit(self._job(group))))
            tracked = study_runs(self.client, self.experiment_id)
            states = {s.hash: tracked[s.hash] for s in specs if s.hash in tracked}
            active = [s for s in specs if s.hash in states and states[s.hash].status == "RUNNING"]
            stages = {s.hash: states[s.hash].tags.get(schema.STAGE) for s in active}
            yield Progress(
                sum(1 for r in states.values() if r.status in TERMINAL),
                [(s, stages[s.hash], training_step(s, self.ctx, stages[s.hash])) for s in active],
            )
            if not self.running and not pending:
                return
            time.sleep(poll_s)

    def outcomes(self) -> list[Outcome]:
        """How each run to do ended (one query; first, what its job left spooled is sent)."""
        from gigatok.tracking import study_runs

        tracked, _ = reconciled(
            self.client, self.experiment_id, self.ctx.root, study_runs(self.client, self.experiment_id)
        )
        rows = []
        for spec in self.todo:
            record = tracked.get(spec.hash)
            rows.append(
                Outcome(
                    spec,
                    record.status if record else "MISSING",
                    {k: record.metrics[k] for k in HEADLINE_METRICS if record and k in record.metrics},
                    record.tags.get(schema.ERROR) if record else None,
                )
            )
        return rows


def training_step(spec: RunSpec, ctx: RunContext, stage: str | None) -> Any:
    """The step of the stage being trained, from the tail of its metrics.jsonl (cheap to read); None if unknown."""
    if stage == "tokenizer":
        path = ctx.tokenizer_dir(spec.tokenizer) / "metrics.jsonl"
    elif stage == "ar" and spec.ar is not None:
        path = ar_dir_of(spec, ctx) / "metrics.jsonl"
    else:
        return None
    try:
        last = path.read_text().strip().splitlines()[-1]
        return json.loads(last)["step"]
    except (OSError, IndexError, ValueError, KeyError):
        return None
