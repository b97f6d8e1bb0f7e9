"""AR probe training from the token cache against tokenizing images on the fly, per epoch.

The AR probe (tiny profile: AR-B on a tiny S-S tokenizer, its batch and its epoch of the built-in dataset with the
flipped copies) takes the same training steps three ways, interleaved step by step:

- ``token cache``: the batch's tokens are rows of ``gigatok.token_cache`` (what ``train_ar`` does);
- ``on the fly``: each step loads the batch's images from the dataset, flips half, tokenizes them with the
  tokenizer, then trains on the tokens (what a workbench without the cache would do every epoch);
- ``on the fly, images in memory``: the same without the image loading, i.e. the tokenizer's share alone.

The cache is built once per tokenizer (its one-off cost is reported, with the number of epochs it takes to pay back)
and then serves every AR run on that tokenizer: the probe's epochs, each AR size, each seed.

A paper-scale epoch is out of reach of a CPU, so for paper scale the FLOPs of one image's step are counted
(``torch.utils.flop_counter``: S-S tokenizing against AR-B/AR-L training) and printed as the compute-only ratio
there, without the image decoding and loading that the cache also saves.

    python bench/token_cache.py            # one tiny epoch (56 steps of each)
    python bench/token_cache.py --quick    # 12 steps of each, scaled to an epoch; paper FLOPs of AR-B only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    Row,
    add_common_args,
    add_threads_arg,
    interleaved,
    log_to_mlflow,
    print_table,
    set_threads,
)
from gigatok.config import ARRunConfig, ar_run, tokenizer_run  # noqa: E402
from gigatok.data import build_dataset  # noqa: E402
from gigatok.models.ar import build_ar_model  # noqa: E402
from gigatok.models.tokenizer import GigaTokenizer, build_tokenizer  # noqa: E402
from gigatok.performance import autocast, prepare_module  # noqa: E402
from gigatok.token_cache import build_token_cache  # noqa: E402
from gigatok.train.optimizer import build_ar_optimizer  # noqa: E402
from gigatok.train.sampling import ResumableBatchSampler  # noqa: E402
from gigatok.train.tokenizer_loop import train_tokenizer  # noqa: E402
from gigatok.train.trained import load_trained_tokenizer  # noqa: E402

TARGET = 2.0


def ar_step_fn(cfg: ARRunConfig, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One AR training step as ``train_ar`` takes it (a model and optimizer of its own, same initialisation)."""
    torch.manual_seed(cfg.train.seed)
    model = prepare_module(build_ar_model(cfg.model).to(device), cfg.performance).train()
    opt = build_ar_optimizer(model, cfg.train)

    def step(tokens: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast(cfg.performance, device):
            loss = model.loss(tokens.to(device), labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        float(loss.detach())  # waits for the device

    return step


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def paper_flops(ar_sizes: tuple[str, ...]) -> list[Row]:
    """Compute-only ratio at paper scale: FLOPs of (tokenize + AR step) over FLOPs of the AR step, per image.

    Counted on one real image (the quantizer's code histogram has no meta-device kernel): ~100 s on two cores.
    """
    tok_cfg = tokenizer_run("S-S", profile="paper")
    size = tok_cfg.tokenizer.image_size
    paper_tokenizer = build_tokenizer(tok_cfg.tokenizer).eval()
    with torch.no_grad():
        tok_flops = count_flops(lambda: paper_tokenizer.tokenize(torch.zeros(1, 3, size, size)))
    rows = []
    for ar_size in ar_sizes:
        ar_cfg = ar_run(tok_cfg, ar_size)
        ar = build_ar_model(ar_cfg.model).train()
        tokens, label = torch.zeros(1, ar_cfg.model.num_tokens, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        ar_flops = count_flops(lambda ar=ar, tokens=tokens, label=label: ar.loss(tokens, label).backward())
        ratio = (tok_flops + ar_flops) / ar_flops
        rows.append(
            Row(
                f"paper S-S + AR-{ar_size}: on the fly / cache, FLOPs only",
                ratio,
                "x",
                {
                    "cost vs cache": f"tokenize {tok_flops / 1e9:.0f} + AR step {ar_flops / 1e9:.0f} GFLOP an image",
                    "met": ratio >= TARGET,
                },
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 steps of each variant, scaled to an epoch")
    parser.add_argument("--steps", type=int, default=None, help="steps of each variant (default: one epoch)")
    parser.add_argument("--ar-size", default="B", help="AR probe size (tiny profile)")
    parser.add_argument("--no-paper", action="store_true", help="skip counting the paper-scale FLOPs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_common_args(parser)
    add_threads_arg(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        # A finished tiny tokenizer run (one step: its speed, not its quality, matters here), then its cache.
        tok_cfg = tokenizer_run("S-S", profile="tiny", semantic_weight=0, max_steps=1)
        run_dir = Path(tmp) / "tokenizer"
        print("training a one-step tiny tokenizer run ...", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the LPIPS substitute's warning
            train_tokenizer(tok_cfg, run_dir, allow_substitutes=True, device=device, progress=False)
        start = time.perf_counter()
        cache = build_token_cache(run_dir, "train", device=device, progress=False)
        build_s = time.perf_counter() - start
        tokenizer: GigaTokenizer = load_trained_tokenizer(run_dir, device)

    ar_cfg = ar_run(tok_cfg, args.ar_size)
    dataset = build_dataset(tok_cfg.data, "train", tok_cfg.tokenizer.image_size, seed=tok_cfg.train.seed)
    n_images, batch = len(dataset), ar_cfg.train.batch_size
    steps_per_epoch = len(cache) // batch
    steps = args.steps or (12 if args.quick else steps_per_epoch)
    order = iter(ResumableBatchSampler(len(cache), batch, ar_cfg.train.seed, 0, 10 * steps_per_epoch))
    in_memory = torch.stack([dataset[i][0] for i in range(n_images)])  # for the variant without image loading
    labels_all = torch.tensor([dataset[i][1] for i in range(n_images)])
    batches: dict[str, list[list[int]]] = {}

    def next_batch(variant: str) -> list[int]:
        """The same sequence of batches for every variant (sample j >= n_images is image j - n_images, flipped)."""
        queue = batches.setdefault(variant, [])
        if not queue:
            indices = next(order)
            for other in ("cache", "fly", "fly-mem"):
                batches.setdefault(other, []).append(indices)
        return queue.pop(0)

    @torch.no_grad()
    def tokenize(images: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
        images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
        return tokenizer.tokenize(images.to(device))

    steps_cache, steps_fly, steps_mem = (ar_step_fn(ar_cfg, device) for _ in range(3))

    def from_cache() -> None:
        steps_cache(*cache.batch(torch.tensor(next_batch("cache"))))

    def on_the_fly() -> None:
        j = torch.tensor(next_batch("fly"))
        image_ids, flipped = j % n_images, j >= n_images
        images = torch.stack([dataset[int(i)][0] for i in image_ids])  # loading and cropping the photos
        steps_fly(tokenize(images, flipped), labels_all[image_ids])

    def on_the_fly_in_memory() -> None:
        j = torch.tensor(next_batch("fly-mem"))
        image_ids, flipped = j % n_images, j >= n_images
        steps_mem(tokenize(in_memory[image_ids], flipped), labels_all[image_ids])

    print(
        f"AR-{args.ar_size} probe on tiny S-S tokens: {len(cache)} samples ({n_images} images + flips), batch "
        f"{batch}, {steps_per_epoch} steps an epoch; timing {steps} steps of each, {torch.get_num_threads()} "
        f"threads, device {device}",
        flush=True,
    )
    times = interleaved(
        {"token cache": from_cache, "on the fly": on_the_fly, "on the fly, images in memory": on_the_fly_in_memory},
        repeats=steps,
        warmup=1,
    )
    scale = steps_per_epoch / steps
    epoch = {name: sum(t) * scale for name, t in times.items()}
    base = epoch["token cache"]
    rows = []
    for name, seconds in epoch.items():
        ratio = seconds / base
        extra: dict[str, object] = {"cost vs cache": f"{ratio:.2f}x"}
        if name != "token cache":
            extra["met"] = ratio >= TARGET
        rows.append(Row(f"tiny epoch: {name}", seconds, "s", extra))
    saved = epoch["on the fly"] - base
    rows.append(
        Row(
            "tiny: building the cache once (train split)",
            build_s,
            "s",
            {"cost vs cache": f"pays back after {build_s / saved:.2f} epochs" if saved > 0 else "never pays back"},
        )
    )
    if not args.no_paper:
        print("counting paper-scale FLOPs ...", flush=True)
        rows += paper_flops(("B",) if args.quick else ("B", "L"))
    print_table("Token cache against tokenizing on the fly (epoch seconds scaled from the timed steps)", rows)
    log_to_mlflow(args.mlflow, "token_cache", rows, vars(args))


if __name__ == "__main__":
    main()
