"""The ``LabelSmoothing`` callback: schedules ε over training and sets it on the module before each training batch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast, get_args

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from ls_lightning.integration.callbacks.label_smoothing_prior import LabelSmoothingPrior, PriorName, check_num_classes
from ls_lightning.integration.mixin import (
    LabelSmoothingMixin,
    LossBatch,
    MetricGroup,
    Task,
    check_log_metrics,
    check_log_prefix,
    check_task,
)
from ls_lightning.losses import BinaryLabelSmoothedCrossEntropy, LabelSmoothedCrossEntropy, Objective, check_objective
from ls_lightning.losses.checks import check_non_negative
from ls_lightning.smoothing import Constant, Schedule

__all__ = ["LabelSmoothing"]

_INTERVAL = Literal["step", "epoch"]


def _smoothing_targets(pl_module: pl.LightningModule) -> list[Any]:
    """Return the objects whose float attribute ``label_smoothing`` the callback sets.

    These are the module itself when it is a ``LabelSmoothingMixin``, and every submodule that is a
    ``torch.nn.CrossEntropyLoss``, an ``ls_lightning.LabelSmoothedCrossEntropy`` or an
    ``ls_lightning.BinaryLabelSmoothedCrossEntropy``.
    """
    loss_types = (nn.CrossEntropyLoss, LabelSmoothedCrossEntropy, BinaryLabelSmoothedCrossEntropy)
    targets: list[Any] = [m for m in pl_module.modules() if isinstance(m, loss_types)]
    if isinstance(pl_module, LabelSmoothingMixin):
        targets.insert(0, pl_module)
    return targets


class LabelSmoothing(Callback):
    r"""Schedule the label-smoothing factor ε over training and set it before each training batch.

    .. math:: \varepsilon_k = \text{schedule}\big(\min(1,\ k / K)\big)

    with k the trainer's ``global_step`` and K the total number of optimizer steps (``interval="step"``), or k the
    ``current_epoch`` and K ``max_epochs`` (``interval="epoch"``). After the planned end, t stays at 1.

    ε is written to the ``label_smoothing`` attribute of the LightningModule when it is a ``LabelSmoothingMixin``, and
    of every ``torch.nn.CrossEntropyLoss``, ``LabelSmoothedCrossEntropy`` and ``BinaryLabelSmoothedCrossEntropy``
    submodule, so a plain LightningModule that holds an ``nn.CrossEntropyLoss`` (or, for a binary or multi-label
    head, a ``BinaryLabelSmoothedCrossEntropy``) is scheduled too. It is logged as ``train/epsilon`` on every step (as a
    per-step ``self.log``: in ``trainer.callback_metrics`` after each step, to the loggers every ``log_every_n_steps``).

    ε depends only on the trainer's counters, which are equal on all processes and restored on resume, so every DDP
    rank uses the same ε and a resumed run follows the curve of an uninterrupted one.

    Args:
        schedule: a float for a constant ε, or a :class:`~ls_lightning.smoothing.Schedule`. Arbitrary callables are
            refused: a schedule must pickle (``ddp_spawn``) and have a stable ``repr`` (checkpoint state); subclass
            ``Schedule`` to wrap your own function.
        interval: ``"step"`` measures progress in optimizer steps, ``"epoch"`` in whole epochs.
        total_steps: the number of optimizer steps that maps to t = 1 (``interval="step"`` only). Defaults to the
            trainer's ``estimated_stepping_batches``.
        prior: the smoothing distribution u, a convenience for one more callback: ``LabelSmoothing(schedule,
            prior=p, num_classes=c)`` holds a :class:`~ls_lightning.integration.LabelSmoothingPrior` ``(p, c)`` (its
            ``prior_callback``) and runs its hooks after its own, its state inside this callback's. ``None`` leaves
            the module's own prior (uniform unless given to the mixin); see that class for ``"uniform"``,
            ``"class_frequency"``, ``"online"`` and fixed distributions.
        num_classes: C, for the prior (see :class:`~ls_lightning.integration.LabelSmoothingPrior`).
        log_metrics: the groups of keys a ``LabelSmoothingMixin`` module logs (its ``log_metrics``) during the fits
            this callback takes part in, passed to the mixin through :meth:`label_smoothing_settings`; ``None``
            leaves the module's own choice. Nothing is written on the module.
        log_prefix: put between ``{stage}/`` and every key the plugin logs (``train/{log_prefix}epsilon``, and the
            mixin's keys: its ``log_prefix``), passed likewise; ``None`` leaves the module's (``""`` without the
            mixin).
        task: ``"multiclass"``, ``"binary"`` or ``"multilabel"``, the task of a ``LabelSmoothingMixin`` module (its
            ``task``), passed likewise; ``None`` leaves the module's. ε is scheduled alike for every task; binary and
            multi-label tasks take no ``prior`` other than uniform.
        objective: the loss of a ``LabelSmoothingMixin`` module, passed likewise: ``"label_smoothing"``, or a
            relative whose weight the schedule then sets (``"confidence_penalty"``: β; ``"mbls"``: λ) or that has
            none (``"focal"``, ``"flsd53"``); the scheduled value is logged as ``train/epsilon``, ``train/beta`` or
            ``train/margin_weight``. ``None`` leaves the module's. Needs the mixin unless ``"label_smoothing"``.
        focal_gamma: γ of ``objective="focal"``, passed likewise; ``None`` leaves the module's (3).
        margin: m of ``objective="mbls"``, passed likewise; ``None`` leaves the module's (10).

    Raises:
        TypeError: if ``schedule`` is neither a float nor a ``Schedule``, or ``total_steps`` is not an int.
        ValueError: if a float ``schedule`` lies outside [0, 1], ``interval`` is unknown, ``total_steps`` is not
            positive or is given with ``interval="epoch"``, ``prior`` is an unknown name or not a distribution, or
            ``num_classes`` is not a positive int, or ``task`` is unknown.

    ``Trainer.fit`` raises ``ValueError`` (in ``setup`` or ``on_fit_start``) when the module holds nothing to set ε
    on, or when the schedule is not :class:`~ls_lightning.smoothing.Constant` and the length of training is unknown
    (no ``max_steps``/``max_epochs``, or a train dataloader without length), or for what
    :class:`~ls_lightning.integration.LabelSmoothingPrior` refuses; the message says what to set.
    Resuming from a checkpoint without this callback's state warns; ε still follows the restored counters.

    Example:
        >>> from ls_lightning.smoothing import Cosine
        >>> LabelSmoothing(Cosine(start=0.2, end=0.0), interval="epoch")
        LabelSmoothing(schedule=Cosine(start=0.2, end=0.0), interval='epoch', total_steps=None)
    """

    def __init__(
        self,
        schedule: float | Schedule = 0.1,
        interval: Literal["step", "epoch"] = "step",
        total_steps: int | None = None,
        prior: PriorName | Sequence[float] | Tensor | None = None,
        num_classes: int | None = None,
        log_metrics: Sequence[MetricGroup] | None = None,
        log_prefix: str | None = None,
        task: Task | None = None,
        objective: Objective | None = None,
        focal_gamma: float | None = None,
        margin: float | None = None,
    ) -> None:
        self.schedule = self._check_schedule(schedule)
        if interval not in get_args(_INTERVAL):
            raise ValueError(f"Expected argument `interval` to be one of {get_args(_INTERVAL)}, but got {interval!r}")
        self.interval = interval
        self.total_steps = self._check_total_steps(total_steps, interval)
        self.epsilon: float | None = None  # the ε last set, for logs, checkpoints and resumed validation
        self._targets: list[Any] = []
        self._total: float = math.inf
        self._restored_epsilon: float | None = None
        # the prior is a job of its own: a callback held here, whose hooks run after this one's
        self.prior_callback = None if prior is None else LabelSmoothingPrior(prior, num_classes)
        if prior is None:
            check_num_classes(num_classes)  # a malformed value is refused even when unused
        self._state_key_cache: tuple[Schedule, str, str] | None = None
        self.log_metrics = None if log_metrics is None else check_log_metrics(log_metrics)
        self.log_prefix = None if log_prefix is None else check_log_prefix(log_prefix)
        self.task = None if task is None else check_task(task)
        self.objective = None if objective is None else check_objective(objective)
        for name, value in (("focal_gamma", focal_gamma), ("margin", margin)):
            if value is not None:
                check_non_negative(name, value)
        self.focal_gamma, self.margin = focal_gamma, margin

    def __repr__(self) -> str:
        prior = self.prior_callback
        extra = "" if prior is None else f", prior={prior.describe()!r}"
        extra += "" if prior is None or prior.num_classes is None else f", num_classes={prior.num_classes!r}"
        extra += "" if self.log_metrics is None else f", log_metrics={self.log_metrics!r}"
        extra += "" if self.log_prefix is None else f", log_prefix={self.log_prefix!r}"
        extra += "" if self.task is None else f", task={self.task!r}"
        for name in ("objective", "focal_gamma", "margin"):
            extra += "" if getattr(self, name) is None else f", {name}={getattr(self, name)!r}"
        return (
            f"{type(self).__name__}(schedule={self.schedule!r}, interval={self.interval!r},"
            f" total_steps={self.total_steps!r}{extra})"
        )

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads it on every hook call (to name the profiler's span): built once per schedule and interval,
        # in the form of Lightning's `Callback._generate_state_key` (class name and the keyword arguments' repr), so
        # that checkpoints written before keep their key
        cached = self._state_key_cache
        if cached is None or cached[0] is not self.schedule or cached[1] != self.interval:
            key = f"{type(self).__qualname__}{dict(schedule=repr(self.schedule), interval=self.interval)!r}"
            cached = self._state_key_cache = (self.schedule, self.interval, key)
        return cached[2]

    def label_smoothing_settings(self) -> dict[str, Any]:
        """The mixin settings this callback passes for its fits (``log_metrics``, ``log_prefix``, ``task``,
        ``objective``, ``focal_gamma``, ``margin``: those given); :class:`~ls_lightning.integration.LabelSmoothingMixin`
        reads them from the trainer's callbacks."""
        names = ("log_metrics", "log_prefix", "task", "objective", "focal_gamma", "margin")
        given = {name: getattr(self, name) for name in names}
        return {name: value for name, value in given.items() if value is not None}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == TrainerFn.FITTING:  # validate/test/predict do not schedule ε
            self._check_run_is_finite(trainer)
        if self.prior_callback is not None:
            self.prior_callback.setup(trainer, pl_module, stage)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # collected here, not in `setup`: `LightningModule.setup` and `configure_model` run after `Callback.setup`
        # and may still create the loss modules
        self._targets = self._collect_targets(pl_module)
        self._total = self._resolve_total(trainer)
        # on resume the trainer counters are restored only after this hook: use the checkpoint's ε meanwhile, so that
        # the sanity-check validation sees the ε the run stopped with
        restored, self._restored_epsilon = self._restored_epsilon, None
        self._set_epsilon(restored if restored is not None else self._epsilon_at(trainer))
        if self.prior_callback is not None:
            self.prior_callback.on_fit_start(trainer, pl_module)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        epsilon = self._epsilon_at(trainer)
        self._set_epsilon(epsilon)
        self._log(trainer, pl_module, epsilon)

    def on_loss_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: LossBatch) -> None:
        """The mixin's hook, handed on to the prior callback (online label smoothing reads the training logits)."""
        if self.prior_callback is not None:
            self.prior_callback.on_loss_batch(trainer, pl_module, batch)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.prior_callback is not None:
            self.prior_callback.on_train_epoch_end(trainer, pl_module)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._targets = []  # do not keep the model alive through the callback
        self._restored_epsilon = None  # unused when the strategy restores after `on_fit_start`: not for the next fit
        if self.prior_callback is not None:
            self.prior_callback.teardown(trainer, pl_module, stage)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The settings and ε; with a prior also the prior callback's state (its description, and with ``"online"``
        the epoch's sums so far, a collective under multi-process training: Lightning calls it on every rank)."""
        state: dict[str, Any] = {
            "epsilon": self.epsilon,
            "schedule": repr(self.schedule),
            "interval": self.interval,
            "total_steps": self.total_steps,
        }
        if self.prior_callback is not None:  # without a prior the state is what it was before priors existed
            state.update(self.prior_callback.state_dict())
        # the loss, where this callback chooses it (without, the state is what it was before the relatives existed)
        state.update({name: value for name, value in self._loss_settings().items() if value is not None})
        return state

    def _loss_settings(self) -> dict[str, Any]:
        """The objective and, where it reads one, its parameter (γ of ``focal``, m of ``mbls``)."""
        settings: dict[str, Any] = {"objective": self.objective}
        if self.objective == "focal":
            settings["focal_gamma"] = self.focal_gamma
        if self.objective == "mbls":
            settings["margin"] = self.margin
        return settings

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epsilon = self._restored_epsilon = state_dict.get("epsilon")
        if self.prior_callback is not None:
            self.prior_callback.load_state_dict(state_dict)
        current = {
            "schedule": repr(self.schedule),
            "interval": self.interval,
            "total_steps": self.total_steps,
            "prior": None if self.prior_callback is None else self.prior_callback.describe(),
            "objective": self.objective,
            "focal_gamma": self.focal_gamma,
            "margin": self.margin,
        }
        changed = {
            key: (state_dict[key], value)
            for key, value in current.items()
            if key in state_dict and state_dict[key] != value
        }
        if changed:
            rank_zero_warn(
                f"`LabelSmoothing` has settings that differ from the checkpoint's ({changed}, as (checkpoint, now));"
                " the loss and ε follow the new settings (ε from the restored global step)."
            )

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._warn_if_state_missing(checkpoint)

    def __getstate__(self) -> dict[str, Any]:
        # the collected modules belong to the current fit; pickling them would copy the model (ddp_spawn, deepcopy)
        return {**vars(self), "_targets": []}

    @staticmethod
    def _check_schedule(schedule: Any) -> Schedule:
        if isinstance(schedule, Schedule):
            return schedule
        if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
            try:
                return Constant(schedule)
            except ValueError:
                raise ValueError(
                    f"Expected argument `schedule` to be a float in [0, 1], but got {schedule!r}"
                ) from None
        raise TypeError(
            "Expected argument `schedule` to be a float or an `ls_lightning.smoothing.Schedule` (subclass it to wrap"
            f" your own function), but got {schedule!r}"
        )

    @staticmethod
    def _check_total_steps(total_steps: Any, interval: str) -> int | None:
        if total_steps is None:
            return None
        if isinstance(total_steps, bool) or not isinstance(total_steps, int):
            raise TypeError(f"Expected argument `total_steps` to be a positive int or None, but got {total_steps!r}")
        if total_steps <= 0:
            raise ValueError(f"Expected argument `total_steps` to be a positive int or None, but got {total_steps!r}")
        if interval != "step":
            raise ValueError(
                f"Expected argument `total_steps` to be None with interval={interval!r} (it counts optimizer steps),"
                f" but got {total_steps!r}"
            )
        return total_steps

    def _check_run_is_finite(self, trainer: pl.Trainer) -> None:
        """Refuse a run whose length is unknown when ε must change along it."""
        if isinstance(self.schedule, Constant):
            return
        endless_epochs = trainer.max_epochs is None or trainer.max_epochs < 0
        if self.interval == "epoch" and endless_epochs:
            raise ValueError(
                f"`LabelSmoothing(interval='epoch')` with the non-constant schedule {self.schedule!r} needs the number"
                f" of epochs, but the trainer has max_epochs={trainer.max_epochs}. Set `Trainer(max_epochs=...)`, or"
                " use `interval='step'` with `max_steps` or the callback's `total_steps`."
            )
        if self.interval == "step" and self.total_steps is None and endless_epochs and trainer.max_steps < 0:
            raise ValueError(
                f"`LabelSmoothing` with the non-constant schedule {self.schedule!r} needs the length of training, but"
                " the trainer runs without end (max_steps=-1, max_epochs=-1). Set `Trainer(max_steps=...)` or"
                " `Trainer(max_epochs=...)`, or give the callback `LabelSmoothing(..., total_steps=...)`."
            )

    def _collect_targets(self, pl_module: pl.LightningModule) -> list[Any]:
        if self.objective not in (None, "label_smoothing") and not isinstance(pl_module, LabelSmoothingMixin):
            raise ValueError(
                f"`LabelSmoothing(objective={self.objective!r})` needs a module derived from"
                " `ls_lightning.LabelSmoothingMixin` (its loss switches to the relative), but"
                f" {type(pl_module).__name__} is not one: derive it from the mixin, or leave `objective` unset"
            )
        targets = _smoothing_targets(pl_module)
        if not targets:
            raise ValueError(
                f"`LabelSmoothing` found nothing to set ε on in {type(pl_module).__name__}. Either derive it from"
                " `ls_lightning.LabelSmoothingMixin` (and compute the loss with `self.label_smoothed_loss`), or hold"
                " the loss as a module attribute, e.g. `self.criterion = torch.nn.CrossEntropyLoss()` or"
                " `ls_lightning.LabelSmoothedCrossEntropy()`, and call it in `training_step`."
            )
        return targets

    def _resolve_total(self, trainer: pl.Trainer) -> float:
        """Return the count that maps to t = 1 (optimizer steps or epochs); ``inf`` for an endless constant run."""
        if self.interval == "epoch":
            max_epochs = trainer.max_epochs
            return math.inf if max_epochs is None or max_epochs < 0 else max(float(max_epochs), 1.0)
        if self.total_steps is not None:
            return float(self.total_steps)
        if isinstance(self.schedule, Constant):  # ε does not depend on t: no need to load the data to count steps
            return math.inf
        total = float(trainer.estimated_stepping_batches)
        if total < 0:  # Lightning returns max_steps (-1) for a train dataloader without `len`
            total = math.inf
        if math.isinf(total) and not isinstance(self.schedule, Constant):
            raise ValueError(
                f"`LabelSmoothing` with the non-constant schedule {self.schedule!r} could not estimate the number of"
                " training steps (the train dataloader may have no length and max_steps is not set)."
                " Set `Trainer(max_steps=...)` or `LabelSmoothing(..., total_steps=...)`."
            )
        return max(total, 1.0)  # a run of 0 steps never evaluates t, but must not divide by 0

    def _epsilon_at(self, trainer: pl.Trainer) -> float:
        count = trainer.global_step if self.interval == "step" else trainer.current_epoch
        t = min(count / self._total, 1.0)  # past the planned end (e.g. extended resume) ε stays at schedule(1)
        epsilon = self.schedule(t)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(
                f"Expected the schedule {self.schedule!r} to return ε in [0, 1], but got {epsilon!r} at t={t}"
            )
        return float(epsilon)

    def _set_epsilon(self, epsilon: float) -> None:
        for target in self._targets:
            target.label_smoothing = epsilon
        self.epsilon = epsilon

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epsilon: float) -> None:
        if trainer.barebones:  # Lightning warns on every `log`
            return
        log: Callable[..., None] = pl_module.log
        prefix, name = self.log_prefix or "", cast("str | None", "epsilon")
        if isinstance(pl_module, LabelSmoothingMixin):  # ε, β or λ by the objective; the focal losses have none
            prefix, log, name = pl_module.ls_log_prefix, pl_module.ls_log, pl_module.ls_scheduled_name
        if name is not None:  # the same value on every rank, so no sync; batch_size given as a float has none
            log(f"train/{prefix}{name}", epsilon, on_step=True, on_epoch=False, batch_size=1)

    def _warn_if_state_missing(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        similar = [key for key in states if str(key).startswith(type(self).__qualname__)]
        hint = f" It holds {similar}: the schedule or interval differ from this run's." if similar else ""
        rank_zero_warn(
            f"The checkpoint has no state for `{self.state_key}`.{hint} ε is recomputed from the restored trainer"
            " counters (global_step, current_epoch), so the curve continues where the step count says; check that"
            " the schedule is the one the run started with."
        )
