"""`LabelSmoothingMixin`: the label-smoothed loss and its metrics for any LightningModule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
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
MetricGroup = Literal["loss", "terms", "acc", "calibration", "perplexity"]

# Lightning's running stage (``trainer.state.stage``) -> our key prefix. Sanity checking and prediction log nothing.
_STAGE_PREFIX: dict[str, Stage] = {"train": "train", "validate": "val", "test": "test"}
_STAGES: tuple[Stage, ...] = ("train", "val", "test")
_LOSS_TERMS = ("loss", "h_pq", "h_uq")
# The keys of each group the mixin can log (``log_metrics``); mce, rmsce, ece_adaptive, brier and overconfidence are
# logged for val and test only.
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "loss": ("loss",),
    "terms": ("h_pq", "h_uq"),
    "acc": ("acc",),
    "calibration": ("ece", "mce", "rmsce", "ece_adaptive", "brier", "overconfidence"),
    "perplexity": ("perplexity",),
}
DEFAULT_LOG_METRICS: tuple[MetricGroup, ...] = ("loss", "terms", "acc", "calibration")


def check_log_metrics(groups: Any) -> tuple[MetricGroup, ...]:
    """Validate ``log_metrics``: a sequence of names of :data:`METRIC_GROUPS`."""
    if isinstance(groups, str) or not isinstance(groups, Iterable):
        raise TypeError(
            f"Expected argument `log_metrics` to be a sequence of {tuple(METRIC_GROUPS)}, but got {groups!r}"
        )
    groups = tuple(groups)
    unknown = [g for g in groups if g not in METRIC_GROUPS]
    if unknown:
        raise ValueError(
            f"Expected argument `log_metrics` to hold names from {tuple(METRIC_GROUPS)}, but got {unknown[0]!r}"
        )
    return cast("tuple[MetricGroup, ...]", groups)


def check_log_prefix(prefix: Any) -> str:
    """Validate ``log_prefix``: a string put between ``{stage}/`` and the metric's name."""
    if not isinstance(prefix, str):
        raise TypeError(f"Expected argument `log_prefix` to be a str (e.g. 'ls_' or 'ls/'), but got {prefix!r}")
    return prefix


class _LossTerms(Metric):
    """A stage's loss statistics: weighted epoch means of the loss, H(p,q), H(u,q) and (val/test) the Brier score.

    ``add`` takes a batch's terms and :class:`LossStats`, and also updates the calibration metrics (``sinks``) with its
    positions' confidence and correctness. Batch means enter weighted by the batch's ``weight_sum`` (its number of
    counted positions: the mixin uses no class weights), so the epoch value is the mean over positions, exact across
    batches and processes. ``compute`` returns ``(loss, h_pq, h_uq, brier)``; 0 for an empty epoch, brier 0 unless kept.
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

    def add(self, loss: LabelSmoothedCE, stats: LossStats) -> None:
        """Add one batch: its loss terms to this metric's states, its positions to the sinks'."""
        self.update(torch.stack([loss.loss.detach(), loss.h_pq.detach(), loss.h_uq.detach()]), stats)
        for sink in cast("tuple[Metric, ...]", self.__dict__["_sinks"]):
            sink.update(stats.confidence, stats.correct, weight=stats.valid)

    def update(self, terms: Tensor, stats: LossStats) -> None:
        """Add the (3,) batch means of loss, H(p,q), H(u,q) weighted by the batch's count, and its Brier scores."""
        weight = stats.weight_sum.to(_STATE_DTYPE)
        self.sums[:3].add_(terms.to(_STATE_DTYPE) * weight)
        self.weight.add_(weight)
        if self.brier and stats.brier.numel():
            self.sums[3].add_(torch.dot(stats.brier, stats.valid.to(stats.brier.dtype)).to(_STATE_DTYPE))

    def compute(self) -> Tensor:
        return _safe_divide(self.sums, self.weight).to(torch.get_default_dtype())


class _Entry(Metric):
    """One logged value derived from another metric's state: what ``self.log`` gets for each key.

    Lightning computes a logged Metric at the epoch's end and then resets it; an entry computes its value from the
    owner (whose compute syncs the states across processes) and resets the stage's metrics. It has no state of its
    own, so updating and syncing the owner once serves every key derived from it.
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
        owner = self.owner
        if isinstance(owner, _LossTerms):
            if self.key == "perplexity":
                return owner.compute()[1].exp()
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
            if metric.update_count:
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


def _check_epsilon(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected argument `label_smoothing` to be a float in [0, 1], but got {value!r}")
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"Expected argument `label_smoothing` to be a float in [0, 1], but got {value!r}")
    return float(value)


_TRAIN_KEYS = frozenset(("loss", "h_pq", "h_uq", "acc", "ece", "perplexity"))
# Rows of logits built at a time for the callbacks that need them from the fused linear loss (online prior, TS).
_LOGIT_CHUNK_ELEMENTS = 1 << 22


def _logit_chunks(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, mask: Tensor
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(logits, target, mask) of the rows where ``mask`` (M,) is set, a chunk of rows at a time, without autograd."""
    rows = mask.nonzero().squeeze(1)
    if rows.numel() == 0:
        return
    flat, labels = hidden.detach().reshape(-1, hidden.shape[-1]), target.reshape(-1)
    step = max(1, _LOGIT_CHUNK_ELEMENTS // weight.shape[0])
    with torch.no_grad():
        for start in range(0, rows.numel(), step):
            index = rows[start : start + step]
            logits = torch.nn.functional.linear(flat.index_select(0, index), weight.detach(), bias)
            yield logits.float(), labels.index_select(0, index), torch.ones_like(index, dtype=torch.bool)


class LabelSmoothingMixin:
    r"""Mix into a LightningModule to get the label-smoothed loss and its logged terms and calibration.

    .. math::
        L = (1 - \varepsilon)\, H(p, q) + \varepsilon\, H(u, q)

    ``label_smoothed_loss`` returns the same value as ``F.cross_entropy(logits, target, label_smoothing=ε)`` and
    logs, for the trainer's current stage, ``{stage}/loss``, ``{stage}/h_pq``, ``{stage}/h_uq`` (step and epoch
    during training, epoch otherwise), ``{stage}/acc`` and ``{stage}/ece`` (epoch), and for val and test also
    ``mce``, ``rmsce``, ``ece_adaptive``, ``brier`` and ``overconfidence`` (epoch). Epoch values are torchmetrics
    states weighted by the number of counted positions, so they are exact over all samples of all processes.
    Confidence and correctness come from the loss's own pass over the logits: no second softmax. Step values are
    logged on every training step, as a per-step ``self.log`` would be: ``trainer.callback_metrics`` holds them after
    each step, and the loggers get them every ``log_every_n_steps``.

    The module's own keys win: a key that the module logs itself (say ``train/loss`` from its own ``MeanMetric``)
    keeps the module's value, and the mixin stops logging it (a message says which); its other keys are logged as
    usual. ``log_metrics`` chooses the groups the mixin logs and ``log_prefix`` renames its keys
    (``{stage}/{log_prefix}{name}``), e.g. ``log_prefix="ls_"`` to keep both ``train/loss`` and ``train/ls_loss``.

    Put the mixin first among the bases. The user's ``__init__`` need not know about it: every argument has a
    default, and a module whose ``__init__`` never reaches the mixin's (the mixin placed after LightningModule)
    still works with the defaults.

    Args:
        label_smoothing: ε, the initial weight of the prior; the :class:`~ls_lightning.LabelSmoothing` callback
            overwrites it on every training batch.
        prior: u, a (C,) distribution or a (C, C) matrix whose row y is u(·|y); ``None`` is uniform.
        ignore_index: target value whose positions count in neither the loss nor the metrics.
        n_bins: number of equal-width confidence bins of the expected calibration error.
        log_metrics: the groups of keys to log, from ``"loss"`` (loss), ``"terms"`` (h_pq, h_uq), ``"acc"``,
            ``"calibration"`` (ece; for val/test also mce, rmsce, ece_adaptive, brier, overconfidence) and
            ``"perplexity"`` (exp of the epoch's H(p,q); off by default).
        log_prefix: put between ``{stage}/`` and each key's name.

    Raises:
        TypeError, ValueError: for an ε outside [0, 1], a prior that is not a tensor, an unknown metric group, or a
            prefix that is not a string.

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
    _ls_log_metrics: tuple[MetricGroup, ...] = DEFAULT_LOG_METRICS
    _ls_log_prefix: str = ""
    ls_ignore_index: int = -100
    ls_n_bins: int = 15

    def __init__(
        self,
        *args: Any,
        label_smoothing: float = 0.1,
        prior: Tensor | None = None,
        ignore_index: int = -100,
        n_bins: int = 15,
        log_metrics: Sequence[MetricGroup] = DEFAULT_LOG_METRICS,
        log_prefix: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.label_smoothing = label_smoothing
        self.label_smoothing_prior = prior
        self.ls_ignore_index = ignore_index
        self.ls_n_bins = n_bins
        self.ls_log_metrics = log_metrics
        self.ls_log_prefix = log_prefix

    @property
    def label_smoothing(self) -> float:
        """The current ε, a float in [0, 1]."""
        return self._label_smoothing

    @label_smoothing.setter
    def label_smoothing(self, value: float) -> None:
        self._label_smoothing = _check_epsilon(value)
        tensor = self.__dict__.get("_ls_epsilon_tensor")
        if tensor is None:
            self.__dict__["_ls_epsilon_tensor"] = torch.tensor(self._label_smoothing)
        else:
            tensor.fill_(self._label_smoothing)

    def _ls_epsilon(self) -> float | Tensor:
        """ε for the loss: the float, or in a step traced by ``torch.compile`` a 0-d CPU tensor holding it (data, not
        a constant of the graph, so that a new ε does not recompile the step)."""
        if not torch.compiler.is_compiling():
            return self._label_smoothing
        tensor = self.__dict__.get("_ls_epsilon_tensor")
        return tensor if tensor is not None else self._label_smoothing

    @property
    def ls_log_metrics(self) -> tuple[MetricGroup, ...]:
        """The groups of keys the mixin logs (see the class's ``log_metrics``)."""
        return self._ls_log_metrics

    @ls_log_metrics.setter
    def ls_log_metrics(self, groups: Sequence[MetricGroup]) -> None:
        self._ls_log_metrics = check_log_metrics(groups)

    @property
    def ls_log_prefix(self) -> str:
        """Put between ``{stage}/`` and the name of each key the mixin (and the callback) logs."""
        return self._ls_log_prefix

    @ls_log_prefix.setter
    def ls_log_prefix(self, prefix: str) -> None:
        self._ls_log_prefix = check_log_prefix(prefix)

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
        stage = self._ls_resolve_stage(stage)
        loss, stats = _compute(
            logits,
            target,
            self._ls_epsilon(),
            None,
            self.ls_ignore_index,
            "mean",
            self.label_smoothing_prior,
            with_stats=True,
            brier=stage not in (None, "train"),  # the Brier score is a val/test measure
        )
        if stage is not None:
            self._ls_record(stage, loss, stats, lambda mask: iter(((logits.detach(), target, mask),)))
        return loss.loss

    def label_smoothed_linear_loss(
        self,
        hidden: Tensor,
        linear_weight: Tensor,
        target: Tensor,
        *,
        linear_bias: Tensor | None = None,
        stage: Stage | None = None,
    ) -> Tensor:
        """The loss of the logits ``F.linear(hidden, linear_weight, linear_bias)``, computed without building them.

        The same value, keys and calibration statistics as ``label_smoothed_loss`` on those logits (class-last:
        ``hidden`` is (..., D), as language models produce it), from
        :func:`~ls_lightning.linear_label_smoothed_cross_entropy`, which holds one chunk of logits at a time.
        Nothing of size N × V is kept, except for what callbacks that need the logits themselves ask for (online
        label smoothing's per-class sums, temperature scaling's validation logits), which get them chunk by chunk.

        Args:
            hidden: (..., D) hidden states.
            linear_weight: (V, D) weight of the output layer (tied embeddings work: autograd sums the gradients).
            target: (...) class indices (the mixin's ``ignore_index`` marks padding).
            linear_bias: (V,) bias of the output layer, or ``None``.
            stage: as in :meth:`label_smoothed_loss`.

        Returns:
            The scalar loss (``reduction="mean"``), with gradient.
        """
        from ls_lightning._linear import _linear_compute

        stage = self._ls_resolve_stage(stage)
        loss, stats = _linear_compute(
            hidden,
            linear_weight,
            target,
            self._ls_epsilon(),
            linear_bias,
            None,
            self.ls_ignore_index,
            "mean",
            self.label_smoothing_prior,
            with_stats=True,
            brier=stage not in (None, "train"),
        )
        if stage is not None:
            self._ls_record(
                stage, loss, stats, lambda mask: _logit_chunks(hidden, linear_weight, linear_bias, target, mask)
            )
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
        return cast(BinnedCalibrationError, metrics["bins"]).bin_stats(sync=sync)

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``self.log``; a key that the module logs itself is then no longer logged by the mixin."""
        if not self.__dict__.get("_ls_own_log") and name not in self.__dict__.get("_ls_user_keys", ()):
            self._ls_claim(name)
        super().log(name, value, *args, **kwargs)  # type: ignore[misc]

    def _ls_resolve_stage(self, stage: Stage | None) -> Stage | None:
        if stage is not None and stage not in _STAGES:
            raise ValueError(f"Expected argument `stage` to be one of {_STAGES}, but got {stage!r}")
        return stage if stage is not None else self._ls_stage()

    def _ls_stage(self) -> Stage | None:
        trainer: Trainer | None = getattr(self, "_trainer", None)
        if trainer is None or trainer.sanity_checking:
            return None
        stage = trainer.state.stage
        return None if stage is None else _STAGE_PREFIX.get(stage.value)

    @torch.compiler.disable  # metric states and `self.log` run eagerly in a compiled step (a graph break)
    def _ls_record(
        self,
        stage: Stage,
        loss: LabelSmoothedCE,
        stats: LossStats,
        logits: Callable[[Tensor], Iterator[tuple[Tensor, Tensor, Tensor]]],
    ) -> None:
        """Log the batch's values; hand the logits to the callbacks that need them (``logits(mask)`` yields
        ``(logits, target, mask)`` parts of the batch, ``mask`` (M,) selecting positions)."""
        self._ls_log(stage, loss, stats)
        estimator = getattr(self, "ls_prior_estimator", None)
        if stage == "train" and estimator is not None:  # online label smoothing: the correctly classified positions
            for part in logits(stats.correct & stats.valid):
                estimator.update(*part)
        observers = getattr(self, "ls_val_observers", ()) if stage == "val" else ()
        if observers:  # e.g. TemperatureScaling: callbacks that need the validation logits themselves
            for part in logits(stats.valid):
                for observer in observers:
                    observer.update(*part)

    def _ls_log(self, stage: Stage, loss: LabelSmoothedCE, stats: LossStats) -> None:
        trainer: Trainer | None = getattr(self, "_trainer", None)
        if trainer is None:
            return
        if stage != "train":
            self._ls_warn_if_padded(stage)
        metrics = cast("Mapping[str, Metric]", self._ls_metrics_for(stage, loss.loss.device))
        terms = cast(_LossTerms, metrics["terms"])
        self._ls_start_epoch(stage, trainer, metrics)
        # One update per batch: the loss terms and the positions for the calibration bins (accuracy, ece, mce, rmsce
        # and overconfidence all derive from them; val/test also feed ece_adaptive's fine histogram).
        terms.add(loss, stats)
        # An epoch value needs one `self.log` per epoch (Lightning computes and resets the logged Metric at the epoch's
        # end); a step value one per step, as a per-step `self.log` of a tensor would.
        first = terms.update_count == 1
        names = self._ls_logged_names(stage)
        if stage == "train":
            for name, value in zip(_LOSS_TERMS, loss, strict=True):
                if name in names:
                    entry = metrics[name]
                    entry.__dict__["_forward_cache"] = value.detach()  # the step value Lightning logs
                    self._ls_log_metric(stage, name, entry, on_step=True, prog_bar=name == "loss")
        if first:
            for name in names:
                if stage != "train" or name not in _LOSS_TERMS:
                    prog_bar = name == "acc" and stage == "val"
                    self._ls_log_metric(stage, name, metrics[name], on_step=False, prog_bar=prog_bar)

    def _ls_logged_names(self, stage: Stage) -> list[str]:
        """Names of the keys the mixin logs for ``stage``: its groups, less those the module logs itself."""
        cache_key = (stage, self._ls_log_metrics, self._ls_log_prefix, len(self.__dict__.get("_ls_user_keys", ())))
        cached = self.__dict__.get("_ls_names_cache")
        if cached is not None and cached[0] == cache_key:
            return cast("list[str]", cached[1])
        user = self.__dict__.get("_ls_user_keys", set())
        names = [
            name
            for group in self._ls_log_metrics
            for name in METRIC_GROUPS[group]
            if (stage != "train" or name in _TRAIN_KEYS) and self._ls_key(stage, name) not in user
        ]
        self.__dict__["_ls_names_cache"] = (cache_key, names)
        return names

    def _ls_key(self, stage: Stage, name: str) -> str:
        return f"{stage}/{self._ls_log_prefix}{name}"

    def _ls_log_metric(self, stage: Stage, name: str, metric: Metric, *, on_step: bool, prog_bar: bool) -> None:
        self._ls_log_own(
            self._ls_key(stage, name),
            metric,
            on_step=on_step,
            on_epoch=True,
            prog_bar=prog_bar,
            metric_attribute=f"_ls_{stage}_metrics.{name}",
        )

    def _ls_log_own(self, name: str, value: Any, **kwargs: Any) -> None:
        """``self.log`` for the plugin's own keys (the mixin's and the callback's): not taken for the module's."""
        self.__dict__["_ls_own_log"] = True
        try:
            self.log(name, value, **kwargs)
        finally:
            self.__dict__["_ls_own_log"] = False

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

    @torch.compiler.disable
    def _ls_claim(self, name: str) -> None:
        """The module logs ``name`` itself: the mixin stops logging it, and drops what it logged under it."""
        user: set[str] = self.__dict__.setdefault("_ls_user_keys", set())
        user.add(name)
        trainer: Trainer | None = getattr(self, "_trainer", None)
        results = getattr(trainer, "_results", None)  # Lightning's result collection (private; see the tests)
        if not isinstance(results, dict):
            return
        ours = [
            key
            for key, result in results.items()
            if getattr(getattr(result, "meta", None), "name", None) == name
            and str(getattr(result.meta, "metric_attribute", None) or "").startswith("_ls_")
        ]
        for key in ours:
            del results[key]
        if ours:
            rank_zero_info(
                f"`{type(self).__name__}` logs `{name}` itself: the label-smoothing mixin leaves that key to it. Set"
                " `log_prefix` (e.g. 'ls_') to log the mixin's value beside it."
            )

    def _ls_start_epoch(self, stage: Stage, trainer: Trainer, metrics: Mapping[str, Metric]) -> None:
        """Reset the stage's metrics when a new epoch (or evaluation run) starts.

        Lightning resets the logged entries (and through them the metrics) at each epoch's end; this covers the keys
        nobody logs (all taken by the module, or ``log_metrics`` empty), whose states still feed calibration_bins.
        """
        mark = (trainer.state.fn, trainer.current_epoch, trainer.global_step if stage != "train" else 0)
        marks: dict[str, Any] = self.__dict__.setdefault("_ls_epoch_marks", {})
        if marks.get(stage) != mark:
            marks[stage] = mark
            for metric in metrics.values():
                if not isinstance(metric, _Entry) and metric.update_count:
                    metric.reset()

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
        terms = _LossTerms(brier=stage != "train", sinks=sinks)
        metrics: dict[str, nn.Module] = {"terms": terms, "bins": bins}
        metrics.update({name: _Entry(terms, name, terms) for name in (*_LOSS_TERMS, "perplexity")})
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
