"""The command line refuses, in one line and with exit status 2, what it cannot run: unreadable or unsafe checkpoints,
a prior on a binary task, a job directory given to ``ls-report``; and the rough edges around runs: the summary table
under a ``log_prefix``, which directories a refused run removes, how many threads torch runs on. In process: the
subprocess runs are in ``tests/e2e/test_run_directories.py``."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from ls_lightning.cli import directories
from ls_lightning.cli.checkpoint import check_checkpoint
from ls_lightning.cli.config import validate_config
from ls_lightning.cli.directories import RunDirectories, claim_directory, discard_refused_run
from ls_lightning.cli.errors import CheckpointError, ConfigValueError
from ls_lightning.cli.eval import evaluate
from ls_lightning.cli.report import main as report_main
from ls_lightning.cli.run import run_main
from ls_lightning.cli.threads import set_num_threads
from ls_lightning.cli.train import train

OLD_RUN = Path(__file__).resolve().parents[1] / "data" / "run_v0_1_0"
# a real checkpoint, written by Lightning's ModelCheckpoint in a 0.1.0 run (tests/data/run_v0_1_0/README.md)
REAL_CKPT = OLD_RUN / "checkpoints" / "last.ckpt"
QUIET = ["trainer.accelerator=cpu", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
SMALL = [*QUIET, "data=synthetic", "data.num_train=64", "data.num_val=32", "data.num_test=32", "data.batch_size=32"]


def make_cfg(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        return compose(config_name, overrides=[*overrides, f"paths.output_dir={output_dir}"])


# --- checkpoints --------------------------------------------------------------------------------------------------


class _Code:
    """Pickled as a call of ``os.mkdir(marker)``: unpickling it would run that call."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _bad_checkpoint(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    if kind == "truncated":  # a copy cut off half-way, as a full disk or a killed copy leaves it
        data = REAL_CKPT.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("epoch: 3\nthis is no checkpoint\n")
    elif kind == "pickled code":
        checkpoint = torch.load(REAL_CKPT, weights_only=True)
        checkpoint["extra"] = _Code(folder / "unpickled")
        torch.save(checkpoint, path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.touch()
    return path


CAUSES = {
    "truncated": "not a readable checkpoint (truncated?)",
    "text": "not a checkpoint: expected a file written by torch.save, such as a run's checkpoints/last.ckpt",
    "pickled code": "holds objects that are not plain data (posix.mkdir); refusing to unpickle them",
    "directory": "is a directory, not a checkpoint file",
    "empty": "is an empty file, not a checkpoint",
}


@pytest.mark.parametrize("command", ["ls-train", "ls-eval"])
@pytest.mark.parametrize("kind", list(CAUSES))
def test_a_bad_checkpoint_is_refused_in_one_line_naming_path_and_cause(
    kind: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # run_main leaves torch's threads alone
    path = _bad_checkpoint(kind, tmp_path)
    task, config_name = (train, "train") if command == "ls-train" else (evaluate, "eval")
    cfg = make_cfg([f"ckpt_path={path}", *QUIET], tmp_path / "run", config_name)
    with pytest.raises(SystemExit) as info:
        run_main(task, cfg, command)
    assert info.value.code == 2
    assert capsys.readouterr().err == f"{command}: error: ckpt_path={path}: {CAUSES[kind]}\n"
    assert not (tmp_path / "unpickled").exists()  # the pickled call never ran
    assert not (tmp_path / "run").exists()  # refused before anything was built


def test_checkpoints_lightning_loads_pass_and_lightnings_names_are_left_to_it(tmp_path: Path) -> None:
    check_checkpoint(str(REAL_CKPT))
    # torch.save's legacy (non-zip) format cannot be memory-mapped: read whole, with the same weights-only rules
    legacy = tmp_path / "legacy.ckpt"
    torch.save(torch.load(REAL_CKPT, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    check_checkpoint(str(legacy))
    for name in ("last", "best", "hpc"):  # resolved by Lightning from the run's checkpoint callbacks
        validate_config(make_cfg([f"ckpt_path={name}"], tmp_path, "eval"), require_ckpt=True)
    tensors = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, tensors)
    with pytest.raises(CheckpointError, match=r"weights\.pt: holds no state_dict and no pytorch-lightning_version"):
        check_checkpoint(str(tensors))


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # the old run's checkpoint names its own folder
def test_lightning_reads_the_checkpoint_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``torch.load`` of an ``ls-eval`` run (the check and Lightning's own) has ``weights_only=True``."""
    calls: list[Any] = []
    load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    old_groups = ["model.hidden_sizes=[16]", "label_smoothing/variant=online", "calibration.diagrams=false"]
    old_groups += ["trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
    metrics = evaluate(make_cfg([f"ckpt_path={REAL_CKPT}", *old_groups, *QUIET], tmp_path, "eval"))
    assert "test/acc" in metrics
    assert len(calls) >= 2 and all(weights_only is True for weights_only in calls), calls


# --- configuration ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "name"),
    [("label_smoothing/prior=class_frequency", "class_frequency"), ("label_smoothing/variant=online", "online")],
)
def test_a_prior_on_a_binary_task_is_refused_when_the_config_is_checked(choice: str, name: str, tmp_path: Path) -> None:
    message = (
        f"label_smoothing/prior={name} does not apply to a binary task (ls_lightning.cli.data.BreastCancerDataModule):"
        " a binary label is smoothed towards 1/2 and takes no prior"
    )
    with pytest.raises(ConfigValueError, match="^" + re.escape(f"invalid configuration: {message}")):
        train(make_cfg(["data=breast_cancer", choice], tmp_path))
    assert list(tmp_path.iterdir()) == []
    validate_config(make_cfg(["data=breast_cancer", "label_smoothing/prior=uniform"], tmp_path))
    validate_config(make_cfg([choice], tmp_path))  # a multi-class task takes it


def test_num_threads_is_checked_like_every_ranged_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigValueError, match=r"num_threads=0 is out of range: expected a value >= 1 or null"):
        validate_config(make_cfg(["num_threads=0"], tmp_path))


def test_the_summary_table_shows_the_keys_under_the_log_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = train(
        make_cfg(["trainer.fast_dev_run=true", "callbacks.label_smoothing.log_prefix=ls_", *SMALL], tmp_path)
    )
    out = capsys.readouterr().out
    table = out[out.index("\nstage") + 1 :].splitlines()
    assert table[0].split() == ["stage", "ls_acc", "ls_ece", "ls_h_pq", "ls_loss"]
    for row, stage in zip(table[1:3], ("val", "test"), strict=True):
        cells = row.split()
        assert cells[0] == stage and "n/a" not in cells
        # the values the trainer's callback metrics hold for the prefixed keys
        assert [float(c) for c in cells[1:]] == pytest.approx(
            [metrics[f"{stage}/ls_{key}"] for key in ("acc", "ece", "h_pq", "loss")], abs=5e-5
        )


# --- ls-report ----------------------------------------------------------------------------------------------------


def _job(path: Path, mode: str) -> Path:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    (path / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  mode: {mode}\n  job:\n    num: 0\n")
    rows = "epoch,step,val/acc,test/acc\n0,1,0.9,\n0,1,,0.8\n"
    (path / "metrics.csv").write_text(rows)
    return path


def test_ls_report_on_a_job_directory_names_the_sweep_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "multirun" / "train" / "2026-01-01" / "12-00-00"
    job = _job(sweep / "0", "MULTIRUN")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    with pytest.raises(SystemExit) as info:
        report_main([str(job)])
    assert info.value.code == 2
    expected = f"ls-report: error: {job} is the directory of one job of a sweep; pass the sweep directory: ls-report"
    assert capsys.readouterr().err == f"{expected} {sweep}\n"
    assert not (job / "report.md").exists()
    # a job directory moved out of its sweep: still refused, with no sweep to name
    moved = _job(tmp_path / "moved", "MULTIRUN")
    with pytest.raises(SystemExit):
        report_main([str(moved)])
    assert (
        capsys.readouterr().err
        == f"ls-report: error: {moved} is the directory of one job of a sweep; pass the sweep directory\n"
    )
    # a single run (ls-train without -m) is reported on, as before
    assert report_main([str(_job(tmp_path / "single", "RUN")), "--no-figure", "--no-logger"]) == 0


# --- run directories ----------------------------------------------------------------------------------------------


def test_claims_are_atomic_and_a_given_directory_is_joined(tmp_path: Path) -> None:
    wanted = str(tmp_path / "outputs" / "12-00-00")
    claimed: list[str] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        claimed.append(claim_directory(wanted, fresh=True))

    workers = [threading.Thread(target=claim) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(claimed) == sorted([wanted, *(f"{wanted}_{k}" for k in range(1, 8))])
    # not fresh (a given hydra.run.dir, ckpt_path=last): the existing directory is used as it is
    assert claim_directory(wanted, fresh=False) == wanted


@pytest.fixture(autouse=True)
def _no_directories_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no directory recorded as made by this process."""
    monkeypatch.setattr(directories, "_made", {})


@pytest.fixture
def hydra_job(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Pretend to be a Hydra job with ``output_dir``: what :func:`discard_refused_run` reads of HydraConfig."""

    def at(output_dir: Path) -> None:
        node = OmegaConf.create({"runtime": {"output_dir": str(output_dir)}, "output_subdir": ".hydra", "job": {}})
        node.job.name = "train"
        monkeypatch.setattr(directories, "_hydra_node", lambda: node)

    return at


def _hydra_files(job: Path) -> None:
    (job / ".hydra").mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (job / ".hydra" / name).write_text("{}\n")
    (job / "train.log").write_text("")


def test_a_refused_run_removes_only_the_directory_it_made_with_only_hydras_files(
    tmp_path: Path, hydra_job: Any
) -> None:
    # made by this run, only Hydra's files: removed, with the parents made for it
    run = Path(claim_directory(str(tmp_path / "outputs" / "train" / "2026-01-01" / "12-00-00"), fresh=True))
    _hydra_files(run)
    hydra_job(run)
    assert discard_refused_run() == [str(run), *map(str, [run.parent, run.parent.parent, run.parent.parent.parent])]
    assert list(tmp_path.iterdir()) == []
    # an earlier run's directory, joined to resume it (ckpt_path=last): kept
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    assert claim_directory(str(earlier), fresh=False) == str(earlier)
    _hydra_files(earlier)
    hydra_job(earlier)
    assert discard_refused_run() == [] and earlier.is_dir()
    # made by this run, but something besides Hydra's files in it: kept
    other = Path(claim_directory(str(tmp_path / "other"), fresh=True))
    _hydra_files(other)
    (other / "metrics.csv").write_text("epoch\n")
    hydra_job(other)
    assert discard_refused_run() == [] and (other / "metrics.csv").is_file()


def test_a_refused_job_of_a_sweep_goes_and_the_sweep_too_when_nothing_else_is_left(
    tmp_path: Path, hydra_job: Any
) -> None:
    sweep = Path(claim_directory(str(tmp_path / "multirun" / "12-00-00"), fresh=False))
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    finished = sweep / "0"
    _hydra_files(finished)
    (finished / "metrics.csv").write_text("epoch\n")
    refused = sweep / "1"
    _hydra_files(refused)
    hydra_job(refused)
    assert discard_refused_run() == [str(refused)]  # job 0's results stay, and so does the sweep
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "multirun.yaml"]
    (finished / "metrics.csv").unlink()
    hydra_job(finished)
    assert discard_refused_run() == [str(finished), str(sweep), str(sweep.parent)]
    assert list(tmp_path.iterdir()) == []


def test_ranks_above_zero_claim_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    config = OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path / "run")}}})
    RunDirectories().on_run_start(config=config)
    assert config.hydra.run.dir == str(tmp_path / "run") and not (tmp_path / "run").exists()


def test_a_time_stamped_run_directory_is_claimed_afresh_and_a_given_one_joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("LOCAL_RANK", "RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "outputs" / "fixed").mkdir(parents=True)
    for run_dir, expected in [
        ("outputs/${now:%Y}", "outputs/{year}"),
        ("outputs/${now:%Y}", "outputs/{year}_1"),
        ("outputs/fixed", "outputs/fixed"),  # hydra.run.dir=<an earlier run> ckpt_path=last
    ]:
        config = OmegaConf.create({"hydra": {"run": {"dir": run_dir}}})
        RunDirectories().on_run_start(config=config)
        year = OmegaConf.create({"y": "${now:%Y}"}).y
        assert config.hydra.run.dir == expected.format(year=year)
        assert (tmp_path / config.hydra.run.dir).is_dir()


def test_a_sweep_prints_its_directory_when_it_ends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    RunDirectories().on_multirun_end(config=config)
    assert capsys.readouterr().out == f"sweep directory: {tmp_path / 'sweep'}\n"


# --- threads ------------------------------------------------------------------------------------------------------


def test_threads_follow_the_config_then_omp_num_threads_then_the_idle_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from ls_lightning.cli import threads

    before = torch.get_num_threads()
    try:
        assert set_num_threads(None, {"OMP_NUM_THREADS": "3"}) is None  # torch read it at start
        assert torch.get_num_threads() == before
        assert set_num_threads(1, {"OMP_NUM_THREADS": "3"}) == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(threads, "_usable_cpus", lambda: [0, 1])
        # /proc/stat's per-core ticks (idle + iowait, total) before and after: core 0 busy, core 1 idle
        readings = iter([{0: (100, 1000), 1: (100, 1000)}, {0: (100, 1010), 1: (109, 1010)}])
        monkeypatch.setattr(threads, "_read_stat", lambda: next(readings))
        assert set_num_threads(None, {}) == 1
        readings = iter([{0: (100, 1000), 1: (100, 1000)}, {0: (110, 1010), 1: (109, 1010)}])
        assert set_num_threads(None, {}) == 2 and torch.get_num_threads() == 2
        readings = iter([{0: (100, 1000), 1: (100, 1000)}, {0: (100, 1010), 1: (101, 1010)}])
        assert set_num_threads(None, {}) == 1  # both busy: still one thread
        monkeypatch.setattr(threads, "_read_stat", lambda: None)  # no /proc/stat: every usable core
        assert set_num_threads(None, {}) == 2
    finally:
        torch.set_num_threads(before)
