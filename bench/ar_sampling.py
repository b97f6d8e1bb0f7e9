"""AR sampling throughput: the KV cache against recomputing the whole prefix at every step.

``gigatok.sampling.sample_tokens`` with ``use_cache=True`` (one new token per layer per step, keys and values of
the prefix kept) against ``use_cache=False`` (plain causal attention over the whole prefix, every step), at 256
tokens an image and batch 64 with classifier-free guidance: the conditional and unconditional halves go through
the model as one batch of 128, as in evaluation. Both use the same seed and must return the same tokens.

The model is LlamaGen-shaped but cut to CPU size: 64 wide, 2 layers, 4 heads, with the tiny profile's 256-code
vocabulary: its output head is 1/8 of the blocks' weights, as the paper AR-B's is 1/7. Recomputing
256 tokens then takes ~2 minutes on one core. Recomputation costs O(N^2) token-forwards against the cache's O(N),
so the ratio grows with the model (fixed per-step costs weigh less): a small model gives a conservative ratio.

    python bench/ar_sampling.py            # 2 timed runs of each (~5 minutes on one core)
    python bench/ar_sampling.py --quick    # 1 run of each
    python bench/ar_sampling.py --width 768 --depth 12 --heads 12 --vocab 16384   # paper AR-B (on a GPU)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

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
from gigatok.config import TINY, ARConfig  # noqa: E402
from gigatok.models.ar import build_ar_model  # noqa: E402
from gigatok.sampling import SamplingConfig, class_balanced_labels, sample_tokens  # noqa: E402

TARGET = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one timed run of each")
    parser.add_argument("--batch", type=int, default=64, help="images per batch (twice the rows with CFG)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per image")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=TINY.codebook_size)
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_common_args(parser)
    add_threads_arg(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    device = torch.device(args.device)

    cfg = ARConfig(
        width=args.width,
        depth=args.depth,
        heads=args.heads,
        vocab_size=args.vocab,
        num_tokens=args.tokens,
        num_classes=1000,
        dropout=0.0,
    )
    torch.manual_seed(0)
    model = build_ar_model(cfg).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    labels = class_balanced_labels(args.batch, cfg.num_classes).to(device)
    sampling = SamplingConfig(cfg_scale=args.cfg_scale, top_k=0)
    results: dict[str, torch.Tensor] = {}

    def run(use_cache: bool) -> None:
        generator = torch.Generator(device).manual_seed(0)
        tokens = sample_tokens(model, labels, sampling, generator, use_cache=use_cache)
        results["cache" if use_cache else "no cache"] = tokens.cpu()  # .cpu() waits for the device

    variants = {"KV cache": lambda: run(True), "no cache (full recompute)": lambda: run(False)}
    repeats = args.repeats or (1 if args.quick else 2)
    print(
        f"AR {args.width}w x {args.depth} layers x {args.heads} heads, vocab {args.vocab} ({params / 1e6:.2f}M "
        f"params), {args.tokens} tokens, batch {args.batch} x 2 (CFG {args.cfg_scale}), device {device}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    # No warm-up run: a recomputing run is minutes long on a CPU, and its first step warms what the rest use.
    times = interleaved(variants, repeats=repeats, warmup=1 if device.type == "cuda" else 0)
    same = torch.equal(results["cache"], results["no cache"])
    generated = args.batch * args.tokens  # tokens of guided samples (the 2x rows of CFG are not counted twice)
    cached, full = median(times["KV cache"]), median(times["no cache (full recompute)"])
    ratio = full / cached
    rows = [
        Row(
            "KV cache",
            generated / cached,
            "tokens/s",
            {
                "seconds": f"{cached:.2f}",
                "speed-up": f"{ratio:.1f}x",
                "target": f">= {TARGET:g}x",
                "met": ratio >= TARGET,
            },
        ),
        Row("no cache (full recompute)", generated / full, "tokens/s", {"seconds": f"{full:.2f}", "speed-up": "1.0x"}),
        Row("same tokens", float(same), "bool", {}),
    ]
    print_table(f"AR sampling, {args.batch} images x {args.tokens} tokens with CFG ({repeats} repeats, median)", rows)
    if not same:
        print("ERROR: the cached and uncached samplers disagree", file=sys.stderr)
    log_to_mlflow(args.mlflow, "ar_sampling", rows, vars(args) | {"params": params})
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
