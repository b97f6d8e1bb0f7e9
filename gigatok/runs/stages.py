"""The stage registry: every stage a run can have, by name, in the order a run executes them.

    tokenizer        train the tokenizer                      RUNS/tokenizer-<tokenizer hash>/
    token_cache      tokenize train and val once              RUNS/tokenizer-<hash>/token_cache/
    ar               train the AR probe on the token cache     RUNS/ar-<AR hash>/
    reconstruction   rFID, LPIPS, PSNR, SSIM, codebook stats  RUNS/tokenizer-<hash>/eval/reconstruction-<key>.json
    tokenizer_probe  linear probe on the tokenizer encoder     RUNS/tokenizer-<hash>/eval/probe-<key>.json
    feature_pca      PCA of decoder features (Fig. 8)          RUNS/tokenizer-<hash>/eval/feature-pca-<key>.json
    cfg_search       Optuna search of the CFG scale (App. B)   RUNS/ar-<hash>/eval/cfg-search-<key>.json
    generation       gFID, IS, precision, recall of samples    RUNS/ar-<hash>/eval/generation-<key>.json
    ar_probe         linear probe on AR layer n/2              RUNS/ar-<hash>/eval/probe-<key>.json
    decode_cost      Table 4: decoding time / generation time RUNS/ar-<hash>/eval/decode-cost-<key>.json

Each stage's function and result path live in its own module: :mod:`~gigatok.runs.train_stages`,
:mod:`~gigatok.runs.eval_stages`, :mod:`~gigatok.runs.generation_stage`, and the CFG search's own
:mod:`gigatok.cfg_search.stage`. To add a stage: its name (and final metrics) in :mod:`gigatok.runs.spec`, its
module, and one entry in :data:`REGISTRY`.

Because a stage's folder is named by the hash of what it depends on, two runs that share a tokenizer train it once;
a finished stage is never redone; a stage killed half-way resumes from its newest checkpoint. A file lock per
evaluation stage keeps two processes from working on the same result at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from gigatok.cfg_search.stage import CFG_SEARCH, generation_eval
from gigatok.runs.context import Stage, StageContext, StageOutcome
from gigatok.runs.eval_stages import AR_PROBE, DECODE_COST, FEATURE_PCA, RECONSTRUCTION, TOKENIZER_PROBE
from gigatok.runs.generation_stage import generation_at, generation_result_path
from gigatok.runs.layout import stage_lock, tokenizer_dir_of
from gigatok.runs.spec import STAGES, TRAINING_STAGES, RunContext, RunSpec
from gigatok.runs.train_stages import AR, TOKEN_CACHE, TOKENIZER

# The generation stage samples where the run's CFG search (if it has one) says: that wiring is made here, where
# both stages are known, so neither module imports the other.
GENERATION = Stage(
    "generation",
    result_path=lambda spec, ctx: generation_result_path(spec, ctx, generation_eval(spec, ctx)),
    compute=lambda sc: generation_at(sc, generation_eval(sc.spec, sc.ctx)),
)

REGISTRY: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        TOKENIZER,
        TOKEN_CACHE,
        AR,
        RECONSTRUCTION,
        TOKENIZER_PROBE,
        FEATURE_PCA,
        CFG_SEARCH,
        GENERATION,
        AR_PROBE,
        DECODE_COST,
    )
}
if tuple(REGISTRY) != STAGES:  # the names a spec may hold, and their order, are the registry's
    raise RuntimeError(f"stage registry {tuple(REGISTRY)} does not match gigatok.runs.spec.STAGES {STAGES}")


def stage_result_path(spec: RunSpec, ctx: RunContext, stage: str) -> Path:
    """The file whose presence means ``stage`` of ``spec`` is complete."""
    if stage not in REGISTRY:
        raise ValueError(f"unknown stage {stage!r}")
    return REGISTRY[stage].result_path(spec, ctx)


def completed_stages(spec: RunSpec, ctx: RunContext) -> list[str]:
    """Stages of ``spec`` whose results are on disk (a dry run shows these as done)."""
    done = []
    for stage in spec.ordered_stages():
        path = stage_result_path(spec, ctx, stage)
        if stage == "token_cache":  # the val file is the result; the training split's file must be there too
            from gigatok.token_cache import cache_path

            assert spec.ar is not None
            train = cache_path(tokenizer_dir_of(spec, ctx), "train", spec.ar.train.views)
            done_here = path.is_file() and train.is_file()
        else:
            done_here = path.is_file()
        if done_here:
            done.append(stage)
    return done


def run_stage(stage: str, sc: StageContext) -> StageOutcome:
    """Compute (or read back) one stage of ``sc.spec`` holding its result's lock, so that two jobs needing the same
    stage (two launches of one study) take turns and the second finds it done. Training stages run on every rank of
    a DDP job: each rank locks a file of its own (rank r of one job waits for rank r of the other)."""
    entry = REGISTRY[stage]
    result = entry.result_path(sc.spec, sc.ctx)
    if stage in TRAINING_STAGES:  # the lock beside the run's folder, not in it (a converted run's folder is renamed in)
        with stage_lock(result.parent, rank=int(os.environ.get("RANK", "0"))):
            return entry.compute(sc)
    with stage_lock(result):
        return entry.compute(sc)
