"""The run pipeline: a planned run is a chain of stages, each stored on disk under its own config hash.

Stages, in the order a run executes them::

    tokenizer        train the tokenizer                      RUNS/tokenizer-<tokenizer hash>/
    token_cache      tokenize train and val once              RUNS/tokenizer-<hash>/token_cache/
    ar               train the AR probe on the token cache     RUNS/ar-<AR hash>/
    reconstruction   rFID, LPIPS, PSNR, SSIM, codebook stats  RUNS/tokenizer-<hash>/eval/reconstruction-<key>.json
    tokenizer_probe  linear probe on the tokenizer encoder     RUNS/tokenizer-<hash>/eval/probe-<key>.json
    cfg_search       Optuna search of the CFG scale (App. B)   RUNS/ar-<hash>/eval/cfg-search-<key>.json
    generation       gFID, IS, precision, recall of samples    RUNS/ar-<hash>/eval/generation-<key>.json
    ar_probe         linear probe on AR layer n/2              RUNS/ar-<hash>/eval/probe-<key>.json
    decode_cost      Table 4: decoding time / generation time RUNS/ar-<hash>/eval/decode-cost-<key>.json

Because a stage's folder is named by the hash of what it depends on, two runs that share a tokenizer (two AR
probes of one tokenizer, or the same tokenizer in two studies) train it once; a finished stage is never redone; a
stage killed half-way resumes from its newest checkpoint, found on disk when the stage starts. A file lock per
stage folder keeps two processes from working on the same stage at once.

Training stages run on every process of a multi-process (DDP) job; evaluation and tracking run on rank 0 only.

A run with the ``cfg_search`` stage reports gFID at the best sampler setting its search found: the generation
stage samples at that setting (and finds the search's full-budget result for it already on disk).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from gigatok.config import (
    ARRunConfig,
    EvalConfig,
    ProbeConfig,
    TokenizerRunConfig,
    _hashed_fields,
    ar_run_config_from_dict,
    from_dict,
    run_config_from_dict,
)

STAGES = ("tokenizer", "token_cache", "ar", "reconstruction", "tokenizer_probe", "feature_pca", "cfg_search",
          "generation", "ar_probe", "decode_cost")
TOKENIZER_STAGES = ("tokenizer", "reconstruction", "tokenizer_probe")
PROBE_STAGES = (*TOKENIZER_STAGES, "token_cache", "ar", "generation", "ar_probe")
TRAINING_STAGES = ("tokenizer", "ar")
NEEDS_AR = ("token_cache", "ar", "cfg_search", "generation", "ar_probe", "decode_cost")

# Final metrics a run reports, by stage (names as logged to MLflow).
STAGE_METRICS = {
    # ssim_authors: SSIM as the authors' evaluation computes it, a comparison number beside ours
    "reconstruction": ("rfid", "lpips", "psnr", "ssim", "ssim_authors", "codebook_usage", "codebook_perplexity"),
    "tokenizer_probe": ("tokenizer_probe_acc",),
    "feature_pca": ("feature_pca_variance",),  # variance explained by the 3 components drawn in Fig. 8
    "ar": ("ar_val_loss",),
    "cfg_search": ("cfg_best_scale", "cfg_best_gfid"),  # the best CFG scale and its gFID (Appendix B)
    "generation": ("gfid", "inception_score", "precision", "recall"),
    "ar_probe": ("ar_probe_acc",),
    "decode_cost": ("decode_fraction", "sampling_seconds", "decoding_seconds"),
}


def _short_hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class RunSpec:
    """One planned run: what to train, how to score it, and which of the study's factors it stands for."""

    study: str
    factors: tuple[tuple[str, Any], ...]  # (name, value) pairs of what varies in the study, in display order
    tokenizer: TokenizerRunConfig
    ar: ARRunConfig | None
    eval: EvalConfig
    stages: tuple[str, ...] = PROBE_STAGES
    # Evaluate the tokenizer as it was at this epoch of its training (one of its train.snapshot_epochs), not its
    # final weights: everything after the tokenizer stage (token cache, AR probe, metrics) uses that snapshot.
    tokenizer_snapshot: float | None = None

    def __post_init__(self) -> None:
        snapshots = self.tokenizer.train.snapshot_epochs
        if self.tokenizer_snapshot is not None and self.tokenizer_snapshot not in snapshots:
            raise ValueError(f"run {self.label}: tokenizer_snapshot {self.tokenizer_snapshot:g} is not one of the "
                             f"tokenizer's train.snapshot_epochs {list(snapshots)}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"run stages: unknown {unknown}; known: {STAGES}")
        if self.ar is None and any(s in NEEDS_AR for s in self.stages):
            raise ValueError(f"run {self.label}: stages {self.stages} need an AR config")
        if self.ar is not None and self.ar.tokenizer != self.tokenizer:
            raise ValueError(f"run {self.label}: the AR config is for another tokenizer")

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.factors) or self.tokenizer.tokenizer.name

    @property
    def factor_dict(self) -> dict[str, Any]:
        return dict(self.factors)

    @property
    def profile(self) -> str:
        return self.tokenizer.profile

    @cached_property
    def hash(self) -> str:
        """The run's identity: what is trained, how it is scored and which stages run (not the study's name)."""
        return _short_hash({
            "tokenizer": self.tokenizer.hash(),
            "ar": self.ar.hash() if self.ar is not None else None,
            "eval": self._eval_fields(_hashed_fields(self.eval)),
            "stages": sorted(self.stages),
            # only when set, so the hashes of runs of final tokenizers did not change when snapshots came
            **({"tokenizer_snapshot": self.tokenizer_snapshot} if self.tokenizer_snapshot is not None else {}),
        })

    def _eval_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Scoring settings that matter to this run: the CFG-search settings only with the cfg_search stage (so the
        runs of other studies kept their hashes when the search came)."""
        if "cfg_search" not in self.stages:
            fields.pop("cfg_search", None)
        return fields

    def ordered_stages(self) -> list[str]:
        return [s for s in STAGES if s in self.stages]

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "factors": [[k, v] for k, v in self.factors],
            "tokenizer": self.tokenizer.to_dict(),
            "ar": None if self.ar is None else self.ar.to_dict(),
            "eval": dataclasses.asdict(self.eval),
            "stages": list(self.stages),
            "tokenizer_snapshot": self.tokenizer_snapshot,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls(
            study=data["study"],
            factors=tuple((k, v) for k, v in data["factors"]),
            tokenizer=run_config_from_dict(data["tokenizer"]),
            ar=None if data["ar"] is None else ar_run_config_from_dict(data["ar"]),
            eval=from_dict(EvalConfig, data["eval"]),
            stages=tuple(data["stages"]),
            tokenizer_snapshot=data.get("tokenizer_snapshot"),
        )

    def params(self) -> dict[str, Any]:
        """The flattened config for MLflow: ``tokenizer.*``, ``ar.*`` (model and training), ``eval.*``."""
        from gigatok.tracking import flatten

        out = flatten(self.tokenizer.to_dict(), "tokenizer.")
        if self.ar is not None:
            ar = self.ar.to_dict()
            ar.pop("tokenizer")
            out.update(flatten(ar, "ar."))
        out.update(flatten(self._eval_fields(dataclasses.asdict(self.eval)), "eval."))
        out.update({f"factor.{k}": str(v) for k, v in self.factors})
        out["stages"] = ",".join(self.ordered_stages())
        if self.tokenizer_snapshot is not None:
            out["tokenizer_snapshot"] = str(self.tokenizer_snapshot)
        return out


def settle_perceptual(spec: RunSpec, weights_dir: str | os.PathLike[str] | None = None) -> RunSpec:
    """``spec`` with its tokenizer's ``loss.perceptual`` "auto" settled into "lpips" or "off" by whether the vgg16
    file is on disk (:func:`gigatok.perceptual.resolve_perceptual`), in the AR config's copy too: the run's hash,
    and its tokenizer's folder, then say whether it trains with the perceptual term."""
    from gigatok.perceptual import resolve_perceptual

    tokenizer = resolve_perceptual(spec.tokenizer, weights_dir)
    if tokenizer is spec.tokenizer:
        return spec
    ar = None if spec.ar is None else dataclasses.replace(spec.ar, tokenizer=tokenizer)
    return dataclasses.replace(spec, tokenizer=tokenizer, ar=ar)


@dataclass(frozen=True)
class RunContext:
    """Where and how runs execute: the same for every run of one submission."""

    runs_dir: str
    tracking_uri: str
    weights_dir: str | None = None
    allow_substitutes: bool = False
    device: str | None = None
    progress: bool = True
    cache_dir: str | None = None  # FID reference statistics; default RUNS/cache
    threads: int | None = None  # torch intra-op threads per job (local workers share the machine's cores)

    @property
    def root(self) -> Path:
        return Path(self.runs_dir)

    def tokenizer_dir(self, cfg: TokenizerRunConfig) -> Path:
        return self.root / f"tokenizer-{cfg.hash()}"

    def ar_dir(self, cfg: ARRunConfig) -> Path:
        return self.root / f"ar-{cfg.hash()}"

    @property
    def reference_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else self.root / "cache" / "fid-reference"


# ----------------------------------------------------------------------------------------------------------
# Where each stage's result lives, and whether it is done
# ----------------------------------------------------------------------------------------------------------


def _eval_key(spec: RunSpec, *names: str) -> str:
    return _short_hash({n: getattr(spec.eval, n) for n in names})


def _probe_key(spec: RunSpec) -> str:
    """The probe stages' key: the protocol joins it only when it is not the default (old results keep their names)."""
    probe = spec.eval.probe
    extra = {} if probe == ProbeConfig() else {"probe": dataclasses.asdict(probe)}
    return _short_hash({"probe_max_iter": spec.eval.probe_max_iter, **extra})


def tokenizer_dir_of(spec: RunSpec, ctx: RunContext) -> Path:
    """The tokenizer run directory a spec evaluates: the trained tokenizer's, or that of its snapshot."""
    from gigatok.train.tokenizer_loop import snapshot_dir

    base = ctx.tokenizer_dir(spec.tokenizer)
    return base if spec.tokenizer_snapshot is None else snapshot_dir(base, spec.tokenizer_snapshot)


def ar_dir_of(spec: RunSpec, ctx: RunContext) -> Path:
    """The AR run directory of a spec: one per AR config and tokenizer snapshot."""
    assert spec.ar is not None
    base = ctx.ar_dir(spec.ar)
    return base if spec.tokenizer_snapshot is None else base.with_name(f"{base.name}-epoch-{spec.tokenizer_snapshot:g}")


def generation_eval(spec: RunSpec, ctx: RunContext) -> EvalConfig | None:
    """The settings the generation stage samples with: the run's own, or with the cfg_search stage the best
    point its search found (None until that search has finished)."""
    if "cfg_search" not in spec.stages:
        return spec.eval
    path = stage_result_path(spec, ctx, "cfg_search")
    if not path.is_file():
        return None
    best = _read_result(path)
    return dataclasses.replace(spec.eval, cfg_scale=best["best_scale"], step_fraction=best["best_step_fraction"],
                               cfg_schedule=best["schedule"])


def stage_result_path(spec: RunSpec, ctx: RunContext, stage: str) -> Path:
    """The file whose presence means ``stage`` of ``spec`` is complete."""
    if stage == "tokenizer":
        return ctx.tokenizer_dir(spec.tokenizer) / "summary.json"  # the whole schedule, snapshots included
    if stage == "token_cache":
        return tokenizer_dir_of(spec, ctx) / "token_cache" / "val.pt"  # with the training split's file beside it
    if stage == "reconstruction":
        key = _eval_key(spec, "recon_images", "inception_input")
        return tokenizer_dir_of(spec, ctx) / "eval" / f"reconstruction-{key}.json"
    if stage == "tokenizer_probe":
        return tokenizer_dir_of(spec, ctx) / "eval" / f"probe-{_probe_key(spec)}.json"
    if stage == "feature_pca":
        key = _eval_key(spec, "pca_images", "pca_class")
        return tokenizer_dir_of(spec, ctx) / "eval" / f"feature-pca-{key}.json"
    assert spec.ar is not None, stage
    if stage == "ar":
        return ar_dir_of(spec, ctx) / "summary.json"
    if stage == "cfg_search":
        from gigatok.cfg_search import SearchPlan

        return SearchPlan.for_run(spec, ctx).result_path
    if stage == "generation":
        e = generation_eval(spec, ctx)
        if e is None:  # sampled at the point the search will choose: no result can exist yet
            return ar_dir_of(spec, ctx) / "eval" / "generation-after-cfg-search.json"
        payload = {n: getattr(e, n) for n in ("gen_samples", "reference_images", "inception_input",
                   "cfg_scale", "cfg_schedule", "step_fraction", "temperature", "top_k", "top_p")}
        # Settings added later join the key only when set, so earlier results keep their names.
        if e.gen_reference != "val":
            payload["gen_reference"] = e.gen_reference
        if e.cfg_step_rule != "workbench":
            payload["cfg_step_rule"] = e.cfg_step_rule
        key = _short_hash(payload)
        return ar_dir_of(spec, ctx) / "eval" / f"generation-{key}.json"
    if stage == "ar_probe":
        return ar_dir_of(spec, ctx) / "eval" / f"probe-{_probe_key(spec)}.json"
    if stage == "decode_cost":
        key = _eval_key(spec, "batch_size", "cfg_scale", "cfg_schedule")
        return ar_dir_of(spec, ctx) / "eval" / f"decode-cost-{key}.json"
    raise ValueError(f"unknown stage {stage!r}")


def completed_stages(spec: RunSpec, ctx: RunContext) -> list[str]:
    """Stages of ``spec`` whose results are on disk (a dry run shows these as done)."""
    done = []
    for stage in spec.ordered_stages():
        path = stage_result_path(spec, ctx, stage)
        if stage == "token_cache":
            from gigatok.token_cache import cache_path

            assert spec.ar is not None
            train = cache_path(tokenizer_dir_of(spec, ctx), "train", spec.ar.train.views)
            done_here = path.is_file() and train.is_file()
        else:
            done_here = path.is_file()
        if done_here:
            done.append(stage)
    return done


@contextlib.contextmanager
def stage_lock(path: Path) -> Iterator[None]:
    """An exclusive lock beside a stage's result: a second process waits, then finds the stage done."""
    lock_path = path.parent / f".{path.stem}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_result(path: Path, result: dict[str, Any]) -> None:
    from gigatok.io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)


def _read_result(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------------------
# Executing a run
# ----------------------------------------------------------------------------------------------------------


@dataclass
class StageOutcome:
    stage: str
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    records: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # training curves
    substitutes: list[str] = field(default_factory=list)


class _Workspace:
    """Per-process objects that the stages of every run in a job share (the Inception and LPIPS networks).

    The LPIPS network of the metrics is :class:`gigatok.perceptual.LPIPSUnavailable` where the vgg16 file is missing
    and no substitute was asked for.
    """

    def __init__(self, ctx: RunContext) -> None:
        import torch

        self.ctx = ctx
        self.device = torch.device(ctx.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._networks: dict[int, Any] = {}
        self._perceptual: Any = None

    def perceptual(self) -> Any:
        from gigatok.perceptual import PerceptualLoss, lpips_for_metrics

        if self._perceptual is None:
            network = lpips_for_metrics(self.ctx.weights_dir, self.ctx.allow_substitutes)
            self._perceptual = network.to(self.device) if isinstance(network, PerceptualLoss) else network
        return self._perceptual

    def feature_network(self, input_size: int) -> Any:
        from gigatok.metrics.features import load_feature_network

        if input_size not in self._networks:
            self._networks[input_size] = load_feature_network(
                "auto", self.ctx.weights_dir, device=self.device, input_size=input_size
            )
        return self._networks[input_size]


@functools.cache
def workspace_for(ctx: RunContext) -> _Workspace:
    """One workspace per process and context: a job's runs load each network once."""
    return _Workspace(ctx)


def _val_subset(spec: RunSpec, count: int | None, split: str = "val") -> tuple[Any, str]:
    """The first ``count`` images of ``split`` and the description every FID records (and caches under)."""
    from torch.utils.data import Subset

    from gigatok.data import build_dataset
    from gigatok.metrics.images import describe_dataset

    tok = spec.tokenizer
    val = build_dataset(tok.data, split, tok.tokenizer.image_size, seed=tok.train.seed)
    description = describe_dataset(val)
    if count is not None and count < len(val):
        return Subset(val, range(count)), f"first {count} of {description}"
    return val, description


def generation_reference(spec: RunSpec, ctx: RunContext, network: Any, e: EvalConfig) -> Any:
    """The summary gFID, precision and recall are scored against (``eval.gen_reference``), cached in
    ``ctx.reference_dir``; its description names the data (and for ADM's file, the file's sha256)."""
    from gigatok.metrics.generation import ADM_REFERENCE, adm_reference_summary, reference_summary

    if e.gen_reference == "adm":
        from gigatok.weights import file_sha256, resolve_weight

        path = resolve_weight(ADM_REFERENCE, ctx.weights_dir)
        return adm_reference_summary(path, network, sha256=file_sha256(path), cache_dir=ctx.reference_dir,
                                     batch_size=e.batch_size, progress=ctx.progress)
    images, description = _val_subset(spec, e.reference_images, split=e.gen_reference)
    return reference_summary(images, network, description, cache_dir=ctx.reference_dir, batch_size=e.batch_size,
                             progress=ctx.progress)


def _save_grid(images: Any, path: Path, nrow: int = 8) -> Path:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((images.float().clamp(-1, 1) + 1) / 2, path, nrow=nrow)
    return path


def _provenance_tag(provenance: dict[str, Any], samples: str, reference: str) -> str:
    network = provenance["feature_network"]
    return (f"{network['registry_name']} ({network['title']}), {provenance['inception_input_size']} px, "
            f"{samples} vs {reference}")


def _result_files(path: Path) -> list[Path]:
    """A stage's result JSON and, when the stage drew one, its image grid beside it."""
    grid = path.with_suffix(".png")
    return [path, grid] if grid.is_file() else [path]


def _probe_outcome(stage: str, path: Path) -> StageOutcome:
    """A linear-probe stage's metric (``<stage>_acc``) and what was probed, from its stored result."""
    probe = _read_result(path)
    metric = f"{stage}_acc"
    how = f"{probe['features']}; {probe['method']}" if "method" in probe else probe["features"]
    return StageOutcome(stage, {metric: probe["accuracy"]}, {f"gigatok.provenance.{metric}": how}, [path])


class StageRunner:
    """Runs the stages of one spec; each method returns a :class:`StageOutcome` read from or written to disk."""

    def __init__(self, spec: RunSpec, ctx: RunContext, workspace: _Workspace, log_fn: Any = None,
                 run_id: str | None = None) -> None:
        self.spec, self.ctx, self.ws = spec, ctx, workspace
        self.log_fn = log_fn  # (stage, step, values) for live training curves
        self.run_id = run_id  # the MLflow run (the parent of a CFG search's trial runs); None: not tracked

    @property
    def tok_dir(self) -> Path:
        return tokenizer_dir_of(self.spec, self.ctx)

    @property
    def train_dir(self) -> Path:
        """Where the tokenizer trains (the same as ``tok_dir`` unless the spec evaluates a snapshot)."""
        return self.ctx.tokenizer_dir(self.spec.tokenizer)

    @property
    def ar_dir(self) -> Path:
        assert self.spec.ar is not None
        return ar_dir_of(self.spec, self.ctx)

    def run(self, stage: str) -> StageOutcome:
        path = stage_result_path(self.spec, self.ctx, stage)
        if stage in TRAINING_STAGES:  # the loops resume and skip by themselves, and take their own care of ranks
            return getattr(self, f"_{stage}")()
        with stage_lock(path):
            return getattr(self, f"_{stage}")()

    # -- training ---------------------------------------------------------------------------------------------
    def _tokenizer(self) -> StageOutcome:
        if self.spec.tokenizer.source:  # released weights: converted into the stage folder, never trained
            return self._converted("tokenizer", self.spec.tokenizer, self.train_dir)
        from gigatok.train.run_dir import read_metrics
        from gigatok.train.tokenizer_loop import train_tokenizer

        def log(step: int, values: dict[str, float]) -> None:
            if self.log_fn is not None:
                self.log_fn("tokenizer", step, values)

        result = train_tokenizer(
            self.spec.tokenizer, self.train_dir, weights_dir=self.ctx.weights_dir,
            allow_substitutes=self.ctx.allow_substitutes, device=self.ws.device, progress=self.ctx.progress,
            log_fn=log,
        )
        if not result.finished:
            raise RuntimeError(f"tokenizer stopped at step {result.steps} before the end of its schedule")
        records = [(r["step"], {k: v for k, v in r.items() if k not in ("step", "substitutes")})
                   for r in read_metrics(self.train_dir)]
        if not (self.tok_dir / "summary.json").is_file():
            raise RuntimeError(f"tokenizer finished without its snapshot at epoch {self.spec.tokenizer_snapshot:g} "
                               f"({self.tok_dir})")
        # The perceptual term trained with, or why there was none (also the param tokenizer.loss.perceptual).
        tags = {"gigatok.perceptual": result.perceptual} if result.perceptual else {}
        return StageOutcome("tokenizer", {}, tags, records=records, substitutes=list(result.substitutes))

    def _token_cache(self) -> StageOutcome:
        from gigatok.token_cache import build_token_cache

        assert self.spec.ar is not None
        for split in ("train", "val"):
            build_token_cache(self.tok_dir, split, views=self.spec.ar.train.views, device=self.ws.device,
                              progress=self.ctx.progress)
        return StageOutcome("token_cache", {})

    def _ar(self) -> StageOutcome:
        from gigatok.train.ar_loop import train_ar
        from gigatok.train.run_dir import read_metrics

        assert self.spec.ar is not None
        if self.spec.ar.source:
            return self._converted("ar", self.spec.ar, self.ar_dir)

        def log(step: int, values: dict[str, float]) -> None:
            if self.log_fn is not None:
                self.log_fn("ar", step, values)

        result = train_ar(self.spec.ar, self.ar_dir, self.tok_dir, device=self.ws.device,
                          progress=self.ctx.progress, log_fn=log)
        if not result.finished:
            raise RuntimeError(f"AR model stopped at step {result.steps} before the end of its schedule")
        records = [(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in read_metrics(self.ar_dir)]
        return StageOutcome("ar", {"ar_val_loss": float(result.val_loss)}, records=records)

    def _converted(self, kind: Any, cfg: Any, run_dir: Path) -> StageOutcome:
        """A released checkpoint's stage: its folder converted from the file the config's ``source`` names."""
        from gigatok.convert.released import install, source_tags
        from gigatok.distributed import barrier, init_distributed, is_main

        env = init_distributed(self.ws.device.type)
        origin = install(kind, cfg, run_dir, self.ctx.weights_dir) if is_main(env) else None
        barrier(env)  # the other ranks read the folder rank 0 wrote
        if origin is None:
            origin = json.loads((run_dir / "converted.json").read_text())
        return StageOutcome(kind, {}, source_tags(kind, origin), [run_dir / "converted.json"])

    # -- evaluation -------------------------------------------------------------------------------------------
    def _reconstruction(self) -> StageOutcome:
        path = stage_result_path(self.spec, self.ctx, "reconstruction")
        if not path.is_file():
            import torch

            from gigatok.metrics.reconstruction import evaluate_reconstruction
            from gigatok.train.tokenizer_loop import load_trained_tokenizer

            e = self.spec.eval
            tokenizer = load_trained_tokenizer(self.tok_dir, self.ws.device)
            val, description = _val_subset(self.spec, e.recon_images)
            result = evaluate_reconstruction(
                tokenizer, val, batch_size=e.batch_size, description=description,
                feature_network=self.ws.feature_network(e.inception_input), perceptual=self.ws.perceptual(),
                reference_cache_dir=self.ctx.reference_dir,
                progress=self.ctx.progress,
            )
            if e.grid_images:
                n = min(e.grid_images, len(val))
                originals = torch.stack([val[i][0] for i in range(n)]).to(self.ws.device)
                with torch.no_grad():
                    recon = tokenizer.decode(tokenizer.encode(originals).quantized)
                grid = torch.stack([originals, recon], dim=1).flatten(0, 1).cpu()
                _save_grid(grid, path.with_suffix(".png"), nrow=8)
            _write_result(path, result)
        result = _read_result(path)
        prov = result["provenance"]
        metrics = {k: result[k] for k in STAGE_METRICS["reconstruction"] if result.get(k) is not None}
        tags = {
            "gigatok.provenance.rfid": _provenance_tag(prov["rfid"], "reconstructions", prov["rfid"]["reference"][
                "description"]) if "rfid" in prov else "not computed",
            # the network, or "unavailable (<why>)" where no LPIPS was computed (then no lpips metric is logged)
            "gigatok.provenance.lpips": result["lpips_network"],
        }
        subs = [result["lpips_network"]] if prov["lpips"]["substitute"] else []
        return StageOutcome("reconstruction", metrics, tags, _result_files(path), substitutes=subs)

    def _tokenizer_probe(self) -> StageOutcome:
        path = stage_result_path(self.spec, self.ctx, "tokenizer_probe")
        if not path.is_file():
            from gigatok.data import build_dataset
            from gigatok.metrics.linear_probe import linear_probe, tokenizer_features
            from gigatok.train.tokenizer_loop import load_trained_tokenizer

            tok = self.spec.tokenizer
            tokenizer = load_trained_tokenizer(self.tok_dir, self.ws.device)
            train = build_dataset(tok.data, "train", tok.tokenizer.image_size, seed=tok.train.seed)
            val = build_dataset(tok.data, "val", tok.tokenizer.image_size, seed=tok.train.seed)
            features = "tokenizer encoder output (mean over tokens, before quantization)"
            if self.spec.eval.probe.method == "lars":
                from gigatok.metrics.linear_probe import lars_probe_on_images, tokenizer_feature_fn

                probe = lars_probe_on_images(self.spec.eval.probe, tokenizer_feature_fn(tokenizer), train, val,
                                             features, batch_size=self.spec.eval.batch_size,
                                             num_workers=tok.data.num_workers)
            else:
                probe = linear_probe(tokenizer_features(tokenizer, train), tokenizer_features(tokenizer, val),
                                     features=features, max_iter=self.spec.eval.probe_max_iter)
            _write_result(path, dataclasses.asdict(probe))
        return _probe_outcome("tokenizer_probe", path)

    def _feature_pca(self) -> StageOutcome:
        path = stage_result_path(self.spec, self.ctx, "feature_pca")
        arrays = path.with_suffix(".npz")
        if not path.is_file():
            import torch

            from gigatok.feature_pca import class_group, decoder_feature_pca, labels_of
            from gigatok.train.tokenizer_loop import load_trained_tokenizer

            e = self.spec.eval
            val, description = _val_subset(self.spec, None)
            class_index, members = class_group(labels_of(val), e.pca_images, e.pca_class)
            images = torch.stack([val[i][0] for i in members]).to(self.ws.device)
            tokenizer = load_trained_tokenizer(self.tok_dir, self.ws.device)
            pca = decoder_feature_pca(tokenizer, images, class_index)
            pca.save(arrays)
            _write_result(path, {
                "class_index": class_index, "images": len(members), "dataset": description, "layer": pca.layer,
                "explained_variance_ratio": pca.explained_variance_ratio.tolist(), "arrays": arrays.name,
            })
        result = _read_result(path)
        tags = {"gigatok.artifact.feature_pca": f"eval/feature_pca/{arrays.name}",
                "gigatok.provenance.feature_pca_variance":
                    f"decoder layer {result['layer']}, {result['images']} images of class {result['class_index']} "
                    f"of {result['dataset']}"}
        return StageOutcome("feature_pca", {"feature_pca_variance": float(sum(result["explained_variance_ratio"]))},
                            tags, [path, arrays])

    def _cfg_search(self) -> StageOutcome:
        from gigatok.cfg_search import SearchPlan, run_here, sync_records

        plan = SearchPlan.for_run(self.spec, self.ctx, parent_run_id=self.run_id)
        if plan.result_path.is_file():
            sync_records(plan)  # the trial runs under this run, when another run's search did the work
        else:
            # One worker in this process; a search started (or finished) by the cfg_search CLI resumes here. The
            # best point goes to the parent run with this stage's metrics, not from inside the search.
            run_here(plan, workspace=self.ws, record_parent=False,
                     log=lambda line: print(f"cfg_search: {line}", flush=True))
        best = _read_result(plan.result_path)
        metrics = {"cfg_best_scale": best["best_scale"], "cfg_best_gfid": best["best_gfid"]}
        if best.get("fractions"):
            metrics["cfg_best_step_fraction"] = best["best_step_fraction"]
        tags = {"gigatok.cfg_search": plan.study_name, "gigatok.cfg_schedule": plan.schedule}
        return StageOutcome("cfg_search", metrics, tags, [plan.result_path])

    def _generation(self) -> StageOutcome:
        path = stage_result_path(self.spec, self.ctx, "generation")
        if not path.is_file():
            import torch

            from gigatok.generation import generate_batches
            from gigatok.metrics.generation import evaluate_generation
            from gigatok.sampling import SamplingConfig
            from gigatok.train.ar_loop import load_trained_ar
            from gigatok.train.tokenizer_loop import load_trained_tokenizer

            e = generation_eval(self.spec, self.ctx)
            if e is None:
                raise RuntimeError("generation needs the best CFG scale, but the cfg_search stage has not finished")
            network = self.ws.feature_network(e.inception_input)
            reference = generation_reference(self.spec, self.ctx, network, e)
            ar = load_trained_ar(self.ar_dir, self.ws.device)
            tokenizer = load_trained_tokenizer(self.tok_dir, self.ws.device)
            sampling = SamplingConfig(e.cfg_scale, e.cfg_schedule, e.step_fraction, e.temperature, e.top_k, e.top_p,
                                      step_rule=e.cfg_step_rule)
            grid: list[Any] = []

            def samples() -> Iterator[Any]:
                for images, _labels in generate_batches(ar, tokenizer, e.gen_samples, sampling, e.batch_size,
                                                        seed=self.spec.ar.train.seed):
                    if sum(len(g) for g in grid) < e.grid_images:
                        grid.append(images[: e.grid_images].cpu())
                    yield images

            result = evaluate_generation(
                samples(), reference, network,
                samples_description=f"{e.gen_samples} samples of AR-{self.spec.ar.size} on tokenizer "
                f"{self.spec.tokenizer.hash()}, cfg {e.cfg_scale} ({e.cfg_schedule})",
                batch_size=e.batch_size, progress=self.ctx.progress,
            )
            result["sampling"] = dataclasses.asdict(sampling)
            if grid:
                _save_grid(torch.cat(grid)[: e.grid_images], path.with_suffix(".png"), nrow=8)
            _write_result(path, result)
        result = _read_result(path)
        metrics = {"gfid": result["fid"], "inception_score": result["inception_score"],
                   "precision": result["precision"], "recall": result["recall"]}
        metrics = {k: v for k, v in metrics.items() if v is not None}
        prov = result["provenance"]
        tag = _provenance_tag(prov, prov["samples"]["description"], prov["reference"]["description"])
        tags = {f"gigatok.provenance.{k}": tag for k in ("gfid", "precision", "recall")}
        tags["gigatok.provenance.inception_score"] = (
            tag if result["inception_score"] is not None else str(result["inception_score_note"])
        )
        tags["gigatok.cfg_scale"] = str(result["sampling"]["cfg_scale"])
        return StageOutcome("generation", metrics, tags, _result_files(path))

    def _ar_probe(self) -> StageOutcome:
        path = stage_result_path(self.spec, self.ctx, "ar_probe")
        if not path.is_file():
            import torch

            from gigatok.metrics.linear_probe import ar_features, linear_probe
            from gigatok.token_cache import load_token_cache, view_set
            from gigatok.train.ar_loop import load_trained_ar

            ar = load_trained_ar(self.ar_dir, self.ws.device)
            features = f"AR-{self.spec.ar.size} layer {ar.cfg.depth // 2} (mean over tokens)"
            cfg = self.spec.eval.probe
            if cfg.method == "lars" and cfg.views == "random_crop":
                probe = self._ar_probe_on_images(ar, features)
            else:
                views = self.spec.ar.train.views
                train, val = load_token_cache(self.tok_dir, "train", views), load_token_cache(self.tok_dir, "val")
                train = train.one_view(view_set(views).plain)  # the probe sees each image once, unflipped
                if cfg.method == "lars":
                    from gigatok.metrics.linear_probe import lars_probe

                    as_tensors = [tuple(torch.from_numpy(a).to(self.ws.device) for a in ar_features(ar, cache))
                                  for cache in (train, val)]
                    probe = lars_probe(as_tensors[0], as_tensors[1], features, cfg, num_classes=ar.cfg.num_classes)
                else:
                    probe = linear_probe(ar_features(ar, train), ar_features(ar, val), features=features,
                                         max_iter=self.spec.eval.probe_max_iter)
            _write_result(path, dataclasses.asdict(probe))
        return _probe_outcome("ar_probe", path)

    def _ar_probe_on_images(self, ar: Any, features: str) -> Any:
        """The authors' AR probe: each training step tokenizes fresh random-crop views with the frozen tokenizer."""
        from gigatok.data import build_dataset
        from gigatok.metrics.linear_probe import ar_image_feature_fn, lars_probe_on_images
        from gigatok.train.tokenizer_loop import load_trained_tokenizer

        tok = self.spec.tokenizer
        tokenizer = load_trained_tokenizer(self.tok_dir, self.ws.device)
        train = build_dataset(tok.data, "train", tok.tokenizer.image_size, seed=tok.train.seed)
        val = build_dataset(tok.data, "val", tok.tokenizer.image_size, seed=tok.train.seed)
        return lars_probe_on_images(self.spec.eval.probe, ar_image_feature_fn(tokenizer, ar), train, val, features,
                                    batch_size=self.spec.eval.batch_size, num_workers=tok.data.num_workers)

    def _decode_cost(self) -> StageOutcome:
        path = stage_result_path(self.spec, self.ctx, "decode_cost")
        if not path.is_file():
            from gigatok.generation import decode_cost
            from gigatok.models.ar import build_ar_model
            from gigatok.models.tokenizer import build_tokenizer
            from gigatok.sampling import SamplingConfig

            # Time does not depend on the weights: untrained models of the right shapes measure Table 4.
            assert self.spec.ar is not None
            e = self.spec.eval
            ar = build_ar_model(self.spec.ar.model).to(self.ws.device).eval()
            tokenizer = build_tokenizer(self.spec.tokenizer.tokenizer).to(self.ws.device).eval()
            cost = decode_cost(ar, tokenizer, SamplingConfig(e.cfg_scale, e.cfg_schedule), batch_size=e.batch_size)
            _write_result(path, {"sampling_seconds": cost.sampling_seconds, "decoding_seconds": cost.decoding_seconds,
                                 "decode_fraction": cost.decode_fraction, "device": str(self.ws.device),
                                 "batch_size": e.batch_size, "weights": "untrained (timing only)"})
        result = _read_result(path)
        metrics = {k: result[k] for k in STAGE_METRICS["decode_cost"]}
        return StageOutcome("decode_cost", metrics, {"gigatok.decode_device": result["device"]}, [path])


# ----------------------------------------------------------------------------------------------------------
# A run with its tracking
# ----------------------------------------------------------------------------------------------------------


def execute_run(spec: RunSpec, ctx: RunContext, run_id: str | None, rank: int = 0) -> dict[str, float]:
    """Run every stage of ``spec``, logging to the MLflow run ``run_id`` (rank 0 only); returns its metrics.

    The MLflow run goes RUNNING -> FINISHED, or FAILED with the error in ``gigatok.error`` (and the traceback as
    an artifact) before the exception propagates. Stages already logged to this MLflow run are not logged again;
    a resumed training stage logs only the steps after those already in MLflow, so a metric history never has a
    step twice.
    """
    from gigatok.tracking import RunLogger, connect

    logger = RunLogger(connect(ctx.tracking_uri), run_id) if (run_id is not None and rank == 0) else None
    workspace = workspace_for(ctx)
    logged: set[str] = set()
    last_step: dict[str, int] = {}
    if logger is not None:
        run = logger.client.get_run(run_id)
        logged = {k.removeprefix("gigatok.logged.") for k, v in run.data.tags.items()
                  if k.startswith("gigatok.logged.") and v == "1"}
        for stage in TRAINING_STAGES:
            if stage in spec.stages and stage not in logged:
                last_step[stage] = logger.last_step(f"{stage}/lr")
        # An array task's own id (123_4): sacct reports every task of the array for the bare array id.
        array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        env_job = f"{array_job}_{array_task}" if array_job and array_task else os.environ.get("SLURM_JOB_ID")
        logger.tags({"gigatok.host": os.uname().nodename, **({"gigatok.slurm_job_id": env_job} if env_job else {})})
        if "gigatok.error" in run.data.tags:  # a re-run starts clean; the old traceback stays an artifact
            logger.client.delete_tag(run_id, "gigatok.error")
        logger.set_status("RUNNING")
    stored = dict(last_step)  # the last step of each curve that MLflow held when this process started
    streamed: dict[str, set[int]] = {stage: set() for stage in TRAINING_STAGES}

    def stream(stage: str, step: int, values: dict[str, float]) -> None:
        if logger is not None and step > last_step.get(stage, -1):
            logger.metrics(values, step=step, prefix=f"{stage}/")
            last_step[stage] = step
            streamed[stage].add(step)

    runner = StageRunner(spec, ctx, workspace, log_fn=stream, run_id=logger.run_id if logger is not None else None)
    metrics: dict[str, float] = {}
    substitutes: set[str] = set()
    stage = "start"
    try:
        for stage in spec.ordered_stages():
            if rank != 0 and stage not in TRAINING_STAGES:
                continue
            if logger is not None:
                logger.tags({"gigatok.stage": stage})
            outcome = runner.run(stage)
            metrics.update(outcome.metrics)
            substitutes.update(outcome.substitutes)
            if logger is None or stage in logged:
                continue
            # Curves: whatever MLflow lacks, i.e. what neither an earlier process stored nor this one streamed: a
            # stage finished by another run or process, or the steps a killed process still held in RunLogger's
            # buffer (up to its last few seconds, possibly before the checkpoint this process resumed from).
            missing = [(s, v) for s, v in outcome.records
                       if s > stored.get(stage, -1) and s not in streamed.get(stage, ())]
            logger.metric_records(missing, prefix=f"{stage}/")
            logger.metrics(outcome.metrics)
            for artifact in outcome.artifacts:
                logger.artifact(artifact, f"eval/{stage}" if artifact.suffix != ".png" else "images")
            tags = dict(outcome.tags)
            if substitutes:
                tags["gigatok.substitutes"] = ",".join(sorted(substitutes))
            tags[f"gigatok.logged.{stage}"] = "1"
            logger.flush()
            logger.tags(tags)  # the "logged" tag goes last: a crash before it means the stage is logged again
    except BaseException as exc:
        if logger is not None:
            reason = f"{stage}: {type(exc).__name__}: {exc}".splitlines()[0][:1000]
            with contextlib.suppress(Exception):
                logger.tags({"gigatok.error": reason, "gigatok.failed_stage": stage})
                error_file = (ctx.root / "errors" / f"{spec.hash}.txt")
                error_file.parent.mkdir(parents=True, exist_ok=True)
                error_file.write_text(traceback.format_exc())
                logger.artifact(error_file, "errors")
                status = "KILLED" if isinstance(exc, KeyboardInterrupt | SystemExit) else "FAILED"
                logger.set_status(status)
        raise
    if logger is not None:
        logger.tags({"gigatok.stage": "done"})
        logger.set_status("FINISHED")
    return metrics
