"""Run identities do not drift: every planned run's hash, and the tokenizer and AR folders it names, at every
profile, against values recorded in tests/fixtures/pinned_run_hashes.json.

A refactor must leave these unchanged (a changed hash orphans finished runs and their folders). A deliberate change
of what a run is (a new config field that is not hash-neutral, a new default) rewrites the file on purpose:

    python tests/test_run_hashes.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import studies.catalog  # noqa: F401  (registers the studies)
from gigatok.study import STUDIES, Planner, get_study

PINNED = Path(__file__).resolve().parent / "fixtures" / "pinned_run_hashes.json"
PROFILES = ("tiny", "tiny-long", "paper")


def planned_hashes(weights_dir: str) -> dict[str, dict[str, str]]:
    """``{"study/profile": {run label: "run tokenizer ar"}}`` for every study's default plan. ``weights_dir`` is
    an empty folder, so the tiny profile's loss.perceptual settles to "off" whatever this machine holds."""
    out: dict[str, dict[str, str]] = {}
    for profile in PROFILES:
        for name in sorted(STUDIES):
            specs = get_study(name).plan(Planner(profile, study=name, weights_dir=weights_dir))
            runs = {
                spec.label: f"{spec.hash} {spec.tokenizer.hash()} {spec.ar.hash() if spec.ar else '-'}"
                for spec in specs
            }
            assert len(runs) == len(specs), f"{name}: two runs share a label"
            out[f"{name}/{profile}"] = runs
    return out


def test_planned_run_hashes_are_pinned(tmp_path: Path) -> None:
    pinned = json.loads(PINNED.read_text())
    now = planned_hashes(str(tmp_path))
    changed = [key for key in sorted(set(pinned) | set(now)) if pinned.get(key) != now.get(key)]
    assert not changed, (
        f"run hashes changed in {changed}: finished runs would no longer be found; if the change "
        f"is deliberate, rewrite {PINNED.name} (python tests/test_run_hashes.py --write)"
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    import tempfile

    with tempfile.TemporaryDirectory() as empty:
        PINNED.write_text(json.dumps(planned_hashes(empty), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINNED}")
