"""``data=breast_cancer``: scikit-learn's bundled binary set, trained end to end as a binary task."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from ls_lightning.cli.data import BreastCancerDataModule
from ls_lightning.cli.errors import ConfigValueError
from ls_lightning.cli.train import train

QUIET = [
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def test_split_is_stratified_standardised_and_fixed():
    from sklearn.datasets import load_breast_cancer

    dm = BreastCancerDataModule(split_seed=0)
    dm.setup()
    x, y = {}, {}
    for name, dataset in dm.splits.items():
        x[name], y[name] = dataset.tensors
    assert sum(len(t) for t in y.values()) == 569 and (len(y["val"]), len(y["test"])) == (114, 114)
    share = load_breast_cancer().target.mean()
    assert all(abs(t.float().mean().item() - share) < 0.01 for t in y.values())  # stratified by label
    torch.testing.assert_close(x["train"].mean(0), torch.zeros(30), atol=1e-5, rtol=0)
    assert x["train"].shape[1] == dm.num_features and dm.num_classes == 1 and dm.task == "binary"
    again = BreastCancerDataModule(split_seed=0)
    again.setup()
    assert torch.equal(again.splits["val"].tensors[0], x["val"])


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="val_fraction"):
        BreastCancerDataModule(val_fraction=1.5)
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction"):
        BreastCancerDataModule(val_fraction=0.6, test_fraction=0.5)


def _compose(overrides: list[str], output_dir: Path):
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def test_config_values_are_validated(tmp_path):
    with pytest.raises(ConfigValueError, match=r"data\.val_fraction"):
        train(_compose(["data=breast_cancer", "data.val_fraction=0", *QUIET], tmp_path))


def test_ls_train_data_breast_cancer_trains_a_binary_model(tmp_path):
    out = tmp_path / "run"
    overrides = ["data=breast_cancer", "trainer.max_epochs=2", "label_smoothing/schedule=linear", *QUIET]
    metrics = train(_compose(overrides, out))
    for stage in ("val", "test"):
        for key in ("loss", "h_pq", "h_uq", "acc", "ece", "mce", "rmsce", "brier", "overconfidence"):
            assert f"{stage}/{key}" in metrics, (stage, key)
        assert metrics[f"{stage}/acc"] > 0.9  # a linear-ish model separates this set well
        assert 0 <= metrics[f"{stage}/ece"] <= metrics[f"{stage}/mce"] <= 1
        assert math.isfinite(metrics[f"{stage}/loss"]) and metrics[f"{stage}/h_uq"] > 0
        assert 0 <= metrics[f"{stage}/brier"] <= 0.25
    hparams = (out / "hparams.yaml").read_text()
    assert "task: binary" in hparams and "num_classes: 1" in hparams
    with open(out / "metrics.csv", newline="") as file:
        epsilons = [float(row["train/epsilon"]) for row in csv.DictReader(file) if row.get("train/epsilon")]
    assert epsilons and epsilons[0] > epsilons[-1]  # the linear schedule decreases ε
