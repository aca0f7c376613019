"""ε schedules: small, pure, picklable maps from training progress t ∈ [0, 1] to a smoothing factor ε ∈ [0, 1]."""

from __future__ import annotations

import abc
import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Constant", "Cosine", "Exponential", "Linear", "Schedule", "Step", "TwoStage"]


def _check_unit(name: str, value: Any) -> float:
    """Return ``value`` as a float after checking that it is a real number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected argument `{name}` to be a float in [0, 1], but got {value!r}")
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"Expected argument `{name}` to be a float in [0, 1], but got {value!r}")
    return float(value)


def _check_sequence(name: str, values: Any) -> tuple[float, ...]:
    """Return ``values`` as a tuple of floats in [0, 1]; strings and scalars are refused."""
    message = f"Expected argument `{name}` to be a list of floats in [0, 1], but got {values!r}"
    if isinstance(values, (str, bytes)):
        raise TypeError(message)
    try:  # any finite iterable (e.g. Hydra's ListConfig), but not a scalar
        values = list(values)
    except TypeError:
        raise TypeError(message) from None
    return tuple(_check_unit(f"{name}[{i}]", v) for i, v in enumerate(values))


def _check_progress(t: Any) -> float:
    """Return the training progress ``t`` as a float; values outside [0, 1] are refused, not clamped.

    Refusing rather than clamping surfaces a wrong denominator in the caller (the callback clamps on purpose once the
    planned run is over, so it never passes such a value).
    """
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"Expected argument `t` to be a float in [0, 1], but got {t!r}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"Expected argument `t` to be a float in [0, 1], but got {t!r}")
    return float(t)


class Schedule(abc.ABC):
    """Base class of ε schedules: ``schedule(t)`` maps training progress t ∈ [0, 1] to ε ∈ [0, 1].

    Subclasses are immutable value objects (frozen dataclasses here), so they pickle, compare equal by value and have
    a ``repr`` that can be pasted back into Python. A subclass must return a float in [0, 1] for every t in [0, 1].
    """

    @abc.abstractmethod
    def __call__(self, t: float) -> float:
        """Return ε at training progress ``t`` ∈ [0, 1]."""


@dataclass(frozen=True)
class Constant(Schedule):
    r"""The same ε throughout training.

    .. math:: \varepsilon(t) = \varepsilon

    Args:
        epsilon: the smoothing factor, in [0, 1].

    Raises:
        ValueError: if ``epsilon`` lies outside [0, 1].

    Example:
        >>> Constant(0.1)(0.5)
        0.1
    """

    epsilon: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", _check_unit("epsilon", self.epsilon))

    def __call__(self, t: float) -> float:
        _check_progress(t)
        return self.epsilon


@dataclass(frozen=True)
class Linear(Schedule):
    r"""Linear interpolation from ``start`` at t = 0 to ``end`` at t = 1.

    .. math:: \varepsilon(t) = (1 - t)\,\varepsilon_\text{start} + t\,\varepsilon_\text{end}

    Args:
        start: ε at t = 0, in [0, 1].
        end: ε at t = 1, in [0, 1].

    Raises:
        ValueError: if ``start`` or ``end`` lies outside [0, 1].

    Example:
        >>> Linear(0.2, 0.0)(0.5)
        0.1
    """

    start: float
    end: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _check_unit("start", self.start))
        object.__setattr__(self, "end", _check_unit("end", self.end))

    def __call__(self, t: float) -> float:
        t = _check_progress(t)
        # written as a weighted mean so that t = 0 and t = 1 give start and end exactly
        return (1.0 - t) * self.start + t * self.end


@dataclass(frozen=True)
class Cosine(Schedule):
    r"""Half-cosine annealing from ``start`` at t = 0 to ``end`` at t = 1.

    .. math:: \varepsilon(t) = w\,\varepsilon_\text{start} + (1 - w)\,\varepsilon_\text{end},
        \qquad w = \tfrac{1}{2}\,(1 + \cos \pi t)

    Args:
        start: ε at t = 0, in [0, 1].
        end: ε at t = 1, in [0, 1].

    Raises:
        ValueError: if ``start`` or ``end`` lies outside [0, 1].

    Example:
        >>> round(Cosine(0.2, 0.0)(0.5), 12)
        0.1
    """

    start: float
    end: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _check_unit("start", self.start))
        object.__setattr__(self, "end", _check_unit("end", self.end))

    def __call__(self, t: float) -> float:
        t = _check_progress(t)
        w = 0.5 * (1.0 + math.cos(math.pi * t))  # cos(π) is exactly -1.0, so t = 1 gives end exactly
        return w * self.start + (1.0 - w) * self.end


@dataclass(frozen=True)
class Exponential(Schedule):
    r"""Geometric interpolation from ``start`` at t = 0 to ``end`` at t = 1.

    .. math:: \varepsilon(t) = \varepsilon_\text{start}^{\,1 - t}\,\varepsilon_\text{end}^{\,t}
        = \varepsilon_\text{start} \left(\varepsilon_\text{end} / \varepsilon_\text{start}\right)^{t}

    Args:
        start: ε at t = 0, in (0, 1].
        end: ε at t = 1, in (0, 1]. A geometric curve never reaches 0; use :class:`Cosine` or :class:`Linear` for that.

    Raises:
        ValueError: if ``start`` or ``end`` lies outside (0, 1].

    Example:
        >>> round(Exponential(0.4, 0.1)(0.5), 12)
        0.2
    """

    start: float
    end: float

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = _check_unit(name, getattr(self, name))
            if value == 0.0:
                raise ValueError(f"Expected argument `{name}` to be a float in (0, 1] (geometric), but got {value!r}")
            object.__setattr__(self, name, value)

    def __call__(self, t: float) -> float:
        t = _check_progress(t)
        # the product form gives start and end exactly at t = 0 and t = 1
        return self.start ** (1.0 - t) * self.end**t


@dataclass(frozen=True)
class Step(Schedule):
    r"""Piecewise-constant ε: ``values[i]`` holds for ``milestones[i-1] <= t < milestones[i]``.

    .. math:: \varepsilon(t) = v_i \quad\text{for}\quad m_{i-1} \le t < m_i, \qquad m_{-1} = 0,\ m_n = \infty

    At a milestone the next value already holds (``Step([0.5], [0.1, 0.0])(0.5) == 0.0``).

    Args:
        milestones: strictly increasing progress points in [0, 1] where ε changes.
        values: the ε of each interval, in [0, 1]; one more than ``milestones``.

    Raises:
        ValueError: if a value or milestone lies outside [0, 1], the milestones do not increase strictly, or
            ``len(values) != len(milestones) + 1``.

    Example:
        >>> s = Step(milestones=[0.5], values=[0.1, 0.0])
        >>> s(0.25), s(0.5)
        (0.1, 0.0)
    """

    milestones: Sequence[float]
    values: Sequence[float]

    def __post_init__(self) -> None:
        milestones = _check_sequence("milestones", self.milestones)
        values = _check_sequence("values", self.values)
        for i in range(1, len(milestones)):
            if milestones[i] <= milestones[i - 1]:
                raise ValueError(f"Expected argument `milestones` to increase strictly, but got {list(milestones)}")
        if len(values) != len(milestones) + 1:
            raise ValueError(
                f"Expected argument `values` to hold len(milestones) + 1 = {len(milestones) + 1} values,"
                f" but got {len(values)}: {list(values)}"
            )
        # tuples keep the object immutable and hashable whatever sequence type the caller passed
        object.__setattr__(self, "milestones", milestones)
        object.__setattr__(self, "values", values)

    def __call__(self, t: float) -> float:
        t = _check_progress(t)
        return self.values[bisect.bisect_right(self.milestones, t)]


@dataclass(frozen=True)
class TwoStage(Schedule):
    r"""``epsilon`` for t < ``switch_at``, then 0 (smooth early, train on hard labels at the end).

    .. math:: \varepsilon(t) = \varepsilon \ \text{if}\ t < t_\text{switch}\ \text{else}\ 0

    Args:
        epsilon: ε of the first stage, in [0, 1].
        switch_at: progress in [0, 1] from which ε is 0 (at ``t == switch_at`` ε is already 0).

    Raises:
        ValueError: if ``epsilon`` or ``switch_at`` lies outside [0, 1].

    Example:
        >>> s = TwoStage(0.1, switch_at=0.8)
        >>> s(0.5), s(0.8)
        (0.1, 0.0)
    """

    epsilon: float
    switch_at: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", _check_unit("epsilon", self.epsilon))
        object.__setattr__(self, "switch_at", _check_unit("switch_at", self.switch_at))

    def __call__(self, t: float) -> float:
        t = _check_progress(t)
        return self.epsilon if t < self.switch_at else 0.0
