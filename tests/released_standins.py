"""Stand-ins for the authors' released checkpoints, for tests that must not need the converters or the real files.

A stand-in file holds a freshly built workbench model's state dict and its config (``torch.save``d plain data), and
:func:`standin_loader` reads it back the way ``load_authors_tokenizer`` / ``load_authors_ar`` read an authors'
file; :func:`use_standins` puts those loaders in :data:`gigatok.convert.released.LOADERS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gigatok.config import ARConfig, TokenizerConfig, from_dict, to_dict
from gigatok.convert import ConversionError
from gigatok.convert import released as rel

CONFIG_TYPES = {"tokenizer": TokenizerConfig, "ar": ARConfig}


def write_standin(path: Path, kind: str, config: Any, seed: int = 0) -> Path:
    """A stand-in checkpoint of ``kind`` with the weights of a fresh workbench model of ``config``."""
    from gigatok.models.ar import build_ar_model
    from gigatok.models.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    model = build_tokenizer(config) if kind == "tokenizer" else build_ar_model(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"standin_kind": kind, "config": to_dict(config), "state_dict": model.state_dict()}, path)
    return path


def standin_loader(kind: str):  # -> Loader
    def load(path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or data.get("standin_kind") != kind:
            raise ConversionError(f"{path}: not a {kind} checkpoint")
        return from_dict(CONFIG_TYPES[kind], data["config"]), data["state_dict"]

    return load


def use_standins(monkeypatch: pytest.MonkeyPatch) -> None:
    for kind in ("tokenizer", "ar"):
        monkeypatch.setitem(rel.LOADERS, kind, standin_loader(kind))


def released_pair(folder: Path, ar_name: str, profile: str = "tiny") -> tuple[Path, Path]:
    """Stand-in files for released AR model ``ar_name`` and its tokenizer, at the profile's architectures."""
    model = rel.RELEASED[ar_name]
    tok = rel.released_tokenizer_run(model.tokenizer, profile)
    ar = rel.released_ar_run(ar_name, tok)
    return (
        write_standin(folder / f"{model.tokenizer}.pt", "tokenizer", tok.tokenizer),
        write_standin(folder / f"{ar_name}.pt", "ar", ar.model, seed=1),
    )
