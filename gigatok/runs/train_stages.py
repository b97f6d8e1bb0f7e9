"""The training stages: the tokenizer, its token cache, and the AR probe trained on that cache.

Training stages run on every process of a multi-process (DDP) job. They take no stage lock: the training loops
resume from the newest checkpoint on disk and skip what is finished by themselves, and take their own care of
ranks. A config with a ``source`` is a released checkpoint: converted into the stage's folder, never trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gigatok import tracking_schema as schema
from gigatok.runs.context import Stage, StageContext, StageOutcome
from gigatok.runs.layout import ar_dir_of, tokenizer_dir_of
from gigatok.runs.spec import RunContext, RunSpec


def tokenizer_result_path(spec: RunSpec, ctx: RunContext) -> Path:
    return ctx.tokenizer_dir(spec.tokenizer) / "summary.json"  # the whole schedule, snapshots included


def train_tokenizer_stage(sc: StageContext) -> StageOutcome:
    if sc.spec.tokenizer.source:
        return converted_stage(sc, "tokenizer", sc.spec.tokenizer, sc.train_dir)
    from gigatok.train.run_dir import read_metrics
    from gigatok.train.tokenizer_loop import train_tokenizer

    result = train_tokenizer(
        sc.spec.tokenizer,
        sc.train_dir,
        weights_dir=sc.ctx.weights_dir,
        allow_substitutes=sc.ctx.allow_substitutes,
        device=sc.workspace.device,
        progress=sc.ctx.progress,
        log_fn=lambda step, values: sc.curve("tokenizer", step, values),
    )
    if not result.finished:
        raise RuntimeError(f"tokenizer stopped at step {result.steps} before the end of its schedule")
    records = [
        (r["step"], {k: v for k, v in r.items() if k not in ("step", "substitutes")})
        for r in read_metrics(sc.train_dir)
    ]
    if not (sc.tok_dir / "summary.json").is_file():
        raise RuntimeError(
            f"tokenizer finished without its snapshot at epoch {sc.spec.tokenizer_snapshot:g} ({sc.tok_dir})"
        )
    # The perceptual term trained with, or why there was none (also the param tokenizer.loss.perceptual).
    tags = {schema.PERCEPTUAL: result.perceptual} if result.perceptual else {}
    return StageOutcome("tokenizer", {}, tags, records=records, substitutes=list(result.substitutes))


def token_cache_result_path(spec: RunSpec, ctx: RunContext) -> Path:
    return tokenizer_dir_of(spec, ctx) / "token_cache" / "val.pt"  # with the training split's file beside it


def token_cache_stage(sc: StageContext) -> StageOutcome:
    from gigatok.token_cache import build_token_cache

    assert sc.spec.ar is not None
    for split in ("train", "val"):
        build_token_cache(
            sc.tok_dir, split, views=sc.spec.ar.train.views, device=sc.workspace.device, progress=sc.ctx.progress
        )
    return StageOutcome("token_cache", {})


def ar_result_path(spec: RunSpec, ctx: RunContext) -> Path:
    return ar_dir_of(spec, ctx) / "summary.json"


def train_ar_stage(sc: StageContext) -> StageOutcome:
    from gigatok.train.ar_loop import train_ar
    from gigatok.train.run_dir import read_metrics

    assert sc.spec.ar is not None
    if sc.spec.ar.source:
        return converted_stage(sc, "ar", sc.spec.ar, sc.ar_dir)
    result = train_ar(
        sc.spec.ar,
        sc.ar_dir,
        sc.tok_dir,
        device=sc.workspace.device,
        progress=sc.ctx.progress,
        log_fn=lambda step, values: sc.curve("ar", step, values),
    )
    if not result.finished:
        raise RuntimeError(f"AR model stopped at step {result.steps} before the end of its schedule")
    assert result.val_loss is not None  # a finished run has measured it
    records = [(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in read_metrics(sc.ar_dir)]
    return StageOutcome("ar", {"ar_val_loss": float(result.val_loss)}, records=records)


def converted_stage(sc: StageContext, kind: Any, cfg: Any, run_dir: Path) -> StageOutcome:
    """A released checkpoint's stage: its folder converted from the file the config's ``source`` names."""
    from gigatok.convert.released import install, source_tags
    from gigatok.distributed import barrier, init_distributed, is_main

    env = init_distributed(sc.workspace.device.type)
    origin = install(kind, cfg, run_dir, sc.ctx.weights_dir) if is_main(env) else None
    barrier(env)  # the other ranks read the folder rank 0 wrote
    if origin is None:
        origin = json.loads((run_dir / "converted.json").read_text())
    return StageOutcome(kind, {}, source_tags(kind, origin), [run_dir / "converted.json"])


TOKENIZER = Stage("tokenizer", tokenizer_result_path, train_tokenizer_stage)
TOKEN_CACHE = Stage("token_cache", token_cache_result_path, token_cache_stage)
AR = Stage("ar", ar_result_path, train_ar_stage)
