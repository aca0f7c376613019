"""``train(cfg)`` and ``evaluate(cfg)`` called in-process on composed configs: the files of a run, resuming, the
calibration switches, and the checkpoints the default callbacks write."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import Net, classification_data, quiet_trainer
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from ls_lightning.cli.errors import ConfigValueError
from ls_lightning.cli.eval import evaluate
from ls_lightning.cli.train import train

SCHEDULES = ["none", "constant", "linear", "cosine", "exponential", "step", "two_stage"]
# the epoch keys of DESIGN.md ("Logged keys"), per stage
EPOCH_KEYS = ("loss", "h_pq", "h_uq", "acc", "ece")
QUIET = [
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
SMALL = [*QUIET, "data=synthetic", "data.num_train=256", "data.num_val=100", "data.num_test=100", "data.batch_size=32"]


def make_cfg(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        return compose(config_name, overrides=[*overrides, f"paths.output_dir={output_dir}"])


def global_step(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_fast_dev_run_for_each_schedule(schedule: str, tmp_path: Path) -> None:
    metrics = train(make_cfg([f"label_smoothing/schedule={schedule}", "trainer.fast_dev_run=true", *SMALL], tmp_path))
    for stage in ("val", "test"):
        assert {f"{stage}/{key}" for key in EPOCH_KEYS} <= set(metrics)
        assert 0.0 <= metrics[f"{stage}/acc"] <= 1.0 and 0.0 <= metrics[f"{stage}/ece"] <= 1.0


def test_fast_dev_run_with_the_cnn_on_digits(tmp_path: Path) -> None:
    metrics = train(make_cfg(["model=cnn", "trainer.fast_dev_run=true", *QUIET], tmp_path))
    assert 0.0 <= metrics["test/acc"] <= 1.0


def test_run_writes_metrics_and_checkpoint_into_the_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = make_cfg(
        ["label_smoothing/schedule=linear", "trainer.max_epochs=2", "label_smoothing.interval=epoch", *SMALL], out
    )
    metrics = train(cfg)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints",
        "hparams.yaml",
        "metrics.csv",
        "reliability",
        "reliability.json",
        "reliability_diagram.png",
    ]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.ckpt"]
    rows = read_csv(out / "metrics.csv")
    header = set(rows[0])
    expected = {"train/epsilon"} | {f"{s}/{k}" for s in ("train", "val", "test") for k in EPOCH_KEYS}
    expected |= {"train/loss_step", "train/h_pq_step", "train/h_uq_step"}  # step values of the train loss terms
    assert expected <= {key.replace("_epoch", "") if key.endswith("_epoch") else key for key in header} | header
    # ε of Linear(0.1, 0) per epoch (interval=epoch, 2 epochs): 0.1, then 0.05
    epsilons = sorted({float(r["train/epsilon"]) for r in rows if r.get("train/epsilon")}, reverse=True)
    assert epsilons == pytest.approx([0.1, 0.05])
    # the returned metrics are the last logged epoch values
    last_val = [r for r in rows if r.get("val/acc")][-1]
    assert metrics["val/acc"] == pytest.approx(float(last_val["val/acc"]))
    test_row = next(r for r in rows if r.get("test/acc"))
    assert metrics["test/ece"] == pytest.approx(float(test_row["test/ece"]))


def test_resume_continues_the_fit_and_evaluate_reproduces_the_final_metrics(tmp_path: Path) -> None:
    first = tmp_path / "first"
    metrics = train(make_cfg(["trainer.max_epochs=1", *SMALL], first))
    ckpt = first / "checkpoints" / "last.ckpt"
    resumed = tmp_path / "resumed"
    train(make_cfg(["trainer.max_epochs=2", f"ckpt_path={ckpt}", *SMALL], resumed))
    epochs = {int(r["epoch"]) for r in read_csv(resumed / "metrics.csv") if r.get("train/loss_epoch")}
    assert epochs == {1}  # epoch 0 came from the checkpoint

    evaluated = tmp_path / "eval"
    again = evaluate(make_cfg([f"ckpt_path={ckpt}", *SMALL], evaluated, config_name="eval"))
    # the same weights on the same data: the same numbers as at the end of the first fit
    for key in ("val/acc", "val/ece", "val/h_pq", "val/loss", "test/acc", "test/ece", "test/h_pq"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6), key
    header = set(read_csv(evaluated / "metrics.csv")[0])
    assert {"val/acc", "test/acc", "val/h_pq", "test/h_uq"} <= header


def test_evaluate_names_the_fix_when_the_checkpoint_does_not_fit(tmp_path: Path) -> None:
    train(make_cfg(["trainer.max_epochs=1", *QUIET, "data.batch_size=256"], tmp_path / "mlp"))
    ckpt = tmp_path / "mlp" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigValueError, match=r"does not fit the configured model .* \.hydra/overrides\.yaml"):
        evaluate(make_cfg([f"ckpt_path={ckpt}", "model=cnn", *QUIET], tmp_path / "eval", config_name="eval"))


def test_seed_makes_runs_reproducible(tmp_path: Path) -> None:
    overrides = ["trainer.max_epochs=1", "logger=none", *SMALL]
    first = train(make_cfg(overrides, tmp_path / "a"))
    second = train(make_cfg(overrides, tmp_path / "b"))
    assert first == second
    assert train(make_cfg([*overrides, "seed=1"], tmp_path / "c"))["val/loss"] != first["val/loss"]


def test_bad_values_stop_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigValueError, match=r"label_smoothing.schedule.epsilon=1.5 is out of range"):
        train(make_cfg(["label_smoothing.schedule.epsilon=1.5"], tmp_path))
    with pytest.raises(ConfigValueError, match="ckpt_path is required"):
        evaluate(make_cfg([], tmp_path, config_name="eval"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_default_config_reaches_a_good_accuracy_on_digits(tmp_path: Path) -> None:
    metrics = train(
        make_cfg(
            ["trainer.accelerator=cpu", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"], tmp_path
        )
    )
    assert metrics["test/acc"] > 0.95 and metrics["val/acc"] > 0.95
    assert torch.isfinite(torch.tensor(metrics["test/ece"]))


def test_config_flags_switch_the_callbacks(tmp_path: Path) -> None:
    small = ["trainer.accelerator=cpu", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
    small += ["data=synthetic", "data.num_train=64", "data.num_val=40", "data.num_test=40", "trainer.max_epochs=1"]
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        on = compose("train", [*small, "calibration.temperature_scaling=true", f"paths.output_dir={tmp_path / 'on'}"])
        off = compose("train", [*small, "calibration.diagrams=false", f"paths.output_dir={tmp_path / 'off'}"])
    assert {"val/temperature", "val/ece_ts"} <= set(train(on))
    assert (tmp_path / "on" / "reliability.json").is_file()
    assert "val/temperature" not in train(off)  # temperature scaling is opt-in
    assert not any(p.name.startswith("reliability") for p in (tmp_path / "off").iterdir())


class LastCheckpointSteps(L.Callback):
    """Before each training batch and at the end, the step that ``last.ckpt`` holds (None: no file yet)."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        self.seen.append((trainer.global_step, global_step(self.path) if self.path.exists() else None))


@pytest.mark.parametrize("every_n_train_steps", [0, 3])
def test_default_checkpoints_write_last_ckpt_at_every_epoch_end_and_every_n_steps(
    every_n_train_steps: int, tmp_path: Path
) -> None:
    overrides = [f"callbacks.step_checkpoint.every_n_train_steps={every_n_train_steps}", f"paths.output_dir={tmp_path}"]
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    checkpoints = [instantiate(cfg.callbacks.model_checkpoint), instantiate(cfg.callbacks.step_checkpoint)]
    recorder = LastCheckpointSteps(tmp_path / "checkpoints" / "last.ckpt")
    trainer = quiet_trainer(tmp_path, callbacks=[*checkpoints, recorder], max_epochs=1)
    trainer.fit_loop.max_epochs = 3  # 4 steps per epoch
    trainer.fit(Net(3, 2), DataLoader(classification_data(16, 3, 2), batch_size=4))

    def saved(step: int) -> bool:  # at the end of each epoch, and every n steps when set
        return step % 4 == 0 or (every_n_train_steps > 0 and step % every_n_train_steps == 0)

    expected = [(g, max((s for s in range(1, g + 1) if saved(s)), default=None)) for g in range(12)]
    assert recorder.seen == expected
    assert global_step(recorder.path) == 12  # the end of training
    assert [p.name for p in recorder.path.parent.iterdir()] == ["last.ckpt"]


def test_checkpoint_without_the_callbacks_state_warns_when_resumed(tmp_path: Path) -> None:
    overrides = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "callbacks.progress_bar=null"]
    overrides += ["data=synthetic", "data.num_train=64", "data.num_val=16", "data.num_test=16", "trainer.max_epochs=1"]
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        first = compose("train", overrides=[*overrides, f"paths.output_dir={tmp_path / 'first'}", "logger=none"])
    train(first)
    checkpoint = torch.load(tmp_path / "first" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    checkpoint["callbacks"] = {k: v for k, v in checkpoint["callbacks"].items() if not k.startswith("LabelSmoothing")}
    stripped = tmp_path / "stripped.ckpt"
    torch.save(checkpoint, stripped)
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        resumed = compose(
            "train",
            overrides=[*overrides, "trainer.max_epochs=2", f"ckpt_path={stripped}", "logger=none",
                       f"paths.output_dir={tmp_path / 'resumed'}"],
        )  # fmt: skip
    with pytest.warns(UserWarning, match=r"no state for `LabelSmoothing\{.*recomputed from the restored trainer"):
        train(resumed)
