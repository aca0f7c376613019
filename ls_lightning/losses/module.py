"""``nn.Module`` wrappers of :func:`ls_lightning.losses.label_smoothed_cross_entropy` and its binary form."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ls_lightning.losses.binary import binary_label_smoothed_cross_entropy
from ls_lightning.losses.checks import check_label_smoothing, check_prior, check_reduction, check_softcap, check_z_loss
from ls_lightning.losses.functional import LabelSmoothedCE, Reduction, label_smoothed_cross_entropy


class LabelSmoothedCrossEntropy(nn.Module):
    r"""Label-smoothed cross-entropy returning the loss and both of its terms.

    .. math::
        L = (1 - \varepsilon)\,H(p, q) + \varepsilon\,H(u, q) + \gamma\,\mathrm{lse}(c)^2, \qquad
        c = s \tanh(\text{input} / s)

    (``γ = z_loss``, ``s = softcap``; by default no z-loss and ``c = input``).

    ``label_smoothing`` reads and writes a float, so a callback can change it between steps; the module keeps it
    in a 0-d tensor as well, which is what ``forward`` passes on: under ``torch.compile`` a new ε is then new data,
    not a new constant, and never recompiles. ``weight`` and ``prior`` are buffers (they follow ``.to(device)``
    and are saved in the ``state_dict``).

    Args:
        label_smoothing: ε in [0, 1].
        weight: Class weights, shape (C,).
        ignore_index: Target value whose positions contribute nothing.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        prior: Smoothing distribution, shape (C,) or (C, C) (row y is u(·|y)); uniform when None.
        z_loss: γ ≥ 0, the weight of the z-loss ``lse(c)²`` (PaLM, OLMo: 1e-4).
        softcap: s > 0 or None: cap the logits to ``s·tanh(input / s)`` first (Gemma 2: 30).

    Raises:
        ValueError: If ε is outside [0, 1], ``reduction`` is unknown, ``prior`` is not a distribution, ``z_loss``
            is not a finite number ≥ 0, or ``softcap`` is neither None nor a finite number > 0.

    Shape:
        As :func:`~ls_lightning.losses.label_smoothed_cross_entropy`.

    Example:
        >>> import torch
        >>> criterion = LabelSmoothedCrossEntropy(0.1)
        >>> out = criterion(torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([0]))
        >>> torch.allclose(out.loss, 0.9 * out.h_pq + 0.1 * out.h_uq)
        True
    """

    weight: Tensor | None
    prior: Tensor | None
    _epsilon: Tensor

    def __init__(
        self,
        label_smoothing: float = 0.0,
        *,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        prior: Tensor | None = None,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        # float64: a float32 copy of ε would differ from the float that F.cross_entropy gets in float64 tests
        self.register_buffer("_epsilon", torch.zeros((), dtype=torch.float64), persistent=False)
        check_reduction(reduction)
        if prior is not None:
            check_prior(prior)
        check_z_loss(z_loss)
        check_softcap(softcap)
        self.z_loss = float(z_loss)
        self.softcap = None if softcap is None else float(softcap)
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index
        self.reduction: Reduction = reduction
        self.register_buffer("weight", weight)
        self.register_buffer("prior", prior)

    @property
    def label_smoothing(self) -> float:
        """ε in [0, 1]."""
        return self._label_smoothing

    @label_smoothing.setter
    def label_smoothing(self, value: float) -> None:
        check_label_smoothing(value)
        self._label_smoothing = float(value)
        self._epsilon.fill_(self._label_smoothing)

    def forward(self, input: Tensor, target: Tensor) -> LabelSmoothedCE:
        return label_smoothed_cross_entropy(
            input,
            target,
            # in the loss's own dtype (float32 for half inputs): 0-d float64 would promote a 0-d float32 loss
            self._epsilon.to(torch.float64 if input.dtype == torch.float64 else torch.float32),
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            prior=self.prior,
            z_loss=self.z_loss,
            softcap=self.softcap,
        )

    def extra_repr(self) -> str:
        extra = "" if not self.z_loss else f", z_loss={self.z_loss}"
        extra += "" if self.softcap is None else f", softcap={self.softcap}"
        return (
            f"label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"
            + extra
        )


class BinaryLabelSmoothedCrossEntropy(nn.Module):
    r"""Label-smoothed binary cross-entropy on logits, returning the loss and both of its terms.

    .. math::
        L = \mathrm{BCE}\bigl(x,\ (1 - \varepsilon)\,t + \tfrac{\varepsilon}{2}\bigr)
          = (1 - \varepsilon)\,\mathrm{BCE}(x, t) + \varepsilon\,\mathrm{BCE}\bigl(x, \tfrac12\bigr)

    ``torch.nn.BCEWithLogitsLoss`` with label smoothing: ``label_smoothing`` reads and writes a float, so the
    :class:`~ls_lightning.LabelSmoothing` callback schedules it on a module that holds one of these (the
    callback-only route). ``weight`` and ``pos_weight`` are buffers, as in PyTorch's module.

    Args:
        label_smoothing: ε in [0, 1].
        weight: Per-element weights broadcastable to the input.
        pos_weight: Weight of the positive term, broadcastable to the input (e.g. (L,) per label).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Raises:
        ValueError: If ε is outside [0, 1] or ``reduction`` is unknown.

    Shape:
        As :func:`~ls_lightning.binary_label_smoothed_cross_entropy`: input (*), target (*) in [0, 1].

    Example:
        >>> import torch
        >>> criterion = BinaryLabelSmoothedCrossEntropy(0.1)
        >>> out = criterion(torch.tensor([[2.0, -0.5]]), torch.tensor([[1.0, 0.0]]))
        >>> torch.allclose(out.loss, 0.9 * out.h_pq + 0.1 * out.h_uq)
        True
    """

    weight: Tensor | None
    pos_weight: Tensor | None

    def __init__(
        self,
        label_smoothing: float = 0.0,
        *,
        weight: Tensor | None = None,
        pos_weight: Tensor | None = None,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.label_smoothing = label_smoothing
        self.reduction: Reduction = reduction
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    @property
    def label_smoothing(self) -> float:
        """ε in [0, 1]."""
        return self._label_smoothing

    @label_smoothing.setter
    def label_smoothing(self, value: float) -> None:
        check_label_smoothing(value)
        self._label_smoothing = float(value)

    def forward(self, input: Tensor, target: Tensor) -> LabelSmoothedCE:
        return binary_label_smoothed_cross_entropy(
            input,
            target,
            self._label_smoothing,
            weight=self.weight,
            pos_weight=self.pos_weight,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
