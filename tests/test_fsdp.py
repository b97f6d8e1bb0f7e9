"""FSDP training (gigatok.fsdp, gigatok.train.sharded) with two gloo processes on CPU, started as a two-task job by
Submitit's local executor, against one process in the test:

- the per-step losses of a sharded two-process run equal a single-process run's (the global batch is the same;
  terms computed from batch statistics are switched off or compared before they start);
- a real preemption signal (a stand-in for Submitit's requeue handler, as in tests/test_preemption.py) stops the
  two-process run at the end of its step with a sharded checkpoint, and the resume finishes the run;
- a checkpoint written by two ranks resumes on one (tokenizer) and one written by one process resumes on two (AR),
  continuing as the uninterrupted run does;
- the final weights are the one-file state dict the DDP path writes;
- the AR run does all of this with activation checkpointing on, each block recomputed inside its FSDP unit.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import cloudpickle
import pytest
import torch
from torch import nn
from two_ranks import run_two_ranks

from gigatok.config import (
    PerformanceConfig,
    TokenizerRunConfig,
    ar_parallelism,
    ar_run,
    tokenizer_parallelism,
    tokenizer_run,
)
from gigatok.distributed import DistEnv
from gigatok.perceptual import resolve_perceptual
from gigatok.train.checkpoint import SHARDED_KEY, list_checkpoints, load_latest_checkpoint
from gigatok.train.run_dir import read_metrics
from gigatok.train.sharded import Pair, load_sharded, save_sharded

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the job's processes cannot import tests/ files

FSDP = PerformanceConfig(parallelism="fsdp")
STEPS, PREEMPT_AT = 4, 2  # the signal arrives in step 2, which is finished and checkpointed


# ----------------------------------------------------------------------------------------------------------------
# Fast: the setting, and sharded checkpoints in one process
# ----------------------------------------------------------------------------------------------------------------


def test_auto_shards_the_sizes_the_authors_shard() -> None:
    paper = {name: tokenizer_run(name, profile="paper") for name in ("S-S", "S-B", "S-L", "B-L", "XL-XXL")}
    assert {n: tokenizer_parallelism(c) for n, c in paper.items()} == {
        "S-S": "ddp",
        "S-B": "ddp",
        "S-L": "ddp",
        "B-L": "ddp",
        "XL-XXL": "fsdp",
    }
    tok = paper["XL-XXL"]
    assert {s: ar_parallelism(ar_run(tok, s)) for s in ("B", "L", "XL", "XXL")} == {
        "B": "ddp",
        "L": "ddp",
        "XL": "ddp",
        "XXL": "fsdp",
    }
    # The tiny profile's XL-XXL and AR-XXL are small models: they stay on DDP (and its one-file checkpoints).
    tiny = tokenizer_run("XL-XXL", profile="tiny")
    assert (tokenizer_parallelism(tiny), ar_parallelism(ar_run(tiny, "XXL"))) == ("ddp", "ddp")
    forced = dataclasses.replace(paper["S-S"], performance=FSDP)
    assert tokenizer_parallelism(forced) == "fsdp"
    assert forced.hash() == paper["S-S"].hash()  # how, not what: the run keeps its hash


def _toy() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def test_sharded_checkpoint_round_trip_is_atomic_and_pruned(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, opt = _toy()
    model(torch.randn(5, 3)).square().mean().backward()
    opt.step()
    (tmp_path / "checkpoints").mkdir()
    # A save killed before it was published: a hidden partial folder, never listed.
    (tmp_path / "checkpoints" / ".step-00000009.dcp.partial").mkdir()
    for step in (1, 2, 3):
        save_sharded(tmp_path, step, [Pair("model", model, "opt", opt)], {"step": step}, keep=2, env=DistEnv())
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002.dcp", "step-00000003.dcp"]
    found = load_latest_checkpoint(tmp_path)
    assert found is not None and found[1]["step"] == 3
    fresh, fresh_opt = _toy()
    load_sharded(found[1][SHARDED_KEY], [Pair("model", fresh, "opt", fresh_opt)])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    # A folder without DCP's metadata (damaged from outside) is skipped for the previous checkpoint, with a warning.
    (tmp_path / "checkpoints" / "step-00000003.dcp" / ".metadata").unlink()
    with pytest.warns(RuntimeWarning, match="without its .metadata"):
        found = load_latest_checkpoint(tmp_path)
    assert found is not None and found[1]["step"] == 2


# ----------------------------------------------------------------------------------------------------------------
# Slow: two gloo processes under Submitit's local executor
# ----------------------------------------------------------------------------------------------------------------


def _preempted_then_resumed(train: Callable[..., Any], loop: Any) -> Any:
    """Rank 0 sends itself the preemption signal inside step PREEMPT_AT (through the loop's gradient clipping, which
    every step calls once for the model); the loop stops there with a checkpoint; the job resumes in-process."""
    import torch.distributed as dist

    from gigatok.train import preemption

    calls, clip = [0], loop.clip_gradients

    def clip_and_signal(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == PREEMPT_AT and dist.get_rank() == 0:
            os.kill(os.getpid(), preemption.preempt_signal())
        return clip(*args, **kwargs)

    requeued: list[int] = []

    def requeue(signum: int, frame: FrameType | None) -> None:  # stands in for Submitit's handler
        requeued.append(signum)

    signum = preemption.preempt_signal()
    previous = signal.signal(signum, requeue)
    loop.clip_gradients = clip_and_signal
    try:
        with preemption.deferred() as deferral:
            assert deferral is not None
            try:
                train()
                raise AssertionError("the preemption signal did not stop the loop")
            except preemption.Preempted as stop:
                stopped = stop.step
    finally:
        signal.signal(signum, previous)
        loop.clip_gradients = clip
    assert requeued == []  # the loop waited for the end of its step; the job hands the signal over after
    return stopped, train()


def _task(loop_module: str, jobs: list[tuple[str, Callable[..., Any]]]) -> dict[str, Any]:
    """One rank of the job: each job of ``jobs`` ("preempt": stopped by a signal then resumed; "plain": run)."""
    import importlib

    import torch.distributed as dist

    torch.set_num_threads(1)  # two processes share two cores
    loop = importlib.import_module(loop_module)
    out: dict[str, Any] = {}
    try:
        for name, train in jobs:
            out[name] = _preempted_then_resumed(train, loop) if name == "preempt" else train()
        out["rank"], out["world"] = dist.get_rank(), dist.get_world_size()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return out


def _losses(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run_dir)}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_close_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst < atol, worst


def _rewind(src: Path, dst: Path, step: int) -> Path:
    """A copy of run ``src`` as it was at its checkpoint of ``step``: later checkpoints and the final files gone."""
    shutil.copytree(src, dst)
    for ckpt in list_checkpoints(dst):
        if int(ckpt.name[5:13]) > step:
            shutil.rmtree(ckpt)
    for name in ("summary.json", "tokenizer.pt", "ar.pt"):
        (dst / name).unlink(missing_ok=True)
    return dst


def _tokenizer_cfg() -> TokenizerRunConfig:
    """Tiny S-S, sharded, with no term that a rank computes from its shard's statistics before the GAN starts at
    the last step: the entropy loss off, LPIPS off (a substitute VGG would be drawn per rank). The shortcut's
    direct decoding (a call of the sharded generator's CNN decoder outside its forward) runs in the first steps."""
    cfg = tokenizer_run(
        "S-S", profile="tiny", max_steps=STEPS, epochs=8, batch_size=16, semantic_weight=0.0, entropy_weight=0.0
    )
    train = dataclasses.replace(cfg.train, log_every=1, checkpoint_every=2, keep_checkpoints=3)
    loss = dataclasses.replace(cfg.loss, gan_start_step=STEPS - 1, shortcut_end_step=2, perceptual="off")
    return resolve_perceptual(dataclasses.replace(cfg, train=train, loss=loss, performance=FSDP))


@pytest.fixture(scope="module")
def fsdp_tokenizer(tmp_path_factory: pytest.TempPathFactory, worker_env: None) -> dict[str, Any]:
    """The tiny run on one process, and on two processes preempted at step 2 and resumed."""
    from gigatok.train.tokenizer_loop import train_tokenizer

    cfg = _tokenizer_cfg()
    single = tmp_path_factory.mktemp("tok_single")
    train_tokenizer(cfg, single, allow_substitutes=True, progress=False)
    two = tmp_path_factory.mktemp("tok_two")

    def train() -> Any:
        from gigatok.train.tokenizer_loop import train_tokenizer

        return train_tokenizer(cfg, two, allow_substitutes=True, progress=False)

    results = run_two_ranks(
        tmp_path_factory.mktemp("submitit"), _task, "gigatok.train.tokenizer_loop", [("preempt", train)]
    )
    return {"cfg": cfg, "single": single, "two": two, "results": results}


@pytest.mark.slow
def test_sharded_tokenizer_matches_one_process_and_resumes_on_one(
    fsdp_tokenizer: dict[str, Any], tmp_path: Path
) -> None:
    from gigatok.train.tokenizer_loop import train_tokenizer

    cfg, single, two, results = (fsdp_tokenizer[k] for k in ("cfg", "single", "two", "results"))
    assert [(r["rank"], r["world"]) for r in results] == [(0, 2), (1, 2)]
    for r in results:
        stopped, full = r["preempt"]
        assert stopped == PREEMPT_AT and full.finished and full.steps == STEPS
    # Each rank wrote its own shard of the step-2 checkpoint.
    shards = sorted(p.name for p in (two / "checkpoints" / "step-00000002.dcp").glob("*.distcp"))
    assert len(shards) == 2, shards
    one, both = _losses(single, "total_loss"), _losses(two, "total_loss")
    assert list(both) == list(range(1, STEPS + 1))  # each step logged once, the resume repeating none
    for step in range(1, STEPS):  # the GAN's BatchNorm sees a shard from the last step on
        assert both[step] == pytest.approx(one[step], rel=1e-4), step
    assert "discriminator_loss" in read_metrics(two)[-1]  # the DDP discriminator trained beside the sharded model
    # The final weights: one file of the whole generator, as DDP writes it.
    _assert_close_weights(single / "tokenizer.pt", two / "tokenizer.pt", atol=2e-3)

    # The two-rank checkpoint of step 2 resumes on one process, and continues as the two-rank run did.
    resumed = _rewind(two, tmp_path / "resumed", PREEMPT_AT)
    assert train_tokenizer(cfg, resumed, allow_substitutes=True, progress=False).finished
    again = _losses(resumed, "total_loss")
    assert again[PREEMPT_AT + 1] == pytest.approx(one[PREEMPT_AT + 1], rel=1e-4)
    # The last step (the GAN on): the generator is the two-rank run's, so its own terms agree; the adversarial term
    # moves because one process's BatchNorm sees the whole batch (0.4% measured). The total is compared term by term:
    # it nearly cancels (pixel 0.350 against half the adversarial -0.72: 0.027), so a relative tolerance on it
    # would measure the cancellation, not the runs.
    for term, rel in (("pixel_loss", 1e-4), ("adversarial_loss", 2e-2)):
        assert _losses(resumed, term)[STEPS] == pytest.approx(_losses(two, term)[STEPS], rel=rel), term


@pytest.mark.slow
def test_sharded_ar_resumes_on_two_from_one_and_after_preemption(
    fsdp_tokenizer: dict[str, Any], tmp_path: Path, worker_env: None
) -> None:
    from gigatok.train.ar_loop import train_ar

    tok_dir = fsdp_tokenizer["single"]
    # With activation checkpointing: each block's recomputation inside its FSDP unit gathers the block's shards again.
    performance = dataclasses.replace(FSDP, activation_checkpointing=True)
    cfg = ar_run(fsdp_tokenizer["cfg"], "B", max_steps=STEPS, performance=performance)
    model = dataclasses.replace(cfg.model, dropout=0.0, class_dropout=0.0)  # no per-rank random stream
    train = dataclasses.replace(cfg.train, log_every=1, checkpoint_every=2, keep_checkpoints=3)
    cfg = dataclasses.replace(cfg, model=model, train=train)
    single = tmp_path / "single"
    assert train_ar(cfg, single, tok_dir, progress=False).finished  # one process: sharded checkpoints all the same
    from_one = _rewind(single, tmp_path / "from_one", PREEMPT_AT)
    fresh = tmp_path / "fresh"

    def resume_from_one() -> Any:
        from gigatok.train.ar_loop import train_ar

        return train_ar(cfg, from_one, tok_dir, progress=False)

    def preempted() -> Any:
        from gigatok.train.ar_loop import train_ar

        return train_ar(cfg, fresh, tok_dir, progress=False)

    jobs = [("from_one", resume_from_one), ("preempt", preempted)]
    results = run_two_ranks(tmp_path / "submitit", _task, "gigatok.train.ar_loop", jobs)
    assert [(r["rank"], r["world"]) for r in results] == [(0, 2), (1, 2)]
    assert all(r["from_one"].finished and r["preempt"][0] == PREEMPT_AT for r in results)
    assert results[0]["preempt"][1].val_loss == results[1]["preempt"][1].val_loss  # every rank ran the validation
    one = _losses(single, "train_loss")
    for run in (from_one, fresh):
        two = _losses(run, "train_loss")
        assert list(two) == list(range(1, STEPS + 1))
        for step in two:
            assert two[step] == pytest.approx(one[step], rel=1e-4), (run.name, step)
        _assert_close_weights(single / "ar.pt", run / "ar.pt", atol=1e-4)
