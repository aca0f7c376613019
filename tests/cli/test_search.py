"""``ls-train hparams_search=optuna``: refused with the extra to install when the plugin is missing; ε's key follows
the schedule; a real 3-trial search on digits returns the best job's values."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from ls_lightning.cli.config import MissingDependencyError
from ls_lightning.cli.search import EPSILON_RANGE, PEAK_KEYS, check_sweeper_plugins, suggest_epsilon

BIN = Path(sys.executable).parent
PLUGIN = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper"


@pytest.mark.parametrize("override", ["hparams_search=optuna", "+hparams_search=optuna", "hydra/sweeper=optuna"])
def test_a_missing_plugin_is_refused_with_the_extra_to_install(override: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, PLUGIN, None)  # what an absent module looks like to import
    with pytest.raises(MissingDependencyError, match=r"pip install 'ls-lightning\[optuna\]'") as info:
        check_sweeper_plugins(["seed=1", override])
    assert str(info.value).startswith(f"{override.lstrip('+')} needs Hydra's optuna sweeper plugin")


def test_other_overrides_need_no_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, PLUGIN, None)
    check_sweeper_plugins(["hparams_search=null", "seed=1", "label_smoothing/schedule=optuna", "hydra/sweeper=basic"])


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


@pytest.mark.parametrize(("schedule", "key"), sorted(PEAK_KEYS.items()))
def test_suggest_epsilon_uses_the_key_of_the_chosen_schedule(schedule: str, key: str, tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    trial.suggest_categorical("label_smoothing/schedule", [schedule])
    suggest_epsilon(OmegaConf.create({}), trial)
    value = trial.params[f"label_smoothing.schedule.{key}"]
    assert set(trial.params) == {"label_smoothing/schedule", f"label_smoothing.schedule.{key}"}
    assert EPSILON_RANGE[0] <= value <= EPSILON_RANGE[1]
    # the trial's parameters are the job's overrides: they must compose
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"{name}={v}" for name, v in trial.params.items()])
    assert cfg.label_smoothing.schedule[key] == value


def test_suggest_epsilon_reads_a_fixed_schedule_from_the_config_and_refuses_none() -> None:
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    suggest_epsilon(_chosen("cosine"), trial)
    assert list(trial.params) == ["label_smoothing.schedule.start"]
    with pytest.raises(ValueError, match="Expected argument `label_smoothing/schedule` to be one of"):
        suggest_epsilon(_chosen("none"), study.ask())


def _chosen(schedule: str) -> DictConfig:
    """The part of a sweep's config that records the schedule chosen on the command line."""
    return OmegaConf.create({"hydra": {"runtime": {"choices": {"label_smoothing/schedule": schedule}}}})


def test_optuna_config_composes() -> None:
    pytest.importorskip(PLUGIN)
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    assert cfg.optimized_metric == "val/h_pq"
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert sweeper.sampler.seed == 1234 and sweeper.custom_search_space == "ls_lightning.cli.search.suggest_epsilon"
    assert sweeper.params["label_smoothing/schedule"] == "choice(constant, linear, cosine, two_stage)"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


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
