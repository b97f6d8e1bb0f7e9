"""The generation stage: gFID, IS, precision and recall of samples of the trained AR model.

The stage samples at given settings (an :class:`EvalConfig`): the run's own, or with the ``cfg_search`` stage the
best point its search found; the registry (:mod:`gigatok.runs.stages`) supplies them. A CFG search scores its trials
through :func:`generation_at` as well, so a trial's full-budget result is the very file the run's generation stage
reads at the best point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gigatok import tracking_schema as schema
from gigatok.config import EvalConfig
from gigatok.runs.context import StageContext, StageOutcome
from gigatok.runs.eval_stages import provenance_tag
from gigatok.runs.layout import ar_dir_of, read_result, result_files, save_grid, val_subset, write_result
from gigatok.runs.spec import RunContext, RunSpec, short_hash


def generation_result_path(spec: RunSpec, ctx: RunContext, e: EvalConfig | None) -> Path:
    """The generation stage's result when sampling at ``e``; None: at a point a CFG search has yet to choose."""
    if e is None:  # no result can exist yet
        return ar_dir_of(spec, ctx) / "eval" / "generation-after-cfg-search.json"
    payload = {
        n: getattr(e, n)
        for n in (
            "gen_samples",
            "reference_images",
            "inception_input",
            "cfg_scale",
            "cfg_schedule",
            "step_fraction",
            "temperature",
            "top_k",
            "top_p",
        )
    }
    # Settings added later join the key only when set, so earlier results keep their names.
    if e.gen_reference != "val":
        payload["gen_reference"] = e.gen_reference
    if e.cfg_step_rule != "workbench":
        payload["cfg_step_rule"] = e.cfg_step_rule
    return ar_dir_of(spec, ctx) / "eval" / f"generation-{short_hash(payload)}.json"


def generation_reference(spec: RunSpec, ctx: RunContext, network: Any, e: EvalConfig) -> Any:
    """The summary gFID, precision and recall are scored against (``eval.gen_reference``), cached in
    ``ctx.reference_dir``; its description names the data (and for ADM's file, the file's sha256)."""
    from gigatok.metrics.generation import ADM_REFERENCE, adm_reference_summary, reference_summary

    if e.gen_reference == "adm":
        from gigatok.weights import file_sha256, resolve_weight

        path = resolve_weight(ADM_REFERENCE, ctx.weights_dir)
        return adm_reference_summary(
            path,
            network,
            sha256=file_sha256(path),
            cache_dir=ctx.reference_dir,
            batch_size=e.batch_size,
            progress=ctx.progress,
        )
    images, description = val_subset(spec, e.reference_images, split=e.gen_reference)
    return reference_summary(
        images, network, description, cache_dir=ctx.reference_dir, batch_size=e.batch_size, progress=ctx.progress
    )


def generation_at(
    sc: StageContext, e: EvalConfig | None, on_features: Callable[[Any], None] | None = None
) -> StageOutcome:
    """The generation stage sampling at ``e``: sampled and scored unless its result is on disk, then read back.

    ``on_features`` sees the Inception features of each batch of samples on their way into the statistics (the
    CFG search scores its small budget from them). The caller holds the stage lock.
    """
    path = generation_result_path(sc.spec, sc.ctx, e)
    if not path.is_file():
        import torch

        from gigatok.generation import generate_batches
        from gigatok.metrics.generation import evaluate_generation
        from gigatok.sampling import SamplingConfig
        from gigatok.train.trained import load_trained_ar, load_trained_tokenizer

        if e is None:
            raise RuntimeError("generation needs the best CFG scale, but the cfg_search stage has not finished")
        assert sc.spec.ar is not None
        ws = sc.workspace
        network = ws.feature_network(e.inception_input)
        reference = generation_reference(sc.spec, sc.ctx, network, e)
        ar = load_trained_ar(sc.ar_dir, ws.device)
        tokenizer = load_trained_tokenizer(sc.tok_dir, ws.device)
        sampling = SamplingConfig(
            e.cfg_scale, e.cfg_schedule, e.step_fraction, e.temperature, e.top_k, e.top_p, step_rule=e.cfg_step_rule
        )
        grid: list[Any] = []
        seed = sc.spec.ar.train.seed  # the sampling seed is the AR run's

        def samples() -> Iterator[Any]:
            for images, _labels in generate_batches(ar, tokenizer, e.gen_samples, sampling, e.batch_size, seed=seed):
                if sum(len(g) for g in grid) < e.grid_images:
                    grid.append(images[: e.grid_images].cpu())
                yield images

        result = evaluate_generation(
            samples(),
            reference,
            network,
            samples_description=f"{e.gen_samples} samples of AR-{sc.spec.ar.size} on tokenizer "
            f"{sc.spec.tokenizer.hash()}, cfg {e.cfg_scale} ({e.cfg_schedule})",
            batch_size=e.batch_size,
            progress=sc.ctx.progress,
            on_features=on_features,
        )
        result["sampling"] = dataclasses.asdict(sampling)
        if grid:
            save_grid(torch.cat(grid)[: e.grid_images], path.with_suffix(".png"), nrow=8)
        write_result(path, result)
    result = read_result(path)
    metrics = {
        "gfid": result["fid"],
        "inception_score": result["inception_score"],
        "precision": result["precision"],
        "recall": result["recall"],
    }
    metrics = {k: v for k, v in metrics.items() if v is not None}
    prov = result["provenance"]
    tag = provenance_tag(prov, prov["samples"]["description"], prov["reference"]["description"])
    tags = {schema.provenance(k): tag for k in ("gfid", "precision", "recall")}
    tags[schema.provenance("inception_score")] = (
        tag if result["inception_score"] is not None else str(result["inception_score_note"])
    )
    tags[schema.CFG_SCALE] = str(result["sampling"]["cfg_scale"])
    return StageOutcome("generation", metrics, tags, result_files(path))
