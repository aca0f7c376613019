"""Temperature scaling (Guo et al., 2017): the temperature that minimises the held-out NLL of softmax(logits / T)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

__all__ = ["fit_temperature"]


def _fit_temperature_arg_validation(
    logits: Tensor, target: Tensor, max_iter: int, bounds: tuple[float, float], ignore_index: int | None
) -> None:
    if not logits.is_floating_point() or logits.ndim < 2:
        raise ValueError(
            f"Expected argument `logits` to be a floating tensor of shape (N, C, ...), but got {logits.dtype} "
            f"of shape {tuple(logits.shape)}"
        )
    if target.is_floating_point() or logits.shape[:1] + logits.shape[2:] != target.shape:
        raise ValueError(
            f"Expected argument `target` to be class indices of shape {tuple(logits.shape[:1] + logits.shape[2:])}, "
            f"but got {target.dtype} of shape {tuple(target.shape)}"
        )
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"Expected argument `max_iter` to be a positive integer, but got {max_iter}")
    if not (len(bounds) == 2 and 0 < bounds[0] < bounds[1] < math.inf):
        raise ValueError(f"Expected argument `bounds` to be (low, high) with 0 < low < high < inf, but got {bounds}")
    if ignore_index is not None and not isinstance(ignore_index, int):
        raise ValueError(f"Expected argument `ignore_index` to either be `None` or an integer, but got {ignore_index}")


def _flat_valid(logits: Tensor, target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """(M, C) float64 logits and (M,) targets of the positions that count (offline, so indexing is fine)."""
    num_classes = logits.shape[1]
    z = torch.movedim(logits, 1, -1).reshape(-1, num_classes).double()
    y = target.reshape(-1)
    if ignore_index is not None:
        z, y = z[y != ignore_index], y[y != ignore_index]
    if y.numel() == 0:
        raise ValueError("Expected at least one position whose `target` is not `ignore_index`, but got none")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(
            f"Expected argument `target` to hold class indices in [0, {num_classes}), "
            f"but got values in [{int(y.min())}, {int(y.max())}]"
        )
    return z, y


def _nll_slope(z: Tensor, z_y: Tensor, beta: float) -> tuple[float, float]:
    r"""First and second derivative in :math:`\beta = 1/T` of the mean NLL of softmax(βz).

    .. math::
        \frac{d}{d\beta}\,\text{NLL} = \overline{\mathbb{E}_{p_\beta}[z] - z_y}, \qquad
        \frac{d^2}{d\beta^2}\,\text{NLL} = \overline{\operatorname{Var}_{p_\beta}[z]} \ge 0
    """
    p = torch.softmax(beta * z, dim=1)
    mean = (p * z).sum(dim=1)
    var = (p * (z - mean.unsqueeze(1)).square()).sum(dim=1)
    return float((mean - z_y).mean()), float(var.mean())


def _solve_slope_zero(z: Tensor, z_y: Tensor, low: float, high: float, max_iter: int, tol: float) -> float:
    """Root of the (non-decreasing) slope in β ∈ (low, high): Newton steps kept inside a shrinking bracket,
    falling back to geometric bisection. Deterministic and, since the NLL is convex in β, globally convergent."""
    beta = math.sqrt(low * high)
    for _ in range(max_iter):
        slope, curvature = _nll_slope(z, z_y, beta)
        if slope == 0.0:
            return beta
        low, high = (beta, high) if slope < 0 else (low, beta)
        newton = beta - slope / curvature if curvature > 0 else math.nan
        step_ok = low < newton < high
        next_beta = newton if step_ok else math.sqrt(low * high)
        if abs(next_beta - beta) <= tol * beta or high <= low * (1 + tol):
            return next_beta
        beta = next_beta
    return beta


def fit_temperature(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = None,
    max_iter: int = 100,
    bounds: tuple[float, float] = (1e-2, 1e2),
    tol: float = 1e-10,
) -> float:
    r"""Temperature :math:`T > 0` that minimises the mean negative log-likelihood of ``softmax(logits / T)``.

    .. math::
        T^* = \arg\min_{T} \; -\frac{1}{N} \sum_i \log \operatorname{softmax}(z_i / T)_{y_i}

    The NLL is convex in :math:`\beta = 1/T`, so the optimum is the root of its slope; it is found in float64 by
    Newton steps safeguarded by a bracket (bisection when a step leaves it), which is deterministic and needs no
    learning rate. Fit on held-out data (a validation set), then divide the logits by :math:`T^*`.

    Args:
        logits: Unnormalised scores.
        target: Class indices.
        ignore_index: Target value whose positions are left out.
        max_iter: Most Newton/bisection steps (each one pass over the logits).
        bounds: Range searched for :math:`T`; when the optimum lies outside it (e.g. perfectly separable data, or
            logits carrying no information) the nearer bound is returned with a warning.
        tol: Relative tolerance on :math:`1/T`.

    Returns:
        The temperature as a Python float.

    Raises:
        ValueError: On bad shapes, dtypes, class indices, ``max_iter`` or ``bounds``, or no position to fit.

    Shape:
        - logits: :math:`(N, C)` or :math:`(N, C, d_1, ...)`.
        - target: :math:`(N)` or :math:`(N, d_1, ...)`.

    Example:
        >>> logits = torch.tensor([[4.0, 0.0]] * 5)
        >>> target = torch.tensor([0, 0, 0, 0, 1])  # 80% right: the optimum has softmax(z / T)[0] = 0.8
        >>> round(fit_temperature(logits, target), 4), round(4 / math.log(4), 4)
        (2.8854, 2.8854)
    """
    _fit_temperature_arg_validation(logits, target, max_iter, bounds, ignore_index)
    z, y = _flat_valid(logits.detach(), target.detach(), ignore_index)
    z_y = z.gather(1, y.unsqueeze(1)).squeeze(1)
    beta_low, beta_high = 1.0 / bounds[1], 1.0 / bounds[0]
    if _nll_slope(z, z_y, beta_low)[0] >= 0:
        warnings.warn(f"The NLL does not decrease below T = {bounds[1]}; returning that bound", stacklevel=2)
        return float(bounds[1])
    if _nll_slope(z, z_y, beta_high)[0] <= 0:
        warnings.warn(f"The NLL still decreases at T = {bounds[0]}; returning that bound", stacklevel=2)
        return float(bounds[0])
    return 1.0 / _solve_slope_zero(z, z_y, beta_low, beta_high, max_iter, tol)
