"""Argument checks shared by the losses: each raises ``ValueError`` naming the argument, the expected form, the value.

Checks that need tensor values run where reading them is free, on CPU tensors; on an accelerator they are asynchronous
device asserts, and under ``torch.compile`` values are not read at all (a traced comparison would guard on them).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")
# A (V, V) prior holds V² numbers (1 GiB of float32 at this size) and is refused above it: use a (V,) prior.
MAX_MATRIX_PRIOR_CLASSES = 1 << 14
PRIOR_TOLERANCE = 1e-4

__all__ = [
    "MAX_MATRIX_PRIOR_CLASSES",
    "PRIOR_TOLERANCE",
    "REDUCTIONS",
    "assert_on_device",
    "check_alpha",
    "check_class_indices",
    "check_gamma",
    "check_label_smoothing",
    "check_linear_arguments",
    "check_loss_arguments",
    "check_non_negative",
    "check_prior",
    "check_reduction",
    "check_regularizer_weight",
    "check_shapes",
    "check_softcap",
    "check_weight",
    "check_z_loss",
]


def check_loss_arguments(
    input: Tensor,
    target: Tensor,
    eps: float | Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    prior: Tensor | None,
) -> None:
    """Every argument of a multi-class loss: reduction, ε, shapes, class weights, prior and class indices."""
    check_reduction(reduction)
    check_label_smoothing(eps)
    check_shapes(input, target, ignore_index)
    num_classes = input.shape[1] if input.dim() > 1 else input.shape[0]
    check_weight(weight, num_classes)
    if prior is not None:
        check_prior(prior, num_classes)
    if not target.is_floating_point():
        check_class_indices(target, num_classes, ignore_index)


def check_reduction(reduction: str) -> None:
    """``reduction`` one of ``"none"``, ``"mean"``, ``"sum"``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"Expected argument `reduction` to be one of {REDUCTIONS}, but got {reduction!r}")


def check_weight(weight: Tensor | None, num_classes: int) -> None:
    """Class weights: None or a floating point (C,) tensor."""
    if weight is not None and (weight.shape != (num_classes,) or not weight.is_floating_point()):
        raise ValueError(
            f"Expected argument `weight` to be a floating point tensor of shape ({num_classes},), "
            f"but got {weight.dtype} of shape {tuple(weight.shape)}"
        )


def check_z_loss(z_loss: float) -> None:
    """``z_loss`` a finite number ≥ 0 (its value is not read under ``torch.compile``: that would guard on it)."""
    if isinstance(z_loss, bool) or not isinstance(z_loss, (int, float)):
        raise ValueError(f"Expected argument `z_loss` to be a finite float >= 0, but got {z_loss!r}")
    if not torch.compiler.is_compiling() and not (math.isfinite(z_loss) and z_loss >= 0):
        raise ValueError(f"Expected argument `z_loss` to be a finite float >= 0, but got {z_loss!r}")


def check_softcap(softcap: float | None) -> None:
    """``softcap`` None or a finite number > 0 (its value is not read under ``torch.compile``)."""
    if softcap is None:
        return
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise ValueError(f"Expected argument `softcap` to be None or a finite float > 0, but got {softcap!r}")
    if not torch.compiler.is_compiling() and not (math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"Expected argument `softcap` to be None or a finite float > 0, but got {softcap!r}")


def _readable_number(name: str, value: float | Tensor, expected: str) -> float | None:
    """``value``, a number or a 0-d floating point tensor, as a float to range-check; None where it must not be read:
    a tensor off the CPU (a host synchronisation) or anything under ``torch.compile`` (a traced comparison would
    guard on the value and recompile whenever it changes)."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(
                f"Expected argument `{name}` to be a float or a 0-d floating point tensor, "
                f"but got {value.dtype} of shape {tuple(value.shape)}"
            )
        if value.device.type != "cpu" or torch.compiler.is_compiling():
            return None
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Expected argument `{name}` to be {expected}, but got {value!r}")
    return None if torch.compiler.is_compiling() else value


def check_label_smoothing(eps: float | Tensor) -> None:
    """ε in [0, 1]; a tensor ε is range-checked only on the CPU, where reading it costs no device sync."""
    value = _readable_number("label_smoothing", eps, "a float in [0, 1]")
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"Expected argument `label_smoothing` to be in [0, 1], but got {value}")


def _sizes_are(shape: tuple[int, ...], c: int) -> bool:
    """``shape`` is (c,) or (c, c)."""
    return len(shape) in (1, 2) and all(size == c for size in shape)


def check_shapes(input: Tensor, target: Tensor, ignore_index: int) -> None:
    """input floating with ≥ 1 dim; target of input's shape (probabilities) or without dim 1 (indices)."""
    if not isinstance(input, Tensor) or not input.is_floating_point() or input.dim() == 0:
        raise ValueError(
            f"Expected argument `input` to be a floating point tensor of shape (C), (N, C) or "
            f"(N, C, d1, ...), but got {getattr(input, 'dtype', type(input))} "
            f"of shape {tuple(getattr(input, 'shape', ()))}"
        )
    if not isinstance(target, Tensor) or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(
            f"Expected argument `target` to be a tensor of class indices or probabilities, "
            f"but got {getattr(target, 'dtype', type(target))}"
        )
    if target.is_floating_point():
        expected = tuple(input.shape)
        if ignore_index >= 0:
            raise ValueError(
                f"Expected argument `ignore_index` to be negative (unused) for probability targets, "
                f"but got {ignore_index}"
            )
    else:
        expected = (*input.shape[:1], *input.shape[2:]) if input.dim() > 1 else ()
    if tuple(target.shape) != expected:
        kind = "probability" if target.is_floating_point() else "class-index"
        raise ValueError(
            f"Expected argument `target` ({kind}) to have shape {expected} for input of shape "
            f"{tuple(input.shape)}, but got {tuple(target.shape)}"
        )


# torch's device-side assert: the one way to check values on an accelerator without a host sync each step. Private
# (so read once, with a fallback: the synchronous check); tests/test_architecture.py fails when it changes.
_ASSERT_ASYNC = getattr(torch, "_assert_async", None)


def assert_on_device(condition: Tensor, message: str) -> None:
    """Fail with ``message`` where ``condition`` (a 0-d bool tensor on an accelerator) is false, without a sync."""
    if _ASSERT_ASYNC is not None:
        _ASSERT_ASYNC(condition, message)
    elif not bool(condition):
        raise ValueError(message)


def check_class_indices(target: Tensor, num_classes: int, ignore_index: int) -> None:
    """Indices in [0, C) or ignore_index: read on the CPU; on accelerators an async device assert (no sync)."""
    if torch.compiler.is_compiling() or target.numel() == 0:
        return
    if target.device.type != "cpu":
        bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
        assert_on_device(~bad.any(), "Expected argument `target` to hold class indices in [0, C) or ignore_index")
        return
    low, high = torch.aminmax(target)  # one op in the common case; reading CPU scalars costs no device sync
    if low.item() >= 0 and high.item() < num_classes:
        return
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bad.any():
        raise ValueError(
            f"Expected argument `target` to hold class indices in [0, {num_classes}) or ignore_index={ignore_index}, "
            f"but got {target[bad].flatten()[0].item()}"
        )


def check_prior(prior: Tensor, num_classes: int | None = None) -> None:
    """A (C,) distribution or a (C, C) matrix of distributions (rows); values checked on the CPU only.

    Raises:
        ValueError: If ``prior`` has the wrong shape, a negative entry, or a row whose sum is not 1.
    """
    shape = tuple(prior.shape) if isinstance(prior, Tensor) else ()
    c = num_classes if num_classes is not None else (shape[-1] if shape else 0)
    # each size compared on its own: under torch.compile a tuple comparison against symbolic sizes can miss
    if not isinstance(prior, Tensor) or not prior.is_floating_point() or not _sizes_are(shape, c):
        raise ValueError(
            f"Expected argument `prior` to be a floating point tensor of shape ({c},) or ({c}, {c}), "
            f"but got {getattr(prior, 'dtype', type(prior))} of shape {tuple(getattr(prior, 'shape', ()))}"
        )
    if torch.compiler.is_compiling():
        return
    ok = (prior >= 0).all() & ((prior.sum(-1) - 1).abs() <= PRIOR_TOLERANCE).all()
    if prior.device.type != "cpu":
        assert_on_device(ok, "Expected argument `prior` to hold distributions: non-negative, summing to 1")
    elif not ok:
        raise ValueError(
            f"Expected argument `prior` to hold distributions (non-negative entries, rows summing to 1 "
            f"within {PRIOR_TOLERANCE}), but got min {prior.min().item():.4g} and row sums "
            f"{prior.sum(-1).flatten()[:4].tolist()}"
        )


def check_linear_arguments(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    target: Tensor,
    eps: float | Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    prior: Tensor | None,
) -> None:
    """The linear layer's shapes and dtypes here; the rest as the functional checks them on a stand-in of the logits."""
    if not isinstance(h, Tensor) or not h.is_floating_point() or h.dim() == 0:
        raise ValueError(
            f"Expected argument `input` to be a floating point tensor of shape (..., D), "
            f"but got {getattr(h, 'dtype', type(h))} of shape {tuple(getattr(h, 'shape', ()))}"
        )
    d = h.shape[-1]
    if not isinstance(w, Tensor) or w.dim() != 2 or w.shape[1] != d or w.shape[0] == 0 or w.dtype != h.dtype:
        raise ValueError(
            f"Expected argument `linear_weight` to be a {h.dtype} tensor of shape (V, {d}) with V > 0, "
            f"but got {getattr(w, 'dtype', type(w))} of shape {tuple(getattr(w, 'shape', ()))}"
        )
    num_classes = w.shape[0]
    if b is not None and (not isinstance(b, Tensor) or tuple(b.shape) != (num_classes,) or b.dtype != h.dtype):
        raise ValueError(
            f"Expected argument `linear_bias` to be None or a {h.dtype} tensor of shape ({num_classes},), "
            f"but got {getattr(b, 'dtype', type(b))} of shape {tuple(getattr(b, 'shape', ()))}"
        )
    if (
        not isinstance(target, Tensor)
        or target.is_floating_point()
        or target.is_complex()
        or target.dtype == torch.bool
    ):
        raise ValueError(
            f"Expected argument `target` to be an integer tensor of class indices, "
            f"but got {getattr(target, 'dtype', type(target))}"
        )
    if tuple(target.shape) != tuple(h.shape[:-1]):
        raise ValueError(
            f"Expected argument `target` to have shape {tuple(h.shape[:-1])} for input of shape {tuple(h.shape)}, "
            f"but got {tuple(target.shape)}"
        )
    if isinstance(prior, Tensor) and prior.dim() == 2 and num_classes > MAX_MATRIX_PRIOR_CLASSES:
        raise ValueError(
            f"Expected argument `prior` to be of shape ({num_classes},): a ({num_classes}, {num_classes}) prior "
            f"holds V² = {num_classes**2} numbers and is accepted up to V = {MAX_MATRIX_PRIOR_CLASSES} only"
        )
    logits = h.new_zeros(()).expand(target.numel(), num_classes)  # stand-in of the (M, V) logits: no memory
    check_loss_arguments(logits, target.reshape(-1), eps, weight, ignore_index, reduction, prior)


def check_regularizer_weight(name: str, value: float | Tensor) -> None:
    """A finite float ≥ 0 or a 0-d floating point tensor; a tensor's value is read only on the CPU, and no value
    under ``torch.compile`` (a traced comparison would guard on it and recompile when it changes)."""
    number = _readable_number(name, value, "a finite float >= 0")
    if number is not None and not (math.isfinite(number) and number >= 0):
        raise ValueError(f"Expected argument `{name}` to be a finite float >= 0, but got {number}")


def check_non_negative(name: str, value: float) -> None:
    """A finite Python number ≥ 0 (its value is not read under ``torch.compile``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Expected argument `{name}` to be a finite float >= 0, but got {value!r}")
    if not torch.compiler.is_compiling() and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"Expected argument `{name}` to be a finite float >= 0, but got {value!r}")


def check_gamma(gamma: float | str, allow_flsd: bool) -> None:
    """The focal loss's γ: a finite number ≥ 0, or ``"flsd53"`` (Mukhoti et al.) where ``allow_flsd``."""
    if isinstance(gamma, str):
        if allow_flsd and gamma == "flsd53":
            return
        expected = 'a finite float >= 0 or "flsd53"' if allow_flsd else "a finite float >= 0"
        raise ValueError(f"Expected argument `gamma` to be {expected}, but got {gamma!r}")
    check_non_negative("gamma", gamma)


def check_alpha(alpha: float | None) -> None:
    """The binary focal loss's α: None, -1 (no weighting, as torchvision) or a number in [0, 1]."""
    if alpha is None:
        return
    ok = not isinstance(alpha, bool) and isinstance(alpha, (int, float))
    if not ok or (not torch.compiler.is_compiling() and not (0 <= alpha <= 1 or alpha == -1)):
        raise ValueError(f"Expected argument `alpha` to be None, -1 or a float in [0, 1], but got {alpha!r}")
