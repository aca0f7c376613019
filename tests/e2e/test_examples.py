"""The examples run: the character-level sequence model for a few steps, the LightningCLI app for one epoch, and a
label-smoothed module beside the plain one it was mixed into."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*", "ignore:.*number of training batches.*log_every_n_steps.*"
)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: what the example defines can be pickled by name
    spec.loader.exec_module(module)
    return module


def test_sequence_model_pads_with_ignore_index_and_matches_pytorch() -> None:
    example = _load("sequence_model")
    data = example.CharData(batch_size=4)
    inputs, targets = data.collate([data.train_set[i] for i in range(4)])
    lengths = [len(data.train_set[i]) - 1 for i in range(4)]
    assert inputs.shape == targets.shape == (4, max(lengths))
    for row, length in enumerate(lengths):  # padding exactly where the paragraph has ended
        assert (targets[row, length:] == example.IGNORE_INDEX).all() and (targets[row, :length] >= 0).all()
    model = example.CharLM(num_classes=data.num_classes)
    model.label_smoothing = 0.2
    logits = model(inputs)
    assert logits.shape == (4, data.num_classes, max(lengths))  # (N, C, T)
    expected = F.cross_entropy(logits, targets, ignore_index=example.IGNORE_INDEX, label_smoothing=0.2)
    torch.testing.assert_close(model.label_smoothed_loss(logits, targets), expected)


@pytest.mark.parametrize("prior", ["uniform", "online"])
def test_sequence_model_trains_a_few_steps(tmp_path, prior, capsys) -> None:
    example = _load("sequence_model")
    args = [
        "--max-epochs",
        "2",
        "--max-steps",
        "8",
        "--batch-size",
        "64",
        "--prior",
        prior,
        "--root-dir",
        str(tmp_path),
    ]
    metrics = example.main(args)
    assert {"val/loss", "val/h_pq", "val/h_uq", "val/acc", "val/ece"} <= set(metrics)
    assert all(math.isfinite(value) for value in metrics.values())
    assert metrics["val/loss"] < math.log(len(example.CharData().vocab))  # it learnt something in 8 steps
    assert "val:   loss" in capsys.readouterr().out


@pytest.mark.slow
def test_lightning_cli_fit_one_epoch(tmp_path) -> None:
    command = [sys.executable, "lightning_cli.py", "fit", "--trainer.max_epochs=1"]
    command += [f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"]
    result = subprocess.run(command, cwd=EXAMPLES, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (config_file,) = tmp_path.glob("lightning_logs/version_0/config.yaml")
    config = yaml.safe_load(config_file.read_text())
    (callback,) = [c for c in config["trainer"]["callbacks"] if c["class_path"] == "ls_lightning.LabelSmoothing"]
    schedule = callback["init_args"]["schedule"]
    assert schedule == {"class_path": "ls_lightning.smoothing.Cosine", "init_args": {"start": 0.2, "end": 0.0}}
    assert callback["init_args"]["prior"] == "online"
    (checkpoint,) = tmp_path.glob("lightning_logs/version_0/checkpoints/*.ckpt")
    state = torch.load(checkpoint, weights_only=False)
    assert state["epoch"] == 0 and state["state_dict"]["_ls_prior"].shape == (10, 10)  # the matrix of epoch 1
    torch.testing.assert_close(state["state_dict"]["_ls_prior"].sum(1), torch.ones(10))


def test_mix_into_existing_trains_both_modules() -> None:
    """examples/mix_into_existing.py: the plain module and its label-smoothed version both train and log."""
    example = _load("mix_into_existing")
    from ls_lightning import LabelSmoothing

    torch.manual_seed(0)
    plain = example.fit(example.PlainClassifier(), [], epochs=1)
    torch.manual_seed(0)
    smoothed = example.fit(example.SmoothedClassifier(), [LabelSmoothing(0.1)], epochs=1)
    assert set(plain) == {"val/loss", "val/acc"}
    assert {"val/loss", "val/h_pq", "val/h_uq", "val/acc", "val/ece"} <= set(smoothed)
    assert smoothed["val/acc"] > 0.5  # 5 classes: well above chance after one epoch
