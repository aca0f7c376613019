"""Multi-process launches from the command line: ``strategy=ddp`` under Hydra, multirun, torchrun on loopback, SLURM.

Each launch must leave one run directory (per sweep job) with one ``.hydra/`` and one ``metrics.csv``, written by
global rank 0 only. The subprocess tests use 2 gloo CPU processes and tiny data.
"""

from __future__ import annotations

import contextlib
import csv
import doctest
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from ls_lightning.cli.config import validate_config
from ls_lightning.cli.eval import evaluate
from ls_lightning.cli.launch import (
    continued_metrics,
    env_rank_is_zero,
    hydra_job_launch,
    job_argv,
    keep_earlier_metrics,
)
from ls_lightning.cli.train import train

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TORCHRUN_EXAMPLE = ROOT / "examples" / "multinode" / "torchrun_loopback.sh"
QUIET = ["trainer.accelerator=cpu", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
# val: 7 samples (4 and 3 per rank), test: 1 sample (rank 1 gets an empty batch)
TINY = [*QUIET, "data=synthetic", "data.num_train=64", "data.num_val=7", "data.num_test=1", "data.batch_size=16"]
SMALL = [*TINY, "trainer.max_epochs=1", "trainer.log_every_n_steps=1"]
DDP = ["trainer.devices=2", "trainer.strategy=ddp"]
DESIGN_KEYS = {"train/epsilon"} | {
    f"{s}/{k}" for s in ("train", "val", "test") for k in ("loss", "h_pq", "h_uq", "acc", "ece")
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(command: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    drop = ("HYDRA_FULL_ERROR", "PYTHONPATH", "RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(MASTER_ADDR="127.0.0.1", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def logged_keys(path: Path) -> set[str]:
    return {key.removesuffix("_epoch").removesuffix("_step") for key in read_rows(path)[0]}


def last_values(path: Path, prefix: tuple[str, ...]) -> dict[str, float]:
    values: dict[str, float] = {}
    for row in read_rows(path):
        values.update({k: float(v) for k, v in row.items() if k.startswith(prefix) and v})
    return values


def assert_one_run_directory(run_dir: Path, tree: Path) -> None:
    """``tree`` holds exactly one run: one metrics.csv, one .hydra/, one job log (rank 0's), the checkpoint."""
    assert sorted(p.parent for p in tree.rglob("metrics.csv")) == [run_dir]
    assert sorted(p.parent for p in tree.rglob(".hydra")) == [run_dir]
    assert [p.name for p in tree.rglob("*.log")] in ([], ["train.log"])  # no train_ddp_process_1.log
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last.ckpt"]
    assert logged_keys(run_dir / "metrics.csv") >= DESIGN_KEYS


@pytest.mark.slow
def test_multi_process_run_writes_one_run_directory(tmp_path: Path) -> None:
    """``strategy=ddp``: rank 1 is the same command started again, and must join rank 0's run directory.
    (``ddp_spawn``'s ranks never run Hydra; what the command line does for them is ``continued_metrics``, below.)"""
    result = run([str(BIN / "ls-train"), *DDP, *SMALL], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"]
    (run_dir,) = (p.parent for p in tmp_path.rglob("metrics.csv"))
    assert run_dir.parent.parent == tmp_path / "outputs" / "train"  # outputs/train/<date>/<time>: one timestamp
    assert_one_run_directory(run_dir, tmp_path)
    assert result.stdout.count("run directory: ") == 1 and f"run directory: {run_dir}" in result.stdout


@pytest.mark.slow
def test_multirun_with_ddp_puts_each_jobs_ranks_in_that_jobs_directory(tmp_path: Path) -> None:
    result = run([str(BIN / "ls-train"), "-m", "seed=0,1", *DDP, *SMALL], tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["multirun"]  # no rank started a sweep or a run of its own
    (sweep_dir,) = {p.parent for p in tmp_path.rglob("multirun.yaml")}
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0", "1", "multirun.yaml"]
    for seed in (0, 1):
        job = sweep_dir / str(seed)
        assert_one_run_directory(job, job)
        assert (job / ".hydra" / "overrides.yaml").read_text().count(f"seed={seed}") == 1
    # rank 1 joined each job (Lightning logs the membership on every rank)
    output = result.stdout + result.stderr
    assert output.count("GLOBAL_RANK: 1, MEMBER: 2/2") == output.count("GLOBAL_RANK: 0, MEMBER: 1/2") >= 2


@pytest.mark.slow
def test_torchrun_two_nodes_on_loopback(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run(["bash", str(TORCHRUN_EXAMPLE), str(run_dir), str(free_port()), *SMALL], tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert_one_run_directory(run_dir, tmp_path)
    assert "num_nodes: 2" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert result.stdout.count("run directory: ") == 1  # the summary comes from global rank 0 only


@pytest.mark.slow
def test_ls_eval_gives_the_same_numbers_on_one_and_two_processes(tmp_path: Path) -> None:
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*SMALL, f"paths.output_dir={tmp_path / 'train'}", "logger=none"])
    train(cfg)
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    # one process: what ls-eval runs, in this process; two: the command with strategy=ddp
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        evaluate(compose("eval", overrides=[f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'one'}", *TINY]))
    command = [str(BIN / "ls-eval"), f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'two'}", *TINY, *DDP]
    result = run(command, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    values = {name: last_values(tmp_path / name / "metrics.csv", ("val/", "test/")) for name in ("one", "two")}
    assert {f"{s}/{k}" for s in ("val", "test") for k in ("loss", "h_pq", "h_uq", "acc", "ece")} <= set(values["one"])
    assert set(values["two"]) == set(values["one"])
    for key, value in values["one"].items():
        assert values["two"][key] == pytest.approx(value, abs=1e-6), key


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
