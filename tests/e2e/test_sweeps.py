"""Sweeps and experiment jobs run as a user runs them: ``ls-train -m`` then ``ls-report``, an Optuna search of three
trials (and its refusal without the plugin), and one job of ``experiment=noisy_labels``."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ls_lightning.cli.search import PEAK_KEYS

BIN = Path(sys.executable).parent
PLUGIN = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper"
DESIGN_KEYS = {"train/epsilon"} | {
    f"{s}/{k}" for s in ("train", "val", "test") for k in ("loss", "h_pq", "h_uq", "acc", "ece")
}


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONPATH")}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _last(path: Path, key: str) -> float:
    with open(path, newline="") as file:
        return [float(r[key]) for r in csv.DictReader(file) if r.get(key)][-1]


@pytest.mark.slow
def test_report_over_a_real_two_job_sweep(tmp_path: Path) -> None:
    """``ls-train -m`` gives each job its own directory in one sweep directory; ``ls-report`` tables them."""
    small = ["data=synthetic", "data.num_train=128", "data.num_val=64", "data.num_test=64", "trainer.max_epochs=1"]
    small += ["trainer.log_every_n_steps=1"]
    quiet = ["trainer.accelerator=cpu", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
    choices = ("none", "constant")
    result = _run(
        [str(BIN / "ls-train"), "-m", f"label_smoothing/schedule={','.join(choices)}", *small, *quiet], tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["multirun"]
    (sweep,) = {p.parent for p in tmp_path.rglob("multirun.yaml")}
    jobs = sorted(p.parent for p in sweep.rglob("metrics.csv"))
    assert [p.name for p in jobs] == ["0", "1"] and all(p.parent == sweep for p in jobs)
    for job, choice in zip(jobs, choices, strict=True):
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        assert overrides.count(f"label_smoothing/schedule={choice}") == 1, overrides
        with open(job / "metrics.csv", newline="") as file:
            logged = {key.removesuffix("_epoch").removesuffix("_step") for key in next(csv.reader(file))}
        assert logged >= (DESIGN_KEYS - {"train/epsilon"} if choice == "none" else DESIGN_KEYS)  # none: no callback
    result = _run([str(BIN / "ls-report"), str(sweep)], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" | ")[0] for line in lines[2:4]] == ["| schedule=none", "| schedule=constant"]
    for number, line in enumerate(lines[2:4]):
        cells = line.strip("| ").split(" | ")
        job_csv = sweep / str(number) / "metrics.csv"
        assert (
            cells[2] == f"{100 * _last(job_csv, 'val/acc'):.2f}"
            and cells[7] == f"{100 * _last(job_csv, 'test/ece'):.2f}"
        )
        assert (sweep / str(number) / "reliability.json").is_file()
    assert {"report.md", "report.csv", "report.png"} <= {p.name for p in sweep.iterdir()}


@pytest.mark.slow
def test_ls_train_without_the_plugin_exits_2_with_one_line(tmp_path: Path) -> None:
    """The command itself, in a process where the plugin cannot be imported (as when the extra is not installed)."""
    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith(('hydra_plugins.hydra_optuna_sweeper', 'optuna')):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "sys.argv = ['ls-train', 'hparams_search=optuna', 'trainer.max_epochs=1']\n"
        "from ls_lightning.cli.train import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("ls-train: error: hparams_search=optuna needs Hydra's optuna sweeper plugin")
    assert line.endswith("install it with `pip install 'ls-lightning[optuna]'`")
    assert not (tmp_path / "multirun").exists()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONPATH")}


def _final(path: Path, key: str) -> float:
    with open(path, newline="") as file:
        return [float(r[key]) for r in csv.DictReader(file) if r.get(key)][-1]


@pytest.mark.slow
def test_three_trials_on_digits(tmp_path: Path) -> None:
    pytest.importorskip(PLUGIN)
    sweep = tmp_path / "sweep"
    tiny = ["trainer.max_epochs=1", "calibration.diagrams=false", "trainer.accelerator=cpu"]
    quiet = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
    command = [str(BIN / "ls-train"), "hparams_search=optuna", "hydra.sweeper.n_trials=3", *tiny, *quiet]
    # a database storage, as for a study resumed or read later (optuna 2.10 needs SQLAlchemy < 2 for it)
    command += [f"hydra.sweep.dir={sweep}", f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}"]
    result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2"]
    # the sweeper's best value is the smallest final val/h_pq that the jobs logged, and its params are that job's
    values = {job: _final(job / "metrics.csv", "val/h_pq") for job in jobs}
    best_job = min(values, key=values.__getitem__)
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.name == "optuna"
    assert results.best_value == pytest.approx(values[best_job], rel=1e-6)
    params = dict(results.best_params)
    schedule = params["label_smoothing/schedule"]
    assert set(params) == {"label_smoothing/schedule", f"label_smoothing.schedule.{PEAK_KEYS[schedule]}"}
    overrides = list(OmegaConf.load(best_job / ".hydra" / "overrides.yaml"))
    assert {f"{k}={v}" for k, v in params.items()} <= set(overrides)
    assert (tmp_path / "optuna.db").stat().st_size > 0


@pytest.mark.slow
def test_noisy_labels_makes_the_plain_model_over_confident(tmp_path: Path) -> None:
    """The premise of the experiment: without smoothing, confidence ends above accuracy (one job of the sweep)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"  # a small model: a second thread costs more than it saves on a busy machine
    command = [
        str(BIN / "ls-train"),
        "experiment=noisy_labels",
        "hydra.mode=RUN",  # one job: the sweep's first (variant none, seed 0)
        "label_smoothing/variant=none",
        "calibration.diagrams=false",
        "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path}",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _final(tmp_path / "metrics.csv", "val/overconfidence") > 0.03
    assert _final(tmp_path / "metrics.csv", "test/overconfidence") > 0.03
