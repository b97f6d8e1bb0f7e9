"""Tracking overhead: a training loop that logs to MLflow at every step, against the same loop logging nothing.

    python bench/tracking_overhead.py             8 rounds of 30 steps per variant (about 4 minutes here)
    python bench/tracking_overhead.py --quick     3 rounds of 12 steps (under a minute)
    python bench/tracking_overhead.py --mlflow sqlite:///bench.db

Target (issue 8): logging every step costs under 2% of the loop's time, with the project's batched, asynchronous
:class:`gigatok.tracking.RunLogger` (what ``gigatok.runs.execute.execute_run`` streams training curves through).

The step is the AR probe's training step at the ``tiny`` profile (GPT-B of that profile: width 128, 4 blocks,
16 tokens, batch 32; forward, cross-entropy, backward, clipping, AdamW), on random tokens in place of a token
cache, with what ``gigatok.train.ar_loop`` does at a logging step: the interval means read from their tensors, a
line appended to ``metrics.jsonl`` and the ``log_fn`` call. It is the cheapest training step of the project (a
tiny tokenizer step costs ~10x more), so the relative overhead it shows is the worst case; every logging step
sends the loop's three values (``ar/train_loss``, ``ar/grad_norm``, ``ar/lr``) to a SQLite store.

Two figures per logging variant: the slowdown of whole rounds (the median of each round's ratio to the ``none``
round beside it; includes the CPU the asynchronous writer thread takes from the loop), and the time the loop spends
inside the logging calls and the final flush per step (precise, but blind to that background thread).

Torch runs one thread by default: on a shared 2-core machine two OpenMP threads wait for each other whenever one
is descheduled (measured: 2.3 s a step instead of 0.35 s), which would drown a 2% effect in noise. The writer
thread then has the other core, as it has the spare cores of a GPU node; ``--threads 2`` gives it none.

Variants, run in rounds A, B, C, A, B, C, ... so that the noise of a shared machine falls on all of them:

- ``none``: the loop with ``log_fn=None``;
- ``RunLogger``: the project's logger as the pipeline uses it (``RunLogger.metrics`` at every step, asynchronous,
  at most one batch per ``batch_seconds`` = 5 s), then ``flush`` at the end of the round (a stage ends with one,
  so draining the queue is paid inside the round);
- ``RunLogger, a batch per step``: ``batch_seconds=0``, one asynchronous store transaction per step (what
  RunLogger did before batching; for comparison).

Three figures per logging variant, each the median over rounds of its ratio to the ``none`` round run beside it:
the wall-clock slowdown (the target; noisy on a shared machine) and the extra CPU time of the process (all
threads, so the asynchronous writer's work counts even when it runs on an idle core; less noisy); and the time
the loop spends inside the logging calls per step and in the final flush per round. A round is far shorter than
a stage, so the flush, paid once per stage, weighs more here than in a real run.

Torch runs one thread by default: on a shared 2-core machine two OpenMP threads wait for each other whenever one
is descheduled (measured: 2.3 s a step instead of 0.35 s), which would drown a 2% effect in noise. The writer
thread then has the other core, as it has the spare cores of a GPU node; ``--threads 2`` gives it none.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    Row,
    add_common_args,
    add_threads_arg,
    interleaved,
    log_to_mlflow,
    median,
    print_table,
    set_threads,
)

TARGET = 0.02
LogFn = Callable[[int, dict[str, float]], None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/tracking_overhead.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="3 rounds of 12 steps")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per variant (default 8; --quick 3)")
    p.add_argument("--steps", type=int, default=None, help="training steps per round (default 30; --quick 12)")
    p.add_argument("--ar-size", default="B", help="AR model size at the tiny profile (default B, the AR probe)")
    add_threads_arg(p)
    add_common_args(p)
    return p.parse_args(argv)


class ARLoop:
    """The AR probe's training loop without its data loader: the same model, optimizer and per-step work."""

    def __init__(self, size: str, run_dir: Path) -> None:
        import torch

        from gigatok.config import ar_run, tokenizer_run
        from gigatok.models.ar import build_ar_model
        from gigatok.train.optimizer import build_ar_optimizer

        self.cfg = ar_run(tokenizer_run("S-S", profile="tiny"), size)
        self.model = build_ar_model(self.cfg.model).train()
        self.opt = build_ar_optimizer(self.model, self.cfg.train)
        generator = torch.Generator().manual_seed(0)
        batch, m = self.cfg.train.batch_size, self.cfg.model
        # A few fixed batches stand in for the token cache (reading it is an index into a tensor as well).
        self.batches = [
            (
                torch.randint(0, m.vocab_size, (batch, m.num_tokens), generator=generator),
                torch.randint(0, m.num_classes, (batch,), generator=generator),
            )
            for _ in range(8)
        ]
        self.run_dir = run_dir
        self.step = 0

    def run(self, steps: int, log_fn: LogFn | None) -> None:
        from torch import nn

        from gigatok.train.run_dir import MeanWindow, MetricsLog

        window = MeanWindow()
        log = MetricsLog(self.run_dir / "metrics.jsonl", self.step)
        lr = self.cfg.train.lr
        for _ in range(steps):
            tokens, labels = self.batches[self.step % len(self.batches)]
            loss = self.model.loss(tokens, labels)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            self.opt.step()
            window.add({"train_loss": loss, "grad_norm": grad_norm})
            self.step += 1
            # Every step is a logging step here (log_every = 1), as ar_loop does it at its logging steps.
            last = {**window.means(), "lr": lr}
            window.reset()
            log.append({"step": self.step, **last})
            if log_fn is not None:
                log_fn(self.step, last)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from gigatok.tracking import RunLogger, connect, ensure_experiment

    set_threads(args.threads)
    rounds = args.rounds or (3 if args.quick else 8)
    steps = args.steps or (12 if args.quick else 30)
    names = {"batched": "RunLogger", "per_step": "RunLogger, a batch per step"}
    batch_seconds = {"batched": 5.0, "per_step": 0.0}
    inside = dict.fromkeys(names, 0.0)  # seconds the loop spent in logging calls (timed rounds only)
    flushing = dict.fromkeys(names, 0.0)  # seconds spent in the final flush of each round
    cpu: dict[str, list[float]] = {"none": [], **{k: [] for k in names}}  # process CPU seconds of each round
    with tempfile.TemporaryDirectory(prefix="gigatok-bench-tracking-") as tmp:
        client = connect(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        experiment = ensure_experiment(client, "tracking_overhead", "bench/tracking_overhead.py")
        loop = ARLoop(args.ar_size, Path(tmp))
        # The MLflow runs exist before the timing starts: creating one is a per-stage cost, not a per-step one.
        run_ids = {kind: [client.create_run(experiment).info.run_id for _ in range(rounds + 1)] for kind in names}
        last_run: dict[str, str] = {}

        def timed(kind: str, fn: LogFn) -> LogFn:
            def call(step: int, values: dict[str, float]) -> None:
                start = time.perf_counter()
                fn(step, values)
                inside[kind] += time.perf_counter() - start

            return call

        def plain(n: int) -> None:
            start = time.process_time()
            loop.run(n, None)
            cpu["none"].append(time.process_time() - start)

        def logged(kind: str, n: int) -> None:
            start = time.process_time()
            run_id = last_run[kind] = run_ids[kind].pop()
            logger = RunLogger(client, run_id, batch_seconds=batch_seconds[kind])
            loop.run(n, timed(kind, lambda step, values: logger.metrics(values, step=step, prefix="ar/")))
            flush_start = time.perf_counter()
            logger.flush()  # a stage ends with the queue drained: paid inside the round
            flushing[kind] += time.perf_counter() - flush_start
            cpu[kind].append(time.process_time() - start)

        def variants(n: int) -> dict[str, Callable[[], None]]:
            return {"none": lambda: plain(n), **{kind: lambda kind=kind: logged(kind, n) for kind in names}}

        interleaved(variants(3), repeats=1, warmup=0)  # warm-up: allocator, MLflow's queue thread, SQLite pages
        inside, flushing = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
        cpu = {k: [] for k in cpu}
        print(
            f"{rounds} rounds x {steps} steps of each variant, interleaved; torch threads "
            f"{torch.get_num_threads()} ...",
            flush=True,
        )
        times = interleaved(variants(steps), repeats=rounds, warmup=0)
        # Every logged step reached the store: the logged variants did the work they are timed for.
        for kind, run_id in last_run.items():
            stored = len(client.get_metric_history(run_id, "ar/train_loss"))
            if stored != steps:
                raise RuntimeError(f"{names[kind]} stored {stored} of {steps} steps")

    def paired(values: list[float], base: list[float]) -> float:
        # Round i of a variant ran right after round i of "none": compare them pairwise.
        return median([v / b - 1 for v, b in zip(values, base, strict=True)]) * 100

    base = median(times["none"])
    rows = [Row("step, no logging", base / steps * 1e3, "ms", {"steps/round": steps, "rounds": rounds})]
    for kind, name in names.items():
        extra: dict[str, Any] = {"variant": name}
        slowdown = paired(times[kind], times["none"])
        if kind == "batched":
            extra.update(target=f"< {TARGET:.0%}", met="yes" if slowdown < TARGET * 100 else "NO")
        rows += [
            Row(f"wall-clock slowdown, {name}", slowdown, "%", extra),
            Row(f"extra CPU time (all threads), {name}", paired(cpu[kind], cpu["none"]), "%", {"variant": name}),
            Row(f"time in logging calls, {name}", inside[kind] / (rounds * steps) * 1e3, "ms/step", {"variant": name}),
            Row(f"final flush, {name}", flushing[kind] / rounds * 1e3, "ms/round", {"variant": name}),
        ]
    print_table(
        f"Tracking overhead: tiny AR-{args.ar_size} training step, logging every step; median of {rounds} "
        f"paired rounds (load average {os.getloadavg()[0]:.1f})",
        rows,
    )
    log_to_mlflow(
        args.mlflow,
        "tracking_overhead",
        rows,
        {"rounds": rounds, "steps": steps, "ar_size": args.ar_size, "threads": torch.get_num_threads()},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
