"""``fit_temperature`` against a grid search of ``F.cross_entropy`` and a closed form (its callback:
tests/integration/test_temperature_scaling.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import temperature_by_grid_search

from ls_lightning.metrics import fit_temperature


def _generated(n: int, classes: int, sharpen: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z), logits reported as sharpen·z: calibrated at T = sharpen."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g, dtype=torch.float64) * 2
    target = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    return (sharpen * z).float(), target


@pytest.mark.parametrize(("sharpen", "seed"), [(2.5, 0), (1.6, 1), (0.5, 2)])
def test_matches_grid_search(sharpen: float, seed: int) -> None:
    logits, target = _generated(4000, 5, sharpen, seed)
    fitted = fit_temperature(logits, target)
    best, step = temperature_by_grid_search(logits, target)
    assert best / step <= fitted <= best * step
    assert (fitted > 1) == (sharpen > 1)  # over-confident logits need T > 1, under-confident T < 1
    nll = F.cross_entropy(logits.double() / fitted, target)
    assert nll <= F.cross_entropy(logits.double() / best, target) + 1e-12


def test_closed_form_optimum() -> None:
    # Logits (a, 0) everywhere, class 0 right in a fraction q: the optimum has sigmoid(a / T) = q.
    a, q, n = 3.0, 0.7, 1000
    logits = torch.tensor([[a, 0.0]]).repeat(n, 1)
    target = (torch.arange(n) >= int(q * n)).long()
    assert fit_temperature(logits, target) == pytest.approx(a / math.log(q / (1 - q)), rel=1e-9)


def test_ignore_index_and_spatial_dims() -> None:
    logits, target = _generated(600, 4, 2.0, 3)
    ignored = target.clone()
    ignored[::5] = -1
    keep = ignored != -1
    expected = fit_temperature(logits[keep], target[keep])
    spatial = logits.reshape(20, 30, 4).movedim(-1, 1)  # (N, C, d)
    assert fit_temperature(spatial, ignored.reshape(20, 30), ignore_index=-1) == pytest.approx(expected, rel=1e-9)


def test_deterministic_and_precision_independent() -> None:
    logits, target = _generated(1000, 6, 1.8, 4)
    first = fit_temperature(logits, target)
    assert fit_temperature(logits, target) == first
    assert fit_temperature(logits.double(), target) == pytest.approx(first, rel=1e-9)


def test_optimum_outside_bounds_warns() -> None:
    separable = torch.tensor([[5.0, 0.0], [0.0, 5.0]]).repeat(10, 1)
    with pytest.warns(UserWarning, match="still decreases at T = 0.01"):
        assert fit_temperature(separable, torch.tensor([0, 1]).repeat(10)) == 0.01
    uninformative = torch.zeros(10, 3)
    with pytest.warns(UserWarning, match="does not decrease below T = 100.0"):
        assert fit_temperature(uninformative, torch.arange(10) % 3) == 100.0


@pytest.mark.parametrize(
    ("logits", "target", "kwargs", "match"),
    [
        (torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), {}, "`logits`"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), {}, "`target`"),
        (torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), {}, r"class indices in \[0, 3\)"),
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), {"bounds": (2.0, 1.0)}, "`bounds`"),
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), {"max_iter": 0}, "`max_iter`"),
        (torch.zeros(2, 3), torch.full((2,), -100), {"ignore_index": -100}, "not `ignore_index`"),
    ],
)
def test_validation(logits: torch.Tensor, target: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, target, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# The TemperatureScaling callback
# ----------------------------------------------------------------------------------------------------------------
