"""``hparams_search=optuna``: refused with the extra to install when the plugin is missing; ε's key follows the
schedule; the config composes. (The command itself, and a real 3-trial search: tests/e2e/test_sweeps.py.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from ls_lightning.cli.errors import MissingDependencyError
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
