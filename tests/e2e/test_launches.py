"""Multi-process launches from the command line: ``strategy=ddp`` under Hydra, multirun, torchrun on loopback, and
``ls-eval`` on one and two processes (what the launch code does in process: tests/cli/test_launch.py).

Each launch must leave one run directory (per sweep job) with one ``.hydra/`` and one ``metrics.csv``, written by
global rank 0 only. The subprocess tests use 2 gloo CPU processes and tiny data.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from ls_lightning.cli.errors import ConfigValueError
from ls_lightning.cli.eval import evaluate
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


def assert_one_run_directory(run_dir: Path, tree: Path, keys: set[str] = DESIGN_KEYS) -> None:
    """``tree`` holds exactly one run: one metrics.csv, one .hydra/, one job log (rank 0's), the checkpoint."""
    assert sorted(p.parent for p in tree.rglob("metrics.csv")) == [run_dir]
    assert sorted(p.parent for p in tree.rglob(".hydra")) == [run_dir]
    assert [p.name for p in tree.rglob("*.log")] in ([], ["train.log"])  # no train_ddp_process_1.log
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last.ckpt"]
    assert logged_keys(run_dir / "metrics.csv") >= keys


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
def test_multirun_with_ddp_puts_each_jobs_ranks_in_that_jobs_directory_and_each_variant_logs_what_ls_eval_does(
    tmp_path: Path,
) -> None:
    """A sweep of the relatives of label smoothing under ``trainer=ddp_cpu`` (2 processes): each job's ranks write
    into that job's directory, and the final validation logged by the 2 processes equals, key for key, a 1-process
    ``ls-eval`` of the job's checkpoint with the same variant (7 validation samples: 4 and 3 per rank)."""
    variants = ("confidence_penalty", "focal", "flsd53", "mbls")
    command = [str(BIN / "ls-train"), "-m", f"label_smoothing/variant={','.join(variants)}", "trainer=ddp_cpu", *SMALL]
    result = run(command, tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["multirun"]  # no rank started a sweep or a run of its own
    (sweep_dir,) = {p.parent for p in tmp_path.rglob("multirun.yaml")}
    assert sorted(p.name for p in sweep_dir.iterdir()) == [*map(str, range(len(variants))), "multirun.yaml"]
    # rank 1 joined each job (Lightning logs the membership on every rank)
    output = result.stdout + result.stderr
    assert output.count("GLOBAL_RANK: 1, MEMBER: 2/2") == output.count("GLOBAL_RANK: 0, MEMBER: 1/2") >= len(variants)
    own_key = {"confidence_penalty": "val/entropy", "mbls": "val/margin_penalty"}
    for index, variant in enumerate(variants):
        job = sweep_dir / str(index)
        # the relatives' keys: label smoothing's but its own term (h_uq) and weight (epsilon)
        assert_one_run_directory(job, job, {key for key in DESIGN_KEYS if not key.endswith(("h_uq", "epsilon"))})
        assert (job / ".hydra" / "overrides.yaml").read_text().count(f"label_smoothing/variant={variant}") == 1
        trained = last_values(job / "metrics.csv", ("val/",))
        assert {
            "val/loss",
            "val/h_pq",
            "val/acc",
            "val/ece",
            "val/ece_classwise",
            own_key.get(variant, "val/h_pq"),
        } <= set(trained)
        assert "val/h_uq" not in trained  # label smoothing's term: no relative has it
        ckpt, out = job / "checkpoints" / "last.ckpt", tmp_path / f"eval_{variant}"
        overrides = [f"ckpt_path={ckpt}", f"paths.output_dir={out}", "logger=csv", *TINY]
        with initialize_config_module("ls_lightning.conf", version_base="1.3"):
            evaluate(compose("eval", overrides=[*overrides, f"label_smoothing/variant={variant}"]))
        evaluated = last_values(out / "metrics.csv", ("val/",))
        assert set(evaluated) == set(trained), variant
        for key, value in trained.items():
            assert evaluated[key] == pytest.approx(value, abs=1e-6), (variant, key)
        # evaluated as label smoothing, the numbers would be another loss's: refused, naming the training run's
        refused = f"label_smoothing.objective={variant} .configured: label_smoothing"
        with (
            initialize_config_module("ls_lightning.conf", version_base="1.3"),
            pytest.raises(ConfigValueError, match=refused),
        ):
            evaluate(compose("eval", overrides=overrides))


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
