"""The authors' released checkpoints as workbench run folders that every later stage accepts.

A converted tokenizer is laid out as a finished tokenizer stage (``config.json``, ``tokenizer.pt``, ``summary.json``),
a converted AR model as a finished AR stage (``config.json``, ``ar.pt``, ``summary.json``), each with
``converted.json``: the original file name, its sha256 and size, and the registry entry it stands for. The run
config's ``source`` field names the released file, so a converted model never shares a folder (a hash) with one the
workbench trained. A folder is written in a temporary sibling and renamed into place: an error leaves nothing.

The architecture comes from the file (the converters infer it from the state dict); the plan says which
architecture it expects (Table 9 / Table 8 sizes at the ``paper`` profile), and a file of any other architecture is
refused. Everything the weights do not determine (loss weights, data, schedule) is the profile's recipe.

The converters are ``gigatok.convert.tokenizer.load_authors_tokenizer`` and ``gigatok.convert.ar.load_authors_ar``;
:data:`LOADERS` replaces them (tests fill it with stand-ins).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gigatok import tracking_schema as schema
from gigatok.config import (
    ARConfig,
    ARRunConfig,
    TokenizerConfig,
    TokenizerRunConfig,
    ar_run,
    get_profile,
    tokenizer_run,
)
from gigatok.convert import ConversionError, first_line

Kind = Literal["tokenizer", "ar"]
RELEASED_PREFIX = "released:"
FILE_PREFIX = "file:"
WEIGHTS_FILE = {"tokenizer": "tokenizer.pt", "ar": "ar.pt"}


@dataclass(frozen=True)
class ReleasedModel:
    """One released checkpoint: ``name`` is its registry name (the file stem in the authors' README)."""

    name: str
    kind: Kind
    size: str  # tokenizer 'ENC-DEC' (Table 9) or AR size (Table 8)
    tokenizer: str = ""  # an AR model's tokenizer (its registry name)
    disc: str = "patchgan"  # the discriminator a tokenizer was trained with (VQ_BL256_dino_disc.yaml: DINO)

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"

    @property
    def source(self) -> str:
        return RELEASED_PREFIX + self.name


RELEASED: dict[str, ReleasedModel] = {
    m.name: m
    for m in (
        ReleasedModel("VQ_SS256_e100", "tokenizer", "S-S"),
        ReleasedModel("VQ_SB256_e200", "tokenizer", "S-B"),
        ReleasedModel("VQ_BL256_e200", "tokenizer", "B-L"),
        ReleasedModel("VQ_BL256_dino_disc", "tokenizer", "B-L", disc="dino"),
        ReleasedModel("VQ_XLXXL256_e300", "tokenizer", "XL-XXL"),
        ReleasedModel("GPT_B256_e300_VQ_SS", "ar", "B", tokenizer="VQ_SS256_e100"),
        ReleasedModel("GPT_B256_e300_VQ_SB", "ar", "B", tokenizer="VQ_SB256_e200"),
        ReleasedModel("GPT_B256_e300_VQ_BL", "ar", "B", tokenizer="VQ_BL256_e200"),
        ReleasedModel("GPT_B256_e300_VQ_BL_dino_disc", "ar", "B", tokenizer="VQ_BL256_dino_disc"),
        ReleasedModel("GPT_B256_e300_VQ_XLXXL", "ar", "B", tokenizer="VQ_XLXXL256_e300"),
        ReleasedModel("GPT_XL256_e300_VQ_BL", "ar", "XL", tokenizer="VQ_BL256_e200"),
        ReleasedModel("GPT_XXL256_e300_VQ_BL", "ar", "XXL", tokenizer="VQ_BL256_e200"),
        ReleasedModel("GPT_XXL256_e300_VQ_XLXXL", "ar", "XXL", tokenizer="VQ_XLXXL256_e300"),
    )
}

# The README's pairs (its two tables), each AR model with the tokenizer it was trained on.
RELEASED_AR_MODELS: tuple[str, ...] = tuple(n for n, m in RELEASED.items() if m.kind == "ar")
# The released AR models trained 300 epochs (the "e300" in their names; the README's GPT-B rows are the probes).
RELEASED_AR_EPOCHS = 300


def released(name: str, kind: Kind | None = None) -> ReleasedModel:
    """The released checkpoint ``name`` (registry name, file name or ``released:`` source)."""
    stem = name.removeprefix(RELEASED_PREFIX).removesuffix(".pt")
    model = RELEASED.get(stem)
    known = [n for n, m in RELEASED.items() if kind is None or m.kind == kind]
    if model is None or (kind is not None and model.kind != kind):
        raise ConversionError(f"{name}: not a released {kind or 'checkpoint'}; known: {', '.join(known)}")
    return model


def released_of(source: str) -> ReleasedModel | None:
    """The released checkpoint a run config's ``source`` names, or None (trained here, or a user's own file)."""
    return RELEASED[source.removeprefix(RELEASED_PREFIX)] if source.startswith(RELEASED_PREFIX) else None


# ----------------------------------------------------------------------------------------------------------
# Planned configs: what a run of a released model is, before its file is read
# ----------------------------------------------------------------------------------------------------------


def released_tokenizer_run(name: str, profile: str = "paper", data_root: str | None = None) -> TokenizerRunConfig:
    """The tokenizer run a released tokenizer stands for: the profile's config of its size, ``source`` set.

    Its objective says what the authors trained with, LPIPS included (``loss.perceptual="lpips"``), whatever this
    machine has: nothing is trained, so the config does not depend on the VGG16 file being here.
    """
    model = released(name, "tokenizer")
    cfg = tokenizer_run(model.size, profile=profile, data_root=data_root)
    return dataclasses.replace(cfg, source=model.source, loss=dataclasses.replace(cfg.loss, perceptual="lpips"))


def released_ar_run(name: str, tokenizer: TokenizerRunConfig) -> ARRunConfig:
    """The AR run a released AR model stands for, on ``tokenizer`` (its released tokenizer, or a conversion of it)."""
    model = released(name, "ar")
    tok_model = released_of(tokenizer.source)
    if tok_model is not None and tok_model.name != model.tokenizer:
        raise ConversionError(
            f"{model.filename}: was trained on the tokens of {model.tokenizer}, not of {tok_model.name}"
        )
    epochs = get_profile(tokenizer.profile).paper_epochs(RELEASED_AR_EPOCHS)
    return dataclasses.replace(ar_run(tokenizer, model.size, epochs=epochs), source=model.source)


# ----------------------------------------------------------------------------------------------------------
# Reading an authors' file
# ----------------------------------------------------------------------------------------------------------

Loader = Callable[[Path], tuple[Any, Mapping[str, Any]]]
# kind -> loader used instead of the project's converter (tests put stand-ins here).
LOADERS: dict[str, Loader] = {}


def loader_for(kind: Kind) -> Loader:
    if kind in LOADERS:
        return LOADERS[kind]
    from gigatok.convert.ar import load_authors_ar
    from gigatok.convert.tokenizer import load_authors_tokenizer

    loaders: dict[str, Loader] = {"tokenizer": load_authors_tokenizer, "ar": load_authors_ar}
    return loaders[kind]


def read_authors(path: Path, kind: Kind, loader: Loader | None = None) -> tuple[Any, dict[str, Any]]:
    """(workbench config, workbench state dict) of an authors' checkpoint; ConversionError names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        config, state = (loader or loader_for(kind))(path)
    except ConversionError as exc:
        message = first_line(exc)
        raise ConversionError(message if path.name in message else f"{path}: {message}") from exc
    except Exception as exc:  # an unreadable or foreign file: name it, on one line
        raise ConversionError(
            f"{path}: not an authors' {kind} checkpoint ({type(exc).__name__}: {first_line(exc)})"
        ) from exc
    expected = TokenizerConfig if kind == "tokenizer" else ARConfig
    if not isinstance(config, expected):
        raise ConversionError(
            f"{path}: the {kind} converter returned a {type(config).__name__}, not a {expected.__name__}"
        )
    return config, dict(state)


# Config fields the weights do not determine: the recipe they were trained with, which the plan (the profile)
# states. Every other field must agree between the file and the plan.
RECIPE_FIELDS = {
    "tokenizer": (
        "name",
        "dropout",
        "semantic.",
        "quantizer.commitment_beta",
        "quantizer.codebook_weight",
        "quantizer.entropy_weight",
        "quantizer.entropy_temperature",
        "quantizer.rotation_trick",
    ),
    "ar": ("dropout", "class_dropout"),
}


# Fields a tokenizer of one kind never reads (gigatok/models/tokenizer.py takes the block layout of its own kind), so
# a converter may fill them either way.
UNUSED_FOR_KIND = {"1d": ("block_2d",), "2d": ("block_1d",)}


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    is_instance = dataclasses.is_dataclass(config) and not isinstance(config, type)
    for key, value in dataclasses.asdict(config).items() if is_instance else config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def architecture_differences(kind: Kind, planned: Any, found: Any) -> list[str]:
    """``field: file X, plan Y`` for every architecture field on which the file and the plan disagree."""
    ignored = RECIPE_FIELDS[kind]
    a, b = _flat(found), _flat(planned)
    if kind == "tokenizer" and a.get("kind") == b.get("kind"):
        ignored += UNUSED_FOR_KIND.get(str(a.get("kind")), ())
    return [
        f"{k}: file {a.get(k)!r}, plan {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if not k.startswith(ignored) and a.get(k) != b.get(k)
    ]


def _build(kind: Kind, config: Any) -> Any:
    """The workbench model of ``config`` on the meta device: its parameter shapes without allocating them."""
    import torch

    build: Callable[[Any], Any]
    if kind == "tokenizer":
        from gigatok.models.tokenizer import build_tokenizer as build
    else:
        from gigatok.models.ar import build_ar_model as build
    with torch.device("meta"):
        return build(config)


def state_differences(expected: Mapping[str, Any], state: Mapping[str, Any]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches of ``state`` against a model's ``expected`` state."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)
    ]
    out = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            out.append(f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    return out


def check_fits(path: Path, kind: Kind, planned: Any, found: Any, state: Mapping[str, Any]) -> None:
    """Refuse a file whose architecture is not the planned one, or whose weights do not fill the planned model."""
    diffs = architecture_differences(kind, planned, found)
    if diffs:
        raise ConversionError(
            f"{path}: holds a {kind} of another architecture than planned ({'; '.join(diffs[:4])}"
            f"{'; ...' if len(diffs) > 4 else ''})"
        )
    problems = state_differences(_build(kind, planned).state_dict(), state)
    if problems:
        raise ConversionError(f"{path}: its weights do not fit the planned {kind}: {'; '.join(problems)}")


# ----------------------------------------------------------------------------------------------------------
# Writing the run folder
# ----------------------------------------------------------------------------------------------------------


def provenance(path: Path, kind: Kind, source: str) -> dict[str, Any]:
    from gigatok.weights import file_sha256

    model = released_of(source)
    return {
        "kind": kind,
        "file": path.name,
        "path": str(path.resolve()),
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "registry": model.name if model else None,
        "source": source,
        "sha256_published": False if model else None,
    }


def finished_conversion(run_dir: Path, config_hash: str) -> dict[str, Any] | None:
    """The provenance of a finished conversion of this very config in ``run_dir``, or None."""
    summary, config = run_dir / "summary.json", run_dir / "config.json"
    if not summary.is_file() or not config.is_file():
        return None
    if json.loads(config.read_text()).get("hash") != config_hash:
        raise ConversionError(
            f"{run_dir}: holds another run ({json.loads(config.read_text()).get('hash')}), not "
            f"{config_hash}; use a fresh folder"
        )
    return json.loads(summary.read_text()).get("converted_from")


def write_run_folder(
    run_dir: Path,
    kind: Kind,
    config: TokenizerRunConfig | ARRunConfig,
    state: Mapping[str, Any],
    origin: dict[str, Any],
) -> Path:
    """A finished stage folder for ``config`` holding ``state``, written in a temporary sibling and renamed."""
    import torch

    from gigatok.io import atomic_write_json

    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConversionError(
            f"{run_dir}: exists and is not a finished conversion of this file; remove it or choose another folder"
        )
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.converting-"))
    try:
        atomic_write_json(tmp / "config.json", {"hash": config.hash(), "config": config.to_dict()})
        with open(tmp / WEIGHTS_FILE[kind], "wb") as f:
            torch.save({k: v.contiguous() for k, v in state.items()}, f)
        atomic_write_json(tmp / "converted.json", origin)
        summary: dict[str, Any] = {"hash": config.hash(), "steps": 0, "final_metrics": {}, "converted_from": origin}
        if kind == "tokenizer":
            summary["substitutes"] = []
        else:
            summary.update(val_loss=None, tokenizer_hash=config.tokenizer.hash())  # type: ignore[union-attr]
        atomic_write_json(tmp / "summary.json", summary)  # last: its presence means finished
        if run_dir.exists():
            run_dir.rmdir()  # an empty folder (checked above)
        os.rename(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir


def checked_state(
    path: Path, kind: Kind, planned: TokenizerRunConfig | ARRunConfig, loader: Loader | None = None
) -> dict[str, Any]:
    """The workbench state dict of an authors' file that holds the planned model; ConversionError otherwise."""
    found, state = read_authors(path, kind, loader)
    check_fits(
        Path(path),
        kind,
        planned.tokenizer if kind == "tokenizer" else planned.model,  # type: ignore[union-attr]
        found,
        state,
    )
    return state


def convert_to_run(
    path: Path, kind: Kind, planned: TokenizerRunConfig | ARRunConfig, run_dir: Path, loader: Loader | None = None
) -> dict[str, Any]:
    """Convert ``path`` into ``run_dir`` as a finished stage of ``planned``; its provenance (nothing written on error).

    A finished conversion of the same config already there is kept (its provenance is returned).
    """
    done = finished_conversion(Path(run_dir), planned.hash())
    if done is not None:
        return done
    state = checked_state(path, kind, planned, loader)
    origin = provenance(Path(path), kind, planned.source)
    write_run_folder(Path(run_dir), kind, planned, state, origin)
    return origin


def source_tags(kind: Kind, origin: Mapping[str, Any]) -> dict[str, str]:
    """MLflow tags naming the converted file and its sha256."""
    return {
        schema.source(kind): str(origin["source"]),
        schema.source(kind, "_file"): str(origin["file"]),
        schema.source(kind, "_sha256"): str(origin["sha256"]),
    }


# ----------------------------------------------------------------------------------------------------------
# For the pipeline: released files found through the weights registry
# ----------------------------------------------------------------------------------------------------------


def released_file(source: str, weights_dir: str | None) -> Path:
    """The local file of a config's ``source`` (the registry's folder); a one-line error when it is absent."""
    from gigatok.weights import MissingWeightsError, resolve_weight

    model = released_of(source)
    if model is None:
        raise ConversionError(
            f"run source {source!r}: not a released checkpoint the workbench can find by itself; "
            "convert the file with python -m gigatok.convert into the runs folder first"
        )
    try:
        return resolve_weight(model.name, weights_dir)
    except MissingWeightsError as exc:
        raise ConversionError(str(exc)) from None


def install(
    kind: Kind, planned: TokenizerRunConfig | ARRunConfig, run_dir: Path, weights_dir: str | None
) -> dict[str, Any]:
    """The converted stage folder of ``planned`` (whose ``source`` names the file), converting it when absent."""
    from gigatok.runs.layout import stage_lock

    run_dir = Path(run_dir)
    with stage_lock(run_dir.parent / f"{run_dir.name}.convert"):  # the lock lives beside the folder, not in it
        done = finished_conversion(run_dir, planned.hash())
        if done is not None:
            return done
        return convert_to_run(released_file(planned.source, weights_dir), kind, planned, run_dir)


def missing_inputs(
    configs: Iterable[tuple[TokenizerRunConfig | ARRunConfig, Path]], weights_dir: str | None
) -> list[str]:
    """One line per converted stage that is neither on disk nor convertible from a file that is there: a missing
    file, or one that does not hold the planned model."""
    problems = []
    for cfg, run_dir in configs:
        if not cfg.source or (Path(run_dir) / "summary.json").is_file():
            continue
        kind: Kind = "tokenizer" if isinstance(cfg, TokenizerRunConfig) else "ar"
        try:
            # Reading is memory-mapped, so checking keys and shapes costs little even for the 2.9B tokenizer's file.
            checked_state(released_file(cfg.source, weights_dir), kind, cfg)
        except ConversionError as exc:
            problems.append(str(exc))
    return list(dict.fromkeys(problems))
