"""examples/mix_into_existing.py: the plain module and its label-smoothed version both train and log."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mix_into_existing.py"


def _load():
    spec = importlib.util.spec_from_file_location("mix_into_existing", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_example_trains_both_modules() -> None:
    example = _load()
    from ls_lightning import LabelSmoothing

    torch.manual_seed(0)
    plain = example.fit(example.PlainClassifier(), [], epochs=1)
    torch.manual_seed(0)
    smoothed = example.fit(example.SmoothedClassifier(), [LabelSmoothing(0.1)], epochs=1)
    assert set(plain) == {"val/loss", "val/acc"}
    assert {"val/loss", "val/h_pq", "val/h_uq", "val/acc", "val/ece"} <= set(smoothed)
    assert smoothed["val/acc"] > 0.5  # 5 classes: well above chance after one epoch
