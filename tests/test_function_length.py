"""No function in gigatok/, studies/ or analysis/ grows past 80 lines (issue 16's rule, as ruff format lays code out).

The functions that were longer when the rule came are listed with their length then: each may only shrink, and
leaves the list once it is within the limit. A new long function fails, naming file, function and length.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 80
# Longer than the limit when the rule came (lines, ruff-formatted): to be split, never to grow.
KNOWN_LONG = {}


def function_lengths() -> dict[tuple[str, str], int]:
    out = {}
    for folder in ("gigatok", "studies", "analysis"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    key = (path.relative_to(ROOT).as_posix(), node.name)
                    out[key] = max(out.get(key, 0), node.end_lineno - node.lineno + 1)
    return out


def test_no_function_grows_past_the_limit() -> None:
    lengths = function_lengths()
    too_long = [
        f"{file}:{name} is {n} lines"
        + (f" (was {KNOWN_LONG[(file, name)]}: it may only shrink)" if (file, name) in KNOWN_LONG else "")
        for (file, name), n in sorted(lengths.items())
        if n > max(LIMIT, KNOWN_LONG.get((file, name), 0))
    ]
    assert not too_long, f"functions longer than {LIMIT} lines: {too_long}"


def test_the_list_of_long_functions_only_shrinks() -> None:
    lengths = function_lengths()
    fixed = [f"{file}:{name}" for (file, name) in KNOWN_LONG if lengths.get((file, name), 0) <= LIMIT]
    assert not fixed, f"within {LIMIT} lines now, so remove from KNOWN_LONG: {fixed}"


def test_the_study_command_is_flags_and_printing() -> None:
    """Issue 16's rule for studies/run.py: under 450 lines, and no MLflow client calls (gigatok.launch does that)."""
    source = (ROOT / "studies" / "run.py").read_text()
    assert len(source.splitlines()) < 450, len(source.splitlines())
    calls = [n for n in ("MlflowClient", "client.", "import mlflow", "from mlflow") if n in source]
    assert not calls, calls
