"""What a launch runs: a study's plan narrowed by ``--only``, the one run a CFG search tunes, each planned run's
row (hashes, parameter counts, stages done, MLflow state), and the inputs checked before MLflow is touched.

The studies must be registered first (``import studies.catalog``, as ``studies/run.py`` does)."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

from gigatok import tracking_schema as schema
from gigatok.config import ARRunConfig, ConfigError, TokenizerRunConfig
from gigatok.launch.common import UsageError, reconciled, tracked_runs
from gigatok.pipeline import RunContext, RunSpec, ar_dir_of, completed_stages
from gigatok.study import (
    SEED_FACTOR,
    STUDIES,
    Planner,
    Sweep,
    check_override_keys,
    get_study,
    parse_override,
    parse_seeds,
    parse_sweep,
)
from gigatok.tracking import resolve_tracking_uri
from gigatok.tracking_spool import spool_path

log = logging.getLogger(__name__)

MLFLOW_RUN_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex, as MLflow's stores name runs


def select(specs: list[RunSpec], only: str | None) -> list[RunSpec]:
    """The runs ``only`` names: comma-separated factor=value filters (values of one factor are alternatives) and
    run-hash prefixes."""
    if not only:
        return specs
    filters = [f.strip() for f in only.split(",") if f.strip()]
    by_factor: dict[str, set[str]] = {}
    prefixes = []
    for f in filters:
        if "=" in f:
            key, value = f.split("=", 1)
            by_factor.setdefault(key, set()).add(value)
        else:
            prefixes.append(f)
    known_factors = {k for s in specs for k, _ in s.factors}
    unknown = sorted(set(by_factor) - known_factors - {SEED_FACTOR})
    if unknown:
        raise UsageError(f"--only: unknown factor {unknown[0]!r}; this study varies {sorted(known_factors)}")

    def keep(spec: RunSpec) -> bool:
        # seed=N picks replicas whether or not the plan varies the seed (one seed: every run is seed 0)
        factors = {SEED_FACTOR: str(spec.tokenizer.train.seed), **{k: str(v) for k, v in spec.factors}}
        if any(factors.get(k) not in values for k, values in by_factor.items()):
            return False
        return not prefixes or any(spec.hash.startswith(p) for p in prefixes)

    chosen = [s for s in specs if keep(s)]
    if not chosen:
        raise UsageError(f"--only {only!r} matches none of the {len(specs)} planned runs")
    return chosen


def make_planner(
    profile: str,
    data: str | None,
    overrides: list[str],
    seeds: str | None,
    weights_dir: str | None,
    seeded: bool = True,
    study: str | None = None,
    sweeps: list[str] | None = None,
) -> Planner:
    """The planner of ``--profile``, ``--data``, ``--set`` and ``--seeds``, each checked. ``seeded``: whether the
    study trains anything (replicas over seeds of one that does not would repeat one run)."""
    parsed = tuple(parse_override(o) for o in overrides)
    check_override_keys(parsed, profile)
    if data is not None:
        check_data_flag(data)
    data_root = str(Path(data).resolve()) if data else None
    n_seeds = parse_seeds(seeds)
    if n_seeds is not None and n_seeds > 1 and not seeded:
        raise UsageError(f"--seeds {n_seeds}: study {study} trains nothing, so every seed would repeat the same run")
    swept = check_sweeps(sweeps or [], parsed, profile)
    return Planner(profile, data_root, parsed, seeds=n_seeds, weights_dir=weights_dir, sweeps=swept)


def check_data_flag(data: str) -> None:
    """``--data`` checked as its runs will read it (splits, classes, a readable image each), before a dry run prints
    and before any MLflow run exists."""
    from gigatok.data.check import check_image_folder
    from gigatok.data.errors import DataError

    if not Path(data).is_dir():
        raise UsageError(f"--data {data}: no such directory")
    try:
        check_image_folder(data)
    except DataError as exc:
        raise UsageError(f"--data {data}: {exc}") from None


def check_sweeps(sweeps: list[str], overrides: tuple[tuple[str, str], ...], profile: str) -> tuple[Sweep, ...]:
    """``--sweep`` flags parsed, each value checked as ``--set`` checks its own, no key set or swept twice."""
    parsed = tuple(parse_sweep(text) for text in sweeps)
    fixed = {key for key, _ in overrides}
    seen: set[str] = set()
    for key, values in parsed:
        if key in fixed or key in seen:
            raise UsageError(f"--sweep {key}: the key is {'set with --set' if key in fixed else 'swept twice'}")
        seen.add(key)
        for value in values:
            try:
                check_override_keys(((key, value),), profile)
            except ConfigError as exc:  # said of --set, which checks the same way
                message = str(exc).removeprefix(f"--set {key}: ").removeprefix(f"{key}: ")
                raise UsageError(f"--sweep {key}={value}: {message}") from None
    return parsed


def plan_study(
    name: str | None,
    profile: str,
    data: str | None,
    overrides: list[str],
    seeds: str | None,
    weights_dir: str | None,
    only: str | None,
    sweeps: list[str] | None = None,
) -> list[RunSpec]:
    """The runs of study ``name`` to launch (or show)."""
    if not name:
        raise UsageError("name a study (see --list)")
    try:
        study = get_study(name)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None
    planner = make_planner(
        profile, data, overrides, seeds, weights_dir, seeded=study.seeded, study=study.name, sweeps=sweeps
    )
    specs = select(study.plan(planner), only)
    log.debug("planned %d runs of study %s at profile %s (--only %s)", len(specs), name, profile, only)
    return specs


def catalog_rows(profile: str, seeds: str | None) -> list[dict[str, Any]]:
    """Every registered study: name, run count at ``profile``, what it reproduces, what it is about."""
    planner = Planner(profile, seeds=parse_seeds(seeds))
    return [
        {"study": name, "runs": len(s.plan(planner)), "reproduces": s.reproduces, "about": s.about}
        for name, s in STUDIES.items()
    ]


def search_target(
    profile: str,
    data: str | None,
    overrides: list[str],
    seeds: str | None,
    weights_dir: str | None,
    study: str | None,
    only: str | None,
    tracking_uri: str | None = None,
) -> RunSpec:
    """The one run a search tunes: ``study`` with ``only`` filters, ``only`` run-hash prefixes across all studies,
    or ``only`` the run's MLflow run id (its study and run hash read from the store at ``tracking_uri``)."""
    planner = make_planner(profile, data, overrides, seeds, weights_dir)
    run_id = mlflow_run_id_in(only)
    if run_id is not None:
        specs = tracked_run_specs(planner, resolve_tracking_uri(tracking_uri), run_id, study)
    elif study:
        try:
            specs = select(get_study(study).plan(planner), only)
        except KeyError as exc:
            raise UsageError(exc.args[0]) from None
    else:
        prefixes = [f.strip() for f in (only or "").split(",") if f.strip()]
        if not prefixes or any("=" in f for f in prefixes):
            raise UsageError(
                "name the run: --study NAME --only FILTERS, or --only RUN_HASH (a prefix of its hash) or its MLflow "
                "run id"
            )
        specs = [s for st in STUDIES.values() for s in st.plan(planner) if any(s.hash.startswith(x) for x in prefixes)]
        if not specs:
            long = any(len(x) > 12 for x in prefixes)
            lengths = " (a run hash has 12 hex digits, an MLflow run id 32)" if long else ""
            raise UsageError(
                f"--only {only}: no run of any study at profile {profile} has such a hash{lengths} "
                "(pass the --set overrides the study was run with)"
            )
    if len(specs) > 1 and len({s.hash for s in specs}) == 1:
        # One configuration, planned (and tracked) by several studies: the trials need one MLflow parent.
        raise UsageError(
            f"run {specs[0].hash} belongs to {len(specs)} studies "
            f"({', '.join(s.study for s in specs)}): choose one with --study"
        )
    if len(specs) > 1:
        where = f"study {study}" if study else "the studies"
        shown = ", ".join(f"{s.study}: {s.label} ({s.hash})" for s in specs[:4])
        raise UsageError(
            f"a CFG search tunes one run, and {where} has {len(specs)} matching --only "
            f"{only or '(none)'}: {shown}{', ...' if len(specs) > 4 else ''}; narrow --only"
        )
    spec = specs[0]
    if spec.ar is None:
        raise UsageError(f"run {spec.hash} ({spec.label}) of study {spec.study} trains no AR model: nothing to search")
    return spec


def mlflow_run_id_in(only: str | None) -> str | None:
    """The MLflow run id ``only`` names (32 hex digits, as MLflow makes them), else None: a run hash has 12, so
    neither is taken for the other. An id names one run: it comes alone."""
    values = [f.strip() for f in (only or "").split(",") if f.strip()]
    ids = [v.lower() for v in values if MLFLOW_RUN_ID.fullmatch(v.lower())]
    if ids and len(values) > 1:
        raise UsageError(f"--only {only}: an MLflow run id ({ids[0]}) names one run; pass it alone")
    return ids[0] if ids else None


def tracked_run_specs(planner: Planner, tracking_uri: str, run_id: str, study: str | None) -> list[RunSpec]:
    """The planned run whose MLflow run is ``run_id``: its study and run hash are the run's tags, the rest of its
    configuration is the plan's (at the profile, --set and --seeds given, which its hash checks)."""
    tags = tracked_run_tags(tracking_uri, run_id)
    run_hash, run_study, run_profile = tags.get(schema.RUN_HASH), tags.get(schema.STUDY), tags.get(schema.PROFILE)
    if not run_hash or not run_study:
        parent = tags.get("mlflow.parentRunId")
        what = f"a {tags.get(schema.KIND, 'child')} run of study run {parent}" if parent else "no run of a study"
        raise UsageError(f"--only {run_id}: MLflow run {run_id} is {what} (it has no {schema.RUN_HASH} tag)")
    if study and study != run_study:
        raise UsageError(f"--only {run_id}: MLflow run {run_id} is a run of study {run_study}, not of {study}")
    if run_profile and run_profile != planner.profile_name:
        raise UsageError(
            f"--only {run_id}: MLflow run {run_id} was run at profile {run_profile}: pass --profile {run_profile}"
        )
    try:
        specs = [s for s in get_study(run_study).plan(planner) if s.hash == run_hash]
    except KeyError as exc:
        raise UsageError(f"--only {run_id}: {exc.args[0]}") from None
    if not specs:
        raise UsageError(
            f"--only {run_id}: MLflow run {run_id} is run {run_hash} of study {run_study}, which the plan at profile "
            f"{planner.profile_name} does not have: pass the --set overrides and --seeds the study was run with"
        )
    return specs


def tracked_run_tags(tracking_uri: str, run_id: str) -> dict[str, str]:
    """The tags of MLflow run ``run_id``; a one-line error naming it if the store has no such (live) run. A SQLite
    store that does not exist is not created."""
    from mlflow.exceptions import MlflowException

    from gigatok.tracking import connect

    unknown = f"--only {run_id}: no MLflow run with this id in {tracking_uri}"
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise UsageError(f"{unknown} (no such store: pass --tracking-uri)")
    try:
        run = connect(tracking_uri).get_run(run_id)
    except MlflowException:
        raise UsageError(unknown) from None
    if run.info.lifecycle_stage == "deleted":
        raise UsageError(f"--only {run_id}: MLflow run {run_id} in {tracking_uri} is deleted")
    return dict(run.data.tags)


_param_cache: dict[Any, Any] = {}


def tokenizer_parameter_counts(cfg: Any) -> dict[str, int]:
    """Parameters of a tokenizer run's model per part and in total (:meth:`parameter_counts`), built on the meta
    device once per architecture: a sweep over seeds or schedules has a few dozen shapes in 1,000 runs, and a
    meta-device build costs 0.1-1 s."""
    # lambda only switches the semantic projector on or off: a sweep over lambda shares the shapes of lambda = 1
    semantic = dataclasses.replace(cfg.tokenizer.semantic, weight=float(cfg.tokenizer.semantic.enabled))
    shape = dataclasses.replace(cfg.tokenizer, semantic=semantic)
    key = ("tokenizer", shape)
    if key not in _param_cache:
        from gigatok.models.tokenizer import build_tokenizer

        _param_cache[key] = build_tokenizer(shape, "meta").parameter_counts()
    return dict(_param_cache[key])


def parameter_count(kind: str, cfg: Any) -> int:
    """Parameters of the tokenizer (without discriminator) or AR model, built on the meta device."""
    if kind == "tokenizer":
        return tokenizer_parameter_counts(cfg)["total"]
    key = (kind, cfg.model)
    if key not in _param_cache:
        from gigatok.models.ar import ar_parameter_count

        _param_cache[key] = ar_parameter_count(cfg.model)
    return int(_param_cache[key])


def size_metrics(spec: RunSpec) -> dict[str, float]:
    """A run's size as MLflow metrics (:data:`schema.SIZE_METRICS`): parameter counts, the size names' rank and the
    training FLOPs of its stages (:func:`gigatok.flops.run_training_flops`, closed-form from the configs)."""
    from gigatok.config import SIZE_NAMES, parse_tokenizer_name
    from gigatok.flops import run_training_flops

    counts = tokenizer_parameter_counts(spec.tokenizer)
    encoder, decoder = parse_tokenizer_name(spec.tokenizer.tokenizer.name)
    metrics: dict[str, float] = {
        schema.PARAMS_TOKENIZER: counts["total"],
        schema.PARAMS_ENCODER: counts["cnn_encoder"] + counts["encoder_transformer"],
        schema.PARAMS_DECODER: counts["decoder_transformer"] + counts["cnn_decoder"],
        schema.SIZE_RANK: SIZE_NAMES.index(encoder) + SIZE_NAMES.index(decoder),
    }
    flops = run_training_flops(spec)
    metrics[schema.FLOPS_TOKENIZER_TRAIN] = flops["tokenizer"]
    metrics[schema.FLOPS_TRAIN] = flops["total"]
    if spec.ar is not None:
        metrics[schema.PARAMS_AR] = parameter_count("ar", spec.ar)
        metrics[schema.FLOPS_AR_TRAIN] = flops["ar"]
    return {k: float(v) for k, v in metrics.items()}


def plan_rows(specs: list[RunSpec], ctx: RunContext, tracked: dict[str, Any]) -> list[dict[str, Any]]:
    """A dry run's row of each run: factors, hashes, parameter counts, stages (done), MLflow state."""
    rows = []
    for spec in specs:
        record = tracked.get(spec.hash)
        rows.append(
            {
                "hash": spec.hash,
                "factors": spec.factor_dict,
                "tokenizer": spec.tokenizer.tokenizer.name,
                "kind": spec.tokenizer.tokenizer.kind,
                "tokenizer_hash": spec.tokenizer.hash(),
                "tokenizer_params": parameter_count("tokenizer", spec.tokenizer),
                "ar_size": spec.ar.size if spec.ar else None,
                "ar_hash": spec.ar.hash() if spec.ar else None,
                "ar_params": parameter_count("ar", spec.ar) if spec.ar else None,
                "stages": spec.ordered_stages(),
                "stages_done": completed_stages(spec, ctx),
                "mlflow_status": record.status if record else None,
                "mlflow_run_id": record.run_id if record else None,
            }
        )
    return rows


def status_rows(specs: list[RunSpec], ctx: RunContext, study: str, profile: str) -> list[dict[str, Any]]:
    """Each run's state: MLflow status, current stage, error, Slurm job and its state, metrics."""
    from gigatok.tracking import connect

    client = connect(ctx.tracking_uri)
    experiment_id, tracked = tracked_runs(client, study, profile)
    pending: dict[str, str | None] = {}
    if experiment_id is not None:
        tracked, result = reconciled(client, experiment_id, ctx.root, tracked)
        pending = result.pending
    rows = []
    for spec in specs:
        record = tracked.get(spec.hash)
        tags = record.tags if record else {}
        rows.append(
            {
                "hash": spec.hash,
                "label": spec.label,
                "status": record.status if record else "NOT SUBMITTED",
                # operations a job spooled during an outage and not sent yet; "FINISHED" where the job finished
                "tracking_pending": _pending(pending, record, ctx),
                "stage": tags.get(schema.STAGE),
                "error": tags.get(schema.ERROR),
                "slurm_job_id": tags.get(schema.SLURM_JOB_ID),
                "slurm_state": slurm_state(tags.get(schema.SLURM_JOB_ID)),
                "metrics": record.metrics if record else {},
            }
        )
    return rows


def _pending(pending: dict[str, str | None], record: Any, ctx: RunContext) -> str | None:
    """What a status row says of a run's spooled tracking: None when nothing waits."""
    if record is None or record.run_id not in pending:
        return None
    final = pending[record.run_id]
    where = spool_path(ctx.root, record.run_id)
    if final == "FINISHED":
        return f"finished on disk, tracking pending ({where})"
    return f"tracking pending ({where})"


def slurm_state(job_id: str | None) -> str | None:
    """The job's state from sacct, or None where there is no Slurm or no such job."""
    import shutil
    import subprocess

    if not job_id or shutil.which("sacct") is None:
        return None
    try:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State"], capture_output=True, text=True, timeout=20
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[-1] if out else None


def pretrained_files_needed(cfg: TokenizerRunConfig) -> list[tuple[str, ...]]:
    """The registry files training ``cfg``'s tokenizer loads, each as interchangeable alternatives."""
    from gigatok.models.discriminator import DINO_WEIGHTS
    from gigatok.perceptual import perceptual_active, perceptual_weight_file
    from gigatok.semantic_encoders import ENCODER_SPECS

    needed: list[tuple[str, ...]] = []
    if cfg.loss.perceptual != "auto" and perceptual_active(cfg):  # "auto" is settled by the file being there
        needed.append((perceptual_weight_file(cfg),))
    if cfg.tokenizer.semantic.enabled:
        needed.append(tuple(ENCODER_SPECS[cfg.tokenizer.semantic.encoder].weights))
    if cfg.loss.discriminator == "dino":
        needed.append((DINO_WEIGHTS,))
    return needed


def check_pretrained_inputs(specs: list[RunSpec], ctx: RunContext) -> None:
    """Refuse, before MLflow is touched, tokenizers to train whose pretrained networks are missing (unless random
    stand-ins are allowed): otherwise the job would fail at its first step, hours later on a busy cluster."""
    from gigatok.weights import find_weight, get_weight_file, weights_folder

    if ctx.allow_substitutes:
        return
    for spec in specs:
        cfg = spec.tokenizer
        if cfg.source or (ctx.tokenizer_dir(cfg) / "summary.json").is_file():
            continue  # converted, or trained already
        for names in pretrained_files_needed(cfg):
            if all(find_weight(name, ctx.weights_dir) is None for name in names):
                entry = get_weight_file(names[0])
                raise UsageError(
                    f"pretrained file '{entry.name}' ({entry.filename}) not found in "
                    f"{weights_folder(ctx.weights_dir)}, needed to train {spec.label}: put it there "
                    f"(from {entry.source}) or pass --allow-substitutes for a labelled random stand-in"
                )


def check_converted_inputs(specs: list[RunSpec], ctx: RunContext) -> None:
    """Refuse, before MLflow is touched, runs of released checkpoints whose files are neither converted nor there."""
    from gigatok.convert.released import missing_inputs

    stages: list[tuple[TokenizerRunConfig | ARRunConfig, Path]] = []
    for spec in specs:
        stages.append((spec.tokenizer, ctx.tokenizer_dir(spec.tokenizer)))
        if spec.ar is not None:
            stages.append((spec.ar, ar_dir_of(spec, ctx)))
    problems = missing_inputs(stages, ctx.weights_dir)
    if problems:
        more = f" (and {len(problems) - 1} more released file(s) missing)" if len(problems) > 1 else ""
        raise UsageError(problems[0] + more)
