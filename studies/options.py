"""Flags and exit codes the study command (``studies/run.py``) and the CFG search (``studies/cfg_search.py``)
share."""

from __future__ import annotations

import argparse

from gigatok.config import PROFILES

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def add_verbosity_options(p: argparse.ArgumentParser) -> None:
    """``-v``/``-q``: how much the command (and the jobs it starts) log; read by :func:`gigatok.logs.configure`."""
    talk = p.add_mutually_exclusive_group()
    talk.add_argument(
        "-v", "--verbose", dest="verbosity", action="store_const", const=1, default=None, help="debug messages too"
    )
    talk.add_argument(
        "-q", "--quiet", dest="verbosity", action="store_const", const=-1, help="warnings and errors only"
    )


def seeds_default_text() -> str:
    """The profiles' seed defaults in words, from the profiles themselves: '1, but 2 for scaling_1d_vs_2d at tiny'."""
    plain = sorted({prof.seeds for prof in PROFILES.values()})
    per_study = [
        f"{n} for {study} at {prof.name}" for prof in PROFILES.values() for study, n in prof.study_seeds.items()
    ]
    return ", ".join(str(n) for n in plain) + (f", but {'; '.join(per_study)}" if per_study else "")


def add_seeds_option(p: argparse.ArgumentParser) -> None:
    # Read as text and checked by parse_seeds, so a bad value is a one-line error like every other (also in --dry-run).
    p.add_argument(
        "--seeds",
        default=None,
        metavar="N",
        help=f"replicate every run over seeds 0..N-1 (default: {seeds_default_text()})",
    )


def add_substitute_and_device_options(p: argparse.ArgumentParser) -> None:
    """What every command that runs stages takes: whether stand-ins may replace missing networks, and the device."""
    subs = p.add_mutually_exclusive_group()
    subs.add_argument(
        "--allow-substitutes",
        dest="substitutes",
        action="store_true",
        default=False,
        help="let random stand-ins replace missing pretrained networks (tests and smoke runs; every "
        "affected run is tagged gigatok.substitutes)",
    )
    subs.add_argument(
        "--no-substitutes",
        dest="substitutes",
        action="store_false",
        help="refuse substitutes (the default at every profile)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def add_slurm_options(p: argparse.ArgumentParser) -> None:
    slurm = p.add_argument_group("Slurm (flags override --cluster-config)")
    slurm.add_argument("--cluster-config", default=None, help="TOML file with the keys below ([slurm] table)")
    for name in ("partition", "account", "qos", "constraint"):
        slurm.add_argument(f"--{name}")
    slurm.add_argument("--nodes", type=int)
    slurm.add_argument("--gpus-per-node", type=int, help="one DDP process per GPU (default 1; 0 at tiny)")
    slurm.add_argument("--cpus-per-task", type=int)
    slurm.add_argument("--mem-gb", type=int)
    slurm.add_argument("--time-min", type=int, help="time limit per job, minutes")
    slurm.add_argument("--array-parallelism", type=int, help="at most this many jobs of the array run at once")
    slurm.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE", help="any other sbatch option (repeat)")


def load_catalog() -> None:
    import studies.catalog  # noqa: F401  (registers the studies)


def add_place_options(p: argparse.ArgumentParser) -> None:
    """Where runs execute, read their data and weights, and are tracked: the same flags for a study and a search."""
    p.add_argument("--executor", default="auto", help="auto (slurm if sbatch exists, else local), slurm, local, debug")
    add_path_options(p)


def add_path_options(p: argparse.ArgumentParser, data: bool = True) -> None:
    """Where runs read their data and weights, write their folders and are tracked: every command that runs one
    (``data=False``: one that reads the data its tokenizer was trained on)."""
    if data:
        p.add_argument(
            "--data",
            default=None,
            help="image folder with train/ and val/ class folders: ImageNet at the "
            "paper profile; at tiny, your images in place of the built-in dataset",
        )
        # the flag's name before it was --data, as studies/run.py names it: still read, no longer shown
        p.add_argument("--data-root", dest="data", help=argparse.SUPPRESS)
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--runs-dir", default="runs", help="stage outputs and job logs (default ./runs)")
    p.add_argument("--weights-dir", default=None, help="pretrained files (default $GIGATOK_WEIGHTS_DIR)")


PROFILE_HELP = (
    "tiny (CPU, built-in data; default), tiny-long (the tiny models trained five times longer with a perceptual "
    "term: samples that pass recall 0.1, hours where tiny takes minutes) or paper (Table 9, ImageNet)"
)


def add_profile_option(p: argparse.ArgumentParser) -> None:
    from gigatok.config import PROFILES

    p.add_argument("--profile", default="tiny", choices=sorted(PROFILES), help=PROFILE_HELP)


def add_single_run_options(p: argparse.ArgumentParser, data: bool = True) -> None:
    """What a single-run script (``train_tokenizer.py``, ``train_ar.py``) takes besides its run: the study
    command's flags for data, folders, tracking, weights, substitutes, device and log level, and its experiment."""
    from gigatok.launch.single import SINGLE_EXPERIMENT

    add_path_options(p, data)
    p.add_argument(
        "--experiment",
        default=SINGLE_EXPERIMENT,
        help="MLflow experiment of the run (default single; single-tiny at the tiny profile, as a study's)",
    )
    add_substitute_and_device_options(p)
    add_verbosity_options(p)
