"""Released checkpoints: ``python -m gigatok.convert`` and the ``released_checkpoints`` study.

The converters (``gigatok.convert.tokenizer`` / ``.ar``) are replaced by stand-in loaders (tests/released_standins.py)
that read a workbench state dict back, so these tests check the run folders, the refusals and the study, not the
key mapping (the parity tests check that). The last test uses the real converters on the parity fixtures.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from released_standins import released_pair, standin_loader, use_standins, write_standin

from gigatok.config import tokenizer_run
from gigatok.convert import ConversionError
from gigatok.convert import released as rel
from gigatok.convert.__main__ import main as convert_main
from gigatok.pipeline import RunContext, ar_dir_of, tokenizer_dir_of
from gigatok.study import Planner, get_study
from gigatok.weights import file_sha256
from studies import catalog  # noqa: F401  (registers the studies)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture
def standins(monkeypatch: pytest.MonkeyPatch) -> None:
    use_standins(monkeypatch)


def _convert(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = convert_main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ----------------------------------------------------------------------------------------------------------
# The command: round trip
# ----------------------------------------------------------------------------------------------------------


def test_cli_round_trip_writes_finished_stage_folders_the_study_uses(
    standins: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gigatok.train.trained import load_trained_ar, load_trained_tokenizer

    tok_file, ar_file = released_pair(tmp_path / "files", "GPT_B256_e300_VQ_SS")
    runs = tmp_path / "runs"
    code, out, err = _convert(["tokenizer", str(tok_file), "--profile", "tiny", "--runs-dir", str(runs)], capsys)
    assert code == 0, err
    spec = next(s for s in get_study("released_checkpoints").plan(Planner("tiny")) if s.factor_dict["size"] == "S-S")
    ctx = RunContext(runs_dir=str(runs), tracking_uri="unused")
    tok_dir = tokenizer_dir_of(spec, ctx)
    assert out.startswith(str(tok_dir))  # where the study looks: it converts nothing again

    code, out, err = _convert(["ar", str(ar_file), "--tokenizer-run", str(tok_dir), "--runs-dir", str(runs)], capsys)
    assert code == 0, err
    ar_dir = ar_dir_of(spec, ctx)
    assert out.startswith(str(ar_dir))

    for folder, weights, original in ((tok_dir, "tokenizer.pt", tok_file), (ar_dir, "ar.pt", ar_file)):
        assert {"config.json", "summary.json", "converted.json", weights} <= set(_tree(folder))
        origin = json.loads((folder / "converted.json").read_text())
        assert origin["sha256"] == file_sha256(original) and origin["file"] == original.name
        assert origin["registry"] == original.stem and origin["sha256_published"] is False
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["hash"] == json.loads((folder / "config.json").read_text())["hash"]
        assert summary["converted_from"] == origin
    assert [p.name for p in runs.iterdir() if p.name.startswith(".") and "converting" in p.name] == []

    # Every later stage reads these folders: the loaders build the models and hold the file's weights.
    tokenizer, ar = load_trained_tokenizer(tok_dir), load_trained_ar(ar_dir)
    tok_state = torch.load(tok_file, weights_only=True)["state_dict"]
    assert all(torch.equal(v, tok_state[k]) for k, v in tokenizer.state_dict().items())
    ar_state = torch.load(ar_file, weights_only=True)["state_dict"]
    assert all(torch.equal(v, ar_state[k]) for k, v in ar.state_dict().items())

    # Converting again is a no-op that names the same folder.
    code, out, _ = _convert(["tokenizer", str(tok_file), "--profile", "tiny", "--runs-dir", str(runs)], capsys)
    assert code == 0 and out.startswith(str(tok_dir))


def test_cli_converts_a_file_of_no_release_under_its_own_name_and_hash(
    standins: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tokenizer_run("S-B", profile="tiny").tokenizer
    path = write_standin(tmp_path / "my_tokenizer.pt", "tokenizer", cfg)
    out_dir = tmp_path / "converted" / "mine"
    code, _, err = _convert(["tokenizer", str(path), "--profile", "tiny", "--out", str(out_dir)], capsys)
    assert code == 0, err
    config = json.loads((out_dir / "config.json").read_text())["config"]
    assert config["source"] == f"file:my_tokenizer.pt:sha256:{file_sha256(path)}"
    assert config["tokenizer"]["decoder"] == dataclasses.asdict(cfg.decoder)


# ----------------------------------------------------------------------------------------------------------
# The command: refusals (one line naming the file, exit 2, nothing left behind)
# ----------------------------------------------------------------------------------------------------------


def _wrong_layout(folder: Path) -> Path:
    path = released_pair(folder, "GPT_B256_e300_VQ_SS")[0]
    data = torch.load(path, weights_only=True)
    data["state_dict"].pop(next(iter(data["state_dict"])))
    data["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(data, path)
    return path


def _wrong_size(folder: Path) -> Path:
    """An S-B tokenizer in a file named as the released S-S one."""
    return write_standin(folder / "VQ_SS256_e100.pt", "tokenizer", tokenizer_run("S-B", profile="tiny").tokenizer)


def _not_torch(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "VQ_SS256_e100.pt"
    path.write_bytes(b"this is not a torch file\n" * 10)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda f: f / "VQ_SS256_e100.pt", "no such file"),
        (_not_torch, "not an authors' tokenizer checkpoint"),
        (lambda f: released_pair(f, "GPT_B256_e300_VQ_SS")[1], "not a released tokenizer"),
        (_wrong_size, "another architecture than planned"),
        (_wrong_layout, "weights do not fit the planned tokenizer: 1 missing"),
    ],
    ids=["missing", "not-torch", "wrong-kind", "wrong-size", "wrong-layout"],
)
def test_cli_refuses_a_wrong_tokenizer_file(
    standins: None, make, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make(tmp_path / "files")
    runs = tmp_path / "runs"
    code, out, err = _convert(["tokenizer", str(path), "--profile", "tiny", "--runs-dir", str(runs)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0] and path.name in lines[0], err
    assert _tree(runs) == []


def test_cli_refuses_a_wrong_ar_file_or_tokenizer_folder(
    standins: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tok_file, ar_file = released_pair(tmp_path / "files", "GPT_B256_e300_VQ_SS")
    runs = tmp_path / "runs"
    assert _convert(["tokenizer", str(tok_file), "--profile", "tiny", "--runs-dir", str(runs)], capsys)[0] == 0
    tok_dir = next(runs.iterdir())
    before = _tree(runs)
    sb_ar = released_pair(tmp_path / "sb", "GPT_B256_e300_VQ_SB")[1]
    cases = [
        (["ar", str(ar_file), "--tokenizer-run", str(tmp_path / "nowhere")], "not a finished tokenizer run folder"),
        (
            ["ar", str(tok_file), "--tokenizer-run", str(tok_dir), "--name", "GPT_B256_e300_VQ_SS"],
            "not a ar checkpoint",
        ),
        (["ar", str(sb_ar), "--tokenizer-run", str(tok_dir)], "trained on the tokens of VQ_SB256_e200"),
        (["ar", str(ar_file), "--tokenizer-run", str(tok_dir), "--name", "GPT_B9"], "not a released ar"),
        (["ar", str(ar_file), "--tokenizer-run", str(tok_dir), "--out", str(tok_dir)], "holds another run"),
    ]
    for args, message in cases:
        code, out, err = _convert([*args, "--runs-dir", str(runs)] if "--out" not in args else args, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, err)
        assert _tree(runs) == before, args


def test_a_failed_write_leaves_no_folder(standins: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok_file, _ = released_pair(tmp_path / "files", "GPT_B256_e300_VQ_SS")
    planned = rel.released_tokenizer_run("VQ_SS256_e100", "tiny")

    def broken(*_args, **_kwargs) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        rel.convert_to_run(tok_file, "tokenizer", planned, tmp_path / "runs" / "tok")
    assert _tree(tmp_path / "runs") == []


def test_loader_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(b"")

    def failing(_p: Path):
        raise ConversionError("unexpected key layout")

    with pytest.raises(ConversionError, match=r"x\.pt: unexpected key layout"):
        rel.read_authors(path, "tokenizer", failing)
    with pytest.raises(ConversionError, match="returned a dict, not a TokenizerConfig"):
        rel.read_authors(path, "tokenizer", lambda _p: ({}, {}))


# ----------------------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["tiny", "paper"])
def test_study_plans_every_released_pair_without_training(profile: str) -> None:
    specs = get_study("released_checkpoints").plan(Planner(profile))
    pairs = {(s.factor_dict["size"], s.factor_dict["disc"], s.factor_dict["ar_size"]) for s in specs}
    assert pairs == {
        ("S-S", "patchgan", "B"),
        ("S-B", "patchgan", "B"),
        ("B-L", "patchgan", "B"),
        ("B-L", "dino", "B"),
        ("XL-XXL", "patchgan", "B"),
        ("B-L", "patchgan", "XL"),
        ("B-L", "patchgan", "XXL"),
        ("XL-XXL", "patchgan", "XXL"),
    }
    assert len({s.tokenizer.hash() for s in specs}) == 5  # each released tokenizer evaluated once
    for spec in specs:
        assert "cfg_search" in spec.stages and "generation" in spec.stages and "ar_probe" in spec.stages
        tok, ar = rel.released_of(spec.tokenizer.source), rel.released_of(spec.ar.source)
        assert ar.tokenizer == tok.name and tok.size == spec.factor_dict["size"] and ar.size == spec.ar.size
        # The architecture is the profile's Table 9 / Table 8 size; only the source differs from a trained run with
        # the authors' objective (LPIPS on, whatever this machine has: nothing is trained).
        trained = tokenizer_run(tok.size, profile=profile)
        trained = dataclasses.replace(trained, loss=dataclasses.replace(trained.loss, perceptual="lpips"))
        assert spec.tokenizer.tokenizer == trained.tokenizer
        assert dataclasses.replace(spec.tokenizer, source="").hash() == trained.hash() != spec.tokenizer.hash()
        assert spec.eval.cfg_schedule == ("constant" if ar.size == "B" else "step")
    bl, bl_dino = (
        next(s for s in specs if s.factor_dict == {"size": "B-L", "disc": d, "ar_size": "B"})
        for d in ("patchgan", "dino")
    )
    assert bl.tokenizer.hash() != bl_dino.tokenizer.hash()


def test_study_refuses_missing_files_before_mlflow(
    standins: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services import run_cli

    weights = tmp_path / "weights"
    released_pair(weights, "GPT_B256_e300_VQ_SS")  # S-S is there; its AR's sibling S-B is not
    args = ["released_checkpoints", "--only", "size=S-B", "--executor", "debug", "--weights-dir", str(weights)]
    code, _, err = run_cli(args, tmp_path, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: pretrained file 'VQ_SB256_e200' not found") and "more released" in lines[0]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_study_refuses_a_wrong_file_before_mlflow(
    standins: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services import run_cli

    weights = tmp_path / "weights"
    released_pair(weights, "GPT_B256_e300_VQ_SS")
    _wrong_size(weights)  # an S-B tokenizer where the released S-S one belongs
    args = ["released_checkpoints", "--only", "size=S-S", "--executor", "debug", "--weights-dir", str(weights)]
    code, _, err = run_cli(args, tmp_path, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "VQ_SS256_e100.pt" in lines[0] and "another architecture than planned" in lines[0]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_study_runs_end_to_end_on_standins(
    standins: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient
    from services import SMALL_RUN, run_cli

    weights = tmp_path / "weights"
    tok_file, ar_file = released_pair(weights, "GPT_B256_e300_VQ_SS")
    small_eval = [a for a in SMALL_RUN if a.startswith("eval.")]
    overrides = [x for a in (*small_eval, "eval.gen_samples=8") for x in ("--set", a)]
    args = [
        "released_checkpoints",
        "--only",
        "size=S-S",
        "--executor",
        "debug",
        "--weights-dir",
        str(weights),
        *overrides,
    ]
    code, out, err = run_cli(args, tmp_path, monkeypatch, capsys)
    assert code == 0, err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id])
        if "gigatok.run_hash" in r.data.tags
    ]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    for key in (
        "rfid",
        "psnr",
        "ssim",
        "gfid",
        "cfg_best_scale",
        "precision",
        "recall",
        "tokenizer_probe_acc",
        "ar_probe_acc",
    ):
        assert key in run.data.metrics, key
    # LPIPS needs the VGG16 file: a number where it is there, else reported unavailable with the reason.
    assert "lpips" in run.data.metrics or run.data.tags["gigatok.provenance.lpips"].startswith("unavailable")
    assert run.data.tags["gigatok.source.tokenizer_sha256"] == file_sha256(tok_file)
    assert run.data.tags["gigatok.source.ar_sha256"] == file_sha256(ar_file)
    assert run.data.tags["gigatok.source.ar"] == "released:GPT_B256_e300_VQ_SS"


# ----------------------------------------------------------------------------------------------------------
# The real converters on the parity fixtures (reduced-width stand-ins in the authors' exact key layout)
# ----------------------------------------------------------------------------------------------------------


def _fixture_as_checkpoint(fixture: str, target: Path) -> dict:
    """A parity fixture's state dict saved as the authors' training checkpoints hold it (under "model")."""
    data = torch.load(FIXTURES / fixture, weights_only=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": data["state_dict"]}, target)
    return data["authors_config"]


def _evaluate(runs: Path, tokenizer_dir: Path, ar_dir: Path | None, stages: tuple[str, ...]) -> dict[str, float]:
    """Run ``stages`` on converted folders, through the pipeline as a study would (no MLflow)."""
    from gigatok.config import EvalConfig, ar_run_config_from_dict, run_config_from_dict
    from gigatok.pipeline import RunSpec, execute_run

    def config(folder: Path) -> dict:
        return json.loads((folder / "config.json").read_text())["config"]

    tok = run_config_from_dict(config(tokenizer_dir))
    ar = ar_run_config_from_dict(config(ar_dir)) if ar_dir is not None else None
    small = EvalConfig(
        recon_images=8,
        reference_images=8,
        gen_samples=8,
        batch_size=8,
        inception_input=75,
        grid_images=0,
        probe_max_iter=50,
    )
    spec = RunSpec("released_checkpoints", (("file", tokenizer_dir.name),), tok, ar, small, stages)
    ctx = RunContext(runs_dir=str(runs), tracking_uri="unused", allow_substitutes=True, device="cpu", progress=False)
    assert tokenizer_dir_of(spec, ctx) == tokenizer_dir and (ar is None or ar_dir_of(spec, ctx) == ar_dir)
    return execute_run(spec, ctx, run_id=None)


@pytest.mark.slow
def test_parity_fixtures_convert_through_the_real_converters_and_are_evaluated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gigatok.convert.ar import load_authors_ar
    from gigatok.convert.tokenizer import load_authors_tokenizer

    files, runs = tmp_path / "files", tmp_path / "runs"
    tok_args = _fixture_as_checkpoint("parity_tokenizer_1d.pt", files / "authors_tokenizer.pt")
    ar_args = _fixture_as_checkpoint("parity_gpt1d.pt", files / "authors_gpt.pt")
    # Head counts are what the shapes cannot say; the fixtures' reduced sizes are outside the authors' size tables.
    table = tok_args["size_table"]
    heads = (table[tok_args["encoder_size"]]["heads"], table[tok_args["decoder_size"]]["heads"])
    monkeypatch.setitem(rel.LOADERS, "tokenizer", lambda p: load_authors_tokenizer(p, heads=heads))
    monkeypatch.setitem(rel.LOADERS, "ar", lambda p: load_authors_ar(p, heads=ar_args["n_head"]))

    code, out, err = _convert(
        ["tokenizer", str(files / "authors_tokenizer.pt"), "--profile", "tiny", "--runs-dir", str(runs)], capsys
    )
    assert code == 0, err
    tok_dir = Path(out.split(":")[0])
    metrics = _evaluate(runs, tok_dir, None, ("reconstruction",))
    assert {"rfid", "lpips", "psnr", "ssim"} <= set(metrics)

    # The two fixtures were made independently: the GPT's vocabulary and token count are not this tokenizer's.
    before = _tree(runs)
    code, _, err = _convert(
        ["ar", str(files / "authors_gpt.pt"), "--tokenizer-run", str(tok_dir), "--runs-dir", str(runs)], capsys
    )
    assert code == 2 and "authors_gpt.pt: does not fit the tokenizer" in err and len(err.strip().splitlines()) == 1
    assert _tree(runs) == before

    # On a tokenizer of its vocabulary and token count (a stand-in), the GPT converts and samples.
    fitting = dataclasses.replace(tokenizer_run("S-S", profile="tiny").tokenizer, num_tokens=ar_args["block_size"])
    fitting = dataclasses.replace(
        fitting, quantizer=dataclasses.replace(fitting.quantizer, codebook_size=ar_args["vocab_size"])
    )
    monkeypatch.setitem(rel.LOADERS, "tokenizer", standin_loader("tokenizer"))
    standin = write_standin(files / "fitting_tokenizer.pt", "tokenizer", fitting)
    code, out, err = _convert(["tokenizer", str(standin), "--profile", "tiny", "--runs-dir", str(runs)], capsys)
    assert code == 0, err
    fitting_dir = Path(out.split(":")[0])
    code, out, err = _convert(
        ["ar", str(files / "authors_gpt.pt"), "--tokenizer-run", str(fitting_dir), "--runs-dir", str(runs)], capsys
    )
    assert code == 0, err
    ar_dir = Path(out.split(":")[0])
    assert json.loads((ar_dir / "converted.json").read_text())["sha256"] == file_sha256(files / "authors_gpt.pt")
    metrics = _evaluate(runs, fitting_dir, ar_dir, ("token_cache", "generation", "ar_probe"))
    assert {"gfid", "precision", "recall", "ar_probe_acc"} <= set(metrics)


def test_standin_loader_refuses_other_files(tmp_path: Path) -> None:
    path = tmp_path / "a.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ConversionError):
        standin_loader("tokenizer")(path)
