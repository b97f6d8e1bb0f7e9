"""Studies: a named grid of runs. A study is a short function that states only what varies.

::

    @study("reg_weight", reproduces="Table 7", about="lambda = 0.25, 0.5, 0.75, 1.0 on S-S")
    def reg_weight(p: Planner) -> list[RunSpec]:
        return [p.probe({"lambda": w}, p.tokenizer("S-S", semantic_weight=w)) for w in (0.25, 0.5, 0.75, 1.0)]

The :class:`Planner` fills in everything else from the profile (``tiny`` or ``paper``), applies the data folder
and the ``--set key=value`` overrides, and validates every config as it is built. :meth:`Study.plan` then replicates
each run over the planner's seeds (``--seeds N``, else the profile's default), adding the factor ``seed``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gigatok.config import (
    ARRunConfig,
    ConfigError,
    EvalConfig,
    Profile,
    TokenizerRunConfig,
    ar_run,
    get_profile,
    tokenizer_run,
)
from gigatok.runs.spec import PROBE_STAGES, RunSpec, settle_perceptual

StudyFn = Callable[["Planner"], list[RunSpec]]


@dataclass(frozen=True)
class Study:
    name: str
    reproduces: str  # the paper's figure or table
    about: str  # one line: what varies
    build: StudyFn
    # False for studies that train nothing (timings, released checkpoints): another seed would repeat the same run.
    seeded: bool = True

    def plan(self, planner: Planner) -> list[RunSpec]:
        """The study's runs, each replicated over the planner's seeds (as the factor ``seed``) when it trains."""
        planner = dataclasses.replace(planner, study=self.name)  # the profile's seed default can be per study
        specs = sweep(self.build(planner), planner.sweeps, planner.weights_dir)
        if self.seeded:
            swept = tuple((key, values[0]) for key, values in planner.sweeps)
            specs = replicate(specs, planner.seed_count, (*planner.overrides, *swept))
        hashes = [s.hash for s in specs]
        duplicates = {h for h in hashes if hashes.count(h) > 1}
        if duplicates:
            raise ConfigError(f"study {self.name}: runs {sorted(duplicates)} are planned twice")
        return specs


STUDIES: dict[str, Study] = {}


def study(name: str, *, reproduces: str, about: str, seeded: bool = True) -> Callable[[StudyFn], StudyFn]:
    """Register a study function under ``name``; ``seeded=False`` for one that trains nothing (no seed factor)."""

    def register(fn: StudyFn) -> StudyFn:
        if name in STUDIES:
            raise ValueError(f"study {name!r} is defined twice")
        STUDIES[name] = Study(name, reproduces, about, fn, seeded)
        return fn

    return register


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise KeyError(f"unknown study {name!r}; known: {', '.join(sorted(STUDIES))}")
    return STUDIES[name]


# ----------------------------------------------------------------------------------------------------------
# Overrides: --set key=value
# ----------------------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. tokenizer.train.max_steps=20")
    return key.strip(), value.strip()


def _convert(tp: Any, raw: str, key: str) -> Any:
    """``raw`` as the field's declared type (int, float, bool, str, None, tuple as JSON)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if type(None) in options and raw.lower() in ("none", "null"):
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, raw, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: cannot read {raw!r}")
    if origin is typing.Literal:
        if raw not in typing.get_args(tp):
            raise ConfigError(f"{key}: {raw!r} is not one of {list(typing.get_args(tp))}")
        return raw
    if tp is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}: {raw!r} is not a boolean (true/false)")
    if tp in (int, float):
        try:
            value = float(raw) if tp is float else int(raw)
        except ValueError:
            raise ConfigError(f"{key}: {raw!r} is not {'a number' if tp is float else 'an integer'}") from None
        return value
    if tp is str:
        return raw
    if origin is tuple:
        try:
            return tuple(json.loads(raw))
        except (json.JSONDecodeError, TypeError):
            raise ConfigError(f"{key}: {raw!r} is not a JSON list") from None
    raise ConfigError(f"{key}: cannot be set from the command line")


def _set_path(obj: Any, path: list[str], raw: str, full_key: str) -> Any:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):  # a config value, never a class
        raise ConfigError(f"--set {full_key}: unknown key")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = path[0]
    if name not in fields:
        raise ConfigError(f"--set {full_key}: unknown key ({type(obj).__name__} has {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(type(obj))
    if len(path) == 1:
        if dataclasses.is_dataclass(hints[name]):
            raise ConfigError(f"--set {full_key}: is a group of settings; name one of its fields")
        value = _convert(hints[name], raw, full_key)
    else:
        value = _set_path(getattr(obj, name), path[1:], raw, full_key)
    return dataclasses.replace(obj, **{name: value})  # __post_init__ validates the new value


OVERRIDE_ROOTS = ("tokenizer", "ar", "eval")


def apply_overrides(spec: RunSpec, overrides: tuple[tuple[str, str], ...]) -> RunSpec:
    """``spec`` with each ``key=value`` applied: keys are dotted paths rooted at tokenizer., ar. or eval.

    ``tokenizer.train.max_steps=20`` shortens the tokenizer's schedule, ``ar.train.epochs=1`` the AR model's,
    ``eval.gen_samples=50`` the sample count. Tokenizer overrides reach the AR config's copy of it as well.
    """
    tok, ar, ev = spec.tokenizer, spec.ar, spec.eval
    for key, raw in overrides:
        root, _, rest = key.partition(".")
        if root not in OVERRIDE_ROOTS or not rest:
            roots = ", ".join(r + "." for r in OVERRIDE_ROOTS)
            raise ConfigError(f"--set {key}: unknown key (keys start with {roots})")
        if root == "tokenizer":
            tok = _set_path(tok, rest.split("."), raw, key)
        elif root == "eval":
            ev = _set_path(ev, rest.split("."), raw, key)
        elif ar is not None:
            if rest.split(".")[0] == "tokenizer":
                raise ConfigError(f"--set {key}: set tokenizer fields with tokenizer.*")
            ar = _set_path(ar, rest.split("."), raw, key)
        # an ar.* override on a run without an AR model has nothing to change
    if ar is not None:
        ar = dataclasses.replace(ar, tokenizer=tok)
    return dataclasses.replace(spec, tokenizer=tok, ar=ar, eval=ev)


def check_override_keys(overrides: tuple[tuple[str, str], ...], profile: str) -> None:
    """Reject unknown keys and bad values even when no planned run would use them (e.g. ar.* on a tokenizer-only
    study), by applying them to a representative run of the profile."""
    tok = tokenizer_run("S-S", profile=profile)
    probe = RunSpec("check", (), tok, ar_run(tok, "B"), get_profile(profile).eval)
    apply_overrides(probe, overrides)


# ----------------------------------------------------------------------------------------------------------
# Seeds: --seeds N
# ----------------------------------------------------------------------------------------------------------

SEED_FACTOR = "seed"
SEED_KEYS = ("tokenizer.train.seed", "ar.train.seed")  # what a replica changes (the AR probe shares its tokenizer's)


def parse_seeds(text: str | int | None) -> int | None:
    """``--seeds N`` as a positive integer (None when not given: the profile's default)."""
    if text is None:
        return None
    raw = str(text).strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"--seeds {text}: expected a positive integer (runs per point), e.g. --seeds 3")
    return int(raw)


def with_seed(spec: RunSpec, seed: int) -> RunSpec:
    """``spec`` trained from ``seed``: its tokenizer and its AR probe share it, and ``seed`` joins its factors.

    Seed 0 is every config's default, so a run planned before seeds were a factor keeps its hash as seed 0.
    """
    tok = dataclasses.replace(spec.tokenizer, train=dataclasses.replace(spec.tokenizer.train, seed=seed))
    ar = None
    if spec.ar is not None:
        ar = dataclasses.replace(spec.ar, tokenizer=tok, train=dataclasses.replace(spec.ar.train, seed=seed))
    factors = (*((k, v) for k, v in spec.factors if k != SEED_FACTOR), (SEED_FACTOR, seed))
    return dataclasses.replace(spec, factors=factors, tokenizer=tok, ar=ar)


def replicate(specs: list[RunSpec], seeds: int, overrides: tuple[tuple[str, str], ...] = ()) -> list[RunSpec]:
    """Every run of ``specs`` at seeds 0 .. ``seeds`` - 1, seed by seed (all of seed 0 first, so a study stopped
    half-way has whole replicas). One seed leaves the runs as planned, without a ``seed`` factor."""
    if seeds == 1:
        return specs
    for key, _ in overrides:
        if key in SEED_KEYS:
            raise ConfigError(f"--set {key}: --seeds {seeds} varies the seed; to choose one by hand pass --seeds 1")
    for spec in specs:
        if spec.tokenizer.train.seed != 0 or (spec.ar is not None and spec.ar.train.seed != 0):
            raise ConfigError(f"study {spec.study}: run {spec.label} chooses its own seed; plan it with --seeds 1")
    return [with_seed(spec, seed) for seed in range(seeds) for spec in specs]


# ----------------------------------------------------------------------------------------------------------
# Sweeps: --sweep key=v1,v2,...
# ----------------------------------------------------------------------------------------------------------

Sweep = tuple[str, tuple[str, ...]]


def parse_sweep(text: str) -> Sweep:
    """``key=v1,v2`` as (key, values); commas inside brackets belong to a value (``[1,2,4]`` is one tuple)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--sweep {text!r}: expected key=v1,v2,..., e.g. tokenizer.optim.lr=1e-4,3e-4")
    values, depth, current = [], 0, ""
    for char in raw:
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    if any(not v for v in values):
        raise ConfigError(f"--sweep {text!r}: an empty value (expected key=v1,v2,...)")
    if len(set(values)) != len(values):
        raise ConfigError(f"--sweep {text!r}: a value is listed twice")
    return key.strip(), tuple(values)


def sweep(specs: list[RunSpec], sweeps: tuple[Sweep, ...], weights_dir: str | None = None) -> list[RunSpec]:
    """Every run of ``specs`` at every combination of the sweeps' values, each key joining the run's factors (so
    the hashes differ); combination by combination, so a study stopped half-way has whole grids."""
    if not sweeps:
        return specs
    out = []
    for combo in itertools.product(*[[(key, value) for value in values] for key, values in sweeps]):
        for spec in specs:
            try:
                swept = settle_perceptual(apply_overrides(spec, combo), weights_dir)
            except ConfigError as exc:  # a value the run's own config rules out (e.g. a grid a 2D run cannot have)
                shown = " ".join(f"{k}={v}" for k, v in combo)
                raise ConfigError(f"--sweep {shown} on run {spec.label}: {exc}") from None
            out.append(dataclasses.replace(swept, factors=(*spec.factors, *combo)))
    return out


# ----------------------------------------------------------------------------------------------------------
# The planner a study function receives
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planner:
    """Builds a study's runs at one profile: the study states what varies, the profile gives the rest."""

    profile_name: str = "tiny"
    data_root: str | None = None
    overrides: tuple[tuple[str, str], ...] = ()
    study: str = ""
    seeds: int | None = None  # runs per point (--seeds); None: the profile's default
    sweeps: tuple[Sweep, ...] = ()  # --sweep key=v1,v2: the study's grid times these values
    # Where the pretrained files are (None: $GIGATOK_WEIGHTS_DIR, else the default folder): a tiny run's
    # loss.perceptual "auto" is settled by whether the vgg16 file is there.
    weights_dir: str | None = None

    def __post_init__(self) -> None:
        if self.seeds is not None and (
            isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1
        ):
            raise ConfigError(f"--seeds {self.seeds}: expected a positive integer (runs per point)")

    @property
    def profile(self) -> Profile:
        return get_profile(self.profile_name)

    @property
    def seed_count(self) -> int:
        """How many seeds each run is replicated over: ``--seeds``, else the profile's default for this study."""
        if self.seeds is not None:
            return self.seeds
        return self.profile.study_seeds.get(self.study, self.profile.seeds)

    def paper_epochs(self, epochs: float) -> float:
        """This profile's training length for a run the paper trains ``epochs`` epochs."""
        return self.profile.paper_epochs(epochs)

    def tokenizer(self, name: str, **kwargs: Any) -> TokenizerRunConfig:
        """:func:`gigatok.config.tokenizer_run` at this profile and data folder."""
        return tokenizer_run(name, profile=self.profile_name, data_root=self.data_root, **kwargs)

    def ar(self, tokenizer: TokenizerRunConfig, size: str = "B", **kwargs: Any) -> ARRunConfig:
        """An AR model trained with the probe's recipe (``system=True``: the system-level recipe of its size)."""
        return ar_run(tokenizer, size, **kwargs)

    def run(
        self,
        factors: dict[str, Any],
        tokenizer: TokenizerRunConfig,
        ar: ARRunConfig | None = None,
        stages: tuple[str, ...] = PROBE_STAGES,
        eval: EvalConfig | None = None,
        tokenizer_snapshot: float | None = None,
    ) -> RunSpec:
        spec = RunSpec(
            self.study,
            tuple(factors.items()),
            tokenizer,
            ar,
            eval or self.profile.eval,
            self._searched(stages, ar),
            tokenizer_snapshot,
        )
        return settle_perceptual(apply_overrides(spec, self.overrides), self.weights_dir)

    def _searched(self, stages: tuple[str, ...], ar: ARRunConfig | None) -> tuple[str, ...]:
        """``stages`` with the CFG search added where the profile reports every gFID at its searched best scale."""
        if (
            self.profile.cfg_search_every_gfid
            and ar is not None
            and "generation" in stages
            and "cfg_search" not in stages
        ):
            return (*stages, "cfg_search")
        return stages

    def probe(
        self, factors: dict[str, Any], tokenizer: TokenizerRunConfig, ar_size: str = "B", **ar_kwargs: Any
    ) -> RunSpec:
        """The standard run: train the tokenizer, score reconstruction, train an AR probe, score generation and
        both linear probes."""
        return self.run(factors, tokenizer, self.ar(tokenizer, ar_size, **ar_kwargs))
