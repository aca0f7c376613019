r"""The loss of an optimizer step normalised over all its counted positions: micro-batches and processes together.

With padded sequences, Lightning's gradient accumulation and DDP average the per-micro-batch, per-process *means*: a
micro-batch with 10 counted tokens weighs as much as one with 1000, so the gradient of a step is not the gradient of
the mean loss over the step's tokens. :class:`StepNormalizer` makes it so:

.. math::
    g = \nabla \frac{\sum_{r, m} S_{r,m}}{\sum_{r, m} n_{r,m}}

with :math:`S_{r,m}` the summed loss and :math:`n_{r,m}` the counted positions (Σ w_y with class weights) of
micro-batch m on process r. Each micro-batch's loss is returned as its sum over a scale c that is the same on every
process and micro-batch of the step (the previous step's mean count, 1 at first); Lightning then divides it by the
accumulation A and DDP averages over the W processes, so the accumulated gradient is
:math:`\sum \nabla S / (c A W)`. Before the gradients are clipped and the optimizer steps, one all-reduce of the
step's count gives N and every gradient is multiplied by :math:`c A W / N`: the gradient above, exactly. Megatron-LM's
``--calculate-per-token-loss`` does the same; Hugging Face's Trainer (``num_items_in_batch``) counts the tokens of the
step's batches before the first forward instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

__all__ = ["LossNormalization", "StepNormalizer", "check_loss_normalization", "check_step_normalization"]

LossNormalization = Literal["batch", "step"]
_NORMALIZATIONS: tuple[LossNormalization, ...] = ("batch", "step")


def check_loss_normalization(value: object) -> LossNormalization:
    """Validate ``loss_normalization``: ``"batch"`` or ``"step"``."""
    if value not in _NORMALIZATIONS:
        raise ValueError(f"Expected argument `loss_normalization` to be one of {_NORMALIZATIONS}, but got {value!r}")
    return cast(LossNormalization, value)


class StepNormalizer:
    """The count and scale of the optimizer step in progress (one per module; plain tensors, no host sync)."""

    def __init__(self) -> None:
        self.count: Tensor | None = None  # counted positions of this step's micro-batches on this process
        self.scale: Tensor | None = None  # c: the previous step's mean count per micro-batch and process

    def share(self, loss_sum: Tensor, count: Tensor) -> Tensor:
        """Add a micro-batch's count to the step's and return its loss as the share of the step's mean (``S / c``)."""
        count = count.detach().to(torch.float64)
        self.count = count if self.count is None else self.count + count
        scale = self.scale if self.scale is not None else torch.ones((), dtype=torch.float64, device=count.device)
        return loss_sum / scale.to(loss_sum.dtype)

    def finish(self, module: nn.Module, trainer: Trainer) -> None:
        """Rescale the accumulated gradients to the step's mean (a collective: every process calls it once per step)."""
        if self.count is None:
            return
        count, self.count = self.count, None
        total = trainer.strategy.reduce(count, reduce_op="sum")
        scale = self.scale if self.scale is not None else torch.ones_like(total)
        micro_batches = trainer.accumulate_grad_batches * trainer.world_size
        factor = scale * micro_batches / total.clamp(min=torch.finfo(total.dtype).tiny)  # no count: all grads are 0
        for parameter in module.parameters():
            if parameter.grad is not None:
                parameter.grad.mul_(factor.to(parameter.grad.dtype))
        self.scale = torch.where(total > 0, total / micro_batches, scale)


def check_step_normalization(module: nn.Module, trainer: Trainer | None, weighted_z_loss: bool) -> None:
    """Refuse what ``loss_normalization="step"`` cannot make exact: manual optimization, and a z-loss with class
    weights (their means divide by different counts, which one rescaling of the gradients cannot both give)."""
    if trainer is not None and not module.automatic_optimization:
        raise ValueError(
            "Expected automatic optimization with loss_normalization='step' (it rescales the gradients before the"
            " optimizer step Lightning makes), but the module sets `automatic_optimization = False`; normalise the"
            " loss yourself or use loss_normalization='batch'"
        )
    if weighted_z_loss:
        raise ValueError(
            "Expected `z_loss=0.0` or no class weights with loss_normalization='step': the z-loss's mean divides by the"
            " number of counted positions and the cross-entropy's by the sum of their class weights, which one"
            " rescaling of the step's gradients cannot both make exact"
        )
