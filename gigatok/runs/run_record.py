"""What a run tells MLflow about itself when its job starts, beside its metrics: the resolved config as an
artifact, the data it trains and is scored on as MLflow dataset inputs (the UI's Dataset column), and the
machine's load as MLflow system metrics (CPU, memory, disk, network; GPUs where NVML is installed) while its stages
run. Done in the job, not at submission, so a 1,000-run study is not slower to submit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from gigatok import tracking_schema as schema
from gigatok.runs.spec import RunSpec, short_hash

# Seconds between samples of the system metrics: a tiny run lasts minutes, a paper run days.
SYSTEM_METRICS_INTERVAL_S = 30.0


def data_inputs(spec: RunSpec) -> list[tuple[str, str, str]]:
    """(context, name, digest) of each data set the run reads: the tokenizer's training and validation splits and
    the reference generation is scored against. The digest is of the data settings (a machine-local root is left
    out, as the config hash leaves it out)."""
    data = spec.tokenizer.data
    settings = {k: v for k, v in dataclasses.asdict(data).items() if k not in ("root", "num_workers")}
    name = f"builtin-v{data.builtin_version}" if data.dataset == "builtin" else "imagefolder"
    digest = short_hash(settings)[:8]
    inputs = [("training", f"{name} train", digest), ("validation", f"{name} val", digest)]
    if "generation" in spec.stages:
        reference = spec.eval.gen_reference
        # its own name: MLflow keeps one input per (name, digest), whatever the context
        shown = "adm-imagenet256" if reference == "adm" else f"{name} {reference}"
        inputs.append(("fid_reference", f"{shown} (FID reference)", digest))
    return inputs


def data_source(spec: RunSpec) -> Any:
    """Where the data is: the image folder, or the installed packages the built-in photographs come from."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    root = spec.tokenizer.data.root or os.environ.get("GIGATOK_DATA_ROOT")
    if spec.tokenizer.data.dataset == "imagefolder" and root:
        return resolve_dataset_source(os.path.abspath(root))
    return CodeDatasetSource(tags={"source": "the built-in dataset: photographs shipped by installed wheels"})


def describe_run(client: Any, run_id: str, spec: RunSpec, tags: dict[str, str]) -> None:
    """Once per MLflow run (``tags`` are its tags as read): the config artifact and the dataset inputs."""
    if tags.get(schema.DESCRIBED) == schema.LOGGED:
        return
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from gigatok.tracking_spool import once_more_if_duplicate, set_tag

    client.log_dict(run_id, {"hash": spec.hash, **spec.to_dict()}, f"config/{spec.hash}.json")
    source = data_source(spec)
    # MetaDataset: MLflow's dataset of a name, a source and a digest, for data it does not load itself; its stub
    # leaves ``profile`` abstract although the class is instantiable (profile None).
    datasets = [
        DatasetInput(
            MetaDataset(source, name=name, digest=digest)._to_mlflow_entity(),  # type: ignore[abstract]
            tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)],
        )
        for context, name, digest in data_inputs(spec)
    ]
    # The dataset belongs to the experiment: the jobs of a study's array, started together, each try to create it.
    once_more_if_duplicate(lambda: client.log_inputs(run_id, datasets=datasets))
    set_tag(client, run_id, schema.DESCRIBED, schema.LOGGED)


def record_start(client: Any, run: Any, now_ms: int) -> None:
    """A job picks up ``run`` (MLflow's ``Run`` as read when it starts): if the launch had marked it SCHEDULED, its
    wait as :data:`~gigatok.tracking_schema.QUEUE_S` and, at its first start ever, its MLflow start time moved to
    now, so that the UI's Duration counts from its first stage, not from its submission (where the store allows:
    :func:`gigatok.tracking.restart_clock`). A run resumed after a failure keeps its first start."""
    from gigatok.tracking import restart_clock

    if run.info.status != "SCHEDULED":  # a requeued job's second start: no new wait to measure
        return
    scheduled = int(run.data.tags.get(schema.SCHEDULED_AT) or run.info.start_time)
    client.log_metric(run.info.run_id, schema.QUEUE_S, max(0.0, (now_ms - scheduled) / 1000), timestamp=now_ms)
    if schema.HOST not in run.data.tags:  # no job has started it before
        restart_clock(client, run.info.run_id, now_ms)


@contextlib.contextmanager
def system_metrics(run_id: str, tracking_uri: str, rank: int) -> Iterator[None]:
    """MLflow's system-metrics monitor on this process's run while the block runs (``system/*`` metrics, one node
    id per rank), continuing the steps of an earlier attempt; nothing where psutil is not installed."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:  # psutil missing: MLflow's monitor cannot run
        yield
        return
    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=SYSTEM_METRICS_INTERVAL_S,
        resume_logging=True,
        node_id=f"rank{rank}" if rank else None,
        tracking_uri=tracking_uri,
    )
    monitor.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # a tracking outage must not fail the run at its end
            monitor.finish()
