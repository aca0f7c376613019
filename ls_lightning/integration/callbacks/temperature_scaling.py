"""`TemperatureScaling`: fit a temperature on each validation epoch's logits and log what it says of calibration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from typing_extensions import override

from ls_lightning.integration.mixin import LabelSmoothingMixin, LossBatch
from ls_lightning.metrics import binned_calibration_arg_validation, binned_calibration_error, fit_temperature

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["TemperatureScaling"]


class _ValidationLogits(Metric):
    """All validation logits and targets, as ``cat`` states that torchmetrics gathers across processes at sync.

    States are flat float32 tensors (logits ``(M·C,)``, targets ``(M,)`` with -1 at ignored positions), so that a
    process without samples contributes an empty tensor of the same dtype and rank, and uneven sizes gather.
    """

    full_state_update = False
    logits: list[Tensor] | Tensor
    target: list[Tensor] | Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("logits", [], dist_reduce_fx="cat")
        self.add_state("target", [], dist_reduce_fx="cat")

    def update(self, logits: Tensor, target: Tensor, valid: Tensor) -> None:
        """Add ``(N, C, ...)`` logits, ``(N, ...)`` class indices and the ``(M,)`` mask of counted positions."""
        flat = torch.movedim(logits, 1, -1) if logits.ndim > 1 else logits
        self.logits.append(flat.reshape(-1).float())  # type: ignore[union-attr]
        labels = torch.where(valid.reshape(-1), target.reshape(-1), -1).float()  # exact below 2**24 classes
        self.target.append(labels)  # type: ignore[union-attr]

    def compute(self) -> tuple[Tensor, Tensor]:
        return self.gathered()

    def gathered(self) -> tuple[Tensor, Tensor]:
        """The ``(M, C)`` logits and ``(M,)`` targets (-1: ignored) of all updates (of all processes when synced).

        Not ``compute``: torchmetrics' wrapper of ``compute`` would cache the result and warn on a process that has
        had no update; the caller syncs with ``sync_context`` instead.
        """
        if isinstance(self.target, list) and not self.target:
            return torch.zeros(0, 1, device=self.device), torch.zeros(0, dtype=torch.long, device=self.device)
        logits, target = dim_zero_cat(self.logits), dim_zero_cat(self.target)
        num_classes = logits.numel() // max(target.numel(), 1)
        return logits.reshape(-1, max(num_classes, 1)), target.long()


def _two_class_logits(logits: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Binary logits z as the two-class logits [0, z] (whose softmax is [1 − σ(z), σ(z)]) with 0/1 class indices, so
    that the multi-class fit applies; positions with a soft target are masked out."""
    z = logits.reshape(-1, 1).float()
    flat = target.reshape(-1)
    hard = (flat == 0) | (flat == 1)
    return torch.cat([torch.zeros_like(z), z], dim=1), flat.long(), hard & mask.reshape(-1)


class TemperatureScaling(Callback):
    r"""Fit a temperature on each validation epoch's logits and log ``val/temperature`` and ``val/ece_ts``.

    .. math::
        T^* = \arg\min_T -\frac{1}{N} \sum_i \log \operatorname{softmax}(z_i / T)_{y_i}, \qquad
        \text{ECE}_{ts} = \text{ECE}\left(\operatorname{softmax}(z / T^*)\right)

    Temperature scaling (Guo et al., 2017) is the post-hoc baseline that label smoothing is compared with: the
    fitted :math:`T^*` says which way the model errs (:math:`T^* > 1`: over-confident, :math:`< 1`: under-confident)
    and ``val/ece_ts`` is the ECE left once that is corrected, next to ``val/ece`` of the raw model. Both are
    computed on the same validation data T is fitted on (an optimistic ECE, as in the literature's tables).

    The mixin hands each validation batch's logits to the callback (its ``on_loss_batch`` hook); they are kept until
    the epoch ends, O(N·C) memory and, under DDP, gathered to every process once per epoch: that is why this is
    opt-in. Every process then fits the same T on the same gathered logits, so the logged values agree without a
    further reduction. Soft (probability) validation targets cannot be scored and are skipped with a warning.

    Binary and multi-label tasks (the mixin's ``task``): T minimises the binary NLL of σ(z / T) over all label
    positions (with 0/1 targets), and ``val/ece_ts`` is the binary ECE of σ(z / T), like their ``val/ece``.

    Args:
        n_bins: Bins of ``val/ece_ts``; ``None`` takes the module's ``ls_n_bins`` (that of ``val/ece``).
        enabled: ``False`` makes the callback do nothing (lets a config switch it with one flag).

    Raises:
        ValueError: When ``n_bins`` is not a positive integer.

    Example:
        >>> TemperatureScaling(n_bins=10).n_bins
        10
    """

    def __init__(self, n_bins: int | None = None, *, enabled: bool = True) -> None:
        if n_bins is not None:
            binned_calibration_arg_validation(n_bins)
        self.n_bins = n_bins
        self.enabled = bool(enabled)
        self._state: _ValidationLogits | None = None
        self._warned_soft = False
        self._binary = False  # the module's task is binary or multi-label (set in setup)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.enabled:
            return
        if not isinstance(pl_module, LabelSmoothingMixin):
            rank_zero_warn(
                f"`TemperatureScaling` reads the logits that `LabelSmoothingMixin` hands on, which "
                f"{type(pl_module).__name__} does not have: no temperature will be fitted."
            )
            return
        self._state = _ValidationLogits()
        self._binary = pl_module.ls_task != "multiclass"

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._state = None

    def on_loss_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: LossBatch) -> None:
        """The mixin's hook: keep each validation batch's logits and targets (counted positions only)."""
        if self._state is None or batch.stage != "val":
            return
        for logits, target, mask in batch.logits():
            if self._binary:  # z as the two-class logits [0, z]; soft-target positions are left out
                logits, target, mask = _two_class_logits(logits, target, mask)
            self.update(logits, target, mask)

    def update(self, logits: Tensor, target: Tensor, valid: Tensor) -> None:
        """Keep a batch's (N, C, ...) logits, class indices and (M,) mask of counted positions."""
        if self._state is None:
            return
        if target.is_floating_point():
            if not self._warned_soft:
                self._warned_soft = True
                rank_zero_warn("`TemperatureScaling` skips validation batches with probability targets.")
            return
        self._state.update(logits, target, valid)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._state is not None:
            self._state.to(pl_module.device)
            self._state.reset()

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._state is None or trainer.sanity_checking:
            return
        result = self._fit(getattr(pl_module, "ls_n_bins", 15) if self.n_bins is None else self.n_bins)
        self._state.reset()
        if result is not None:
            temperature, ece = result
            pl_module.log("val/temperature", temperature, on_step=False, on_epoch=True, sync_dist=False)
            pl_module.log("val/ece_ts", ece, on_step=False, on_epoch=True, sync_dist=False)

    def _fit(self, n_bins: int) -> tuple[float, float] | None:
        """(T, ECE after scaling) on the logits of all processes; ``None`` when no position counted anywhere.

        Binary and multi-label tasks: the mixin hands each logit z on as the two-class logits [0, z], whose softmax
        NLL is the binary NLL of σ(z / T); the ECE is then the binary one of σ(z / T), as ``val/ece``'s.
        """
        state = self._state
        assert state is not None  # checked by the caller
        with state.sync_context(dist_sync_fn=state.dist_sync_fn, should_sync=state.sync_on_compute):
            logits, target = state.gathered()  # a collective under DDP: every process calls it
        if not bool((target >= 0).any()):
            return None
        if logits.device.type == "mps":  # the fit runs in float64, which MPS lacks
            logits, target = logits.cpu(), target.cpu()
        temperature = fit_temperature(logits, target, ignore_index=-1)
        probs = (logits / temperature).softmax(dim=1)
        if self._binary:
            ece = binned_calibration_error(
                probs[:, 1].contiguous(), target.clamp(min=0).float(), n_bins=n_bins, weight=target >= 0
            )
        else:
            ece = binned_calibration_error(probs, target, n_bins=n_bins, ignore_index=-1, validate_args=False)
        return temperature, float(ece)
