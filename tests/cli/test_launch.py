"""What the command line does in process for multi-process launches (``ls_lightning.cli.launch``): the SLURM groups,
the global rank from the launchers' variables, a multirun job as a single run, the launch context, the CSV rows of
several Trainer calls; the launches themselves run in tests/e2e/test_launches.py."""

from __future__ import annotations

import contextlib
import csv
import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from ls_lightning.cli.config import validate_config
from ls_lightning.cli.launch import (
    continued_metrics,
    env_rank_is_zero,
    hydra_job_launch,
    job_argv,
    keep_earlier_metrics,
)

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN_EXAMPLE = ROOT / "examples" / "multinode" / "torchrun_loopback.sh"


def test_slurm_groups_compose_from_the_allocation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=["trainer=slurm", "hydra=slurm"], return_hydra_config=True)
    assert (cfg.trainer.num_nodes, cfg.trainer.devices, cfg.trainer.strategy) == (2, 4, "ddp")
    assert cfg.hydra.run.dir == "outputs/train/slurm-4242" and cfg.hydra.job.chdir is False
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=["trainer=slurm", f"paths.output_dir={tmp_path}"])
    validate_config(cfg)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize(
    ("environ", "zero"),
    [
        ({}, True),
        ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, True),
        ({"RANK": "1", "LOCAL_RANK": "0", "GROUP_RANK": "1"}, False),  # torchrun, second node
        ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, False),  # Lightning's re-launch of rank 1
        ({"SLURM_PROCID": "3"}, False),
        ({"LOCAL_RANK": "1", "SLURM_PROCID": "0"}, False),  # re-launched inside an interactive SLURM shell
    ],
)
def test_global_rank_zero_from_the_launchers_variables(environ: dict[str, str], zero: bool) -> None:
    assert env_rank_is_zero(environ) is zero


def test_a_multirun_job_becomes_a_single_run_of_its_own_overrides() -> None:
    argv = ["ls-train", "-m", "--config-dir", "/my/conf", "-cn", "mine", "seed=0,1", "trainer=ddp"]
    hydra = ["hydra.mode=MULTIRUN", "hydra.sweep.dir=/s", "hydra.searchpath=[pkg://x]", "hydra.job.chdir=true"]
    assert job_argv(argv, ["seed=1", "trainer=ddp"], hydra) == [
        "ls-train",
        "--config-name=mine",
        "--config-dir=/my/conf",
        "seed=1",
        "trainer=ddp",
        "hydra.searchpath=[pkg://x]",
        "hydra.job.chdir=true",
        "hydra.mode=RUN",
    ]


def test_launch_context_restores_argv_and_the_launchers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    argv = list(sys.argv)
    with hydra_job_launch():  # outside a Hydra app: only the clean-up
        os.environ["LOCAL_RANK"] = "0"  # what Lightning's launcher sets for the next Trainer to see
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        sys.argv.append("x=1")
    assert "LOCAL_RANK" not in os.environ and os.environ["MASTER_ADDR"] == "10.0.0.1" and sys.argv == argv


def test_a_second_trainer_calls_rows_follow_the_firsts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What each Trainer call does under ``ddp_spawn`` (test after fit, in new processes): a new ``CSVLogger`` in the
    run directory, which starts ``metrics.csv`` anew. ``continued_metrics`` keeps the first call's rows, then the
    second's, under the union of their columns."""
    from lightning.pytorch.loggers import CSVLogger

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for call, metrics in enumerate(({"val/acc": 0.5}, {"test/acc": 0.75})):
        with continued_metrics(str(tmp_path)) if call else contextlib.nullcontext():
            logger = CSVLogger(tmp_path, name="", version="")  # as the command line configures it
            logger.log_metrics(metrics, step=3 + call)
            logger.finalize("success")
    rows = read_rows(tmp_path / "metrics.csv")
    assert rows == [{"step": "3", "val/acc": "0.5", "test/acc": ""}, {"step": "4", "val/acc": "", "test/acc": "0.75"}]
    assert not list(tmp_path.glob("metrics.csv.*"))  # the first call's part, merged and removed


def test_an_earlier_metrics_file_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert keep_earlier_metrics(str(tmp_path)) is None
    for k in (1, 2):
        (tmp_path / "metrics.csv").write_text(f"run {k}\n")
        assert keep_earlier_metrics(str(tmp_path)) == str(tmp_path / f"metrics.{k}.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.1.csv", "metrics.2.csv"]
    assert (tmp_path / "metrics.2.csv").read_text() == "run 2\n"
    monkeypatch.setenv("RANK", "1")
    (tmp_path / "metrics.csv").write_text("rank 1 leaves it\n")
    assert keep_earlier_metrics(str(tmp_path)) is None and (tmp_path / "metrics.csv").exists()


def test_the_slurm_script_is_valid_bash_and_uses_the_slurm_groups() -> None:
    script = ROOT / "examples" / "multinode" / "slurm.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert "srun ls-train trainer=slurm hydra=slurm" in script.read_text()
    assert subprocess.run(["bash", "-n", str(TORCHRUN_EXAMPLE)], capture_output=True).returncode == 0


def test_docstring_examples() -> None:
    from ls_lightning.cli import launch as _launch

    assert doctest.testmod(_launch, raise_on_error=False).failed == 0


def test_launch_context_ends_the_process_group_it_saw_start_and_only_that(tmp_path: Path) -> None:
    import torch.distributed as dist

    def start(name: str) -> None:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / name}", rank=0, world_size=1)

    with hydra_job_launch():
        start("job")  # what the Trainer of a ddp job does
    assert not dist.is_initialized()  # the next job of a multirun starts its own
    start("caller")
    try:
        with hydra_job_launch():
            pass
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
