"""`LabelSmoothingMixin`: the label-smoothed loss and its metrics for any LightningModule."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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


# A stage's batches wait in a buffer and enter the metric states together: on CPU and GPU alike, a small batch's state
# update costs a dozen op dispatches (or kernel launches) whatever its size, the buffered update once per fold.
_FOLD_POSITIONS = 1 << 14  # fold once the buffer holds this many positions (memory: ~6 bytes each) ...
_FOLD_BATCHES = 128  # ... or this many batches


class _Buffer:
    __slots__ = ("batches", "count", "positions")

    def __init__(self) -> None:
        self.batches: list[tuple[Tensor, Tensor, Tensor, LossStats]] = []
        self.positions = 0
        self.count = 0  # batches added since the last reset


class _LossTerms(Metric):
    """A stage's loss statistics: weighted epoch means of the loss, H(p,q), H(u,q), (val/test) the Brier score, and
    the batches' confidence and correctness for the calibration metrics (``sinks``).

    ``add`` buffers a batch; ``fold`` adds the buffered batches to this metric's states and updates the sinks with
    their positions, in one update each. Folds happen when the buffer is full and before anything reads a state
    (the entries' ``compute``, ``calibration_bins``, a device move); ``reset`` drops the buffer with the states.
    Batch means enter weighted by the batch's ``weight_sum`` (its number of counted positions: the mixin uses no
    class weights), so the epoch value is the mean over positions, exact across batches and processes.
    ``compute`` returns ``(loss, h_pq, h_uq, brier)``; 0 for an empty epoch, brier 0 unless kept.
    """

    is_differentiable = False
    full_state_update = False
    sums: Tensor
    weight: Tensor

    def __init__(self, brier: bool = False, sinks: Sequence[Metric] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.brier = brier
        self.add_state("sums", torch.zeros(4, dtype=_STATE_DTYPE), dist_reduce_fx="sum")
        self.add_state("weight", torch.zeros((), dtype=_STATE_DTYPE), dist_reduce_fx="sum")
        self.__dict__["_sinks"] = tuple(sinks)  # plain references: the sinks are registered where they live
        self.__dict__["_buffer"] = _Buffer()

    @property
    def batches_added(self) -> int:
        """Batches added since the last reset, folded or not."""
        return cast(_Buffer, self.__dict__["_buffer"]).count

    def add(self, loss: LabelSmoothedCE, stats: LossStats) -> None:
        """Buffer one batch (a few µs, no state update and no host sync); fold when the buffer is full."""
        buffer = cast(_Buffer, self.__dict__["_buffer"])
        buffer.batches.append((loss.loss.detach(), loss.h_pq.detach(), loss.h_uq.detach(), stats))
        buffer.positions += stats.confidence.numel()
        buffer.count += 1
        if buffer.positions >= _FOLD_POSITIONS or len(buffer.batches) >= _FOLD_BATCHES:
            self.fold()

    def fold(self) -> None:
        """Add the buffered batches to the states of this metric and of the sinks."""
        buffer = cast(_Buffer, self.__dict__["_buffer"])
        batches = buffer.batches
        if not batches:
            return
        buffer.batches, buffer.positions = [], 0
        stats = [batch[3] for batch in batches]
        terms = torch.stack([term for batch in batches for term in batch[:3]]).view(len(batches), 3)
        weights = torch.stack([s.weight_sum for s in stats])
        confidence, correct, valid = (torch.cat(parts) for parts in zip(*(s[:3] for s in stats), strict=True))
        brier = torch.cat([s.brier for s in stats]) if self.brier else None
        self.update(terms, weights, valid, brier)
        for sink in cast("tuple[Metric, ...]", self.__dict__["_sinks"]):
            sink.update(confidence, correct, weight=valid)

    def update(self, terms: Tensor, weights: Tensor, valid: Tensor, brier: Tensor | None = None) -> None:
        """Add (K, 3) batch means of loss, H(p,q), H(u,q) weighted by their (K,) counts, and (M,) Brier scores."""
        self.sums[:3].add_(weights.to(_STATE_DTYPE) @ terms.to(_STATE_DTYPE))
        self.weight.add_(weights.sum())
        if self.brier and brier is not None:
            self.sums[3].add_(torch.dot(brier, valid.to(brier.dtype)))

    def compute(self) -> Tensor:
        return _safe_divide(self.sums, self.weight).to(torch.get_default_dtype())

    def reset(self) -> None:
        super().reset()
        self.__dict__["_buffer"] = _Buffer()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.fold()  # the buffered tensors live where the states do: fold before the states move or change dtype
        return super()._apply(fn, *args, **kwargs)


class _Entry(Metric):
    """One logged value derived from another metric's state: what ``self.log`` gets for each key.

    Lightning computes a logged Metric at the epoch's end and then resets it; an entry folds its stage's buffered
    batches (``source``), computes its value from the owner (whose compute syncs the states across processes) and
    resets both. It has no state of its own, so updating and syncing the owner once serves every key derived from it.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, owner: Metric, key: str, source: _LossTerms, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.__dict__["_owner"] = owner  # plain references: both are registered where they live
        self.__dict__["_source"] = source
        self.key = key

    @property
    def owner(self) -> Metric:
        return cast(Metric, self.__dict__["_owner"])

    def update(self) -> None:
        raise RuntimeError(f"{type(self).__name__}({self.key!r}) is updated through its owner")

    def compute(self) -> Tensor:
        cast(_LossTerms, self.__dict__["_source"]).fold()
        owner = self.owner
        if isinstance(owner, _LossTerms):
            return owner.compute()[(*_LOSS_TERMS, "brier").index(self.key)]
        if isinstance(owner, AdaptiveCalibrationError):
            return owner.compute()
        stats = cast(BinnedCalibrationError, owner).bin_stats(sync=True)
        if self.key == "accuracy":
            return stats.overall_accuracy()
        if self.key == "overconfidence":
            return stats.overconfidence()
        return stats.calibration_error(cast("Literal['l1', 'l2', 'max']", self.key)).float()

    def reset(self) -> None:
        super().reset()
        # Lightning resets every entry; the first resets the shared metrics, the others find them unused since
        for metric in (cast(_LossTerms, self.__dict__["_source"]), self.owner):
            if metric.update_count or (isinstance(metric, _LossTerms) and metric.batches_added):
                metric.reset()

    def _wrap_compute(self, compute: Any) -> Any:
        # no "compute before update" warning (the owner is updated, not the entry) and nothing of its own to sync
        return compute

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> _Entry:
        # nothing of its own to move or convert (the owner moves where it is registered); Lightning moves each logged
        # metric to the value's device on every `self.log`, and torchmetrics' `_apply` would allocate to find it
        return self


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
    about 150 µs (CPU) whether or not it writes: step values logged only on these steps reach the loggers unchanged.
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
        cast(_LossTerms, metrics["terms"]).fold()
        return cast(BinnedCalibrationError, metrics["bins"]).bin_stats(sync=sync)

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
        # One buffered update per batch: the loss terms and the positions for the calibration bins (accuracy, ece,
        # mce, rmsce and overconfidence all derive from them; val/test also feed ece_adaptive's fine histogram).
        terms.add(loss, stats)
        # Each `self.log` costs Lightning about 150 µs (CPU). An epoch value needs one call per epoch: the state keeps
        # accumulating, and Lightning computes and resets it at the epoch's end (the first batch since that reset
        # logs it). A step value needs a call on the steps the loggers write; the progress bar shows the loss every
        # step.
        first = terms.batches_added == 1
        if stage == "train":
            logs = first or logger_writes_this_step(trainer)
            for name, value in zip(_LOSS_TERMS, loss, strict=True):
                if name == "loss" or logs:
                    entry = metrics[name]
                    entry.__dict__["_forward_cache"] = value.detach()  # the step value Lightning logs
                    self._ls_log_metric(stage, name, entry, on_step=True, prog_bar=name == "loss")
        if first:
            for name, metric in metrics.items():
                if isinstance(metric, _Entry) and (stage != "train" or name not in _LOSS_TERMS):
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
        bins = BinnedCalibrationError(n_bins=n_bins, norm="l1")
        sinks: list[Metric] = [bins]
        if stage != "train":
            sinks.append(AdaptiveCalibrationError(n_bins=n_bins))
        # "terms" first: a device move folds its buffer while the sinks are still where the buffered tensors are
        terms = _LossTerms(brier=stage != "train", sinks=sinks)
        metrics: dict[str, nn.Module] = {"terms": terms, "bins": bins}
        metrics.update({name: _Entry(terms, name, terms) for name in _LOSS_TERMS})
        metrics.update(acc=_Entry(bins, "accuracy", terms), ece=_Entry(bins, "l1", terms))
        if stage != "train":
            metrics.update(mce=_Entry(bins, "max", terms), rmsce=_Entry(bins, "l2", terms))
            metrics.update(adaptive=sinks[1], ece_adaptive=_Entry(sinks[1], "adaptive", terms))
            metrics.update(brier=_Entry(terms, "brier", terms), overconfidence=_Entry(bins, "overconfidence", terms))
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
