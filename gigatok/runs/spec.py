"""What a run is: its spec (what to train and how to score it), where runs execute, the stage names and the
metrics each stage reports.

Everything here is identity: :attr:`RunSpec.hash` names a run's MLflow run and is pinned by
``tests/test_run_hashes.py``, so nothing that changes a hash belongs in a refactoring. No torch at import time: the
planner, the dry run and the analysis read these.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from gigatok import tracking_schema as schema
from gigatok.config import (
    ARRunConfig,
    EvalConfig,
    TokenizerRunConfig,
    ar_run_config_from_dict,
    canonical_hash,
    from_dict,
    hashed_fields,
    run_config_from_dict,
)

# The stages in the order a run executes them. A run's hash includes its stage names, so these names are identity;
# they are written once, in the tracking schema (each names its timing metrics); what each stage does is in the
# registry, gigatok.runs.stages.
STAGES = schema.STAGES
TOKENIZER_STAGES = ("tokenizer", "reconstruction", "tokenizer_probe")  # a tokenizer scored on its own
PROBE_STAGES = (*TOKENIZER_STAGES, "token_cache", "ar", "generation", "ar_probe")  # the AR-probing default
# Stages that run on every process of a DDP job, stream training curves, and resume by themselves (no stage lock).
TRAINING_STAGES = ("tokenizer", "ar")
NEEDS_AR = ("token_cache", "ar", "cfg_search", "generation", "ar_probe", "decode_cost")

# Final metrics a run reports, by stage (names as logged to MLflow): the tracking schema's, which the analysis reads.
STAGE_METRICS = schema.STAGE_METRICS


def short_hash(payload: Any) -> str:
    """12 hex digits of the sha256 of ``payload`` as canonical JSON: the names of runs, folders and result files."""
    return canonical_hash(payload)


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
            raise ValueError(
                f"run {self.label}: tokenizer_snapshot {self.tokenizer_snapshot:g} is not one of the "
                f"tokenizer's train.snapshot_epochs {list(snapshots)}"
            )
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
        return short_hash(
            {
                "tokenizer": self.tokenizer.hash(),
                "ar": self.ar.hash() if self.ar is not None else None,
                "eval": self._eval_fields(hashed_fields(self.eval)),
                "stages": sorted(self.stages),
                # only when set, so the hashes of runs of final tokenizers did not change when snapshots came
                **({"tokenizer_snapshot": self.tokenizer_snapshot} if self.tokenizer_snapshot is not None else {}),
            }
        )

    def _eval_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Scoring settings that matter to this run: the CFG-search settings only with the cfg_search stage (so the
        runs of other studies kept their hashes when the search came; rule 2 of gigatok/config.py's
        hash-compatibility rule)."""
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
