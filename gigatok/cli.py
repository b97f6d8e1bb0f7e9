"""The ``gigatok`` command: one entry point for the workbench's commands, each of which keeps its own form
(``python studies/run.py ...`` and ``gigatok run ...`` are the same command with the same flags).

    gigatok run scaling_1d_vs_2d --dry-run
    gigatok cfg-search --study scaling_1d_vs_2d --only size=S-S,kind=1d
    gigatok plot
    gigatok weights
    gigatok -q run scaling_1d_vs_2d      (-v/--verbose, -q/--quiet before the command: its log level; the study
                                          and search commands take them after it too)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

EXIT_BAD_INPUT = 2
VERBOSITY_FLAGS = {"-v": 1, "--verbose": 1, "-q": -1, "--quiet": -1}


@dataclass(frozen=True)
class Command:
    module: str  # imported only when the command runs: `gigatok --help` stays fast
    about: str


COMMANDS: dict[str, Command] = {
    "run": Command("studies.run", "plan, launch, follow or list a study's runs (python studies/run.py)"),
    "cfg-search": Command(
        "studies.cfg_search", "search one run's CFG scale with Optuna (python studies/run.py cfg_search)"
    ),
    "plot": Command("analysis.plot_scaling", "the paper's figures and tables from MLflow"),
    "plot-training": Command("analysis.plot_training", "training curves of runs from MLflow"),
    "weights": Command("gigatok.weights", "the pretrained files: list, verify, fetch"),
    "convert": Command("gigatok.convert.__main__", "a released checkpoint as a trained run folder"),
    "train-tokenizer": Command("studies.train_tokenizer", "train one tokenizer outside a study"),
    "train-ar": Command("studies.train_ar", "train one AR probe on a trained tokenizer outside a study"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: gigatok [-v|-q] COMMAND [ARGS...]   (gigatok COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:{width}}  {command.about}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verbosity = None
    while args[:1] and args[0] in VERBOSITY_FLAGS:  # the log level of every command (gigatok.logs)
        verbosity = VERBOSITY_FLAGS[args.pop(0)]
    from gigatok.logs import configure

    configure(verbosity)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else EXIT_BAD_INPUT
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"gigatok: unknown command {name!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return int(importlib.import_module(command.module).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
