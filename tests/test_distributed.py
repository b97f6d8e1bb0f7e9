"""Data-parallel training with two gloo processes on CPU, started as a two-task job by Submitit's local executor
(the same environment path as a multi-task Slurm job). Each job is preempted at step 2 and resumed in-process, so
resume with several ranks is covered too."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import torch
from torch import nn
from two_ranks import run_two_ranks

from gigatok.config import TokenizerRunConfig, ar_run, tokenizer_run
from gigatok.distributed import DistEnv, RankShard, init_distributed, mean_across_ranks, seed_for_rank
from gigatok.perceptual import resolve_perceptual
from gigatok.train.checkpoint import latest_checkpoint, load_checkpoint
from gigatok.train.run_dir import read_metrics

# The job's processes cannot import this file as a module (tests/ is not a package): send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _train_task(loop_module: str, builder: str, train: Callable[..., Any]) -> dict[str, Any]:
    """One rank of the job: train to step 2 (a preemption), resume to the end, report the final weights."""
    import importlib

    import torch.distributed as dist

    torch.set_num_threads(1)  # two processes share two cores
    loop = importlib.import_module(loop_module)
    built: list[nn.Module] = []
    build = getattr(loop, builder)
    setattr(loop, builder, lambda cfg: built.append(build(cfg)) or built[-1])  # keep this rank's model
    try:
        part, full = train(loop, stop_at_step=2), train(loop)
        rank, world = dist.get_rank(), dist.get_world_size()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return {"rank": rank, "world": world, "part": part, "full": full, "weights": _digest(built[-1].state_dict())}


def _tokenizer_task(cfg: TokenizerRunConfig, run_dir: Path) -> dict[str, Any]:
    return _train_task(
        "gigatok.train.tokenizer_loop",
        "build_tokenizer",
        lambda loop, **kw: loop.train_tokenizer(cfg, run_dir, allow_substitutes=True, progress=False, **kw),
    )


def _ar_task(cfg: Any, run_dir: Path, tokenizer_dir: Path) -> dict[str, Any]:
    return _train_task(
        "gigatok.train.ar_loop",
        "build_ar_model",
        lambda loop, **kw: loop.train_ar(cfg, run_dir, tokenizer_dir, progress=False, **kw),
    )


@pytest.fixture(scope="module")
def ddp_tokenizer(
    tmp_path_factory: pytest.TempPathFactory, worker_env: None
) -> tuple[TokenizerRunConfig, Path, list[dict[str, Any]]]:
    cfg = tokenizer_run("S-S", profile="tiny", max_steps=4, epochs=8)
    train = dataclasses.replace(cfg.train, log_every=2, checkpoint_every=2)
    # The discriminator's DDP update runs too, and the shortcut's direct decoding (outside the DDP forward) overlaps
    # it at step 2.
    loss = dataclasses.replace(cfg.loss, gan_start_step=2, shortcut_end_step=4)
    # Rank 0 fills the semantic feature cache alone, on one thread: at the encoder's smallest input, 4x sooner.
    semantic = dataclasses.replace(cfg.tokenizer.semantic, encoder_resolution=75)
    tokenizer = dataclasses.replace(cfg.tokenizer, semantic=semantic)
    # "auto" settled as a study settles it, so the AR test's run names the tokenizer that was trained.
    cfg = resolve_perceptual(dataclasses.replace(cfg, train=train, loss=loss, tokenizer=tokenizer))
    run_dir = tmp_path_factory.mktemp("ddp_tokenizer")
    results = run_two_ranks(tmp_path_factory.mktemp("submitit"), _tokenizer_task, cfg, run_dir)
    return cfg, run_dir, results


@pytest.mark.slow
def test_tokenizer_trains_on_two_processes(
    ddp_tokenizer: tuple[TokenizerRunConfig, Path, list[dict[str, Any]]],
) -> None:
    _, run_dir, results = ddp_tokenizer
    assert [(r["rank"], r["world"]) for r in results] == [(0, 2), (1, 2)]
    assert all(r["part"].steps == 2 and not r["part"].finished for r in results)
    assert all(r["full"].steps == 4 and r["full"].finished for r in results)
    # Every rank logged the same rank-averaged metrics, and ended with the weights rank 0 saved.
    assert results[0]["full"].final_metrics == results[1]["full"].final_metrics
    saved = torch.load(run_dir / "tokenizer.pt", map_location="cpu", weights_only=True)
    assert results[0]["weights"] == results[1]["weights"] == _digest(saved)
    assert (run_dir / "summary.json").is_file()
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [2, 4]  # written once, by rank 0, and not repeated by the resume
    assert "discriminator_loss" in records[-1]
    assert "shortcut_adversarial_loss" in records[-1] and "shortcut_feature_loss" in records[0]
    assert 0 < records[-1]["codebook_usage"] <= 1
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    assert len(ckpt["rng_ranks"]) == 2 and len(ckpt["usage_window"]) == 2


@pytest.mark.slow
def test_ar_trains_on_two_processes(
    ddp_tokenizer: tuple[TokenizerRunConfig, Path, list[dict[str, Any]]], tmp_path: Path, worker_env: None
) -> None:
    tok_cfg, tok_dir, _ = ddp_tokenizer
    cfg = ar_run(tok_cfg, "B", max_steps=4)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, log_every=2, checkpoint_every=2))
    results = run_two_ranks(tmp_path / "submitit", _ar_task, cfg, tmp_path / "ar", tok_dir)
    assert [(r["rank"], r["world"]) for r in results] == [(0, 2), (1, 2)]
    assert all(r["full"].steps == 4 and r["full"].finished for r in results)
    assert results[0]["full"].val_loss == results[1]["full"].val_loss
    saved = torch.load(tmp_path / "ar" / "ar.pt", map_location="cpu", weights_only=True)
    assert results[0]["weights"] == results[1]["weights"] == _digest(saved)
    summary = json.loads((tmp_path / "ar" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["val_loss"] == results[0]["full"].val_loss
    assert [r["step"] for r in read_metrics(tmp_path / "ar")] == [2, 4]


def test_single_process_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(name, raising=False)
    env = init_distributed("cpu")
    assert env == DistEnv(0, 0, 1, None)
    assert mean_across_ranks({"a": torch.tensor(2.0), "b": 3}, env) == {"a": 2.0, "b": 3.0}
    assert seed_for_rank(7, env) == 7


def test_rank_shards_partition_each_global_batch() -> None:
    batches = [list(range(0, 8)), list(range(8, 16))]
    shards = [list(RankShard(batches, 8, DistEnv(rank, rank, 2, "gloo"))) for rank in (0, 1)]
    for step, batch in enumerate(batches):
        assert sorted(shards[0][step] + shards[1][step]) == batch
    with pytest.raises(ValueError, match="does not split evenly"):
        RankShard(batches, 8, DistEnv(0, 0, 3, "gloo"))
