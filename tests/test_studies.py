"""Study plans, overrides and the study command line's bad-input handling (fast: nothing is trained)."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from services import run_cli

import studies.catalog  # noqa: F401  (registers the studies)
from gigatok.config import ConfigError, get_profile
from gigatok.dispatch import DispatchError, RunJob, group_by_tokenizer, resolve_executor, slurm_available
from gigatok.launch import planning
from gigatok.pipeline import RunContext, RunSpec, completed_stages
from gigatok.study import STUDIES, Planner, apply_overrides, get_study, parse_seeds

ROOT = Path(__file__).resolve().parents[1]
PAPER_STUDIES = {
    "scaling_vanilla": 3,
    "scaling_semreg": 8,
    "scaling_1d_vs_2d": 6,
    "enc_dec_asymmetry": 4,
    "align_layer": 3,
    "semantic_encoder": 3,
    "reg_weight": 4,
    "train_duration": 10,
    "entropy_loss": 2,
    "ar_probe_vs_large": 6,
    "system_level": 7,
    "decode_cost": 9,
    "feature_pca": 2,
    "tokenizer_checkpoints": 10,
    "released_checkpoints": 8,
}
UNSEEDED = {"decode_cost", "released_checkpoints"}  # they train nothing: one replica whatever --seeds says


def planned_count(name: str, seeds: int) -> int:
    return PAPER_STUDIES[name] * (1 if name in UNSEEDED else seeds)


# What each study plans without --seeds, written out rather than read from the profile: one seed, except the
# README's main study at tiny.
DEFAULT_SEEDS = {("tiny", "scaling_1d_vs_2d"): 2}


def default_seeds(profile: str, name: str) -> int:
    return DEFAULT_SEEDS.get((profile, name), 1)


@pytest.mark.parametrize("profile", ["tiny", "paper"])
def test_every_study_plans_and_validates(profile: str) -> None:
    assert set(STUDIES) == set(PAPER_STUDIES)
    assert get_profile("tiny").seeds == 1 and get_profile("paper").seeds == 1
    # The README's main study draws its seed spread by default at tiny; nothing else does, and nothing at paper.
    assert get_profile("tiny").study_seeds == {"scaling_1d_vs_2d": 2} and get_profile("paper").study_seeds == {}
    for name in PAPER_STUDIES:
        specs = get_study(name).plan(Planner(profile))
        count = planned_count(name, default_seeds(profile, name))
        assert len(specs) == count, name
        assert len({s.hash for s in specs}) == count, f"{name}: two runs share a hash"
        for spec in specs:
            assert spec.study == name and spec.profile == profile
            assert spec.factors, f"{name}: a run without factors"
            assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).hash == spec.hash


def test_studies_vary_what_the_paper_varies() -> None:
    p = Planner("paper")
    fig9 = get_study("scaling_1d_vs_2d").plan(p)
    assert {(s.tokenizer.tokenizer.name, s.tokenizer.tokenizer.kind) for s in fig9} == {
        (n, k) for n in ("S-S", "S-B", "B-L") for k in ("1d", "2d")
    }
    assert all(s.tokenizer.tokenizer.semantic.enabled for s in fig9)
    vanilla = get_study("scaling_vanilla").plan(p)
    assert not any(s.tokenizer.tokenizer.semantic.enabled for s in vanilla)
    assert [s.tokenizer.tokenizer.semantic.weight for s in get_study("reg_weight").plan(p)] == [0.25, 0.5, 0.75, 1.0]
    assert [s.tokenizer.tokenizer.semantic.layer for s in get_study("align_layer").plan(p)] == [2, 3, 4]
    assert [s.tokenizer.train.epochs for s in get_study("train_duration").plan(p)][::2] == [40, 60, 80, 100, 120]
    assert {s.tokenizer.train.epochs for s in get_study("train_duration").plan(Planner("tiny"))} == {
        0.4,
        0.6,
        0.8,
        1.0,
        1.2,
    }
    entropy = get_study("entropy_loss").plan(p)
    assert [s.tokenizer.tokenizer.quantizer.entropy_weight for s in entropy] == [0.0, 5e-3]
    assert all(s.ar is None and s.stages == ("tokenizer", "reconstruction") for s in entropy)
    # Without entropy loss: the 622M tokenizer's recipe (the shortcut, no warm-up); with it: warm-up, no shortcut.
    off, on = entropy
    assert (off.tokenizer.loss.shortcut_end_step, off.tokenizer.optim.warmup_steps) == (15_000, 0)
    assert (on.tokenizer.loss.shortcut_end_step, on.tokenizer.optim.warmup_steps) == (0, 5_000)
    system = get_study("system_level").plan(p)
    assert all(s.ar.train.epochs == 300 for s in system)
    assert {s.stages for s in get_study("decode_cost").plan(p)} == {("decode_cost",)}


@pytest.mark.parametrize(("profile", "start"), [("paper", 80_000), ("tiny", 1_600)])
def test_system_level_has_the_b_l_dino_discriminator_row(profile: str, start: int) -> None:
    p = Planner(profile)
    runs = {
        (dict(s.factors)["size"], dict(s.factors)["ar_size"]): s
        for s in get_study("system_level").plan(p)
        if dict(s.factors).get("seed", 0) == 0
    }
    plain, dino = runs[("B-L", "B")], runs[("B-L-dino", "B")]  # analysis/paper_values.csv's Table 10 row keys
    assert plain.tokenizer.loss.discriminator == "patchgan"
    assert dino.tokenizer.loss.discriminator == "dino" and dino.tokenizer.loss.gan_start_step == start
    assert dino.tokenizer.tokenizer == plain.tokenizer.tokenizer and dino.tokenizer.tokenizer.name == "B-L"
    # Everything but the discriminator and its start is the B-L/B run's.
    loss = dataclasses.replace(
        dino.tokenizer.loss, discriminator="patchgan", gan_start_step=plain.tokenizer.loss.gan_start_step
    )
    assert dataclasses.replace(dino.tokenizer, loss=loss) == plain.tokenizer
    assert dino.ar.size == "B" and dino.ar.train == plain.ar.train
    assert dataclasses.replace(dino.ar.train, seed=0) == p.profile.system_ar_train_for("B")
    assert dino.stages == plain.stages and dino.eval == plain.eval and dino.eval.cfg_schedule == "step"


def test_system_level_dry_runs_at_paper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        ["system_level", "--dry-run", "--profile", "paper", "--json", "--only", "ar_size=B"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert code == 0
    runs = {r["factors"]["size"]: r for r in json.loads(out)["runs"]}
    assert set(runs) == {"S-S", "S-B", "B-L", "XL-XXL", "B-L-dino"}
    # The discriminator is not part of the tokenizer's count (Table 9's 622M for B-L), whichever is used.
    assert runs["B-L-dino"]["tokenizer_params"] == runs["B-L"]["tokenizer_params"]
    assert abs(runs["B-L-dino"]["tokenizer_params"] / 1e6 - 622) < 2


def test_runs_sharing_a_tokenizer_go_to_one_job() -> None:
    specs = get_study("ar_probe_vs_large").plan(Planner("tiny", seeds=2))
    groups = group_by_tokenizer(specs)
    assert [len(g) for g in groups] == [2, 2, 2] * 2  # three tokenizers, two seeds
    assert all(len({s.tokenizer.hash() for s in g}) == 1 for g in groups)
    assert {s.ar.size for s in groups[0]} == {"B", "XL"}  # Fig. 6: the probe against AR-XL


def test_run_hash_is_stable_across_processes() -> None:
    code = (
        "import studies.catalog; from gigatok.study import get_study, Planner; "
        "print(' '.join(s.hash for s in get_study('scaling_1d_vs_2d').plan(Planner('paper'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [s.hash for s in get_study("scaling_1d_vs_2d").plan(Planner("paper"))]


def test_overrides_are_typed_validated_and_change_the_hash() -> None:
    spec = get_study("reg_weight").plan(Planner("tiny"))[0]
    changed = apply_overrides(
        spec,
        (
            ("tokenizer.train.max_steps", "7"),
            ("ar.train.epochs", "1.5"),
            ("eval.gen_samples", "64"),
            ("eval.recon_images", "none"),
        ),
    )
    assert changed.tokenizer.train.max_steps == 7 and changed.ar.train.epochs == 1.5
    assert changed.ar.tokenizer == changed.tokenizer  # the AR run trains on the overridden tokenizer
    assert changed.eval.gen_samples == 64 and changed.eval.recon_images is None
    assert changed.hash != spec.hash
    bad = [
        (("tokenizer.train.max_step", "3"), "tokenizer.train.max_step: unknown key"),
        (("tokenizer.train.max_steps", "abc"), "not an integer"),
        (("tokenizer.train.max_steps", "0"), "train.max_steps"),
        (("eval.cfg_schedule", "linear"), "eval.cfg_schedule"),
        (("optim.lr", "1"), "unknown key"),
        (("tokenizer.train", "1"), "group of settings"),
    ]
    for override, message in bad:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            apply_overrides(spec, (override,))


def test_executor_resolution() -> None:
    assert resolve_executor("auto") == ("slurm" if slurm_available() else "local")
    assert resolve_executor("debug") == "debug"
    with pytest.raises(DispatchError, match="unknown executor"):
        resolve_executor("kubernetes")
    if not slurm_available():
        with pytest.raises(DispatchError, match="sbatch is not on PATH"):
            resolve_executor("slurm")


def test_job_holds_configs_only(tmp_path: Path) -> None:
    """What Submitit pickles at submission is the run specs and paths: resuming reads state from disk."""
    import pickle

    specs = get_study("ar_probe_vs_large").plan(Planner("tiny"))[:2]
    ctx = RunContext(str(tmp_path / "runs"), f"sqlite:///{tmp_path}/mlflow.db")
    job = RunJob(specs, ctx, ["a", "b"])
    restored = pickle.loads(pickle.dumps(job))
    assert [s.hash for s in restored.specs] == [s.hash for s in specs] and restored.ctx == ctx
    delayed = job.checkpoint()  # what Submitit requeues on preemption: the same callable, same arguments
    assert delayed.function is job
    assert completed_stages(specs[0], ctx) == []


# ----------------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------------


def test_list_and_dry_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--list", "--json"], tmp_path, monkeypatch, capsys)
    assert code == 0
    listed = {r["study"]: r for r in json.loads(out)}
    assert {k: v["runs"] for k, v in listed.items()} == {
        k: planned_count(k, default_seeds("tiny", k)) for k in PAPER_STUDIES
    }
    assert listed["scaling_1d_vs_2d"]["reproduces"] == "Fig. 9"

    code, out, _ = run_cli(
        ["scaling_1d_vs_2d", "--dry-run", "--profile", "paper", "--json"], tmp_path, monkeypatch, capsys
    )
    assert code == 0
    plan = json.loads(out)
    runs = {(r["tokenizer"], r["kind"]): r for r in plan["runs"]}
    assert len(runs) == 6
    # Table 9 / Table 8: S-S 136M tokenizer, B-L 622M; the 111M AR probe.
    assert round(runs[("S-S", "1d")]["tokenizer_params"] / 1e6) == 136
    assert abs(runs[("B-L", "1d")]["tokenizer_params"] / 1e6 - 622) < 2
    assert round(runs[("S-S", "1d")]["ar_params"] / 1e6) == 111
    assert runs[("S-S", "2d")]["factors"] == {"size": "S-S", "kind": "2d"}
    assert all(r["stages_done"] == [] and r["mlflow_status"] is None for r in plan["runs"])

    code, out, _ = run_cli(
        ["scaling_1d_vs_2d", "--dry-run", "--only", "size=S-B", "--seeds", "2"], tmp_path, monkeypatch, capsys
    )
    assert code == 0 and out.count("size=S-B") == 4 and "S-S" not in out.split("\n", 1)[1]  # 1d/2d, two seeds
    assert "2 seeds per point" in out.splitlines()[0]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_parameter_counts_build_each_architecture_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # A sweep over seeds has one model shape per size: the dry run of a 1,000-run study must not build 1,000 models.
    import gigatok.models.tokenizer

    built = []
    real = gigatok.models.tokenizer.build_tokenizer

    def counted(cfg: object, device: str) -> object:
        built.append(cfg)
        return real(cfg, device)

    monkeypatch.setattr(gigatok.models.tokenizer, "build_tokenizer", counted)
    monkeypatch.setattr(planning, "_param_cache", {})
    p = Planner("tiny")
    seeds = [p.tokenizer("S-S", seed=s) for s in range(3)]
    assert len({t.hash() for t in seeds}) == 3  # three runs ...
    counts = {planning.parameter_count("tokenizer", t) for t in seeds}
    assert len(counts) == 1 and len(built) == 1  # ... one architecture, built once
    assert planning.parameter_count("tokenizer", p.tokenizer("S-B")) != counts.pop() and len(built) == 2


def test_a_sweep_over_lambda_builds_one_model_with_and_one_without_the_projector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gigatok.models.tokenizer import build_tokenizer

    monkeypatch.setattr(planning, "_param_cache", {})
    p = Planner("tiny")
    runs = {w: p.tokenizer("S-S", semantic_weight=w) for w in (0.0, 0.25, 1.0)}
    counts = {w: planning.tokenizer_parameter_counts(t) for w, t in runs.items()}
    for w, t in runs.items():  # the counts of the model each run trains
        assert counts[w] == build_tokenizer(t.tokenizer, "meta").parameter_counts()
    assert "semantic_projector" not in counts[0.0] and counts[0.25]["semantic_projector"] > 0
    assert len(planning._param_cache) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bad_data_folders(base: Path) -> dict[str, str]:
    """Data folders a run could not read, each wrong in one way, by placeholder."""
    from PIL import Image

    def image(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)

    (base / "empty").mkdir(parents=True)
    (base / "no_images" / "train" / "cat").mkdir(parents=True)
    (base / "no_images" / "val" / "cat").mkdir(parents=True)
    (base / "no_images" / "train" / "cat" / "notes.txt").write_text("not an image")
    image(base / "broken" / "train" / "cat" / "a.png")
    (base / "broken" / "val" / "cat").mkdir(parents=True)
    (base / "broken" / "val" / "cat" / "b.jpg").write_bytes(b"\xff\xd8 cut short")
    image(base / "val_only_class" / "train" / "cat" / "a.png")
    image(base / "val_only_class" / "val" / "dog" / "b.png")
    return {f"{{{p.name}}}": str(p) for p in base.iterdir()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no_such_study"], "unknown study 'no_such_study'; known: align_layer"),
        (["reg_weight", "--set", "tokenizer.train.max_step=3"], "tokenizer.train.max_step: unknown key"),
        (["reg_weight", "--set", "tokenizer.train.max_steps=abc"], "'abc' is not an integer"),
        (["reg_weight", "--set", "eval.gen_samples"], "expected key=value"),
        (["reg_weight", "--data", "/no/such/folder"], "--data /no/such/folder: no such directory"),
        (["reg_weight", "--only", "colour=red"], "--only: unknown factor 'colour'"),
        (["reg_weight", "--profile", "huge"], "unknown profile 'huge'"),
        (["reg_weight", "--executor", "kubernetes"], "unknown executor 'kubernetes'"),
        (["reg_weight", "--executor", "kubernetes", "--dry-run"], "unknown executor 'kubernetes'"),
        (["reg_weight", "--data", "{empty}", "--dry-run"], "data folder has no train/ split"),
        (["reg_weight", "--data", "{empty}"], "data folder has no train/ split"),
        (["reg_weight", "--data", "{no_images}", "--dry-run"], "class folder has no image"),
        (["reg_weight", "--data", "{broken}", "--dry-run"], "class folder has no readable image (1 unreadable)"),
        (["reg_weight", "--data", "{val_only_class}", "--dry-run"], "val/ class not among the train/ classes"),
        (["reg_weight", "--tracking-uri", "http://127.0.0.1:{port}"], "is unreachable"),
        (["reg_weight", "--profile", "paper", "--executor", "local"], "pass --data /path/to/imagenet"),
        (["reg_weight", "--seeds", "0"], "--seeds 0: expected a positive integer"),
        (["reg_weight", "--seeds", "two"], "--seeds two: expected a positive integer"),
        (["reg_weight", "--seeds", "-1"], "--seeds -1: expected a positive integer"),
        (["reg_weight", "--seeds", "1.5", "--dry-run"], "--seeds 1.5: expected a positive integer"),
        (["reg_weight", "--seeds", "0", "--list"], "--seeds 0: expected a positive integer"),
        (["decode_cost", "--seeds", "2", "--dry-run"], "study decode_cost trains nothing"),
        (
            ["reg_weight", "--seeds", "2", "--set", "tokenizer.train.seed=3", "--dry-run"],
            "--set tokenizer.train.seed: --seeds 2 varies the seed",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("GIGATOK_DATA_ROOT", raising=False)
    folders = bad_data_folders(tmp_path / "data")
    args = [folders.get(a, a).replace("{port}", str(_free_port())) for a in args]
    code, _, err = run_cli(args, tmp_path, monkeypatch, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "runs").exists()
    if (tmp_path / "mlflow.db").exists():  # the paper/--data check comes after connecting: no run was made
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_paper_data_root_from_the_environment_is_checked_before_any_run_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folders = bad_data_folders(tmp_path / "data")
    monkeypatch.setenv("GIGATOK_DATA_ROOT", folders["{no_images}"])
    code, _, err = run_cli(["reg_weight", "--profile", "paper", "--executor", "local"], tmp_path, monkeypatch, capsys)
    assert code == 2 and err.startswith("error: $GIGATOK_DATA_ROOT ") and "class folder has no image" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.skipif(slurm_available(), reason="this machine has Slurm")
def test_slurm_requested_where_there_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["reg_weight", "--executor", "slurm"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "sbatch is not on PATH" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()


def test_script_entry_point_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "studies" / "run.py"), "--list"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert "scaling_1d_vs_2d" in out and "Fig. 9" in out


def test_snapshot_runs_have_their_own_tokenizer_and_ar_folders(tmp_path) -> None:
    from gigatok.pipeline import RunContext, ar_dir_of, stage_result_path, tokenizer_dir_of

    specs = get_study("tokenizer_checkpoints").plan(Planner("tiny", seeds=1))
    ctx = RunContext(str(tmp_path), "sqlite:///unused.db")
    bl = [s for s in specs if s.factor_dict["size"] == "B-L"]
    assert [s.factor_dict["checkpoint"] for s in bl] == [40, 80, 120, 160, 200]  # Table 9: B-L trains 200 epochs
    assert len({s.tokenizer.hash() for s in bl}) == 1  # one training serves the five checkpoints
    assert len({tokenizer_dir_of(s, ctx) for s in bl}) == 5 and len({ar_dir_of(s, ctx) for s in bl}) == 5
    assert len({stage_result_path(s, ctx, "tokenizer") for s in bl}) == 1
    assert len({stage_result_path(s, ctx, "ar_probe") for s in bl}) == 5
    with pytest.raises(ValueError, match="tokenizer_snapshot 0.5 is not one of"):
        dataclasses.replace(bl[0], tokenizer_snapshot=0.5)


# ----------------------------------------------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------------------------------------------


def test_seeds_replicate_every_run_and_keep_seed_zero() -> None:
    one = get_study("scaling_1d_vs_2d").plan(Planner("paper"))  # the paper profile: one seed, planned as ever
    assert all("seed" not in s.factor_dict for s in one)
    three = get_study("scaling_1d_vs_2d").plan(Planner("paper", seeds=3))
    assert len(three) == 18 and len({s.hash for s in three}) == 18
    # Seed by seed: all of seed 0 first, in the study's order, with the hashes the one-seed plan gave them.
    assert [s.hash for s in three[:6]] == [s.hash for s in one]
    assert [s.factor_dict["seed"] for s in three] == [0] * 6 + [1] * 6 + [2] * 6
    for spec in three:
        seed = spec.factor_dict["seed"]
        assert spec.tokenizer.train.seed == seed and spec.ar.train.seed == seed  # the AR probe shares the seed
        assert spec.ar.tokenizer == spec.tokenizer and list(spec.factor_dict) == ["size", "kind", "seed"]
        assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).hash == spec.hash
    # Replicas differ only by seed: the same configuration otherwise.
    base = {s.label.removesuffix(" seed=0"): s for s in three[:6]}
    for spec in three[6:]:
        twin = base[spec.label.rsplit(" seed=", 1)[0]]
        assert dataclasses.replace(spec.tokenizer, train=twin.tokenizer.train) == twin.tokenizer
        assert spec.hash != twin.hash and spec.tokenizer.hash() != twin.tokenizer.hash()
    # The tiny default (one seed) is --seeds 1; a study that trains nothing is planned once.
    assert [s.hash for s in get_study("reg_weight").plan(Planner("tiny"))] == [
        s.hash for s in get_study("reg_weight").plan(Planner("tiny", seeds=1))
    ]
    assert len(get_study("decode_cost").plan(Planner("tiny", seeds=3))) == PAPER_STUDIES["decode_cost"]


def test_tiny_main_study_plans_two_seeds_unless_told() -> None:
    # Profile.study_seeds: scaling_1d_vs_2d at tiny replicates over seeds 0 and 1 without --seeds; --seeds 1 plans
    # its seed-0 runs alone, with the same hashes; other tiny studies keep the profile's one seed.
    two = get_study("scaling_1d_vs_2d").plan(Planner("tiny"))
    assert [s.factor_dict["seed"] for s in two] == [0] * 6 + [1] * 6
    one = get_study("scaling_1d_vs_2d").plan(Planner("tiny", seeds=1))
    assert [s.hash for s in one] == [s.hash for s in two[:6]]
    assert len(get_study("reg_weight").plan(Planner("tiny"))) == PAPER_STUDIES["reg_weight"]


def test_seeds_flag_is_validated() -> None:
    assert parse_seeds(None) is None and parse_seeds("3") == 3 and parse_seeds(" 2 ") == 2
    for bad in ("0", "-2", "1.5", "two", ""):
        with pytest.raises(ConfigError, match="expected a positive integer"):
            parse_seeds(bad)
    with pytest.raises(ConfigError, match="--seeds 0"):
        Planner("tiny", seeds=0)
    with pytest.raises(ConfigError, match="--set ar.train.seed: --seeds 2 varies the seed"):
        get_study("reg_weight").plan(Planner("tiny", overrides=(("ar.train.seed", "4"),), seeds=2))
    by_hand = get_study("reg_weight").plan(Planner("tiny", overrides=(("tokenizer.train.seed", "4"),), seeds=1))
    assert {s.tokenizer.train.seed for s in by_hand} == {4}


def test_dry_run_and_only_with_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        ["scaling_1d_vs_2d", "--dry-run", "--json", "--profile", "paper", "--seeds", "2", "--only", "size=S-S,seed=1"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert code == 0
    runs = json.loads(out)["runs"]
    assert [r["factors"] for r in runs] == [{"size": "S-S", "kind": k, "seed": 1} for k in ("1d", "2d")]
    # seed=0 also picks runs of a one-seed plan, which has no seed factor: they are seed 0.
    code, out, _ = run_cli(
        ["scaling_1d_vs_2d", "--dry-run", "--json", "--profile", "paper", "--only", "seed=0"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert code == 0 and len(json.loads(out)["runs"]) == 6
    code, out, _ = run_cli(["--list", "--json", "--seeds", "3"], tmp_path, monkeypatch, capsys)
    assert {r["study"]: r["runs"] for r in json.loads(out)} == {k: planned_count(k, 3) for k in PAPER_STUDIES}


@pytest.mark.parametrize("command", [["scaling_1d_vs_2d"], ["cfg_search", "--study", "scaling_1d_vs_2d"]])
def test_a_typo_in_the_executor_fails_a_dry_run_too(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli([*command, "--dry-run", "--executor", "slrum"], tmp_path, monkeypatch, capsys)
    assert code == 2 and err.strip() == "error: unknown executor 'slrum'; known: auto, slurm, local, debug"
    assert not (tmp_path / "mlflow.db").exists()


def test_registered_runs_carry_mlflow_columns_sizes_and_their_folders(tmp_path: Path) -> None:
    """What the MLflow UI shows before a run starts: User, Source and Version filled, parameter counts, the size
    rank and the training FLOPs as metrics (chartable), and the run folders as tags."""
    from mlflow import MlflowClient

    from gigatok import launch
    from gigatok import tracking_schema as schema
    from gigatok.flops import run_training_flops

    specs = launch.plan_study("scaling_1d_vs_2d", "tiny", None, [], None, None, None)
    ctx = launch.run_context(str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}", None, False, None)
    study = launch.StudyLaunch.prepare(
        "scaling_1d_vs_2d", "tiny", specs, ctx, executor="debug", local_parallel=None, slurm_flags=None, data=None
    )
    study.register()
    client = MlflowClient(ctx.tracking_uri)
    runs = {r.data.tags[schema.RUN_HASH]: r for r in client.search_runs([study.experiment_id])}
    assert set(runs) == {s.hash for s in specs}
    ranks = {}
    for spec in specs:
        run = runs[spec.hash]
        tags, metrics = run.data.tags, run.data.metrics
        assert tags[schema.MLFLOW_USER] and tags[schema.MLFLOW_SOURCE_TYPE] == "LOCAL"
        assert tags[schema.MLFLOW_SOURCE_NAME] == "studies/run.py scaling_1d_vs_2d"
        commit = tags[schema.GIT_COMMIT]
        assert tags.get(schema.MLFLOW_GIT_COMMIT) == (commit if len(commit) == 40 else None)
        assert tags[schema.TOKENIZER_DIR] == str(ctx.tokenizer_dir(spec.tokenizer)) and tags[schema.AR_DIR]
        assert metrics[schema.PARAMS_TOKENIZER] == planning.parameter_count("tokenizer", spec.tokenizer)
        assert metrics[schema.PARAMS_AR] == planning.parameter_count("ar", spec.ar)
        assert metrics[schema.PARAMS_ENCODER] > 0 and metrics[schema.PARAMS_DECODER] > 0
        assert metrics[schema.PARAMS_ENCODER] + metrics[schema.PARAMS_DECODER] < metrics[schema.PARAMS_TOKENIZER]
        ranks[spec.factor_dict["size"]] = metrics[schema.SIZE_RANK]
        flops = run_training_flops(spec)
        assert metrics[schema.FLOPS_TOKENIZER_TRAIN] == pytest.approx(flops["tokenizer"], rel=1e-12)
        assert metrics[schema.FLOPS_AR_TRAIN] == pytest.approx(flops["ar"], rel=1e-12) and flops["ar"] > 0
        assert metrics[schema.FLOPS_TRAIN] == pytest.approx(flops["tokenizer"] + flops["ar"], rel=1e-12)
        assert set(schema.SIZE_METRICS) <= set(metrics)
    assert ranks == {"S-S": 0, "S-B": 1, "B-L": 3}
    view = json.loads(client.get_experiment(study.experiment_id).tags[schema.MLFLOW_SHARED_VIEW_PREFIX + "gigatok"])
    columns = view["selectedColumns"]
    assert columns[:3] == ["attributes.`User`", "attributes.`Source`", "attributes.`Version`"]
    assert {"tags.`gigatok.factor.size`", "metrics.`params_tokenizer`", "metrics.`rfid`", "metrics.`gfid`"} <= set(
        columns
    )


def test_sweeps_multiply_the_grid_with_each_key_as_a_factor() -> None:
    sweeps = ("--sweep", "tokenizer.optim.lr=1e-4,1e-3", "--sweep", "ar.train.batch_size=8,16")
    base = planning.plan_study("scaling_1d_vs_2d", "tiny", None, [], "1", None, "size=S-S")
    specs = planning.plan_study("scaling_1d_vs_2d", "tiny", None, [], "2", None, "size=S-S", list(sweeps[1::2]))
    assert len(specs) == len(base) * 4 * 2 and len({s.hash for s in specs}) == len(specs)
    first = specs[0].factor_dict
    assert first == {**base[0].factor_dict, "tokenizer.optim.lr": "1e-4", "ar.train.batch_size": "8", "seed": 0}
    for spec in specs:
        f = spec.factor_dict
        assert spec.tokenizer.optim.lr == float(f["tokenizer.optim.lr"]) and spec.ar.tokenizer == spec.tokenizer
        assert spec.ar.train.batch_size == int(f["ar.train.batch_size"]) and spec.ar.train.seed == f["seed"]
    # all of seed 0 before seed 1, and within a seed every combination over the whole study
    assert [s.factor_dict["seed"] for s in specs] == [0] * 8 + [1] * 8
    assert {s.factor_dict["tokenizer.optim.lr"] for s in specs[:2]} == {"1e-4"}


def test_a_sweep_value_may_hold_commas_inside_brackets() -> None:
    from gigatok.study import parse_sweep

    assert parse_sweep("tokenizer.tokenizer.cnn.channel_mult=[1,2,4], [1,2,2]") == (
        "tokenizer.tokenizer.cnn.channel_mult",
        ("[1,2,4]", "[1,2,2]"),
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sweep", "tokenizer.optim.lr=1e-4,x"], "--sweep tokenizer.optim.lr=x: 'x' is not a number"),
        (["--sweep", "tokenizer.optim.lrr=1"], "--sweep tokenizer.optim.lrr=1: unknown key (OptimConfig has"),
        (["--sweep", "tokenizer.optim.lr"], "expected key=v1,v2"),
        (["--sweep", "tokenizer.optim.lr=1e-4,"], "an empty value"),
        (["--sweep", "tokenizer.optim.lr=1e-4,1e-4"], "a value is listed twice"),
        (["--sweep", "tokenizer.optim.lr=1e-4", "--set", "tokenizer.optim.lr=1e-3"], "is set with --set"),
        (["--sweep", "tokenizer.optim.lr=1e-4", "--sweep", "tokenizer.optim.lr=1e-3"], "is swept twice"),
    ],
)
def test_bad_sweeps_are_one_line_errors(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_cli(["scaling_1d_vs_2d", "--dry-run", *args], tmp_path, monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_show_config_prints_each_runs_resolved_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["scaling_1d_vs_2d", "--dry-run", "--show-config", "--only", "size=S-S", "--set", "ar.train.epochs=1"]
    code, out, _ = run_cli(args, tmp_path, monkeypatch, capsys)
    assert code == 0
    shown = json.loads(out)
    specs = planning.plan_study("scaling_1d_vs_2d", "tiny", None, ["ar.train.epochs=1"], None, None, "size=S-S")
    assert [s["hash"] for s in shown] == [s.hash for s in specs]
    assert [RunSpec.from_dict({k: v for k, v in s.items() if k != "hash"}) for s in shown] == specs
    assert shown[0]["ar"]["train"]["epochs"] == 1
    code, _, err = run_cli(["scaling_1d_vs_2d", "--show-config"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "--show-config goes with --dry-run" in err
