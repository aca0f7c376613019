"""`LabelSmoothingMixin`: the label-smoothed loss and its metrics for any LightningModule."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data.distributed import DistributedSampler
from torchmetrics import Metric

from ls_lightning.integration.normalization import (
    LossNormalization,
    StepNormalizer,
    check_loss_normalization,
    check_step_normalization,
)
from ls_lightning.losses import (
    SCHEDULED_NAMES,
    BinaryLossStats,
    LabelSmoothedCE,
    LossStats,
    Objective,
    Reduction,
    binary_objective_with_stats,
    check_objective,
    linear_label_smoothed_cross_entropy_with_stats,
    objective_with_stats,
)
from ls_lightning.losses.checks import check_non_negative
from ls_lightning.metrics import (
    AdaptiveCalibrationError,
    BinnedCalibrationError,
    BinStats,
    BrierScore,
    ClasswiseCalibrationError,
    Overconfidence,
    Perplexity,
    UnpaddedDistributedSampler,
    WeightedMean,
)

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

Stage = Literal["train", "val", "test"]
# multiclass: softmax over C class logits; binary: one logit per sample; multilabel: one logit per label (sigmoid each)
Task = Literal["multiclass", "binary", "multilabel"]
_TASKS: tuple[Task, ...] = ("multiclass", "binary", "multilabel")
MetricGroup = Literal["loss", "terms", "acc", "calibration", "perplexity"]

# Lightning's running stage (``trainer.state.stage``) -> our key prefix. Sanity checking and prediction log nothing.
_STAGE_PREFIX: dict[str, Stage] = {"train": "train", "validate": "val", "test": "test"}
_STAGES: tuple[Stage, ...] = ("train", "val", "test")
# Logged on step (training) and epoch: the loss terms (the fields of the objective's result: h_uq for label smoothing,
# entropy for the confidence penalty, margin_penalty for MbLS) and the z-loss's term, only for losses that have one.
_STEP_KEYS = frozenset(("loss", "h_pq", "h_uq", "entropy", "margin_penalty", "z_loss"))
# The module's step methods: the mixin logs a batch's keys as the outermost step call returns, when the module's own
# `self.log` calls for the batch are known (and before any batch-end hook reads `trainer.callback_metrics`).
_STEP_METHODS = ("training_step", "validation_step", "test_step")
# The keys of each group the mixin can log (``log_metrics``); mce, rmsce, ece_adaptive, brier and overconfidence are
# logged for val and test only.
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "loss": ("loss",),
    # each objective's own: h_uq (label smoothing), margin_penalty (MbLS); z_loss for a loss called with z_loss > 0
    "terms": ("h_pq", "h_uq", "margin_penalty", "z_loss"),
    "acc": ("acc",),
    # entropy: the mean predictive entropy (the confidence penalty's own term, so for it also in training);
    # ece_classwise: multi-class tasks only
    "calibration": ("ece", "mce", "rmsce", "ece_adaptive", "ece_classwise", "brier", "overconfidence", "entropy"),
    "perplexity": ("perplexity",),
}
DEFAULT_LOG_METRICS: tuple[MetricGroup, ...] = ("loss", "terms", "acc", "calibration")
_ALL_KEYS = frozenset(key for keys in METRIC_GROUPS.values() for key in keys)


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


def check_task(task: Any) -> Task:
    """Validate ``task``: one of ``"multiclass"``, ``"binary"``, ``"multilabel"``."""
    if task not in _TASKS:
        raise ValueError(f"Expected argument `task` to be one of {_TASKS}, but got {task!r}")
    return cast("Task", task)


def _binary_inputs(task: Task, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Check the logits' shape for ``task`` and give an (N,) target the shape of (N, 1) logits."""
    if task == "binary" and not (logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1)):
        raise ValueError(
            f"Expected argument `logits` to have shape (N,) or (N, 1) for task='binary', but got {tuple(logits.shape)}"
        )
    if task == "multilabel" and logits.dim() < 2:
        raise ValueError(
            f"Expected argument `logits` to have shape (N, L) for task='multilabel', but got {tuple(logits.shape)}"
        )
    if task == "binary" and logits.dim() == 2 and target.shape == logits.shape[:1]:
        target = target.unsqueeze(1)
    return logits, target


def _check_epsilon(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected argument `label_smoothing` to be a float in [0, 1], but got {value!r}")
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"Expected argument `label_smoothing` to be a float in [0, 1], but got {value!r}")
    return float(value)


_TRAIN_KEYS = frozenset(("loss", "h_pq", "h_uq", "margin_penalty", "z_loss", "acc", "ece", "perplexity"))
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


def _z_values(stats: LossStats | BinaryLossStats) -> Tensor | None:
    """The per-position z term of a multi-class loss that has one (``z_loss > 0``), else ``None``."""
    z = stats.z_loss if isinstance(stats, LossStats) else None
    return z if z is not None and z.numel() else None


def _check_gathered(linear_weight: Tensor) -> None:
    """Refuse an output weight still sharded by FSDP2 (a ``DTensor``): the loss would fail deep in a matmul."""
    if not torch.distributed.is_available():
        return
    from torch.distributed.tensor import DTensor

    if isinstance(linear_weight, DTensor):
        raise TypeError(
            "Expected argument `linear_weight` to be a plain tensor, but got a DTensor sharded by FSDP (fully_shard)."
            " Compute the loss where FSDP has gathered the weight: in the sharded module's forward, or in a step"
            " registered with torch.distributed.fsdp.register_fsdp_forward_method(module, 'training_step')"
        )


def _new_metrics(stage: Stage, n_bins: int, num_classes: int | None, ignore_index: int) -> nn.ModuleDict:
    """One torchmetrics ``Metric`` per key the mixin can log for ``stage``; ``ece`` also serves ``calibration_bins``.
    ``num_classes``: C of a multi-class loss (for the class-wise ECE), ``None`` for binary and multi-label tasks."""
    metrics: dict[str, Metric] = {name: WeightedMean() for name in (*sorted(_STEP_KEYS), "acc")}
    metrics.update(perplexity=Perplexity(), ece=BinnedCalibrationError(n_bins=n_bins, norm="l1"))
    if stage != "train":
        if num_classes is not None and num_classes > 1:
            metrics.update(ece_classwise=ClasswiseCalibrationError(num_classes, n_bins, ignore_index=ignore_index))
        metrics.update(
            mce=BinnedCalibrationError(n_bins=n_bins, norm="max"),
            rmsce=BinnedCalibrationError(n_bins=n_bins, norm="l2"),
            ece_adaptive=AdaptiveCalibrationError(n_bins=n_bins),
            brier=BrierScore(),
            overconfidence=Overconfidence(n_bins=n_bins),
        )
    return nn.ModuleDict(metrics)


def _update_metrics(
    metrics: nn.ModuleDict,
    names: Sequence[str],
    loss: NamedTuple,
    stats: LossStats | BinaryLossStats,
    logits: Callable[[Tensor], Iterator[tuple[Tensor, Tensor, Tensor]]],
    *,
    step: bool,
) -> None:
    """Add one batch to the metrics of ``names`` (and always to ``ece``, the calibration bins).

    Loss terms enter as batch means weighted by the batch's count of positions (Σ w_y with class weights), so the
    epoch value is the mean over positions, exact across batches and processes. ``step``: the loss terms go
    through the metric's ``forward``, whose batch value Lightning logs on step.
    """
    count = stats.weight_sum
    metric = cast("Mapping[str, Metric]", metrics)
    terms: dict[str, Tensor] = loss._asdict()
    for name, value in terms.items():
        if name in names:
            (metric[name] if step else metric[name].update)(value.detach(), count)
    entropy = getattr(stats, "entropy", None)
    if "entropy" in names and "entropy" not in terms and entropy is not None and entropy.numel():
        metric["entropy"].update(entropy, stats.valid)  # the mean predictive entropy over the counted positions
    z_values = _z_values(stats)
    if "z_loss" in names and z_values is not None:  # 0 with weight 0 where ignored
        (metric["z_loss"] if step else metric["z_loss"].update)(z_values, stats.valid)
    if "perplexity" in names:
        metric["perplexity"].update(terms["h_pq"].detach(), count)
    if "acc" in names:
        metric["acc"].update(stats.correct, stats.valid)
    if isinstance(stats, BinaryLossStats):
        _update_binary_calibration(metric, names, stats)
        return
    for name in ("ece", "mce", "rmsce", "ece_adaptive", "overconfidence"):
        if name == "ece" or (name in names and name in metric):
            metric[name].update(stats.confidence, stats.correct, weight=stats.valid)
    if "brier" in names and "brier" in metric and stats.brier.numel():
        metric["brier"].update(stats.brier, weight=stats.valid)
    if "ece_classwise" in names and "ece_classwise" in metric:
        for part, target, mask in logits(stats.valid):  # every class's probability: a softmax of its own
            if not target.is_floating_point():
                metric["ece_classwise"].update(part.detach(), target, weight=mask.reshape(target.shape).float())


def _optional_keys(stage: Stage | None, z_loss: float) -> frozenset[str]:
    """The keys a multi-class loss call adds to its result's: the z-loss's term when asked for, and the predictive
    entropy, which the validation and test statistics compute."""
    return frozenset(("z_loss",) if z_loss else ()) | frozenset(("entropy",) if stage in ("val", "test") else ())


def _logged_in(stage: Stage, name: str, objective: Objective) -> bool:
    """Training logs the loss terms, accuracy, ECE and perplexity; the confidence penalty's term (the entropy) too."""
    return stage != "train" or name in _TRAIN_KEYS or (name == "entropy" and objective == "confidence_penalty")


def _available(name: str, loss: Any, optional: frozenset[str], metrics: nn.ModuleDict) -> bool:
    """Whether the loss has a value for key ``name``: a term of its result (the objective's fields), one of the
    ``optional`` keys its call computes (the z-loss's term when asked for, the entropy with the val/test statistics),
    or a metric of the stage. Decided by the call, never by the batch's content: every process must log the same keys
    (an epoch-end sync is collective), a process with an empty batch too."""
    if name in loss._fields or name in optional:
        return True
    return name not in _STEP_KEYS and name != "entropy" and name in metrics


def _update_binary_calibration(metric: Mapping[str, Metric], names: Sequence[str], stats: BinaryLossStats) -> None:
    """Binary and multi-label: each label position is one sample. The binned ECE states get (σ(z), label), which is
    torchmetrics' ``BinaryCalibrationError``; overconfidence is top-label: max(p, 1 − p) against the 0.5 prediction."""
    for name in ("ece", "mce", "rmsce", "ece_adaptive"):
        if name == "ece" or (name in names and name in metric):
            metric[name].update(stats.probability, stats.target, weight=stats.valid)
    if "overconfidence" in names and "overconfidence" in metric:
        confidence = torch.maximum(stats.probability, 1 - stats.probability)
        metric["overconfidence"].update(confidence, stats.correct, weight=stats.valid)
    if "brier" in names and "brier" in metric and stats.brier.numel():
        metric["brier"].update(stats.brier, weight=stats.valid)


def _callbacks(trainer: Trainer) -> list[Any]:
    """``trainer.callbacks``, documented by Lightning but set in its ``__init__`` (so unknown to type checkers)."""
    return cast("list[Any]", cast(Any, trainer).callbacks)


def _key(stage: Stage, prefix: str, name: str) -> str:
    return f"{stage}/{prefix}{name}"


class MixinSettings(NamedTuple):
    """The settings of :class:`LabelSmoothingMixin` that a callback may pass for the fits it takes part in."""

    task: Task
    log_metrics: tuple[MetricGroup, ...]
    log_prefix: str
    objective: Objective = "label_smoothing"
    focal_gamma: float = 3.0
    margin: float = 10.0


_SETTINGS_CHECKS: dict[str, Callable[[Any], Any]] = {
    "task": check_task,
    "log_metrics": check_log_metrics,
    "log_prefix": check_log_prefix,
    "objective": check_objective,
    "focal_gamma": lambda value: _check_number("focal_gamma", value),
    "margin": lambda value: _check_number("margin", value),
}


def _check_number(name: str, value: Any) -> float:
    check_non_negative(name, value)
    return float(value)


def _settings_from_callbacks(own: MixinSettings, callbacks: Iterable[Any]) -> MixinSettings:
    """``own`` with each setting that a callback's ``label_smoothing_settings()`` gives replaced by that value."""
    given: dict[str, tuple[Any, str]] = {}
    for callback in callbacks:
        method = getattr(callback, "label_smoothing_settings", None)
        if method is None:
            continue
        for name, value in method().items():
            if name not in _SETTINGS_CHECKS:
                raise ValueError(
                    f"Expected `{type(callback).__name__}.label_smoothing_settings()` to give settings among"
                    f" {tuple(_SETTINGS_CHECKS)}, but got {name!r}"
                )
            value = _SETTINGS_CHECKS[name](value)
            if name in given and given[name][0] != value:
                raise ValueError(
                    f"Callbacks `{given[name][1]}` and `{type(callback).__name__}` set the label-smoothing mixin's"
                    f" `{name}` to {given[name][0]!r} and {value!r}: keep one of them"
                )
            given[name] = (value, type(callback).__name__)
    return own._replace(**{name: value for name, (value, _) in given.items()}) if given else own


class LossBatch(NamedTuple):
    """One batch's loss and per-position statistics, handed by the mixin to every callback with an ``on_loss_batch``
    hook, as the module computes its loss (after the batch entered the mixin's metrics).

    A callback (ours, such as :class:`~ls_lightning.integration.TemperatureScaling`, or a user's) defines
    ``on_loss_batch(self, trainer, pl_module, batch: LossBatch)`` and reads what it needs; the logits are built only
    when :meth:`logits` is called (the fused linear loss never holds them: it remakes them chunk by chunk).
    """

    stage: Stage
    task: Task
    loss: LabelSmoothedCE  # the reduced loss and its terms (with gradient: detach before keeping them)
    stats: LossStats | BinaryLossStats  # per position, detached
    logit_parts: Callable[[Tensor], Iterator[tuple[Tensor, Tensor, Tensor]]]

    def logits(self, mask: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """``(logits, target, mask)`` parts of the batch, detached: the positions ``mask`` selects ((M,) bool over the
        flattened positions; default: those not ignored) are those where the part's own ``mask`` is set.

        Multi-class: (N, C, ...) logits and the target as given to the loss (one part), or, from the fused linear
        loss, chunks of (rows, V) logits of the selected rows. Binary and multi-label: the logits and targets as
        given (one logit per position).
        """
        return self.logit_parts(self.stats.valid if mask is None else mask)


def _normalizes_first(hook: Callable[..., Any]) -> Callable[..., Any]:
    """A module's own ``on_before_optimizer_step``, after the mixin's normalisation of the step (idempotent)."""

    @functools.wraps(hook)
    def normalized(self: LabelSmoothingMixin, optimizer: Any) -> Any:
        self._ls_normalize_step()
        return hook(self, optimizer)

    normalized.ls_normalizes_first = True  # type: ignore[attr-defined]
    return normalized


def _logs_after(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` followed by the mixin's logging of the batch (see ``LabelSmoothingMixin.__init_subclass__``).

    ``functools.wraps`` keeps the signature and ``__wrapped__``, which Lightning reads to tell an overridden step and
    its arguments. Only the outermost call logs: a step that calls ``super()``'s may log its own keys afterwards.
    """

    @functools.wraps(step)
    def logged_step(self: LabelSmoothingMixin, *args: Any, **kwargs: Any) -> Any:
        state = self._ls_state
        state.step_depth += 1
        try:
            output = step(self, *args, **kwargs)
        finally:
            state.step_depth -= 1
        if state.step_depth == 0:
            self.ls_log_batch()
        return output

    logged_step.ls_logs_after = True  # type: ignore[attr-defined]
    return logged_step


class _LoggingState:
    """The mixin's bookkeeping of logging, one object per module: its fields change every step, and a plain object's
    attributes cost less to set than a module's (``nn.Module.__setattr__`` checks for parameters and submodules)."""

    __slots__ = (
        "epochs",
        "logging_own",
        "normalizer",
        "padding_checked",
        "pending",
        "settings",
        "soft_checked",
        "step_depth",
        "user_keys",
    )

    def __init__(self) -> None:
        self.user_keys: set[str] = set()  # keys the module logs itself
        # the batch waiting to be logged: its stage, the keys new to this epoch, and the keys it logs
        self.pending: tuple[Stage, frozenset[str], tuple[str, ...]] | None = None
        self.epochs: dict[Stage, Any] = {}  # each stage's current epoch (or evaluation run)
        self.logging_own = False
        self.step_depth = 0
        self.padding_checked: set[str] = set()
        self.settings: MixinSettings | None = None  # the settings the pending batch was recorded with
        self.normalizer: StepNormalizer | None = None  # loss_normalization="step": the optimizer step's count
        self.soft_checked = 0  # id of the trainer whose fit was checked for soft targets that are smoothed already


class LabelSmoothingMixin:
    r"""Mix into a LightningModule to get the label-smoothed loss and its logged terms and calibration.

    .. math::
        L = (1 - \varepsilon)\, H(p, q) + \varepsilon\, H(u, q)

    ``label_smoothed_loss`` returns the same value as ``F.cross_entropy(logits, target, label_smoothing=ε)`` and
    logs, for the trainer's current stage, ``{stage}/loss``, ``{stage}/h_pq``, ``{stage}/h_uq`` (and ``{stage}/z_loss``
    for a loss called with ``z_loss`` > 0: the loss then includes that term) (step and epoch
    during training, epoch otherwise), ``{stage}/acc`` and ``{stage}/ece`` (epoch), and for val and test also
    ``mce``, ``rmsce``, ``ece_adaptive``, ``brier`` and ``overconfidence`` (epoch). Epoch values are torchmetrics
    states weighted by the number of counted positions, so they are exact over all samples of all processes.
    Confidence and correctness come from the loss's own pass over the logits: no second softmax. Each key is a
    torchmetrics ``Metric`` handed to ``self.log`` as the module's step returns; step
    values come from the metric's ``forward`` on every training step, so ``trainer.callback_metrics`` holds them
    after each step and the loggers get them every ``log_every_n_steps``.

    The module's own keys win: a key that the module logs itself (say ``train/loss`` from its own ``MeanMetric``)
    keeps the module's value, and the mixin stops logging it (a message says which); its other keys are logged as
    usual. ``log_metrics`` chooses the groups the mixin logs and ``log_prefix`` renames its keys
    (``{stage}/{log_prefix}{name}``), e.g. ``log_prefix="ls_"`` to keep both ``train/loss`` and ``train/ls_loss``.

    Put the mixin first among the bases. The user's ``__init__`` need not know about it: every argument has a
    default, and a module whose ``__init__`` never reaches the mixin's (the mixin placed after LightningModule)
    still works with the defaults. The keys are logged as the module's ``training_step`` (``validation_step``,
    ``test_step``) returns, where a ``self.log`` in the step would be.

    Args:
        label_smoothing: ε, the initial weight of the prior; the :class:`~ls_lightning.LabelSmoothing` callback
            overwrites it on every training batch.
        prior: u, a (C,) distribution or a (C, C) matrix whose row y is u(·|y); ``None`` is uniform.
        ignore_index: target value whose positions count in neither the loss nor the metrics.
        n_bins: number of equal-width confidence bins of the expected calibration error.
        log_metrics: the groups of keys to log, from ``"loss"`` (loss), ``"terms"`` (h_pq and the objective's own
            term: h_uq for label smoothing, margin_penalty for MbLS; z_loss for a loss called with ``z_loss`` > 0),
            ``"acc"``, ``"calibration"`` (ece; for val/test also mce, rmsce, ece_adaptive, ece_classwise (multi-class),
            brier, overconfidence and entropy, the mean predictive entropy, which the confidence penalty also logs in
            training) and ``"perplexity"`` (exp of the epoch's H(p,q); off by default).
        log_prefix: put between ``{stage}/`` and each key's name.
        task: ``"multiclass"`` (default): softmax over class logits, the loss above. ``"binary"``: (N,) or (N, 1)
            logits with 0/1 (or soft) targets, and ``"multilabel"``: (N, L) logits with multi-hot targets; both take
            the label-smoothed binary cross-entropy of every logit,
            :func:`~ls_lightning.binary_label_smoothed_cross_entropy` (target smoothed to (1 − ε)·t + ε/2), and log
            the same keys with every label position one sample: ``acc`` at threshold 0.5; ``ece``, ``mce``,
            ``rmsce`` equal to torchmetrics' ``BinaryCalibrationError`` on σ(logits) (label positions pooled);
            ``brier`` the mean (σ(z) − t)². Kept in the attribute ``ls_task``; takes no ``prior``.
        class_weight: class weights w (C,) of the multi-class loss, as ``F.cross_entropy``'s ``weight``: the loss
            terms are weighted means (Σ w_y over the counted positions), accuracy and calibration stay per position.
        loss_normalization: ``"batch"`` (default): a training step's loss is its batch's mean, as
            ``F.cross_entropy``'s. ``"step"``: the gradient of each optimizer step is that of the mean loss over all
            counted positions of all its micro-batches on all processes (gradient accumulation, DDP and FSDP,
            padded or variable-length sequences; :mod:`ls_lightning.integration.normalization`). It costs one
            all-reduce of a count and one pass over the gradients per optimizer step; the logged values are the same
            global means either way, but the returned training loss is then the batch's share of the step's mean.
        objective: the loss: ``"label_smoothing"`` (default) or one of its train-time relatives,
            ``"confidence_penalty"`` (CE − β·H(q)), ``"focal"`` (γ = ``focal_gamma``), ``"flsd53"`` or ``"mbls"``
            (margin-based label smoothing, m = ``margin``); see :mod:`ls_lightning.losses.objectives`. ε (set by the
            :class:`~ls_lightning.LabelSmoothing` callback) is the regulariser's weight: β, λ, unused by the focal
            losses. Every objective logs h_pq (the NLL, one scale for all) and its own term.
        focal_gamma: γ ≥ 0 of ``objective="focal"``.
        margin: m ≥ 0 of ``objective="mbls"``.

    Raises:
        TypeError, ValueError: for an ε outside [0, 1], a prior that is not a tensor, an unknown metric group, a
            prefix that is not a string, or an unknown ``task``.

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
    _ls_task: Task = "multiclass"
    _ls_loss_normalization: LossNormalization = "batch"
    _ls_objective: Objective = "label_smoothing"
    _ls_focal_gamma: float = 3.0
    _ls_margin: float = 10.0
    _ls_epsilon_tensor: Tensor | None = None
    # The logging state: keys the module logs itself, the batch waiting to be logged, each stage's epoch.
    _ls_logging_state: _LoggingState | None = None
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
        task: Task = "multiclass",
        class_weight: Tensor | None = None,
        loss_normalization: LossNormalization = "batch",
        objective: Objective = "label_smoothing",
        focal_gamma: float = 3.0,
        margin: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.ls_task = task
        self.label_smoothing = label_smoothing
        self.label_smoothing_prior = prior
        self.ls_class_weight = class_weight
        self._ls_objective = check_objective(objective)
        self._ls_focal_gamma = _check_number("focal_gamma", focal_gamma)
        self._ls_margin = _check_number("margin", margin)
        self.ls_loss_normalization = loss_normalization
        self.ls_ignore_index = ignore_index
        self.ls_n_bins = n_bins
        self.ls_log_metrics = log_metrics
        self.ls_log_prefix = log_prefix
        cast(nn.Module, self).register_load_state_dict_pre_hook(_adopt_saved_prior)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The mixin logs a batch's keys once the module's step has returned: each subclass's step methods are wrapped
        # (a plain Python class hook), so the user's steps stay as they are written.
        super().__init_subclass__(**kwargs)
        for name in _STEP_METHODS:
            step = getattr(cls, name, None)
            if step is not None and not getattr(step, "ls_logs_after", False):
                setattr(cls, name, _logs_after(step))
        # loss_normalization="step" rescales the gradients before anything in the module's own hook reads them
        hook = vars(cls).get("on_before_optimizer_step")
        if hook is not None and not getattr(hook, "ls_normalizes_first", False):
            cls.on_before_optimizer_step = _normalizes_first(hook)  # type: ignore[method-assign]

    @property
    def label_smoothing(self) -> float:
        """The current ε, a float in [0, 1]."""
        return self._label_smoothing

    @label_smoothing.setter
    def label_smoothing(self, value: float) -> None:
        self._label_smoothing = _check_epsilon(value)
        if self._ls_epsilon_tensor is None:
            self._ls_epsilon_tensor = torch.tensor(self._label_smoothing)
        else:
            self._ls_epsilon_tensor.fill_(self._label_smoothing)

    def _ls_epsilon(self) -> float | Tensor:
        """ε for the loss: the float, or in a step traced by ``torch.compile`` a 0-d CPU tensor holding it (data, not
        a constant of the graph, so that a new ε does not recompile the step)."""
        if not torch.compiler.is_compiling():
            return self._label_smoothing
        tensor = self._ls_epsilon_tensor
        return tensor if tensor is not None else self._label_smoothing

    @property
    def ls_log_metrics(self) -> tuple[MetricGroup, ...]:
        """The groups of keys the mixin logs (see the class's ``log_metrics``): the module's own, or during a fit what
        a callback passes through ``label_smoothing_settings()``. Setting it sets the module's own."""
        return self.ls_settings.log_metrics

    @ls_log_metrics.setter
    def ls_log_metrics(self, groups: Sequence[MetricGroup]) -> None:
        self._ls_log_metrics = check_log_metrics(groups)

    @property
    def ls_log_prefix(self) -> str:
        """Put between ``{stage}/`` and the name of each key the mixin (and the callback) logs: the module's own, or
        a callback's (see :attr:`ls_log_metrics`)."""
        return self.ls_settings.log_prefix

    @ls_log_prefix.setter
    def ls_log_prefix(self, prefix: str) -> None:
        self._ls_log_prefix = check_log_prefix(prefix)

    @property
    def ls_task(self) -> Task:
        """``"multiclass"`` (softmax over (N, C, ...) class logits), ``"binary"`` ((N,) or (N, 1) logits, 0/1
        targets) or ``"multilabel"`` ((N, L) logits, multi-hot targets): see the class's ``task``. The module's own,
        or a callback's (see :attr:`ls_log_metrics`)."""
        return self.ls_settings.task

    @ls_task.setter
    def ls_task(self, task: Task) -> None:
        self._ls_task = check_task(task)

    @property
    def ls_settings(self) -> MixinSettings:
        """The settings in effect: the module's own (its arguments), each replaced by what a callback of the current
        trainer passes through its ``label_smoothing_settings()`` method, if any. Nothing is written on the module:
        after the fit, or under another trainer, the module's own settings hold again.

        Raises:
            ValueError: if two callbacks pass different values for one setting, or a value is malformed.
        """
        own = MixinSettings(
            self._ls_task,
            self._ls_log_metrics,
            self._ls_log_prefix,
            self._ls_objective,
            self._ls_focal_gamma,
            self._ls_margin,
        )
        trainer = self._ls_trainer()
        return own if trainer is None else _settings_from_callbacks(own, _callbacks(trainer))

    @property
    def label_smoothing_prior(self) -> Tensor | None:
        """The prior u: ``None`` (uniform), a (C,) distribution or a (C, C) matrix; a buffer, so it follows
        the module's device and is saved in checkpoints."""
        return cast("Tensor | None", getattr(self, "_ls_prior", None))

    @label_smoothing_prior.setter
    def label_smoothing_prior(self, prior: Tensor | None) -> None:
        if prior is not None and not isinstance(prior, Tensor):
            raise TypeError(f"Expected argument `prior` to be a Tensor of shape (C,) or (C, C), but got {prior!r}")
        cast(nn.Module, self).register_buffer("_ls_prior", prior)

    @property
    def ls_class_weight(self) -> Tensor | None:
        """Class weights w (C,) of the multi-class losses, as ``F.cross_entropy``'s ``weight``; ``None``: unweighted.
        A buffer (it follows the module's device and, when set, is saved in its checkpoints)."""
        return cast("Tensor | None", getattr(self, "_ls_class_weight", None))

    @ls_class_weight.setter
    def ls_class_weight(self, weight: Tensor | None) -> None:
        if weight is not None and (
            not isinstance(weight, Tensor) or weight.dim() != 1 or not weight.is_floating_point()
        ):
            raise TypeError(
                f"Expected argument `class_weight` to be None or a floating point (C,) tensor, but got {weight!r}"
            )
        cast(nn.Module, self).register_buffer("_ls_class_weight", weight)

    @property
    def ls_objective(self) -> Objective:
        """The loss: ``"label_smoothing"`` or one of its relatives (``"confidence_penalty"``, ``"focal"``,
        ``"flsd53"``, ``"mbls"``; :mod:`ls_lightning.losses.objectives`): the module's own (its ``objective``), or
        what a callback passes (see :attr:`ls_settings`)."""
        return self.ls_settings.objective

    @property
    def ls_scheduled_name(self) -> str | None:
        """What :attr:`label_smoothing` weighs under the current objective, as its logged key's name: ``"epsilon"``
        (label smoothing's ε), ``"beta"`` (the confidence penalty's β), ``"margin_weight"`` (MbLS's λ), or ``None``
        (the focal losses schedule nothing)."""
        return SCHEDULED_NAMES[self.ls_objective]

    @property
    def ls_loss_normalization(self) -> LossNormalization:
        """``"batch"``: each training step's loss is its batch's mean, as ``F.cross_entropy``'s. ``"step"``: the mean
        over all counted positions of all micro-batches of the optimizer step on all processes (see
        :mod:`ls_lightning.integration.normalization`)."""
        return self._ls_loss_normalization

    @ls_loss_normalization.setter
    def ls_loss_normalization(self, value: LossNormalization) -> None:
        self._ls_loss_normalization = check_loss_normalization(value)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Lightning's hook; with ``loss_normalization="step"`` first rescales the step's gradients to its mean."""
        self._ls_normalize_step()
        super().on_before_optimizer_step(optimizer)  # type: ignore[misc]

    def label_smoothed_loss(
        self,
        logits: Tensor,
        target: Tensor,
        *,
        stage: Stage | None = None,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> Tensor:
        """Return the label-smoothed cross-entropy of ``logits`` and log its terms and calibration.

        Args:
            logits: (N, C) or (N, C, d1, ...) logits (log-probabilities work as well: the loss is invariant to
                a per-position shift of the logits, unless ``z_loss`` or ``softcap`` is set). With ``task="binary"``:
                (N,) or (N, 1); ``"multilabel"``: (N, L) (or (N, L, d1, ...)), one logit per label.
            target: (N,) or (N, d1, ...) class indices, or class probabilities of the logits' shape. Binary and
                multi-label: 0/1 labels or soft targets in [0, 1] of the logits' shape ((N,) also for (N, 1)).
            stage: ``"train"``, ``"val"`` or ``"test"``; taken from the trainer when ``None``. Nothing is logged
                outside a trainer or during the sanity check.
            z_loss: γ ≥ 0: adds ``γ·logsumexp(c)²`` to the loss (mean over the counted positions), logged as
                ``{stage}/z_loss`` when > 0.
            softcap: s > 0 or None: the loss, accuracy and calibration are those of ``c = s·tanh(logits / s)``.
                Both are multi-class terms (of the softmax's normaliser): binary and multi-label tasks refuse them.

        Returns:
            The scalar loss (``reduction="mean"``; with ``loss_normalization="step"`` in training, the batch's share
            of the optimizer step's mean), with gradient.

        Raises:
            ValueError: if ``z_loss`` or ``softcap`` is set for a binary or multi-label task, class weights or a prior
                are set for one, or ``loss_normalization="step"`` meets a z-loss with class weights or manual
                optimization.
        """
        stage = self._ls_resolve_stage(stage)
        settings = self.ls_settings  # once per call: the callbacks' settings are read from the trainer
        task = settings.task
        if task != "multiclass":
            if z_loss or softcap is not None:
                raise ValueError(
                    f"Expected `z_loss=0.0` and `softcap=None` with task={task!r} (both act on a softmax over"
                    f" classes), but got z_loss={z_loss!r}, softcap={softcap!r}"
                )
            return self._ls_binary_loss(logits, target, stage, settings)
        reduction = self._ls_reduction(stage, z_loss)
        self._ls_check_soft_targets(target, 1 if target.dim() > 1 else 0, stage)
        loss, stats = objective_with_stats(
            settings.objective,
            logits,
            target,
            self._ls_epsilon(),
            focal_gamma=settings.focal_gamma,
            margin=settings.margin,
            weight=self.ls_class_weight,
            ignore_index=self.ls_ignore_index,
            reduction=reduction,
            prior=self.label_smoothing_prior,
            brier=stage not in (None, "train"),  # the Brier score (and the entropy) are val/test measures
            z_loss=z_loss,
            softcap=softcap,
        )
        classes = logits.shape[1] if logits.dim() > 1 else logits.shape[0]
        parts = lambda mask: iter(((logits.detach(), target, mask),))  # noqa: E731
        return self._ls_finish_loss(stage, settings, loss, stats, parts, classes, _optional_keys(stage, z_loss))

    def _ls_binary_loss(self, logits: Tensor, target: Tensor, stage: Stage | None, settings: MixinSettings) -> Tensor:
        """``label_smoothed_loss`` of the binary and multi-label tasks: the label-smoothed BCE, one sample per logit."""
        task = settings.task
        if self.label_smoothing_prior is not None:
            raise ValueError(
                f"Expected no label-smoothing prior for task={task!r} (the smoothing target of a binary label"
                " is 1/2), but the module has one; set `label_smoothing_prior = None` or use task='multiclass'"
            )
        if self.ls_class_weight is not None:
            raise ValueError(
                f"Expected no class weights for task={task!r} (they weigh the classes of a softmax), but the module has"
                " some; use task='multiclass', or weigh the positive labels with the binary loss's `pos_weight`"
            )
        logits, target = _binary_inputs(task, logits, target)
        reduction = self._ls_reduction(stage, 0.0)
        self._ls_check_soft_targets(target, None, stage)
        loss, stats = binary_objective_with_stats(
            settings.objective,
            logits,
            target,
            self._ls_epsilon(),
            focal_gamma=settings.focal_gamma,
            reduction=reduction,
            brier=stage not in (None, "train"),
        )
        parts = lambda mask: iter(((logits.detach(), target, mask),))  # noqa: E731
        return self._ls_finish_loss(stage, settings, loss, stats, parts, None, frozenset())

    def label_smoothed_linear_loss(
        self,
        hidden: Tensor,
        linear_weight: Tensor,
        target: Tensor,
        *,
        linear_bias: Tensor | None = None,
        stage: Stage | None = None,
        z_loss: float = 0.0,
        softcap: float | None = None,
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
                Under FSDP2 (``fully_shard``), the gathered weight: call the loss within the sharded module's
                forward or a step registered as one (``register_fsdp_forward_method``).
            target: (...) class indices (the mixin's ``ignore_index`` marks padding).
            linear_bias: (V,) bias of the output layer, or ``None``.
            stage: as in :meth:`label_smoothed_loss`.
            z_loss: as in :meth:`label_smoothed_loss`.
            softcap: as in :meth:`label_smoothed_loss`; applied to each chunk of logits as it is made.

        Returns:
            The scalar loss (``reduction="mean"``), with gradient.

        Raises:
            TypeError: if ``linear_weight`` is a ``DTensor`` still sharded by FSDP2.
        """
        stage = self._ls_resolve_stage(stage)
        _check_gathered(linear_weight)
        settings = self.ls_settings
        if settings.objective != "label_smoothing":
            raise ValueError(
                "Expected objective 'label_smoothing' with `label_smoothed_linear_loss` (the fused linear loss is"
                f" label smoothing's), but the module's is {settings.objective!r}: compute the logits and call"
                " `label_smoothed_loss`"
            )
        reduction = self._ls_reduction(stage, z_loss)
        loss, stats = linear_label_smoothed_cross_entropy_with_stats(
            hidden,
            linear_weight,
            target,
            self._ls_epsilon(),
            linear_bias=linear_bias,
            weight=self.ls_class_weight,
            ignore_index=self.ls_ignore_index,
            reduction=reduction,
            prior=self.label_smoothing_prior,
            brier=stage not in (None, "train"),
            z_loss=z_loss,
            softcap=softcap,
        )
        logits = lambda mask: _logit_chunks(hidden, linear_weight, linear_bias, target, mask)  # noqa: E731
        optional = _optional_keys(stage, z_loss)
        return self._ls_finish_loss(stage, settings, loss, stats, logits, linear_weight.shape[0], optional)

    def _ls_check_soft_targets(self, target: Tensor, class_dim: int | None, stage: Stage | None) -> None:
        """Warn, once per fit, when ε > 0 meets soft targets that already give every class a share (smoothed twice).

        Read on the first training batch of a fit with probability targets (one reduction and one host read then).
        ``class_dim``: the class dimension of multi-class targets; ``None``: binary targets, smoothed towards ½.
        """
        state, trainer = self._ls_state, self._ls_trainer()
        if stage != "train" or not target.is_floating_point() or trainer is None or state.soft_checked == id(trainer):
            return
        state.soft_checked = id(trainer)
        epsilon = self._label_smoothing
        if class_dim is None:  # binary: a target strictly inside (0, 1) everywhere
            share = torch.minimum(target, 1 - target).amin()
            estimate, num_classes = 2 * float(share), 2
        else:
            num_classes = target.shape[class_dim]
            share = target.amin()
            estimate = num_classes * float(share)
        if epsilon > 0 and estimate > 0:
            rank_zero_warn(
                f"`label_smoothing={epsilon:g}` smooths soft targets that already give every class a share (at least"
                f" {estimate / num_classes:.3g} of each of {num_classes}: smoothed by about {estimate:.3g}, as timm's"
                f" `Mixup(label_smoothing={estimate:.2g})` does by default), so they are smoothed twice. Smooth once:"
                " give the mixup `label_smoothing=0`, or set the module's (or the LabelSmoothing callback's) ε to 0."
            )

    def _ls_reduction(self, stage: Stage | None, z_loss: float) -> Reduction:
        """``"sum"`` for a training loss normalised over the optimizer step, else ``"mean"``."""
        if stage != "train" or self._ls_loss_normalization != "step":
            return "mean"
        check_step_normalization(
            cast(nn.Module, self), self._ls_trainer(), bool(z_loss) and self.ls_class_weight is not None
        )
        return "sum"

    def _ls_finish_loss(
        self,
        stage: Stage | None,
        settings: MixinSettings,
        loss: Any,
        stats: LossStats | BinaryLossStats,
        logits: Callable[[Tensor], Iterator[tuple[Tensor, Tensor, Tensor]]],
        num_classes: int | None,
        optional: frozenset[str],
    ) -> Tensor:
        """Record the batch (its terms as means) and return the loss to differentiate: the batch mean, or under
        ``loss_normalization="step"`` the summed loss's share of the step's mean. ``num_classes``: C of a
        multi-class loss, ``None`` for binary and multi-label tasks."""
        summed = stage == "train" and self._ls_loss_normalization == "step"
        if stage is not None:
            means = type(loss)(*(t.detach() / stats.weight_sum.clamp(min=1) for t in loss)) if summed else loss
            self._ls_record(stage, settings, means, stats, logits, num_classes, optional)
        if not summed:
            return loss.loss
        return self._ls_step_normalizer.share(loss.loss, stats.weight_sum)

    @property
    def _ls_step_normalizer(self) -> StepNormalizer:
        state = self._ls_state
        if state.normalizer is None:
            state.normalizer = StepNormalizer()
        return state.normalizer

    def _ls_normalize_step(self) -> None:
        state, trainer = self._ls_state, self._ls_trainer()
        if state.normalizer is not None and trainer is not None:
            state.normalizer.finish(cast(nn.Module, self), trainer)

    def calibration_bins(self, stage: Stage, *, sync: bool = True) -> BinStats | None:
        """Per-bin sums (count, confidence, correct) of ``stage``'s ECE state for the current epoch.

        Args:
            stage: ``"train"``, ``"val"`` or ``"test"``.
            sync: sum the states over processes; a collective call, so every rank must make it.

        Returns:
            The :class:`~ls_lightning.metrics.BinStats`, or ``None`` before the stage's first logged batch.
        """
        metrics = getattr(self, f"ls_{stage}_metrics", None)
        if metrics is None:
            return None
        return cast(BinnedCalibrationError, metrics["ece"]).bin_stats(sync=sync)

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``self.log``; a key that the module logs itself is then no longer logged by the mixin."""
        state = self._ls_state
        if not state.logging_own and name not in state.user_keys:
            self._ls_claim(name)
        super().log(name, value, *args, **kwargs)  # type: ignore[misc]

    def ls_log(self, name: str, value: Any, **kwargs: Any) -> None:
        """``self.log`` for the plugin's own keys (the mixin's and its callbacks'): never taken for the module's."""
        state = self._ls_state
        state.logging_own = True
        try:
            self.log(name, value, **kwargs)
        finally:
            state.logging_own = False

    @torch.compiler.disable
    def ls_log_batch(self) -> None:
        """Log the keys of the batch the loss last saw; called as the module's step returns.

        By then the module's own ``self.log`` calls for the batch are known, so a key the module logs itself is left
        to it. Step values (the training loss terms) are logged on every step, epoch values once per epoch: they are
        metrics that Lightning computes, syncs and resets at the epoch's end.
        """
        state = self._ls_state
        pending, state.pending = state.pending, None
        trainer = self._ls_trainer()
        if pending is None or trainer is None or trainer.barebones:
            return
        stage, fresh, names = pending
        settings = state.settings or self.ls_settings
        for name in names:
            if _key(stage, settings.log_prefix, name) in state.user_keys:  # the module's step logged it itself
                continue
            on_step = stage == "train" and name in _STEP_KEYS
            if on_step or name in fresh:
                prog_bar = name == "loss" if on_step else (name == "acc" and stage == "val")
                self.ls_log(
                    _key(stage, settings.log_prefix, name),
                    getattr(self, f"ls_{stage}_metrics")[name],
                    on_step=on_step,
                    on_epoch=True,
                    prog_bar=prog_bar,
                    metric_attribute=f"ls_{stage}_metrics.{name}",
                )

    @property
    def _ls_state(self) -> _LoggingState:
        state = self._ls_logging_state
        if state is None:  # made on first use: a module whose __init__ never reached the mixin's works too
            state = self._ls_logging_state = _LoggingState()
        return state

    def _ls_trainer(self) -> Trainer | None:
        try:
            return cast("Trainer", cast(Any, self).trainer)
        except RuntimeError:  # not attached to a trainer
            return None

    def _ls_resolve_stage(self, stage: Stage | None) -> Stage | None:
        if stage is not None and stage not in _STAGES:
            raise ValueError(f"Expected argument `stage` to be one of {_STAGES}, but got {stage!r}")
        return stage if stage is not None else self._ls_stage()

    def _ls_stage(self) -> Stage | None:
        trainer = self._ls_trainer()
        if trainer is None or trainer.sanity_checking:
            return None
        stage = trainer.state.stage
        return None if stage is None else _STAGE_PREFIX.get(stage.value)

    @torch.compiler.disable  # metric states run eagerly in a compiled step (a graph break)
    def _ls_record(
        self,
        stage: Stage,
        settings: MixinSettings,
        loss: Any,
        stats: LossStats | BinaryLossStats,
        logits: Callable[[Tensor], Iterator[tuple[Tensor, Tensor, Tensor]]],
        num_classes: int | None = None,
        optional: frozenset[str] = frozenset(),
    ) -> None:
        """Add the batch to the stage's metrics (logged as the step returns), then hand it to every callback of the
        trainer that has an ``on_loss_batch`` hook, as a :class:`LossBatch` (``logits(mask)`` yields ``(logits,
        target, mask)`` parts of the batch on request, ``mask`` (M,) selecting positions)."""
        trainer = self._ls_trainer()
        if trainer is None:
            return
        self._ls_update(stage, trainer, loss, stats, settings, logits, num_classes, optional)
        if self._ls_state.step_depth == 0:  # called outside the module's steps (e.g. from a hook): log at once
            self.ls_log_batch()
        hooks = [hook for callback in _callbacks(trainer) if (hook := getattr(callback, "on_loss_batch", None))]
        if hooks:
            batch = LossBatch(stage, settings.task, loss, stats, logits)
            for hook in hooks:
                hook(trainer, self, batch)

    def _ls_update(
        self,
        stage: Stage,
        trainer: Trainer,
        loss: Any,
        stats: LossStats | BinaryLossStats,
        settings: MixinSettings,
        logits: Callable[[Tensor], Iterator[tuple[Tensor, Tensor, Tensor]]],
        num_classes: int | None,
        optional: frozenset[str],
    ) -> None:
        if stage != "train":
            self._ls_warn_if_padded(stage, trainer)
        metrics = self._ls_metrics_for(stage, loss.loss.device, num_classes)
        self._ls_start_epoch(stage, trainer, metrics)
        names = [name for name in self._ls_logged_names(stage, settings) if _available(name, loss, optional, metrics)]
        # A metric without updates is new to this epoch (Lightning resets the logged ones at the epoch's end): it is
        # handed to `self.log` once, and Lightning computes it at the epoch's end.
        fresh = frozenset(name for name in names if cast(Metric, metrics[name]).update_count == 0)
        _update_metrics(metrics, names, loss, stats, logits, step=stage == "train")
        state = self._ls_state
        if state.pending is not None and state.pending[0] == stage:  # a second loss in the same step (two heads)
            fresh |= state.pending[1]
            names = [*state.pending[2], *(name for name in names if name not in state.pending[2])]
        state.pending, state.settings = (stage, fresh, tuple(names)), settings

    def _ls_logged_names(self, stage: Stage, settings: MixinSettings) -> list[str]:
        """Names of the keys the mixin logs for ``stage``: its groups, less those the module logs itself."""
        user_keys = self._ls_state.user_keys
        return [
            name
            for group in settings.log_metrics
            for name in METRIC_GROUPS[group]
            if (
                stage != "train"
                or name in _TRAIN_KEYS
                or (name == "entropy" and settings.objective == "confidence_penalty")
            )
            and _key(stage, settings.log_prefix, name) not in user_keys
        ]

    def _ls_warn_if_padded(self, stage: Stage, trainer: Trainer) -> None:
        checked = self._ls_state.padding_checked
        if stage in checked:
            return
        checked.add(stage)
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            if _pads_samples(getattr(loader, "sampler", None)):
                rank_zero_warn(
                    f"The {stage} dataloader's DistributedSampler pads the data with repeated samples, so `{stage}/...`"
                    " metrics count them twice. Give the loader"
                    " `ls_lightning.metrics.UnpaddedDistributedSampler(dataset)` (Lightning keeps a sampler that is"
                    " already a DistributedSampler), or evaluate on one device."
                )
                return

    @torch.compiler.disable
    def _ls_claim(self, name: str) -> None:
        """The module logs ``name`` itself: the mixin no longer logs it."""
        self._ls_state.user_keys.add(name)
        prefix = self.ls_log_prefix
        if any(name == _key(stage, prefix, key) for stage in _STAGES for key in _ALL_KEYS):
            rank_zero_info(
                f"`{type(self).__name__}` logs `{name}` itself: the label-smoothing mixin leaves that key to it. Set"
                " `log_prefix` (e.g. 'ls_') to log the mixin's value beside it."
            )

    def _ls_start_epoch(self, stage: Stage, trainer: Trainer, metrics: nn.ModuleDict) -> None:
        """Reset the stage's metrics when a new epoch (or evaluation run) starts.

        Lightning resets the logged metrics at each epoch's end; this also covers those nobody logs (all taken by the
        module, or ``log_metrics`` empty), whose states still feed ``calibration_bins``.
        """
        mark = (trainer.state.fn, trainer.current_epoch, trainer.global_step if stage != "train" else 0)
        epochs = self._ls_state.epochs
        if epochs.get(stage) == mark:
            return
        epochs[stage] = mark
        for metric in metrics.values():
            cast(Metric, metric).reset()

    def _ls_metrics_for(self, stage: Stage, device: torch.device, num_classes: int | None) -> nn.ModuleDict:
        # Created on first use rather than in __init__, so a module whose __init__ never reached ours still works;
        # the states are not persistent, so checkpoints do not change.
        name = f"ls_{stage}_metrics"
        metrics = getattr(self, name, None)
        if metrics is None:
            metrics = _new_metrics(stage, self.ls_n_bins, num_classes, self.ls_ignore_index).to(device)
            cast(nn.Module, self).add_module(name, metrics)
        return cast(nn.ModuleDict, metrics)


def _pads_samples(sampler: Any) -> bool:
    """Whether ``sampler`` repeats samples to give every process the same length (torch's DistributedSampler does)."""
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return False
    if isinstance(sampler, (UnpaddedDistributedSampler, UnrepeatedDistributedSampler)):
        return False
    return sampler.total_size > len(sampler.dataset)  # type: ignore[arg-type]


def _adopt_saved_prior(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """A prior set during training (class frequencies, online label smoothing) is a checkpointed buffer that a freshly
    built module does not have yet: adopt it, so that ``load_state_dict`` and resume restore it."""
    key = f"{prefix}_ls_prior"
    if key in state_dict and isinstance(module, LabelSmoothingMixin) and module.label_smoothing_prior is None:
        module.label_smoothing_prior = torch.empty_like(state_dict[key])
