"""The experiments of the README (`ls-train experiment=...`) and the label_smoothing/variant group they sweep, as
composed configs (one job run: tests/e2e/test_sweeps.py)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from ls_lightning.cli.config import validate_config

BIN = Path(sys.executable).parent
VARIANTS = ["none", "constant", "cosine", "two_stage", "online"]
# variant -> the schedule and prior choices it stands for
CHOICES = {
    "none": ("none", "uniform"),
    "constant": ("constant", "uniform"),
    "cosine": ("cosine", "uniform"),
    "two_stage": ("two_stage", "uniform"),
    "online": ("constant", "online"),
}


def _compose(overrides: list[str], hydra: bool = False) -> DictConfig:
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_variant_equals_its_schedule_and_prior(variant: str) -> None:
    schedule, prior = CHOICES[variant]
    cfg = _compose([f"label_smoothing/variant={variant}"])
    reference = _compose([f"label_smoothing/schedule={schedule}", f"label_smoothing/prior={prior}"])
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(reference)
    assert OmegaConf.get_type(cfg.label_smoothing.schedule) is OmegaConf.get_type(reference.label_smoothing.schedule)


def test_a_variant_keeps_its_fields_overridable_and_yields_to_an_explicit_schedule() -> None:
    cfg = _compose(["label_smoothing/variant=cosine", "label_smoothing.schedule.start=0.2"])
    assert cfg.label_smoothing.schedule.start == 0.2
    cfg = _compose(["label_smoothing/variant=cosine", "label_smoothing/schedule=two_stage"])
    assert cfg.label_smoothing.schedule._target_ == "ls_lightning.smoothing.TwoStage"


@pytest.mark.parametrize("experiment", ["compare_schedules", "noisy_labels", "compare_schedules_lm"])
def test_experiments_sweep_the_variants_over_three_seeds(experiment: str) -> None:
    cfg = _compose([f"experiment={experiment}"], hydra=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = cfg.hydra.sweeper.params
    assert params["label_smoothing/variant"].split(",") == VARIANTS
    assert params["seed"].split(",") == ["0", "1", "2"]
    assert cfg.calibration.temperature_scaling is True


def test_noisy_labels_is_an_over_sized_model_on_noisy_generated_data() -> None:
    cfg = _compose(["experiment=noisy_labels"])
    validate_config(cfg)
    assert cfg.data._target_ == "ls_lightning.cli.data.SyntheticDataModule" and cfg.data.label_noise == 0.2
    assert list(cfg.model.hidden_sizes) == [512, 512]


def test_compare_schedules_lm_trains_the_transformer_on_text() -> None:
    cfg = _compose(["experiment=compare_schedules_lm"])
    validate_config(cfg)
    assert cfg.data._target_ == "ls_lightning.cli.data.TextDataModule"
    assert cfg.model._target_ == "ls_lightning.cli.models.Transformer"


def _final(path: Path, key: str) -> float:
    with open(path, newline="") as file:
        return [float(r[key]) for r in csv.DictReader(file) if r.get(key)][-1]
