"""Slurm settings from flags and cluster files, extra sbatch options, job names and sbatch's refusals (fast: no
cluster; the cluster tests check the same on a real one)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import submitit

import studies.catalog  # noqa: F401  (registers the studies)
from gigatok.dispatch import (
    DispatchError,
    SlurmSettings,
    group_by_tokenizer,
    group_training_flops,
    job_name,
    parse_extra_flags,
    sbatch_errors,
    spread,
)
from gigatok.launch.common import SLURM_FLAGS, slurm_settings
from gigatok.study import Planner, get_study


def flags(cluster_config: str | None = None, slurm_extra: list[str] | None = None, **values: object) -> object:
    return argparse.Namespace(
        cluster_config=cluster_config, slurm_extra=slurm_extra, **{k: values.get(k) for k in SLURM_FLAGS}
    )


def test_extra_options_reach_submitit_and_flags_replace_the_files(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text('[slurm]\npartition = "gpu"\n[slurm.extra]\nexclude = "node01"\nmail_type = "END"\n')
    settings = slurm_settings(flags(str(config), ["exclude=node07,node08", "reservation=ci"]), "paper")
    assert settings.extra == (("exclude", "node07,node08"), ("mail-type", "END"), ("reservation", "ci"))
    params = settings.submitit_parameters()
    assert params["slurm_additional_parameters"] == dict(settings.extra)
    assert params["slurm_partition"] == "gpu" and params["gpus_per_node"] == 1


def test_extra_options_land_in_the_sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Writing the sbatch script needs no Slurm: submitit looks for srun only to refuse building a Slurm executor on a
    # machine without one (this fast test runs before CI installs the cluster).
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    settings = SlurmSettings(gpus_per_node=0, extra=(("comment", "gigatok-ci"), ("exclude", "node07")))
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(name="study:size=S-S", **settings.submitit_parameters())
    script = executor._executor._make_submission_file_text("python -c pass", "uid")
    assert "#SBATCH --comment=gigatok-ci" in script and "#SBATCH --exclude=node07" in script
    assert "#SBATCH --job-name=study:size=S-S" in script
    assert "gpus-per-node" not in script and "gres" not in script


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["exclude"], "expected key=value"),
        (["Exclude=node1"], "not an sbatch option name"),
        (["partition=gpu"], "set by the workbench"),
        (["job-name=x"], "set by the workbench"),
        (["exclude="], "needs a one-line value"),
    ],
)
def test_malformed_extra_options_are_refused_with_their_name(extra: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_extra_flags(extra)


def test_extra_in_a_cluster_file_must_be_a_table(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text('[slurm]\nextra = "exclude=node01"\n')
    with pytest.raises(ValueError, match="'extra' must be a table"):
        SlurmSettings.from_file(config)


def test_tiny_jobs_ask_for_no_gpu_unless_told(tmp_path: Path) -> None:
    assert slurm_settings(flags(), "tiny").gpus_per_node == 0
    assert slurm_settings(flags(), "paper").gpus_per_node == 1
    assert slurm_settings(flags(gpus_per_node=2), "tiny").gpus_per_node == 2
    config = tmp_path / "cluster.toml"
    config.write_text("[slurm]\ngpus_per_node = 4\n")
    assert slurm_settings(flags(str(config)), "tiny").gpus_per_node == 4  # the file's word beats the default
    config.write_text('[slurm]\npartition = "cpu"\n')
    assert slurm_settings(flags(str(config)), "tiny").gpus_per_node == 0


def test_job_names_carry_the_study_and_the_factors_its_runs_share() -> None:
    specs = get_study("scaling_1d_vs_2d").plan(Planner(profile_name="tiny"))
    assert job_name("scaling_1d_vs_2d", specs) == "scaling_1d_vs_2d"  # every factor varies
    one = [s for s in specs if s.factor_dict["size"] == "S-S"]
    assert job_name("scaling_1d_vs_2d", one[:1]) == f"scaling_1d_vs_2d:{one[0].label.replace(' ', ',')}"
    assert job_name("scaling_1d_vs_2d", one) == "scaling_1d_vs_2d:size=S-S"
    long = job_name("x" * 70, one)
    assert len(long) == 64 and long.endswith("~")


def test_a_refused_submission_is_one_line_with_sbatch_reason(capsys: pytest.CaptureFixture[str]) -> None:
    reason = "sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification"
    with pytest.raises(DispatchError) as caught, sbatch_errors():
        print(reason, file=__import__("sys").stderr)  # what Submitit echoes before raising
        raise submitit.core.utils.FailedJobError(reason)
    assert str(caught.value) == f"sbatch refused the submission: {reason}"
    assert capsys.readouterr().err == ""
    with sbatch_errors():  # a submission that went through shows what it printed
        print("note", file=__import__("sys").stderr)
    assert capsys.readouterr().err == "note\n"


def test_local_workers_get_balanced_shares_each_in_plan_order() -> None:
    specs = get_study("scaling_1d_vs_2d").plan(Planner(profile_name="tiny", seeds=2))
    groups = group_by_tokenizer(specs)
    workers = spread(groups, 2)
    # Dealt round-robin, one worker took every 1D run and the other every 2D one; by cost, the replicas of each
    # run (equal cost) go to different workers, so each worker's share costs the same.
    for seed, share in enumerate(workers):
        assert [s.factor_dict["seed"] for s in share] == [seed] * 6
        assert [s.hash for s in share] == [s.hash for s in specs if s.factor_dict["seed"] == seed]  # plan order
    loads = [group_training_flops([s]) for s in workers[0]], [group_training_flops([s]) for s in workers[1]]
    assert sum(loads[0]) == pytest.approx(sum(loads[1]))
    # Replicas are costed once: the seed is not part of what a job trains.
    assert group_training_flops([specs[0]]) == group_training_flops([specs[6]]) > 0


def test_spread_puts_the_costliest_group_alone_when_it_outweighs_the_rest() -> None:
    specs = get_study("scaling_1d_vs_2d").plan(Planner(profile_name="tiny", seeds=1))
    groups = group_by_tokenizer(specs)
    costs = {id(g): c for g, c in zip(groups, [1.0, 1.0, 1.0, 1.0, 1.0, 10.0], strict=True)}
    heavy, light = spread(groups, 2, cost=lambda g: costs[id(g)])
    assert heavy == groups[5] and light == [s for g in groups[:5] for s in g]
    assert len(spread(groups, 8)) == 6  # never an empty worker
