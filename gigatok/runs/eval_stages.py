"""The evaluation stages other than generation: reconstruction, the two linear probes, the decoder-feature PCA and
the decoding cost.

Each computes its result once (under the stage lock, on rank 0), writes it as JSON under its settings key, and
reads its metrics back from that file, so a finished stage logs the same numbers however often it is run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from gigatok import tracking_schema as schema
from gigatok.runs.context import Stage, StageContext, StageOutcome
from gigatok.runs.layout import (
    ar_dir_of,
    eval_key,
    probe_key,
    read_result,
    result_files,
    save_grid,
    tokenizer_dir_of,
    val_subset,
    write_result,
)
from gigatok.runs.spec import RunContext, RunSpec


def provenance_tag(provenance: dict[str, Any], samples: str, reference: str) -> str:
    """The tag that says what an FID compared: the feature network, its input size, and the two image sets."""
    network = provenance["feature_network"]
    return (
        f"{network['registry_name']} ({network['title']}), {provenance['inception_input_size']} px, "
        f"{samples} vs {reference}"
    )


def probe_outcome(stage: str, path: Path) -> StageOutcome:
    """A linear-probe stage's metric (``<stage>_acc``) and what was probed, from its stored result."""
    probe = read_result(path)
    metric = f"{stage}_acc"
    how = f"{probe['features']}; {probe['method']}" if "method" in probe else probe["features"]
    return StageOutcome(stage, {metric: probe["accuracy"]}, {schema.provenance(metric): how}, [path])


# -- reconstruction ---------------------------------------------------------------------------------------------


def reconstruction_result_path(spec: RunSpec, ctx: RunContext) -> Path:
    key = eval_key(spec, "recon_images", "inception_input")
    return tokenizer_dir_of(spec, ctx) / "eval" / f"reconstruction-{key}.json"


def reconstruction_stage(sc: StageContext) -> StageOutcome:
    path = reconstruction_result_path(sc.spec, sc.ctx)
    if not path.is_file():
        import torch

        from gigatok.metrics.reconstruction import evaluate_reconstruction
        from gigatok.train.trained import load_trained_tokenizer

        e, ws = sc.spec.eval, sc.workspace
        tokenizer = load_trained_tokenizer(sc.tok_dir, ws.device)
        val, description = val_subset(sc.spec, e.recon_images)
        result = evaluate_reconstruction(
            tokenizer,
            val,
            batch_size=e.batch_size,
            description=description,
            feature_network=ws.feature_network(e.inception_input),
            perceptual=ws.perceptual(),
            reference_cache_dir=sc.ctx.reference_dir,
            progress=sc.ctx.progress,
        )
        if e.grid_images:
            n = min(e.grid_images, len(val))
            originals = torch.stack([val[i][0] for i in range(n)]).to(ws.device)
            with torch.no_grad():
                recon = tokenizer.decode(tokenizer.encode(originals).quantized)
            grid = torch.stack([originals, recon], dim=1).flatten(0, 1).cpu()
            save_grid(grid, path.with_suffix(".png"), nrow=8)
        write_result(path, result)
    result = read_result(path)
    prov = result["provenance"]
    metrics = {k: result[k] for k in schema.STAGE_METRICS["reconstruction"] if result.get(k) is not None}
    tags = {
        schema.provenance("rfid"): provenance_tag(
            prov["rfid"], "reconstructions", prov["rfid"]["reference"]["description"]
        )
        if "rfid" in prov
        else "not computed",
        # the network, or "unavailable (<why>)" where no LPIPS was computed (then no lpips metric is logged)
        schema.provenance("lpips"): result["lpips_network"],
    }
    subs = [result["lpips_network"]] if prov["lpips"]["substitute"] else []
    return StageOutcome("reconstruction", metrics, tags, result_files(path), substitutes=subs)


# -- the tokenizer's linear probe -------------------------------------------------------------------------------


def tokenizer_probe_result_path(spec: RunSpec, ctx: RunContext) -> Path:
    return tokenizer_dir_of(spec, ctx) / "eval" / f"probe-{probe_key(spec)}.json"


def tokenizer_probe_stage(sc: StageContext) -> StageOutcome:
    path = tokenizer_probe_result_path(sc.spec, sc.ctx)
    if not path.is_file():
        from gigatok.data import build_dataset
        from gigatok.metrics.linear_probe import linear_probe, tokenizer_features
        from gigatok.train.trained import load_trained_tokenizer

        tok = sc.spec.tokenizer
        tokenizer = load_trained_tokenizer(sc.tok_dir, sc.workspace.device)
        train = build_dataset(tok.data, "train", tok.tokenizer.image_size, seed=tok.train.seed)
        val = build_dataset(tok.data, "val", tok.tokenizer.image_size, seed=tok.train.seed)
        features = "tokenizer encoder output (mean over tokens, before quantization)"
        if sc.spec.eval.probe.method == "lars":
            from gigatok.metrics.linear_probe import lars_probe_on_images, tokenizer_feature_fn

            probe = lars_probe_on_images(
                sc.spec.eval.probe,
                tokenizer_feature_fn(tokenizer),
                train,
                val,
                features,
                batch_size=sc.spec.eval.batch_size,
                num_workers=tok.data.num_workers,
            )
        else:
            probe = linear_probe(
                tokenizer_features(tokenizer, train),
                tokenizer_features(tokenizer, val),
                features=features,
                max_iter=sc.spec.eval.probe_max_iter,
            )
        write_result(path, dataclasses.asdict(probe))
    return probe_outcome("tokenizer_probe", path)


# -- the decoder-feature PCA (Fig. 8) ---------------------------------------------------------------------------


def feature_pca_result_path(spec: RunSpec, ctx: RunContext) -> Path:
    key = eval_key(spec, "pca_images", "pca_class")
    return tokenizer_dir_of(spec, ctx) / "eval" / f"feature-pca-{key}.json"


def feature_pca_stage(sc: StageContext) -> StageOutcome:
    path = feature_pca_result_path(sc.spec, sc.ctx)
    arrays = path.with_suffix(".npz")
    if not path.is_file():
        import torch

        from gigatok.feature_pca import class_group, decoder_feature_pca, labels_of
        from gigatok.train.trained import load_trained_tokenizer

        e = sc.spec.eval
        val, description = val_subset(sc.spec, None)
        class_index, members = class_group(labels_of(val), e.pca_images, e.pca_class)
        images = torch.stack([val[i][0] for i in members]).to(sc.workspace.device)
        tokenizer = load_trained_tokenizer(sc.tok_dir, sc.workspace.device)
        pca = decoder_feature_pca(tokenizer, images, class_index)
        pca.save(arrays)
        write_result(
            path,
            {
                "class_index": class_index,
                "images": len(members),
                "dataset": description,
                "layer": pca.layer,
                "explained_variance_ratio": pca.explained_variance_ratio.tolist(),
                "arrays": arrays.name,
            },
        )
    result = read_result(path)
    tags = {
        schema.artifact("feature_pca"): f"eval/feature_pca/{arrays.name}",
        schema.provenance(
            "feature_pca_variance"
        ): f"decoder layer {result['layer']}, {result['images']} images of class {result['class_index']} "
        f"of {result['dataset']}",
    }
    return StageOutcome(
        "feature_pca", {"feature_pca_variance": float(sum(result["explained_variance_ratio"]))}, tags, [path, arrays]
    )


# -- the AR model's linear probe --------------------------------------------------------------------------------


def ar_probe_result_path(spec: RunSpec, ctx: RunContext) -> Path:
    return ar_dir_of(spec, ctx) / "eval" / f"probe-{probe_key(spec)}.json"


def ar_probe_stage(sc: StageContext) -> StageOutcome:
    path = ar_probe_result_path(sc.spec, sc.ctx)
    if not path.is_file():
        import torch

        from gigatok.metrics.linear_probe import ar_features, linear_probe
        from gigatok.token_cache import load_token_cache
        from gigatok.token_views import view_set
        from gigatok.train.trained import load_trained_ar

        assert sc.spec.ar is not None
        device = sc.workspace.device
        ar = load_trained_ar(sc.ar_dir, device)
        features = f"AR-{sc.spec.ar.size} layer {ar.cfg.depth // 2} (mean over tokens)"
        cfg = sc.spec.eval.probe
        if cfg.method == "lars" and cfg.views == "random_crop":
            probe = ar_probe_on_images(sc, ar, features)
        else:
            views = sc.spec.ar.train.views
            train, val = load_token_cache(sc.tok_dir, "train", views), load_token_cache(sc.tok_dir, "val")
            train = train.one_view(view_set(views).plain)  # the probe sees each image once, unflipped
            if cfg.method == "lars":
                from gigatok.metrics.linear_probe import lars_probe

                as_tensors = [
                    (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
                    for x, y in (ar_features(ar, cache) for cache in (train, val))
                ]
                probe = lars_probe(as_tensors[0], as_tensors[1], features, cfg, num_classes=ar.cfg.num_classes)
            else:
                probe = linear_probe(
                    ar_features(ar, train),
                    ar_features(ar, val),
                    features=features,
                    max_iter=sc.spec.eval.probe_max_iter,
                )
        write_result(path, dataclasses.asdict(probe))
    return probe_outcome("ar_probe", path)


def ar_probe_on_images(sc: StageContext, ar: Any, features: str) -> Any:
    """The authors' AR probe: each training step tokenizes fresh random-crop views with the frozen tokenizer."""
    from gigatok.data import build_dataset
    from gigatok.metrics.linear_probe import ar_image_feature_fn, lars_probe_on_images
    from gigatok.train.trained import load_trained_tokenizer

    tok = sc.spec.tokenizer
    tokenizer = load_trained_tokenizer(sc.tok_dir, sc.workspace.device)
    train = build_dataset(tok.data, "train", tok.tokenizer.image_size, seed=tok.train.seed)
    val = build_dataset(tok.data, "val", tok.tokenizer.image_size, seed=tok.train.seed)
    return lars_probe_on_images(
        sc.spec.eval.probe,
        ar_image_feature_fn(tokenizer, ar),
        train,
        val,
        features,
        batch_size=sc.spec.eval.batch_size,
        num_workers=tok.data.num_workers,
    )


# -- the decoding cost (Table 4) --------------------------------------------------------------------------------


def decode_cost_result_path(spec: RunSpec, ctx: RunContext) -> Path:
    key = eval_key(spec, "batch_size", "cfg_scale", "cfg_schedule")
    return ar_dir_of(spec, ctx) / "eval" / f"decode-cost-{key}.json"


def decode_cost_stage(sc: StageContext) -> StageOutcome:
    path = decode_cost_result_path(sc.spec, sc.ctx)
    if not path.is_file():
        from gigatok.generation import decode_cost
        from gigatok.models.ar import build_ar_model
        from gigatok.models.tokenizer import build_tokenizer
        from gigatok.sampling import SamplingConfig

        # Time does not depend on the weights: untrained models of the right shapes measure Table 4.
        assert sc.spec.ar is not None
        e, device = sc.spec.eval, sc.workspace.device
        ar = build_ar_model(sc.spec.ar.model).to(device).eval()
        tokenizer = build_tokenizer(sc.spec.tokenizer.tokenizer).to(device).eval()
        cost = decode_cost(ar, tokenizer, SamplingConfig(e.cfg_scale, e.cfg_schedule), batch_size=e.batch_size)
        write_result(
            path,
            {
                "sampling_seconds": cost.sampling_seconds,
                "decoding_seconds": cost.decoding_seconds,
                "decode_fraction": cost.decode_fraction,
                "device": str(device),
                "batch_size": e.batch_size,
                "weights": "untrained (timing only)",
            },
        )
    result = read_result(path)
    metrics = {k: result[k] for k in schema.STAGE_METRICS["decode_cost"]}
    return StageOutcome("decode_cost", metrics, {schema.DECODE_DEVICE: result["device"]}, [path])


RECONSTRUCTION = Stage("reconstruction", reconstruction_result_path, reconstruction_stage)
TOKENIZER_PROBE = Stage("tokenizer_probe", tokenizer_probe_result_path, tokenizer_probe_stage)
FEATURE_PCA = Stage("feature_pca", feature_pca_result_path, feature_pca_stage)
AR_PROBE = Stage("ar_probe", ar_probe_result_path, ar_probe_stage)
DECODE_COST = Stage("decode_cost", decode_cost_result_path, decode_cost_stage)
