"""Tests of the reliability diagrams: files written and readable, drawn from the metric's state only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

import matplotlib.image
from matplotlib.figure import Figure

from ls_lightning.metrics import BinnedCalibrationError, BinStats
from ls_lightning.metrics.plotting import (
    _display_bins,
    plot_reliability_curves,
    plot_reliability_diagram,
    save_reliability_diagram,
)


def _metric(scale: float, seed: int = 0) -> BinnedCalibrationError:
    g = torch.Generator().manual_seed(seed)
    logits, target = torch.randn(2000, 10, generator=g), torch.randint(0, 10, (2000,), generator=g)
    logits[torch.arange(2000), target] += 2.0
    metric = BinnedCalibrationError()
    metric.update(logits * scale, target)
    return metric


def test_save_writes_a_readable_png(tmp_path: Path) -> None:
    path = save_reliability_diagram(_metric(2.0), tmp_path / "sub" / "val.png", title="val", dpi=60)
    assert path == tmp_path / "sub" / "val.png"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image.std() > 0.05  # not blank


def test_title_reports_the_metric_values() -> None:
    metric = _metric(2.0)
    figure = plot_reliability_diagram(metric, title="val")
    title = figure.axes[0].get_title()
    assert title.startswith("val\n")
    assert f"ECE {metric.compute().item():.2%}" in title
    assert f"{metric.overconfidence.item():+.2%} (over-confident)" in title
    assert "(under-confident)" in plot_reliability_diagram(_metric(0.3)).axes[0].get_title()


def test_draws_into_a_given_axes_and_from_stats() -> None:
    figure = Figure()
    ax = figure.subplots()
    assert plot_reliability_diagram(_metric(1.0).bin_stats(), ax=ax) is figure
    assert len(figure.axes) == 2  # the count panel is carved out of the given axes


def test_exact_one_slot_is_drawn_in_the_last_bin() -> None:
    metric = BinnedCalibrationError(n_bins=4)
    metric.update(torch.tensor([1.0, 0.9, 0.1]), torch.tensor([True, False, True]))
    left, counts, accuracy, confidence = _display_bins(metric.bin_stats())
    assert left.tolist() == [0.0, 0.25, 0.5, 0.75]
    assert counts.tolist() == [1.0, 0.0, 0.0, 2.0]
    assert accuracy[-1] == pytest.approx(0.5) and confidence[-1] == pytest.approx(0.95)


def test_empty_state_and_curves(tmp_path: Path) -> None:
    plot_reliability_diagram(BinStats(*(torch.zeros(16, dtype=torch.float64) for _ in range(3))))
    figure = plot_reliability_curves([("x1", _metric(1.0)), ("x2", _metric(2.0).bin_stats())], title="runs")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels[1].startswith("x1 (ECE ") and labels[2].startswith("x2 (ECE ")
    figure.savefig(tmp_path / "curves.png")
    assert matplotlib.image.imread(tmp_path / "curves.png").ndim == 3


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="`stats_or_metric`"):
        plot_reliability_diagram(torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`curves`"):
        plot_reliability_curves([])
