"""The ``LabelSmoothing`` callback: schedules ε over training and sets it on the module before each training batch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast, get_args

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn
from typing_extensions import override

from ls_lightning.integration.mixin import (
    LabelSmoothingMixin,
    MetricGroup,
    Task,
    check_log_metrics,
    check_log_prefix,
    check_task,
)
from ls_lightning.integration.priors import OnlinePrior, class_frequency, fixed_prior, prior_matrix
from ls_lightning.integration.schedules import Constant, Schedule
from ls_lightning.losses.module import BinaryLabelSmoothedCrossEntropy, LabelSmoothedCrossEntropy

__all__ = ["LabelSmoothing"]

_INTERVAL = Literal["step", "epoch"]
_PRIOR_NAMES = Literal["uniform", "class_frequency", "online"]


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
        schedule: a float for a constant ε, or a :class:`~ls_lightning.schedules.Schedule`. Arbitrary callables are
            refused: a schedule must pickle (``ddp_spawn``) and have a stable ``repr`` (checkpoint state); subclass
            ``Schedule`` to wrap your own function.
        interval: ``"step"`` measures progress in optimizer steps, ``"epoch"`` in whole epochs.
        total_steps: the number of optimizer steps that maps to t = 1 (``interval="step"`` only). Defaults to the
            trainer's ``estimated_stepping_batches``.
        prior: the smoothing distribution u, set on a ``LabelSmoothingMixin`` module when the fit starts.
            ``None`` leaves the module's own prior (uniform unless given to the mixin). ``"uniform"``: 1/C.
            ``"class_frequency"``: the label distribution of the training data, counted once per fit by iterating
            the train dataloader (each process its shard, summed over processes; see
            :func:`~ls_lightning.priors.class_frequency`). A sequence of floats or a tensor: a fixed (C,)
            distribution (or (C, C) rows u(·|y)), validated here. ``"online"``: online label smoothing (Zhang et al.,
            2021): epoch 0 is uniform; at the end of epoch t the softmax of the correctly classified training
            samples, averaged per true class (:class:`~ls_lightning.priors.OnlinePrior`, summed over processes),
            becomes row y of the (C, C) prior of epoch t + 1. The matrix is a buffer of the module (in its
            checkpoints); the sums of an unfinished epoch are in this callback's state, so a resumed run continues.
        num_classes: C, needed by ``"class_frequency"`` and ``"online"`` when neither the module (``num_classes``
            hyper-parameter or attribute) nor the datamodule (``num_classes`` attribute) tells it.
        log_metrics: the groups of keys a ``LabelSmoothingMixin`` module logs (its ``log_metrics``), set on it when
            the fit starts; ``None`` leaves the module's own choice.
        log_prefix: put between ``{stage}/`` and every key the plugin logs (``train/{log_prefix}epsilon``, and the
            mixin's keys: its ``log_prefix``); ``None`` leaves the module's (``""`` without the mixin).
        task: ``"multiclass"``, ``"binary"`` or ``"multilabel"``, set on a ``LabelSmoothingMixin`` module (its
            ``task``) in ``setup``; ``None`` leaves the module's. ε is scheduled alike for every task; binary and
            multi-label tasks take no ``prior`` other than uniform.

    Raises:
        TypeError: if ``schedule`` is neither a float nor a ``Schedule``, or ``total_steps`` is not an int.
        ValueError: if a float ``schedule`` lies outside [0, 1], ``interval`` is unknown, ``total_steps`` is not
            positive or is given with ``interval="epoch"``, ``prior`` is an unknown name or not a distribution, or
            ``num_classes`` is not a positive int, or ``task`` is unknown.

    ``Trainer.fit`` raises ``ValueError`` (in ``setup`` or ``on_fit_start``) when the module holds nothing to set ε
    on, or when the schedule is not :class:`~ls_lightning.schedules.Constant` and the length of training is unknown
    (no ``max_steps``/``max_epochs``, or a train dataloader without length), or when a prior other than uniform is
    asked of a module without the mixin, or C is unknown or differs from the prior's; the message says what to set.
    Resuming from a checkpoint without this callback's state warns; ε still follows the restored counters.

    Example:
        >>> from ls_lightning.integration.schedules import Cosine
        >>> LabelSmoothing(Cosine(start=0.2, end=0.0), interval="epoch")
        LabelSmoothing(schedule=Cosine(start=0.2, end=0.0), interval='epoch', total_steps=None)
    """

    def __init__(
        self,
        schedule: float | Schedule = 0.1,
        interval: Literal["step", "epoch"] = "step",
        total_steps: int | None = None,
        prior: _PRIOR_NAMES | Sequence[float] | Tensor | None = None,
        num_classes: int | None = None,
        log_metrics: Sequence[MetricGroup] | None = None,
        log_prefix: str | None = None,
        task: Task | None = None,
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
        self.prior: str | Tensor | None = self._check_prior(prior)
        self.num_classes = self._check_num_classes(num_classes)
        self.estimator: OnlinePrior | None = None  # online label smoothing: this fit's accumulator
        self._restored_online: dict[str, Tensor] | None = None
        self._global_rank = 0
        self._state_key_cache: tuple[Schedule, str, str] | None = None
        self.log_metrics = None if log_metrics is None else check_log_metrics(log_metrics)
        self.log_prefix = None if log_prefix is None else check_log_prefix(log_prefix)
        self.task = None if task is None else check_task(task)

    def __repr__(self) -> str:
        extra = "" if self.prior is None else f", prior={self._prior_state()!r}"
        extra += "" if self.num_classes is None else f", num_classes={self.num_classes!r}"
        extra += "" if self.log_metrics is None else f", log_metrics={self.log_metrics!r}"
        extra += "" if self.log_prefix is None else f", log_prefix={self.log_prefix!r}"
        extra += "" if self.task is None else f", task={self.task!r}"
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

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(pl_module, LabelSmoothingMixin):  # before any key is logged, in every stage
            if self.log_metrics is not None:
                pl_module.ls_log_metrics = self.log_metrics
            if self.log_prefix is not None:
                pl_module.ls_log_prefix = self.log_prefix
            if self.task is not None:
                pl_module.ls_task = self.task
        if stage == TrainerFn.FITTING:  # validate/test/predict do not schedule ε
            self._check_run_is_finite(trainer)
            self._check_prior_target(pl_module)
            self._global_rank = trainer.global_rank

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
        self._set_up_prior(trainer, pl_module)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        epsilon = self._epsilon_at(trainer)
        self._set_epsilon(epsilon)
        self._log(trainer, pl_module, epsilon)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.estimator is not None:
            self._advance_online_prior(pl_module, self.estimator)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._targets = []  # do not keep the model alive through the callback
        self._restored_epsilon = None  # unused when the strategy restores after `on_fit_start`: not for the next fit
        self._restored_online = None
        estimator = getattr(pl_module, "ls_prior_estimator", None)
        if stage == TrainerFn.FITTING and estimator is not None and estimator is self.estimator:
            del pl_module.ls_prior_estimator  # the module leaves the fit as it came; the callback keeps the sums

    @override
    def state_dict(self) -> dict[str, Any]:
        """The settings and ε; with a prior also its description, and with ``"online"`` the epoch's sums so far.

        With ``"online"`` under multi-process training this sums the accumulators over processes (a collective):
        Lightning calls it on every rank when it saves a checkpoint.
        """
        state: dict[str, Any] = {
            "epsilon": self.epsilon,
            "schedule": repr(self.schedule),
            "interval": self.interval,
            "total_steps": self.total_steps,
        }
        if self.prior is not None:  # without a prior the state is what it was before priors existed
            state["prior"] = self._prior_state()
        if self.estimator is not None:
            with self.estimator.sync_context(dist_sync_fn=self.estimator.dist_sync_fn):
                state["online_sums"] = self.estimator.sums.detach().cpu().clone()
                state["online_counts"] = self.estimator.counts.detach().cpu().clone()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epsilon = self._restored_epsilon = state_dict.get("epsilon")
        if state_dict.get("online_sums") is not None:
            self._restored_online = {"sums": state_dict["online_sums"], "counts": state_dict["online_counts"]}
            if self.estimator is not None:  # a strategy that restores after `on_fit_start`
                self._load_online_sums(self.estimator)
        saved = {key: state_dict.get(key) for key in ("schedule", "interval", "total_steps", "prior")}
        current = {
            "schedule": repr(self.schedule),
            "interval": self.interval,
            "total_steps": self.total_steps,
            "prior": self._prior_state(),
        }
        changed = {key: (saved[key], current[key]) for key in saved if key in state_dict and saved[key] != current[key]}
        if changed:
            rank_zero_warn(
                f"`LabelSmoothing` resumes with settings that differ from the checkpoint's ({changed}, as"
                " (checkpoint, now)); ε follows the new settings from the restored global step."
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
    def _check_prior(prior: Any) -> str | Tensor | None:
        if prior is None:
            return None
        if isinstance(prior, str):
            if prior not in get_args(_PRIOR_NAMES):
                raise ValueError(
                    f"Expected argument `prior` to be one of {get_args(_PRIOR_NAMES)}, a sequence of floats or a"
                    f" tensor, but got {prior!r}"
                )
            return prior
        return fixed_prior(prior)

    @staticmethod
    def _check_num_classes(num_classes: Any) -> int | None:
        if num_classes is None:
            return None
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"Expected argument `num_classes` to be a positive int or None, but got {num_classes!r}")
        return num_classes

    def _prior_state(self) -> str | list | None:
        """The prior as the checkpoint and ``repr`` show it: a name or the fixed values."""
        return self.prior.tolist() if isinstance(self.prior, Tensor) else self.prior

    def _check_prior_target(self, pl_module: pl.LightningModule) -> None:
        if self.prior is None or (isinstance(self.prior, str) and self.prior == "uniform"):
            return
        if not isinstance(pl_module, LabelSmoothingMixin):
            raise ValueError(
                f"`LabelSmoothing(prior={self._prior_state()!r})` needs a module derived from"
                f" `ls_lightning.LabelSmoothingMixin` that computes its loss with `self.label_smoothed_loss`, but"
                f" {type(pl_module).__name__} is not one. Derive it from the mixin, or use `prior=None` (uniform, which"
                " `torch.nn.CrossEntropyLoss` supports)."
            )
        if pl_module.ls_task != "multiclass":
            raise ValueError(
                f"`LabelSmoothing(prior={self._prior_state()!r})` is for multi-class tasks, but the module's task is"
                f" {pl_module.ls_task!r}: a binary label is smoothed towards 1/2. Use `prior=None` or 'uniform'."
            )

    def _set_up_prior(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Give the module the prior of the first epoch (and, for online label smoothing, the accumulator)."""
        if self.prior is None:
            return
        module = cast("LabelSmoothingMixin", pl_module)
        if isinstance(self.prior, Tensor):
            num_classes = self._resolve_num_classes(trainer, pl_module, required=False)
            if num_classes is not None and self.prior.shape[-1] != num_classes:
                raise ValueError(
                    f"Expected argument `prior` of `LabelSmoothing` to have num_classes={num_classes} entries per"
                    f" row (the model's number of classes), but got shape {tuple(self.prior.shape)}"
                )
            module.label_smoothing_prior = self.prior.to(pl_module.device)
        elif self.prior == "uniform":
            if hasattr(module, "label_smoothing_prior"):
                module.label_smoothing_prior = None
        elif self.prior == "class_frequency":
            module.label_smoothing_prior = self._count_class_frequency(trainer, pl_module)
        else:
            self._attach_online_prior(trainer, pl_module)

    def _resolve_num_classes(self, trainer: pl.Trainer, pl_module: pl.LightningModule, required: bool) -> int | None:
        """C from the callback's argument, the module's hyper-parameter or attribute, or the datamodule's attribute."""
        hparams = getattr(pl_module, "hparams", {})
        candidates = [
            self.num_classes,
            hparams.get("num_classes") if isinstance(hparams, dict) else None,
            getattr(pl_module, "num_classes", None),
            getattr(getattr(trainer, "datamodule", None), "num_classes", None),
        ]
        found = next((c for c in candidates if isinstance(c, int) and not isinstance(c, bool)), None)
        if found is None and required:
            raise ValueError(
                f"`LabelSmoothing(prior={self._prior_state()!r})` needs the number of classes, but neither the module"
                f" ({type(pl_module).__name__}: a `num_classes` hyper-parameter or attribute) nor the datamodule has"
                " one. Set `LabelSmoothing(..., num_classes=...)`."
            )
        return found

    def _count_class_frequency(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor:
        """One pass over this rank's train dataloader (labels only, no forward), summed over processes."""
        num_classes = cast(int, self._resolve_num_classes(trainer, pl_module, required=True))
        trainer.fit_loop.setup_data()  # what `estimated_stepping_batches` does; Lightning skips it once done
        loader = trainer.train_dataloader
        if loader is None or isinstance(loader, (dict, list, tuple)):
            raise ValueError(
                "`LabelSmoothing(prior='class_frequency')` counts the labels of one train dataloader, but the trainer"
                f" has {type(loader).__name__}. Pass the counted distribution as a fixed prior instead:"
                " `prior=ls_lightning.priors.class_frequency(labels, num_classes)`."
            )
        with isolate_rng():  # a shuffling sampler draws its seed from the global generator: keep training's draws
            prior = class_frequency(loader, num_classes, getattr(pl_module, "ls_ignore_index", -100),
                                    device=pl_module.device)  # fmt: skip
        return prior

    def _attach_online_prior(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        num_classes = cast(int, self._resolve_num_classes(trainer, pl_module, required=True))
        self.estimator = OnlinePrior(num_classes, getattr(pl_module, "ls_ignore_index", -100)).to(pl_module.device)
        if self._restored_online is not None:  # resumed: the module's matrix came back with its state_dict
            self._load_online_sums(self.estimator)
        else:
            cast("LabelSmoothingMixin", pl_module).label_smoothing_prior = None  # epoch 0 smooths uniformly
        pl_module.ls_prior_estimator = self.estimator  # the mixin feeds it every training batch

    def _load_online_sums(self, estimator: OnlinePrior) -> None:
        """The checkpoint holds the sums of all processes: rank 0 takes them, the others start from 0."""
        restored, self._restored_online = self._restored_online or {}, None
        if self._global_rank == 0 and restored:
            estimator.sums.copy_(restored["sums"])
            estimator.counts.copy_(restored["counts"])

    @staticmethod
    def _advance_online_prior(pl_module: pl.LightningModule, estimator: OnlinePrior) -> None:
        """Turn this epoch's sums (over all processes) into the next epoch's prior and start a new epoch."""
        module = cast("LabelSmoothingMixin", pl_module)
        estimator.previous.copy_(prior_matrix(module.label_smoothing_prior, estimator.num_classes))
        module.label_smoothing_prior = estimator.compute()
        estimator.reset()

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
            "Expected argument `schedule` to be a float or an `ls_lightning.schedules.Schedule` (subclass it to wrap"
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
        prefix = self.log_prefix or ""
        if isinstance(pl_module, LabelSmoothingMixin):
            prefix, log = pl_module.ls_log_prefix, pl_module.ls_log  # not taken for a key of the module's
        # the same value on every rank, so no sync; batch_size given since it cannot be inferred from a float
        log(f"train/{prefix}epsilon", epsilon, on_step=True, on_epoch=False, batch_size=1)

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
