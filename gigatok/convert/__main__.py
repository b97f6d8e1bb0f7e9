"""Convert an authors' released checkpoint into a workbench run folder.

    python -m gigatok.convert tokenizer VQ_SS256_e100.pt --data /datasets/imagenet
    python -m gigatok.convert ar GPT_B256_e300_VQ_SS.pt --tokenizer-run runs/tokenizer-<hash>
    python -m gigatok.convert tokenizer my_tokenizer.pt --out converted/my-tokenizer

By default the folder goes into the runs folder (``--runs-dir``, default ./runs) under the name the
``released_checkpoints`` study gives it, so the study evaluates it without converting again (pass the study's
``--profile`` and ``--data``). A file named like a released checkpoint (or ``--name``) must hold that checkpoint's
architecture at the profile; any other file is converted as it is and recorded by its name and sha256.
Errors are one line on stderr, exit status 2, and leave nothing behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from gigatok.config import (
    AR_SIZE_NAMES,
    ConfigError,
    TokenizerRunConfig,
    ar_run,
    get_profile,
    tokenizer_run,
)
from gigatok.convert import ConversionError, first_line
from gigatok.convert.released import (
    FILE_PREFIX,
    RELEASED,
    convert_to_run,
    read_authors,
    released_ar_run,
    released_tokenizer_run,
)
from gigatok.weights import file_sha256

EXIT_BAD_INPUT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m gigatok.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="kind", required=True)
    tok = sub.add_parser("tokenizer", help="an authors' VQ tokenizer checkpoint (VQ_*.pt)")
    tok.add_argument("--profile", default="paper", help="the recipe recorded with the weights (default paper)")
    tok.add_argument("--data", default=None, help="image folder the run evaluates on (as the study's --data)")
    ar = sub.add_parser("ar", help="an authors' GPT checkpoint (GPT_*.pt)")
    ar.add_argument("--tokenizer-run", required=True, help="the converted tokenizer's run folder")
    for s in (tok, ar):
        s.add_argument("path", help="the authors' checkpoint file")
        s.add_argument("--name", default=None, help="the released checkpoint it is (default: from the file name)")
        where = s.add_mutually_exclusive_group()
        where.add_argument("--out", default=None, help="the run folder to write (must not exist)")
        where.add_argument("--runs-dir", default="runs", help="write RUNS/tokenizer-<hash> or ar-<hash> (default runs)")
    return p.parse_args(argv)


def _released_name(path: Path, name: str | None) -> str | None:
    if name is not None:
        return name
    return path.name if path.stem in RELEASED else None  # with its suffix, so an error names the file


def _own_source(path: Path) -> str:
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    return f"{FILE_PREFIX}{path.name}:sha256:{file_sha256(path)}"


def _own_tokenizer_run(path: Path, profile: str, data: str | None) -> TokenizerRunConfig:
    """A user's own tokenizer file: its architecture as the converter reads it, the profile's recipe."""
    found, _ = read_authors(path, "tokenizer")
    try:
        base = tokenizer_run(found.name, profile=profile, data_root=data)
    except ConfigError:  # a size the profile has no recipe for: the smallest one's
        base = tokenizer_run("S-S", profile=profile, data_root=data)
    return dataclasses.replace(base, tokenizer=found, source=_own_source(path))


def _tokenizer_plan(args: argparse.Namespace, path: Path) -> TokenizerRunConfig:
    data = str(Path(args.data).resolve()) if args.data else None
    if args.data and not Path(args.data).is_dir():
        raise ConversionError(f"--data {args.data}: no such directory")
    get_profile(args.profile)
    name = _released_name(path, args.name)
    if name is not None:
        return released_tokenizer_run(name, args.profile, data)
    return _own_tokenizer_run(path, args.profile, data)


def _tokenizer_of(run_dir: Path) -> TokenizerRunConfig:
    from gigatok.config import run_config_from_dict

    config, summary = run_dir / "config.json", run_dir / "summary.json"
    if not config.is_file() or not summary.is_file():
        raise ConversionError(
            f"--tokenizer-run {run_dir}: not a finished tokenizer run folder (no config.json and summary.json)"
        )
    try:
        return run_config_from_dict(json.loads(config.read_text())["config"])
    except (ConfigError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"--tokenizer-run {run_dir}: not a tokenizer run folder ({exc})") from None


def _ar_plan(args: argparse.Namespace, path: Path):  # -> ARRunConfig
    tokenizer = _tokenizer_of(Path(args.tokenizer_run))
    name = _released_name(path, args.name)
    if name is not None:
        return released_ar_run(name, tokenizer)
    found, _ = read_authors(path, "ar")
    sizes = get_profile(tokenizer.profile).ar_sizes
    size = next((s for s in AR_SIZE_NAMES if sizes[s].width == found.width and sizes[s].depth == found.depth), "B")
    base = ar_run(tokenizer, size)
    try:
        return dataclasses.replace(base, model=found, source=_own_source(path))
    except ConfigError as exc:
        raise ConversionError(f"{path}: does not fit the tokenizer of {args.tokenizer_run} ({exc})") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = Path(args.path)
    try:
        planned = _tokenizer_plan(args, path) if args.kind == "tokenizer" else _ar_plan(args, path)
        prefix = "tokenizer" if args.kind == "tokenizer" else "ar"
        run_dir = Path(args.out) if args.out else Path(args.runs_dir) / f"{prefix}-{planned.hash()}"
        origin = convert_to_run(path, args.kind, planned, run_dir)
    except (ConversionError, ConfigError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{run_dir}: {args.kind} {planned.hash()} from {origin['file']} (sha256 {origin['sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
