"""`LabelSmoothingMixin`: the label-smoothed loss and its metrics for any LightningModule."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DistributedSampler
from torchmetrics import Metric

from ls_lightning.functional import LabelSmoothedCE, LossStats, _compute
from ls_lightning.metrics import (
    _STATE_DTYPE,
    AdaptiveCalibrationError,
    BinnedCalibrationError,
    BinStats,
    _safe_divide,
)

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

Stage = Literal["train", "val", "test"]

# Lightning's running stage (``trainer.state.stage``) -> our key prefix. Sanity checking and prediction log nothing.
_STAGE_PREFIX: dict[str, Stage] = {"train": "train", "validate": "val", "test": "test"}
_STAGES: tuple[Stage, ...] = ("train", "val", "test")
_LOSS_TERMS = ("loss", "h_pq", "h_uq")


class _LossTerms(Metric):
    """Weighted epoch means of the loss, H(p,q), H(u,q) and (val/test) the Brier score, from one state update.

    Batch means enter weighted by the batch's ``weight_sum`` (its number of counted positions: the mixin uses no
    class weights), so the epoch value is the mean over positions, exact across batches and processes.
    ``compute`` returns ``(loss, h_pq, h_uq, brier)``; 0 for an empty epoch, brier 0 unless kept.
    """

    is_differentiable = False
    full_state_update = False
    sums: Tensor
    weight: Tensor

    def __init__(self, brier: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.brier = brier
        self.add_state("sums", torch.zeros(4, dtype=_STATE_DTYPE), dist_reduce_fx="sum")
        self.add_state("weight", torch.zeros((), dtype=_STATE_DTYPE), dist_reduce_fx="sum")

    def update(self, loss: LabelSmoothedCE, stats: LossStats) -> None:
        # in place, a few ops and no host sync: this runs every training step
        self.sums[:3].addcmul_(torch.stack([t.detach() for t in loss]), stats.weight_sum)
        self.weight.add_(stats.weight_sum)
        if self.brier:
            self.sums[3].add_(torch.dot(stats.brier, stats.valid.to(stats.brier.dtype)))

    def compute(self) -> Tensor:
        return _safe_divide(self.sums, self.weight).to(torch.get_default_dtype())


class _Entry(Metric):
    """One logged value derived from another metric's state: what ``self.log`` gets for each key.

    Lightning computes a logged Metric at the epoch's end and then resets it; an entry computes its value from the
    owner (whose compute syncs the states across processes) and resets the owner. It has no state of its own, so
    updating and syncing the owner once serves every key derived from it.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, owner: Metric, key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.__dict__["_owner"] = owner  # a plain reference: the owner is registered where it lives
        self.key = key

    @property
    def owner(self) -> Metric:
        return cast(Metric, self.__dict__["_owner"])

    def update(self) -> None:
        raise RuntimeError(f"{type(self).__name__}({self.key!r}) is updated through its owner")

    def compute(self) -> Tensor:
        owner = self.owner
        if isinstance(owner, _LossTerms):
            return owner.compute()[(*_LOSS_TERMS, "brier").index(self.key)]
        stats = cast(BinnedCalibrationError, owner).bin_stats(sync=True)
        if self.key == "accuracy":
            return stats.overall_accuracy()
        if self.key == "overconfidence":
            return stats.overconfidence()
        return stats.calibration_error(cast("Literal['l1', 'l2', 'max']", self.key)).float()

    def reset(self) -> None:
        super().reset()
        self.owner.reset()

    def _wrap_compute(self, compute: Any) -> Any:
        # no "compute before update" warning (the owner is updated, not the entry) and nothing of its own to sync
        return compute


def _pads_samples(sampler: Any) -> bool:
    """Whether ``sampler`` repeats samples to give every process the same length (torch's DistributedSampler does)."""
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    from ls_lightning.data import UnpaddedDistributedSampler

    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return False
    if isinstance(sampler, (UnpaddedDistributedSampler, UnrepeatedDistributedSampler)):
        return False
    return sampler.total_size > len(sampler.dataset)  # type: ignore[arg-type]


def logger_writes_this_step(trainer: Trainer) -> bool:
    """Whether Lightning's loggers receive this training step's values (every ``log_every_n_steps``, and others).

    A value logged ``on_step`` reaches the loggers only on these steps, while each ``self.log`` call costs Lightning
    a few hundred µs whether or not it writes: step values logged only on these steps reach the loggers unchanged.
    Valid from ``on_train_batch_start`` to the end of ``training_step``. Reads Lightning's logger connector (not
    public API); where it lacks that property, every step counts as a logging step.
    """
    writes = getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", None)
    if not isinstance(writes, bool):
        return True
    return writes or bool(getattr(trainer, "fast_dev_run", False))


def _check_epsilon(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected argument `label_smoothing` to be a float in [0, 1], but got {value!r}")
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"Expected argument `label_smoothing` to be a float in [0, 1], but got {value!r}")
    return float(value)


class LabelSmoothingMixin:
    r"""Mix into a LightningModule to get the label-smoothed loss and its logged terms and calibration.

    .. math::
        L = (1 - \varepsilon)\, H(p, q) + \varepsilon\, H(u, q)

    ``label_smoothed_loss`` returns the same value as ``F.cross_entropy(logits, target, label_smoothing=ε)`` and
    logs, for the trainer's current stage, ``{stage}/loss``, ``{stage}/h_pq``, ``{stage}/h_uq`` (step and epoch
    during training, epoch otherwise), ``{stage}/acc`` and ``{stage}/ece`` (epoch), and for val and test also
    ``mce``, ``rmsce``, ``ece_adaptive``, ``brier`` and ``overconfidence`` (epoch). Epoch values are torchmetrics
    states weighted by the number of counted positions, so they are exact over all samples of all processes.
    Confidence and correctness come from the loss's own pass over the logits: no second softmax. The training
    loss goes to Lightning every step (progress bar); the step values of ``h_pq`` and ``h_uq`` on the steps
    Lightning's loggers write (see :func:`logger_writes_this_step`), which is all the loggers ever receive.

    Put the mixin first among the bases. The user's ``__init__`` need not know about it: every argument has a
    default, and a module whose ``__init__`` never reaches the mixin's (the mixin placed after LightningModule)
    still works with the defaults.

    Args:
        label_smoothing: ε, the initial weight of the prior; the :class:`~ls_lightning.LabelSmoothing` callback
            overwrites it on every training batch.
        prior: u, a (C,) distribution or a (C, C) matrix whose row y is u(·|y); ``None`` is uniform.
        ignore_index: target value whose positions count in neither the loss nor the metrics.
        n_bins: number of equal-width confidence bins of the expected calibration error.

    Example:
        >>> import lightning as L
        >>> class Model(LabelSmoothingMixin, L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(4, 3)
        >>> model = Model()
        >>> model.label_smoothing
        0.1
        >>> logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
        >>> loss = model.label_smoothed_loss(logits, target)  # not attached to a trainer: logs nothing
        >>> torch.allclose(loss, torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1))
        True
    """

    _label_smoothing: float = 0.1
    ls_ignore_index: int = -100
    ls_n_bins: int = 15

    def __init__(
        self,
        *args: Any,
        label_smoothing: float = 0.1,
        prior: Tensor | None = None,
        ignore_index: int = -100,
        n_bins: int = 15,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.label_smoothing = label_smoothing
        self.label_smoothing_prior = prior
        self.ls_ignore_index = ignore_index
        self.ls_n_bins = n_bins

    @property
    def label_smoothing(self) -> float:
        """The current ε, a float in [0, 1]."""
        return self._label_smoothing

    @label_smoothing.setter
    def label_smoothing(self, value: float) -> None:
        self._label_smoothing = _check_epsilon(value)

    @property
    def label_smoothing_prior(self) -> Tensor | None:
        """The prior u: ``None`` (uniform), a (C,) distribution or a (C, C) matrix; a buffer, so it follows
        the module's device and is saved in checkpoints."""
        return self._buffers.get("_ls_prior") if "_buffers" in self.__dict__ else None  # type: ignore[attr-defined]

    @label_smoothing_prior.setter
    def label_smoothing_prior(self, prior: Tensor | None) -> None:
        if prior is not None and not isinstance(prior, Tensor):
            raise TypeError(f"Expected argument `prior` to be a Tensor of shape (C,) or (C, C), but got {prior!r}")
        self.register_buffer("_ls_prior", prior)  # type: ignore[attr-defined]

    def label_smoothed_loss(self, logits: Tensor, target: Tensor, *, stage: Stage | None = None) -> Tensor:
        """Return the label-smoothed cross-entropy of ``logits`` and log its terms and calibration.

        Args:
            logits: (N, C) or (N, C, d1, ...) logits (log-probabilities work as well: the loss is invariant to
                a per-position shift of the logits).
            target: (N,) or (N, d1, ...) class indices, or class probabilities of the logits' shape.
            stage: ``"train"``, ``"val"`` or ``"test"``; taken from the trainer when ``None``. Nothing is logged
                outside a trainer or during the sanity check.

        Returns:
            The scalar loss (``reduction="mean"``), with gradient.
        """
        if stage is not None and stage not in _STAGES:
            raise ValueError(f"Expected argument `stage` to be one of {_STAGES}, but got {stage!r}")
        stage = stage if stage is not None else self._ls_stage()
        loss, stats = _compute(
            logits,
            target,
            self.label_smoothing,
            None,
            self.ls_ignore_index,
            "mean",
            self.label_smoothing_prior,
            with_stats=True,
            brier=stage not in (None, "train"),  # the Brier score is a val/test measure
        )
        if stage is not None:
            self._ls_log(stage, loss, stats)
        estimator = getattr(self, "ls_prior_estimator", None)
        if stage == "train" and estimator is not None:
            estimator.update(logits.detach(), target, stats.correct & stats.valid)
        if stage == "val":
            # e.g. TemperatureScaling: callbacks that need the validation logits themselves, not only our metrics
            for observer in getattr(self, "ls_val_observers", ()):
                observer.update(logits.detach(), target, stats.valid)
        return loss.loss

    def calibration_bins(self, stage: Stage, *, sync: bool = True) -> BinStats | None:
        """Per-bin sums (count, confidence, correct) of ``stage``'s ECE state for the current epoch.

        Args:
            stage: ``"train"``, ``"val"`` or ``"test"``.
            sync: sum the states over processes; a collective call, so every rank must make it.

        Returns:
            The :class:`~ls_lightning.metrics.BinStats`, or ``None`` before the stage's first logged batch.
        """
        metrics = self._modules.get(f"_ls_{stage}_metrics")  # type: ignore[attr-defined]
        if metrics is None:
            return None
        return cast(BinnedCalibrationError, metrics["ece"]).bin_stats(sync=sync)

    def _ls_stage(self) -> Stage | None:
        trainer: Trainer | None = getattr(self, "_trainer", None)
        if trainer is None or trainer.sanity_checking:
            return None
        stage = trainer.state.stage
        return None if stage is None else _STAGE_PREFIX.get(stage.value)

    def _ls_log(self, stage: Stage, loss: LabelSmoothedCE, stats: LossStats) -> None:
        trainer: Trainer | None = getattr(self, "_trainer", None)
        if trainer is None:
            return
        if stage != "train":
            self._ls_warn_if_padded(stage)
        metrics = cast("Mapping[str, Metric]", self._ls_metrics_for(stage, loss.loss.device))
        terms = cast(_LossTerms, metrics["terms"])
        # Two state updates per batch: the weighted sums of the loss terms, and the calibration bins (accuracy, ece,
        # mce, rmsce and overconfidence all derive from them); ece_adaptive keeps its fine histogram.
        terms.update(loss, stats)
        for name in ("ece", "ece_adaptive"):
            if name in metrics:
                metrics[name].update(stats.confidence, stats.correct, weight=stats.valid)
        # Each `self.log` costs Lightning a few hundred µs. An epoch value needs one call per epoch: the state keeps
        # accumulating, and Lightning computes and resets it at the epoch's end (update_count 1 is the first batch
        # since that reset). A step value needs a call on the steps the loggers write; the progress bar shows the
        # loss every step.
        first = terms.update_count == 1
        if stage == "train":
            logs = first or logger_writes_this_step(trainer)
            for name, value in zip(_LOSS_TERMS, loss, strict=True):
                if name == "loss" or logs:
                    entry = metrics[name]
                    entry._forward_cache = value.detach()  # type: ignore[assignment]  # the step value Lightning logs
                    self._ls_log_metric(stage, name, entry, on_step=True, prog_bar=name == "loss")
        if first:
            for name, metric in metrics.items():
                if name != "terms" and (stage != "train" or name not in _LOSS_TERMS):
                    self._ls_log_metric(stage, name, metric, on_step=False, prog_bar=name == "acc" and stage == "val")

    def _ls_warn_if_padded(self, stage: Stage) -> None:
        checked: set[str] = self.__dict__.setdefault("_ls_padding_checked", set())
        if stage in checked:
            return
        checked.add(stage)
        trainer = cast("Trainer", self._trainer)  # type: ignore[attr-defined]
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            if _pads_samples(getattr(loader, "sampler", None)):
                rank_zero_warn(
                    f"The {stage} dataloader's DistributedSampler pads the data with repeated samples, so `{stage}/...`"
                    " metrics count them twice. Give the loader `ls_lightning.data.UnpaddedDistributedSampler(dataset)`"
                    " (Lightning keeps a sampler that is already a DistributedSampler), or evaluate on one device."
                )
                return

    def _ls_log_metric(self, stage: Stage, name: str, metric: Metric, *, on_step: bool, prog_bar: bool) -> None:
        self.log(  # type: ignore[attr-defined]
            f"{stage}/{name}",
            metric,
            on_step=on_step,
            on_epoch=True,
            prog_bar=prog_bar,
            metric_attribute=f"_ls_{stage}_metrics.{name}",
        )

    def _ls_metrics_for(self, stage: Stage, device: torch.device) -> nn.ModuleDict:
        # Created on first use rather than in __init__, so a module whose __init__ never reached ours still works;
        # the states are non-persistent, so checkpoints do not change.
        modules: dict[str, nn.Module] = self._modules  # type: ignore[attr-defined]
        name = f"_ls_{stage}_metrics"
        if name not in modules:
            modules[name] = self._ls_new_metrics(stage).to(device)
        return cast(nn.ModuleDict, modules[name])

    def _ls_new_metrics(self, stage: Stage) -> nn.ModuleDict:
        n_bins = self.ls_n_bins
        terms = _LossTerms(brier=stage != "train")
        ece = BinnedCalibrationError(n_bins=n_bins, norm="l1")
        metrics: dict[str, nn.Module] = {"terms": terms}
        metrics.update({name: _Entry(terms, name) for name in _LOSS_TERMS})
        metrics.update(acc=_Entry(ece, "accuracy"), ece=ece)
        if stage != "train":
            metrics.update(mce=_Entry(ece, "max"), rmsce=_Entry(ece, "l2"))
            metrics["ece_adaptive"] = AdaptiveCalibrationError(n_bins=n_bins)
            metrics.update(brier=_Entry(terms, "brier"), overconfidence=_Entry(ece, "overconfidence"))
        return nn.ModuleDict(metrics)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict, strict: bool, *args: Any, **kwargs: Any
    ) -> None:
        # A prior set during training (class frequencies, online label smoothing) is a checkpointed buffer that a
        # freshly built module does not have yet: adopt it, so that `load_state_dict` and resume restore it.
        key = f"{prefix}_ls_prior"
        if key in state_dict and self.label_smoothing_prior is None:
            self.label_smoothing_prior = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args, **kwargs)  # type: ignore[misc]
