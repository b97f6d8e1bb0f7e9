"""What the parity scripts need of a checkout of the authors' code: its commit, and its modules importable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def authors_commit(root: Path) -> str:
    """The checkout's commit, which every fixture names; exits with a one-line error outside a git checkout."""
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"--authors {root}: not a git checkout, so the fixture cannot name the commit it came from")
    return out.stdout.strip()


def put_first_on_path(root: Path) -> None:
    """Make the checkout's top-level packages importable. Their ``tokenizer`` is a namespace package, which
    tools/parity/tokenizer.py (on sys.path as the scripts' folder) would shadow, so that folder is dropped."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [str(root)] + [p for p in sys.path if Path(p or ".").resolve() != here]
