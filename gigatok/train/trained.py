"""Finished runs, read back: a run directory's config and its final weights, built into a model.

Kept apart from the training loops so that what only uses a trained model (the token cache, evaluation, conversion)
does not import a loop and everything it trains with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gigatok.config import ARRunConfig, TokenizerRunConfig, ar_run_config_from_dict, run_config_from_dict
from gigatok.models.ar import ARModel, build_ar_model
from gigatok.models.tokenizer import GigaTokenizer, build_tokenizer
from gigatok.train.checkpoint import load_weights
from gigatok.train.run_dir import read_config

__all__ = ["load_trained_ar", "load_trained_tokenizer", "read_ar_run_config", "read_run_config"]


def read_run_config(run_dir: str | Path) -> TokenizerRunConfig:
    """The config a tokenizer run directory was made for (validated)."""
    return read_config(Path(run_dir), run_config_from_dict)


def read_ar_run_config(run_dir: str | Path) -> ARRunConfig:
    """The config an AR run directory was made for (validated)."""
    return read_config(Path(run_dir), ar_run_config_from_dict)


def load_trained_tokenizer(run_dir: str | Path, device: str | torch.device = "cpu") -> GigaTokenizer:
    """The final tokenizer of a finished run, built from the run's own config.json."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    model = build_tokenizer(cfg.tokenizer)
    model.load_state_dict(load_weights(run_dir / "tokenizer.pt"))
    return model.to(device).eval()


def load_trained_ar(run_dir: str | Path, device: str | torch.device = "cpu") -> ARModel:
    """The final AR model of a finished run, built from the run's own config.json."""
    run_dir = Path(run_dir)
    cfg = read_ar_run_config(run_dir)
    model = build_ar_model(cfg.model)
    model.load_state_dict(load_weights(run_dir / "ar.pt"))
    return model.to(device).eval()
