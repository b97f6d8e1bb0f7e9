"""The tracking schema (:mod:`gigatok.tracking_schema`) is the one place a ``gigatok.*`` tag is named.

The rule that :func:`tag_literals` enforces over every ``.py`` file under ``gigatok/``, ``studies/``,
``analysis/`` and ``bench/`` except the schema module itself (read with :mod:`ast`, nothing is imported). A
string literal is tag-like, and refused, when

- it contains ```gigatok.`` (an MLflow search filter naming a tag: ``tags.`gigatok.kind` = ...``); or
- it starts with ``gigatok.`` and is the bare prefix ``gigatok.`` (a tag name being assembled), a tag the schema
  names or starts with one of its families' prefixes (``gigatok.provenance.``, ``gigatok.factor.``, ...; an
  f-string's leading text counts, so ``f"gigatok.provenance.{m}"`` is refused); or
- it starts with ``gigatok.`` and is not a path into the project's code: a module (``"gigatok.runs.spec"``, e.g. in
  ``importlib.import_module``) or one name in a module (``"gigatok.train.tokenizer_loop.train_tokenizer"``, e.g. in
  ``mock.patch``; not ``gigatok.<name>``, where tags live) is allowed, anything else (a new tag typed out by hand)
  is not.

Docstrings and other bare string statements are prose and are not read. Two tags share their names with modules,
``gigatok.study`` and ``gigatok.perceptual``: as literals they count as tags; a module path that needs them is
written ``gigatok.study.__name__``. Tests may spell tag names out (they check what the store holds); the names
themselves are pinned below, because the store's names must not change with the code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from gigatok import tracking_schema as schema

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gigatok", "studies", "analysis")
SCANNED = (*PACKAGES, "bench")
SCHEMA_FILE = ROOT / "gigatok" / "tracking_schema.py"

# Every tag name and family the stores hold, as they were before the schema existed: renaming one strands the
# runs already tracked (the analysis and the resuming launch would no longer find them).
STORED_TAGS = {
    "STUDY": "gigatok.study",
    "PROFILE": "gigatok.profile",
    "RUN_HASH": "gigatok.run_hash",
    "TOKENIZER_HASH": "gigatok.tokenizer_hash",
    "AR_HASH": "gigatok.ar_hash",
    "GIT_COMMIT": "gigatok.git_commit",
    "EXECUTOR": "gigatok.executor",
    "FACTORS": "gigatok.factors",
    "TOKENIZER_DIR": "gigatok.tokenizer_dir",
    "AR_DIR": "gigatok.ar_dir",
    "DESCRIBED": "gigatok.described",
    "FACTOR_PREFIX": "gigatok.factor.",
    "HOST": "gigatok.host",
    "SLURM_JOB_ID": "gigatok.slurm_job_id",
    "STAGE": "gigatok.stage",
    "LOGGED_PREFIX": "gigatok.logged.",
    "ERROR": "gigatok.error",
    "FAILED_STAGE": "gigatok.failed_stage",
    "SUBSTITUTES": "gigatok.substitutes",
    "SCHEDULED_AT": "gigatok.scheduled_at",
    "DEVICE_TYPE": "gigatok.device_type",
    "HOST_ALLOCATOR": "gigatok.host_allocator",
    "PROVENANCE_PREFIX": "gigatok.provenance.",
    "ARTIFACT_PREFIX": "gigatok.artifact.",
    "SOURCE_PREFIX": "gigatok.source.",
    "PERCEPTUAL": "gigatok.perceptual",
    "CFG_SCALE": "gigatok.cfg_scale",
    "DECODE_DEVICE": "gigatok.decode_device",
    "KIND": "gigatok.kind",
    "CFG_SEARCH": "gigatok.cfg_search",
    "CFG_SCHEDULE": "gigatok.cfg_schedule",
    "TRIAL_STATE": "gigatok.trial_state",
    "CFG_TRIAL_ORIGIN": "gigatok.cfg_trial_origin",
    "BENCHMARK": "gigatok.benchmark",
}


def schema_names() -> tuple[set[str], tuple[str, ...]]:
    """The schema's single tag names and its families' prefixes."""
    values = {
        k: v
        for k, v in vars(schema).items()
        if k.isupper() and isinstance(v, str) and v.startswith(schema.PREFIX) and v != schema.PREFIX
    }
    prefixes = tuple(v for k, v in values.items() if k.endswith("_PREFIX"))
    return {v for k, v in values.items() if not k.endswith("_PREFIX")}, prefixes


def project_modules(root: Path = ROOT) -> set[str]:
    modules = set()
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules.add(".".join(parts))
    return modules


def is_code_path(text: str, modules: set[str]) -> bool:
    """``text`` names a project module, or one name inside a module below the top package (``gigatok.<name>`` is
    a module or nothing: that is where tags live)."""
    parts = text.split(".")
    if not all(p.isidentifier() for p in parts):
        return False
    return ".".join(parts) in modules or (len(parts) > 2 and ".".join(parts[:-1]) in modules)


def tag_like(text: str, modules: set[str]) -> bool:
    if "`" + schema.PREFIX in text:
        return True
    if not text.startswith(schema.PREFIX):
        return False
    names, prefixes = schema_names()
    if text == schema.PREFIX or text in names or text.startswith(prefixes):
        return True
    return not is_code_path(text, modules)


def _prose(tree: ast.AST) -> set[int]:
    """The ids of string constants that are whole statements (docstrings and the like)."""
    return {
        id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


def tag_literals(paths: list[Path], modules: set[str], root: Path = ROOT) -> list[str]:
    """``file:line: 'literal'`` for each tag-like string literal in ``paths``."""
    found: list[tuple[str, int, str]] = []
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        prose = _prose(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in prose
                and tag_like(node.value, modules)
            ):
                found.append((str(path.relative_to(root)), node.lineno, node.value))
    return [f"{file}:{line}: {text!r}" for file, line, text in sorted(found)]


def test_no_tag_names_outside_the_schema() -> None:
    paths = [p for folder in SCANNED for p in sorted((ROOT / folder).rglob("*.py")) if p != SCHEMA_FILE]
    found = tag_literals(paths, project_modules())
    assert not found, (
        "gigatok.* tag names typed out of gigatok/tracking_schema.py (name them through it):\n" + "\n".join(found)
    )


def test_the_rule_on_small_sources(tmp_path: Path) -> None:
    (tmp_path / "gigatok" / "runs").mkdir(parents=True)
    for name in ("gigatok/__init__.py", "gigatok/runs/__init__.py", "gigatok/runs/spec.py", "gigatok/study.py"):
        (tmp_path / name).write_text("")
    source = tmp_path / "gigatok" / "example.py"
    source.write_text('''"""gigatok.provenance.<metric> in a docstring is prose."""
import importlib
importlib.import_module("gigatok.runs.spec")
patched = "gigatok.runs.spec.short_hash"
a = tags.get("gigatok.stage")
b = f"gigatok.provenance.{metric}"
c = "gigatok." + "error"
d = "tags.`gigatok.kind` = 'cfg_trial'"
e = {"gigatok.brand_new": 1}
f = "gigatok.study"
g = "gigatok-artifacts-"
''')
    modules = project_modules(tmp_path) | {"gigatok.example"}
    lines = tag_literals([source], modules, tmp_path)
    assert [line.split(": ", 1)[1] for line in lines] == [
        "'gigatok.stage'",
        "'gigatok.provenance.'",
        "'gigatok.'",
        "\"tags.`gigatok.kind` = 'cfg_trial'\"",
        "'gigatok.brand_new'",
        "'gigatok.study'",
    ]


def test_the_stored_names_are_unchanged() -> None:
    names, prefixes = schema_names()
    assert names | set(prefixes) == set(STORED_TAGS.values())  # every tag the schema names is pinned
    for constant, value in STORED_TAGS.items():
        assert getattr(schema, constant) == value, constant
    assert len(set(STORED_TAGS.values())) == len(STORED_TAGS)
    assert (
        schema.factor("size"),
        schema.provenance("rfid"),
        schema.artifact("feature_pca"),
        schema.logged("ar"),
        schema.source("ar", "_sha256"),
    ) == (
        "gigatok.factor.size",
        "gigatok.provenance.rfid",
        "gigatok.artifact.feature_pca",
        "gigatok.logged.ar",
        "gigatok.source.ar_sha256",
    )
    assert (schema.CFG_TRIAL, schema.STAGE_DONE, schema.LOGGED) == ("cfg_trial", "done", "1")


def test_a_study_run_is_created_with_the_tags_it_always_had() -> None:
    tags = schema.run_tags(
        study="scaling_1d_vs_2d",
        profile="tiny",
        run_hash="h",
        tokenizer_hash="t",
        ar_hash="a",
        git_commit="c",
        factors=[("size", "S-B"), ("seed", 1), ("semreg", True)],
        executor="local",
    )
    assert tags == {
        "gigatok.study": "scaling_1d_vs_2d",
        "gigatok.run_hash": "h",
        "gigatok.profile": "tiny",
        "gigatok.tokenizer_hash": "t",
        "gigatok.git_commit": "c",
        "gigatok.factors": '{"size": "S-B", "seed": 1, "semreg": true}',
        "gigatok.executor": "local",
        "gigatok.ar_hash": "a",
        "gigatok.factor.size": "S-B",
        "gigatok.factor.seed": "1",
        "gigatok.factor.semreg": "True",
    }
    assert "gigatok.ar_hash" not in schema.run_tags(
        study="s",
        profile="p",
        run_hash="h",
        tokenizer_hash="t",
        ar_hash=None,
        git_commit="c",
        factors=[],
        executor="slurm",
    )
    assert schema.experiment_tags("s", "tiny") == {"gigatok.study": "s", "gigatok.profile": "tiny"}
    assert schema.trial_tags(parent_run_id="r", study="s", profile="tiny", search="n") == {
        "mlflow.parentRunId": "r",
        "gigatok.kind": "cfg_trial",
        "gigatok.study": "s",
        "gigatok.profile": "tiny",
        "gigatok.cfg_search": "n",
    }


def test_one_trial_kind_and_one_metric_registry() -> None:
    pytest.importorskip("optuna")
    from analysis.load import CFG_TRIAL, FINAL_METRICS
    from gigatok.cfg_search import TRIAL_KIND
    from gigatok.runs.spec import STAGE_METRICS, STAGES

    assert CFG_TRIAL == TRIAL_KIND == schema.CFG_TRIAL
    assert STAGE_METRICS is schema.STAGE_METRICS and FINAL_METRICS == schema.FINAL_METRICS
    assert set(STAGE_METRICS) <= set(STAGES)
    assert len(set(FINAL_METRICS)) == len(FINAL_METRICS)


def test_the_schema_imports_neither_torch_nor_mlflow() -> None:
    code = (
        "import sys; import gigatok.tracking_schema; "
        "assert not {'torch', 'mlflow'} & set(sys.modules), sorted({'torch', 'mlflow'} & set(sys.modules))"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
