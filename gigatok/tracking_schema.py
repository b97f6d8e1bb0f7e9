"""The tracking schema: every MLflow tag name the project writes or reads, the kinds of run, and the final metrics.

The launch code, the run stages, the CFG search, the conversion of released files and the analysis all name tags
through this module, so a tag is spelled once: renaming one here renames it everywhere, and a test
(``tests/test_tracking_schema.py``) refuses a ``"gigatok.<name>"`` tag literal anywhere else. What is written to
MLflow is unchanged by this module's existence: the names below are the names the store has always held.

No torch, no MLflow at import time (the analysis and the planner import it).

Tags (all start with :data:`PREFIX`):

- a study run's identity, set when ``studies/run.py`` creates it (:func:`run_tags`): study, profile, run /
  tokenizer / AR hash, git commit, executor, its factors as JSON and one ``factor.<name>`` tag per factor; its
  experiment is tagged with study and profile (:func:`experiment_tags`);
- what a job writes as it runs (:mod:`gigatok.runs.execute`): host, Slurm job id, the current stage (``done`` at
  the end), ``logged.<stage>`` once a stage's numbers are stored, the error and failed stage of a failed run, the
  substitute networks used;
- what the stages report: ``provenance.<metric>`` (the feature network and sets behind a metric, or why it is
  unavailable), ``artifact.<name>`` (where a stored array is), the perceptual term trained with, the CFG scale
  sampled at, the device a decoding cost was timed on, ``source.<kind>[_file|_sha256]`` (a converted released file);
- CFG search: the search's name and schedule (on the run it tunes), and on each trial (a child run of kind
  :data:`CFG_TRIAL`): its state and, for a trial copied from the Optuna storage, where it came from;
- a benchmark's run (``bench/``): which benchmark, and the git commit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

PREFIX = "gigatok."

# -- a study run's identity (run_tags) and its experiment's (experiment_tags) ------------------------------------
STUDY = PREFIX + "study"
PROFILE = PREFIX + "profile"
RUN_HASH = PREFIX + "run_hash"  # only study runs have it: a run without it is no run of the study
TOKENIZER_HASH = PREFIX + "tokenizer_hash"
AR_HASH = PREFIX + "ar_hash"
GIT_COMMIT = PREFIX + "git_commit"
EXECUTOR = PREFIX + "executor"
FACTORS = PREFIX + "factors"  # the factors as a JSON object (typed)
FACTOR_PREFIX = PREFIX + "factor."  # factor.<name>: one text tag per factor

# Where the run's files are (checkpoints, config.json, metrics.jsonl): a copied mlflow.db still leads to them.
TOKENIZER_DIR = PREFIX + "tokenizer_dir"
AR_DIR = PREFIX + "ar_dir"

# -- MLflow's own tags (mlflow.utils.mlflow_tags): they fill the UI's User, Source and Version columns ------------
MLFLOW_USER = "mlflow.user"
MLFLOW_SOURCE_NAME = "mlflow.source.name"
MLFLOW_SOURCE_TYPE = "mlflow.source.type"
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
MLFLOW_PARENT_RUN = "mlflow.parentRunId"
MLFLOW_RUN_NAME = "mlflow.runName"  # MLflow adds it to every run it creates (the run's name)

# MLflow's shared views: an experiment tag ``mlflow.sharedViewState.<key>`` holds the runs table's state, opened as
# ``#/experiments/<id>/runs?viewStateShareKey=<key>``. Each study's experiment gets one that shows what a scaling
# study is read by (the default table shows neither metrics nor the User and Version columns).
MLFLOW_SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
STUDY_VIEW = "gigatok"

# -- a run's size and training compute, logged as metrics when it is registered, for the UI's charts' axes --------
PARAMS_TOKENIZER = "params_tokenizer"  # without the discriminator, as the paper counts
PARAMS_ENCODER = "params_encoder"  # CNN encoder + transformer encoder
PARAMS_DECODER = "params_decoder"  # transformer decoder + CNN decoder
PARAMS_AR = "params_ar"
SIZE_RANK = "size_rank"  # the tokenizer's size names as a number: S-S 0, S-B 1, S-L 2, B-L 3, ..., XL-XXL 7
# Training compute from the analytic FLOP model (gigatok.flops.run_training_flops; conventions in docs/flops.md)
FLOPS_TOKENIZER_TRAIN = "flops_tokenizer_train"  # every step of the tokenizer's schedule, each at its phase
FLOPS_AR_TRAIN = "flops_ar_train"
FLOPS_TRAIN = "flops_train"  # the two stages together
SIZE_METRICS = (
    PARAMS_TOKENIZER,
    PARAMS_ENCODER,
    PARAMS_DECODER,
    PARAMS_AR,
    SIZE_RANK,
    FLOPS_TOKENIZER_TRAIN,
    FLOPS_AR_TRAIN,
    FLOPS_TRAIN,
)

# -- written by the job running a run ------------------------------------------------------------------------------
HOST = PREFIX + "host"
SLURM_JOB_ID = PREFIX + "slurm_job_id"
STAGE = PREFIX + "stage"  # the stage running now; STAGE_DONE once every stage has finished
STAGE_DONE = "done"
LOGGED_PREFIX = PREFIX + "logged."  # logged.<stage> = "1": the stage's metrics, artifacts and tags are stored
LOGGED = "1"
ERROR = PREFIX + "error"
FAILED_STAGE = PREFIX + "failed_stage"
DESCRIBED = PREFIX + "described"  # = LOGGED once the run's config artifact and dataset inputs are in MLflow
SUBSTITUTES = PREFIX + "substitutes"  # the random stand-in networks used, comma-separated
SCHEDULED_AT = PREFIX + "scheduled_at"  # ms since the epoch when the launch (last) marked the run SCHEDULED

# -- what the stages report ----------------------------------------------------------------------------------------
PROVENANCE_PREFIX = PREFIX + "provenance."  # provenance.<metric>
ARTIFACT_PREFIX = PREFIX + "artifact."  # artifact.<name>: a stored array's path in the run's artifacts
SOURCE_PREFIX = PREFIX + "source."  # source.<kind>, source.<kind>_file, source.<kind>_sha256
PERCEPTUAL = PREFIX + "perceptual"  # the perceptual term the tokenizer trained with, or why there was none
CFG_SCALE = PREFIX + "cfg_scale"  # the scale the generation stage sampled at
DECODE_DEVICE = PREFIX + "decode_device"

# -- CFG search ----------------------------------------------------------------------------------------------------
KIND = PREFIX + "kind"  # set on runs that are not study runs; study runs have no kind
CFG_SEARCH = PREFIX + "cfg_search"  # the Optuna study name, on the searched run and on each of its trials
CFG_SCHEDULE = PREFIX + "cfg_schedule"
TRIAL_STATE = PREFIX + "trial_state"  # COMPLETE, PRUNED or FAIL
CFG_TRIAL_ORIGIN = PREFIX + "cfg_trial_origin"

# -- bench/: one run per benchmark invocation, in the "benchmarks" experiment ------------------------------------
BENCHMARK = PREFIX + "benchmark"

# -- kinds of run (the value of KIND) ------------------------------------------------------------------------------
CFG_TRIAL = "cfg_trial"  # a CFG-search trial: a child run of the study run it tunes

# -- final metrics, by the stage that logs them (names as logged to MLflow, at step 0) -----------------------------
CFG_BEST_SCALE = "cfg_best_scale"
CFG_BEST_GFID = "cfg_best_gfid"
CFG_BEST_STEP_FRACTION = "cfg_best_step_fraction"  # only when the search searches the step fraction too
STAGE_METRICS: dict[str, tuple[str, ...]] = {
    # ssim_authors: SSIM as the authors' evaluation computes it, a comparison number beside ours
    "reconstruction": ("rfid", "lpips", "psnr", "ssim", "ssim_authors", "codebook_usage", "codebook_perplexity"),
    "tokenizer_probe": ("tokenizer_probe_acc",),
    "feature_pca": ("feature_pca_variance",),  # variance explained by the 3 components drawn in Fig. 8
    "ar": ("ar_val_loss",),
    # the best CFG point and its gFID (Appendix B)
    "cfg_search": (CFG_BEST_SCALE, CFG_BEST_GFID, CFG_BEST_STEP_FRACTION),
    "generation": ("gfid", "inception_score", "precision", "recall"),
    "ar_probe": ("ar_probe_acc",),
    "decode_cost": ("decode_fraction", "sampling_seconds", "decoding_seconds"),
}
FINAL_METRICS: tuple[str, ...] = tuple(m for names in STAGE_METRICS.values() for m in names)

# -- when and how long (logged by the job; the run's MLflow start_time is moved to its first stage's start, so the
# UI's Duration leaves out the queue where the store allows it: gigatok.tracking.restart_clock) ------------------
QUEUE_S = "queue_s"  # seconds from SCHEDULED to the job's start of the run, at each start of a scheduled run
# Measured cost (gigatok.runs.timing): each stage's wall time and device-hours (wall hours x the devices the job
# holds: its GPUs on CUDA, one per rank; else its processes), summed over every attempt of the stage, and the
# run's totals. DEVICES is the devices of the last attempt, DEVICE_TYPE (a tag) cuda or cpu.
WALL_S = "wall_s"
DEVICE_HOURS = "device_hours"
DEVICES = "devices"
DEVICE_TYPE = PREFIX + "device_type"
# What a CPU job did with glibc's allocator thresholds (gigatok.host_memory): timings compare only at equal values.
HOST_ALLOCATOR = PREFIX + "host_allocator"
# Every stage a run can have, in the order it runs them: gigatok.runs.spec.STAGES, written here once because each
# names its timing metrics (a run's hash includes the stage names, so they are identity).
STAGES = (
    "tokenizer",
    "token_cache",
    "ar",
    "reconstruction",
    "tokenizer_probe",
    "feature_pca",
    "cfg_search",
    "generation",
    "ar_probe",
    "decode_cost",
)


def stage_wall_s(stage: str) -> str:
    return f"{stage}_{WALL_S}"


def stage_device_hours(stage: str) -> str:
    return f"{stage}_{DEVICE_HOURS}"


TIMING_METRICS: tuple[str, ...] = (
    QUEUE_S,
    WALL_S,
    DEVICE_HOURS,
    DEVICES,
    *(name for stage in STAGES for name in (stage_wall_s(stage), stage_device_hours(stage))),
)


def factor(name: str) -> str:
    return FACTOR_PREFIX + name


def logged(stage: str) -> str:
    return LOGGED_PREFIX + stage


def provenance(metric: str) -> str:
    return PROVENANCE_PREFIX + metric


def artifact(name: str) -> str:
    return ARTIFACT_PREFIX + name


def source(kind: str, suffix: str = "") -> str:
    """``source.<kind>`` (the released checkpoint's name), with ``suffix`` ``_file`` or ``_sha256``."""
    return f"{SOURCE_PREFIX}{kind}{suffix}"


def family(tags: dict[str, str], prefix: str) -> dict[str, str]:
    """The tags of one family (``prefix`` one of the ``*_PREFIX`` names) by their names after the prefix."""
    return {k.removeprefix(prefix): v for k, v in tags.items() if k.startswith(prefix)}


def experiment_tags(study: str, profile: str) -> dict[str, str]:
    """The tags of a study's experiment (one per study and profile)."""
    return {STUDY: study, PROFILE: profile}


def run_tags(
    *,
    study: str,
    profile: str,
    run_hash: str,
    tokenizer_hash: str,
    ar_hash: str | None,
    git_commit: str,
    factors: Sequence[tuple[str, Any]],
    executor: str,
) -> dict[str, str]:
    """The tags a study run gets when it is created: its identity and its factors, ``(name, value)`` pairs in
    display order (as JSON, typed, and one text tag each)."""
    return {
        STUDY: study,
        RUN_HASH: run_hash,
        PROFILE: profile,
        TOKENIZER_HASH: tokenizer_hash,
        GIT_COMMIT: git_commit,
        FACTORS: json.dumps(dict(factors)),
        EXECUTOR: executor,
        **({AR_HASH: ar_hash} if ar_hash is not None else {}),
        **{factor(k): str(v) for k, v in factors},
    }


def mlflow_tags(*, user: str, source_name: str, source_type: str, git_commit: str) -> dict[str, str]:
    """MLflow's standard tags of a run the project creates: who, from what, at which commit (a ``-dirty`` or
    ``unknown`` commit is no commit MLflow could link to, so it stays in :data:`GIT_COMMIT` only)."""
    tags = {MLFLOW_USER: user, MLFLOW_SOURCE_NAME: source_name, MLFLOW_SOURCE_TYPE: source_type}
    if len(git_commit) == 40 and all(c in "0123456789abcdef" for c in git_commit):
        tags[MLFLOW_GIT_COMMIT] = git_commit
    return tags


def study_view(factor_names: Sequence[str], stages: Sequence[str]) -> dict[str, str]:
    """The experiment tag of a study's shared view (:data:`STUDY_VIEW`): the User, Source, Version and Dataset
    columns, the study's factors, the size metrics and the final metrics of ``stages``, in that order."""
    columns = [f"attributes.`{name}`" for name in ("User", "Source", "Version", "Dataset")]
    columns += [f"tags.`{factor(name)}`" for name in factor_names]
    metrics = [m for stage in stages for m in STAGE_METRICS.get(stage, ())]
    columns += [f"metrics.`{name}`" for name in (*SIZE_METRICS, *metrics)]
    return {MLFLOW_SHARED_VIEW_PREFIX + STUDY_VIEW: json.dumps({"selectedColumns": columns})}


def study_view_path(experiment_id: str) -> str:
    """The study view's place in the MLflow UI, after the server's address."""
    return f"/#/experiments/{experiment_id}/runs?viewStateShareKey={STUDY_VIEW}"


def trial_tags(*, parent_run_id: str, study: str, profile: str, search: str) -> dict[str, str]:
    """The tags a CFG-search trial gets when it is created, under the run it tunes."""
    return {MLFLOW_PARENT_RUN: parent_run_id, KIND: CFG_TRIAL, STUDY: study, PROFILE: profile, CFG_SEARCH: search}
