"""What a study's launch and a CFG search's launch share: their errors, the Slurm settings from flags and a TOML
file, the paper-data check, the run context, threads per local worker, cancelling jobs on Ctrl-C, and a look at
a study's runs in MLflow."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from gigatok.config import ConfigError
from gigatok.dispatch import DispatchError, SlurmSettings, default_local_workers, parse_extra_flags
from gigatok.pipeline import RunContext
from gigatok.tracking import TrackingError
from gigatok.tracking_spool import Reconciled


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) while following jobs: the jobs were cancelled; their work resumes on the next launch."""


# What a command reports as one line with exit status 2 (bad input, no executor, no tracking store), before any
# job starts.
INPUT_ERRORS = (UsageError, ConfigError, DispatchError, TrackingError, ValueError)

SLURM_FLAGS = (
    "partition",
    "account",
    "qos",
    "constraint",
    "nodes",
    "gpus_per_node",
    "cpus_per_task",
    "mem_gb",
    "time_min",
    "array_parallelism",
)


# Profiles whose models are CPU-sized: their jobs ask Slurm for no GPU unless told to (a GPU request on a
# CPU-only cluster is refused outright, and a tiny run does not need one).
CPU_PROFILES = ("tiny", "tiny-long")


def slurm_settings(flags: Any, profile: str | None = None) -> SlurmSettings:
    """Slurm resources of each job: ``flags.cluster_config`` (a TOML file, or None) changed by the flags named in
    :data:`SLURM_FLAGS` that are not None and by ``flags.slurm_extra`` (``key=value`` sbatch options); ``flags``
    is the command's argparse namespace, or anything alike. At a CPU profile the default is no GPU."""
    values = {k: getattr(flags, k) for k in SLURM_FLAGS}
    values["extra"] = parse_extra_flags(getattr(flags, "slurm_extra", None) or ())
    defaults = {"gpus_per_node": 0} if profile in CPU_PROFILES else {}
    if flags.cluster_config:
        return SlurmSettings.from_file(flags.cluster_config, defaults, **values)
    return SlurmSettings(**{**defaults, **{k: v for k, v in values.items() if v is not None and v != ()}})


def require_paper_data(profile: str, data: str | None, needs: str) -> None:
    """The paper profile reads ImageNet: refuse to launch without ``--data`` or $GIGATOK_DATA_ROOT. ``needs`` says
    what for ("trains on", "scores against")."""
    from gigatok.data import DATA_ROOT_ENV, DataError
    from gigatok.data.check import check_image_folder

    if profile != "paper" or data is not None:  # --data itself was checked when the study was planned
        return
    root = os.environ.get(DATA_ROOT_ENV)
    if not root:
        raise UsageError(f"the paper profile {needs} ImageNet: pass --data /path/to/imagenet (or set {DATA_ROOT_ENV})")
    try:
        check_image_folder(root)
    except DataError as exc:
        raise UsageError(f"${DATA_ROOT_ENV} {root}: {exc}") from None


def run_context(
    runs_dir: str, tracking_uri: str | None, weights_dir: str | None, allow_substitutes: bool, device: str | None
) -> RunContext:
    """The context of every run a command launches. Random stand-ins only when asked for, at every profile; no
    progress bars in the jobs (their output goes to the job's log file; the command shows its own progress)."""
    from gigatok.tracking import resolve_tracking_uri

    return RunContext(
        runs_dir=str(Path(runs_dir).resolve()),
        tracking_uri=resolve_tracking_uri(tracking_uri),
        weights_dir=weights_dir,
        allow_substitutes=allow_substitutes,
        device=device,
        progress=False,
    )


def threads_per_worker(workers: int) -> int:
    """Torch threads of each of ``workers`` local processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // workers)


def local_workers(parallel: int | None) -> tuple[int, int]:
    """(worker processes, threads each): ``parallel`` (``--local-parallel``) sharing the cores, else one per GPU
    or two sharing the cores of a CPU machine."""
    if parallel is not None and parallel < 1:
        raise UsageError(f"--local-parallel {parallel}: must be >= 1")
    if parallel is None:
        return default_local_workers()
    return parallel, threads_per_worker(parallel)


@contextlib.contextmanager
def cancel_on_interrupt(jobs: Callable[[], Iterable[Any]], sigterm: bool = False) -> Iterator[None]:
    """On Ctrl-C cancel the jobs ``jobs()`` returns then (local jobs are this command's children: they would go
    on otherwise) and raise :class:`Interrupted`. With ``sigterm``, a terminated command does the same."""
    if sigterm:

        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except KeyboardInterrupt:
        for job in jobs():
            with contextlib.suppress(Exception):
                job.cancel(check=False)
        raise Interrupted from None


def tracked_runs(client: Any, study: str, profile: str) -> tuple[str | None, dict[str, Any]]:
    """The study's experiment id and its runs by run hash (one query); (None, {}) if it has no experiment."""
    from gigatok.tracking import experiment_name, study_runs

    experiment = client.get_experiment_by_name(experiment_name(study, profile))
    if experiment is None:
        return None, {}
    return experiment.experiment_id, study_runs(client, experiment.experiment_id)


def reconciled(
    client: Any, experiment_id: str, runs_root: Path, tracked: dict[str, Any]
) -> tuple[dict[str, Any], Reconciled]:
    """Send what jobs of the study's runs left spooled while the store was away (a spool a live job is writing is
    left to it), then the study's runs by run hash as they now stand: a run whose job finished during an outage is
    FINISHED here, not RUNNING."""
    from gigatok.tracking import study_runs
    from gigatok.tracking_spool import reconcile

    result = reconcile(client, runs_root, [record.run_id for record in tracked.values()])
    return (study_runs(client, experiment_id) if result.sent else tracked), result


def peek_tracked(uri: str, study: str, profile: str) -> tuple[dict[str, Any], str | None]:
    """The study's runs by run hash for a dry run, and why they could not be read (else None). A dry run reads the
    store only if there is one: it must not create a database."""
    from gigatok.tracking import connect

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return {}, None
    try:
        client = connect(uri)
    except TrackingError as exc:
        return {}, str(exc)
    return tracked_runs(client, study, profile)[1], None
