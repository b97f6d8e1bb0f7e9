"""Conversion of the authors' released checkpoints (SilentView/GigaTok) into workbench weights.

``tokenizer`` maps their VQ tokenizers (``VQVitModelPlus`` 1D, ``VQVitModel2DPlus`` 2D), ``ar`` their GPT
probes and system-level models. Each infers the architecture from the state dict's shapes, so reduced-width
stand-ins convert the same way as the released files. ``released`` turns a converted model into the run folder a
trained one would have (used by ``python -m gigatok.convert`` and the ``released_checkpoints`` study).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


class ConversionError(ValueError):
    """A file that is not an authors' checkpoint of the expected kind; the message is one line naming it."""


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (its first), or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_checkpoint(path: Path) -> Any:
    """A checkpoint file's contents, memory-mapped where the file allows it (so a 12 GB XL-XXL checkpoint can be
    checked for keys and shapes before a study starts without reading its tensors); ConversionError names the file.
    """
    import torch

    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        # The authors' training checkpoints hold the argparse Namespace of vq_train.py / train_c2i.py beside the
        # tensors; nothing else but tensors and plain values is unpickled.
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # an old, non-zip torch file
    except Exception as e:  # any unreadable file is refused, with the reason
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({first_line(e)[:160]})") from None


def checkpoint_weights(
    checkpoint: Any, name: str, prefer: Sequence[str], ignored: Callable[[str], bool]
) -> dict[str, Any]:
    """The tensors of a training checkpoint's first state dict among ``prefer`` (or of a bare state dict), with the
    DDP / torch.compile prefixes removed and the buffers ``ignored`` names dropped; ConversionError otherwise."""
    import torch

    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f"{name}: expected a checkpoint dict, got {type(checkpoint).__name__}")
    for key in (*prefer, "module", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    weights: dict[str, Any] = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor: no 'model' or 'ema' state dict found"
            )
        key = str(key).removeprefix("module.").removeprefix("_orig_mod.")
        if not ignored(key):
            weights[key] = value
    if not weights:
        raise ConversionError(f"{name}: the state dict is empty")
    return weights
