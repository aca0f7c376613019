"""Online label smoothing's prior (Zhang et al., 2021) as a torchmetrics ``Metric``: per-class sums of the softmax
of the correctly classified training positions, exact across processes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from ls_lightning.losses import prior_matrix

__all__ = ["OnlinePrior"]


def _online_prior_update(
    logits: Tensor, target: Tensor, mask: Tensor | None, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """Per-class sums of the softmax over the masked positions and their counts, without a host sync."""
    num_classes = logits.shape[-1] if logits.dim() == 1 else logits.shape[1]
    if logits.dim() == 1:  # an unbatched (C) input is one position
        logits, target = logits.unsqueeze(0), target.unsqueeze(0)
    flat = logits.movedim(1, -1).reshape(-1, num_classes).float()
    labels = target.movedim(1, -1).reshape(-1, num_classes).argmax(-1) if target.is_floating_point() else target
    labels = labels.reshape(-1)
    if mask is None:  # the correctly classified positions that are not ignored
        mask = (flat.argmax(-1) == labels) & (labels != ignore_index)
    if mask.shape != labels.shape:
        raise ValueError(
            f"Expected argument `mask` to have one entry per position, shape {tuple(labels.shape)}, but got"
            f" {tuple(mask.shape)}"
        )
    weight = mask.to(flat.dtype)
    rows = torch.where(mask, labels, 0).long()
    # multiplying by the 0/1 mask instead of indexing keeps the shapes static, hence no device-to-host sync; a batch
    # sums in float32, the states of the epoch in float64
    probs = flat.softmax(-1).mul_(weight.unsqueeze(1))
    sums = flat.new_zeros(num_classes, num_classes).index_add_(0, rows, probs)
    counts = flat.new_zeros(num_classes).index_add_(0, rows, weight)
    return sums, counts


def _online_prior_compute(sums: Tensor, counts: Tensor, previous: Tensor) -> Tensor:
    """Row-normalise the sums; a class without a correctly classified position keeps its ``previous`` row."""
    seen = (counts > 0).unsqueeze(1)
    rows = sums / sums.sum(1, keepdim=True).clamp_min(torch.finfo(sums.dtype).tiny)
    return torch.where(seen, rows, previous.to(rows.dtype)).to(torch.float32)


class OnlinePrior(Metric):
    r"""Online label smoothing (Zhang et al., 2021): a soft label per class from the model's own correct predictions.

    .. math:: u_{t+1}(\cdot \mid y) = \frac{1}{|S_y|} \sum_{i \in S_y} \mathrm{softmax}(z_i)

    with :math:`S_y` the training positions of class y that the model classified correctly during epoch t. The states
    (per-class sums of softmax rows, (C, C), and counts, (C,)) are ``sum``-reduced, so ``compute`` is exact across
    processes. A class without a correctly classified position keeps its row of ``previous`` (uniform until set; the
    :class:`~ls_lightning.integration.LabelSmoothingPrior` callback sets it to the prior in use before each
    ``compute``).

    ``update`` costs one extra softmax over the batch's logits (the loss's fused pass keeps no probabilities); it
    runs only when online label smoothing is on. It makes no host synchronisation.

    Args:
        num_classes: C.
        ignore_index: label value left out when ``update`` computes the mask itself.
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: if ``num_classes`` is not a positive int.

    Example:
        >>> metric = OnlinePrior(num_classes=2)
        >>> metric.update(torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 0, 1]))
        >>> metric.compute()  # row 0 from the one correct sample of class 0; class 1 has none: uniform
        tensor([[0.8808, 0.1192],
                [0.5000, 0.5000]])
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    sums: Tensor
    counts: Tensor
    previous: Tensor

    def __init__(self, num_classes: int, ignore_index: int = -100, **kwargs: Any) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"Expected argument `num_classes` to be a positive int, but got {num_classes!r}")
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("sums", torch.zeros(num_classes, num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.register_buffer("previous", prior_matrix(None, num_classes), persistent=False)

    def update(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Add the softmax of each masked position to the row of its class.

        Args:
            logits: (C), (N, C) or (N, C, d1, ...) logits.
            target: class indices of the logits' shape without dim 1, or probabilities of the logits' shape (the
                class is their argmax).
            mask: (M,) bool over the flattened positions (N·d1·…); ``None`` takes the correctly classified positions
                whose label is not ``ignore_index``.
        """
        classes = logits.shape[0] if logits.dim() == 1 else logits.shape[1]
        if classes != self.num_classes:
            raise ValueError(
                f"Expected argument `logits` to have num_classes={self.num_classes} classes in dim 1, but got shape"
                f" {tuple(logits.shape)}; set `num_classes` to the model's number of classes"
            )
        sums, counts = _online_prior_update(logits.detach(), target, mask, self.ignore_index)
        self.sums.add_(sums)  # in place: promotes to the float64 state without a converted copy
        self.counts.add_(counts)

    def compute(self) -> Tensor:
        """The (C, C) prior of the next epoch, float32; rows of classes without a correct position from ``previous``."""
        return _online_prior_compute(self.sums, self.counts, self.previous)
