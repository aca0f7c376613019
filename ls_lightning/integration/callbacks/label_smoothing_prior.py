"""The ``LabelSmoothingPrior`` callback: the prior u that a ``LabelSmoothingMixin`` module smooths towards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast, get_args

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor
from typing_extensions import override

from ls_lightning.integration.mixin import LabelSmoothingMixin, LossBatch
from ls_lightning.losses import class_frequency, fixed_prior, prior_matrix
from ls_lightning.metrics import OnlinePrior

__all__ = ["LabelSmoothingPrior", "PriorName", "check_num_classes"]

PriorName = Literal["uniform", "class_frequency", "online"]


class LabelSmoothingPrior(Callback):
    r"""Give a :class:`~ls_lightning.integration.LabelSmoothingMixin` module the prior u it smooths towards.

    .. math:: L = (1 - \varepsilon)\,H(p, q) + \varepsilon\,H(u, q)

    The prior is set through the mixin's documented ``label_smoothing_prior`` (a buffer of the module, so it follows
    the module's device and is saved in its checkpoints) when the fit starts, and for ``"online"`` again at the end
    of every training epoch:

    - ``"uniform"``: 1/C (the mixin's prior is set to ``None``).
    - ``"class_frequency"``: the label distribution of the training data, counted once per fit by iterating the
      train dataloader (each process its shard, summed over processes; see
      :func:`~ls_lightning.losses.class_frequency`).
    - a sequence of floats or a tensor: a fixed (C,) distribution, or (C, C) rows u(·|y), validated here.
    - ``"online"``: online label smoothing (Zhang et al., 2021). Epoch 0 is uniform; at the end of epoch t the
      softmax of the correctly classified training positions, averaged per true class
      (:class:`~ls_lightning.metrics.OnlinePrior`, summed over processes), becomes row y of the (C, C) prior of epoch
      t + 1. The callback receives each training batch's logits through the mixin's ``on_loss_batch`` hook; the
      sums of an unfinished epoch are in this callback's state, so a resumed run continues.

    Args:
        prior: the prior, as above.
        num_classes: C, needed by ``"class_frequency"`` and ``"online"`` when neither the module (``num_classes``
            hyper-parameter or attribute) nor the datamodule (``num_classes`` attribute) tells it.

    Raises:
        ValueError: if ``prior`` is an unknown name or not a distribution, or ``num_classes`` is not a positive int.

    ``Trainer.fit`` raises ``ValueError`` when the module is not a ``LabelSmoothingMixin`` (for a prior other than
    uniform), when its task is not multi-class, when C is unknown or differs from the prior's, or when another
    callback of the trainer sets a prior too; the message says what to change.

    Example:
        >>> LabelSmoothingPrior("online", num_classes=10)
        LabelSmoothingPrior(prior='online', num_classes=10)
    """

    def __init__(self, prior: PriorName | Sequence[float] | Tensor, num_classes: int | None = None) -> None:
        self.prior: str | Tensor = self._check_prior(prior)
        self.num_classes = check_num_classes(num_classes)
        self.estimator: OnlinePrior | None = None  # online label smoothing: this fit's accumulator
        self._restored_online: dict[str, Tensor] | None = None
        self._global_rank = 0

    def __repr__(self) -> str:
        extra = "" if self.num_classes is None else f", num_classes={self.num_classes!r}"
        return f"{type(self).__name__}(prior={self.describe()!r}{extra})"

    @property
    @override
    def state_key(self) -> str:
        # the form of Lightning's own keys: the class name and the repr of what tells two instances apart
        return f"{type(self).__qualname__}{dict(prior=self.describe())!r}"

    def describe(self) -> str | list:
        """The prior as the checkpoint and ``repr`` show it: its name, or the fixed values as (nested) lists."""
        return self.prior.tolist() if isinstance(self.prior, Tensor) else self.prior

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == TrainerFn.FITTING:
            self._check_target(pl_module)
            self._check_single_source(trainer)
            self._global_rank = trainer.global_rank

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module = cast(LabelSmoothingMixin, pl_module)
        if isinstance(self.prior, Tensor):
            num_classes = self._resolve_num_classes(trainer, pl_module, required=False)
            if num_classes is not None and self.prior.shape[-1] != num_classes:
                raise ValueError(
                    f"Expected argument `prior` of `{type(self).__name__}` to have num_classes={num_classes} entries"
                    f" per row (the model's number of classes), but got shape {tuple(self.prior.shape)}"
                )
            module.label_smoothing_prior = self.prior.to(pl_module.device)
        elif self.prior == "uniform":
            if isinstance(pl_module, LabelSmoothingMixin):
                module.label_smoothing_prior = None
        elif self.prior == "class_frequency":
            module.label_smoothing_prior = self._count_class_frequency(trainer, pl_module)
        else:
            self._start_online_prior(trainer, pl_module)

    def on_loss_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: LossBatch) -> None:
        """The mixin's hook: online label smoothing sums the softmax of the batch's correctly classified positions."""
        if self.estimator is None or batch.stage != "train":
            return
        for logits, target, mask in batch.logits(batch.stats.correct & batch.stats.valid):
            self.estimator.update(logits, target, mask)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.estimator is not None:
            self._advance_online_prior(cast(LabelSmoothingMixin, pl_module), self.estimator)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restored_online = None  # unused when the strategy restores after `on_fit_start`: not for the next fit

    @override
    def state_dict(self) -> dict[str, Any]:
        """The prior's description; with ``"online"`` also the epoch's sums so far.

        With ``"online"`` under multi-process training this sums the accumulators over processes (a collective):
        Lightning calls it on every rank when it saves a checkpoint.
        """
        state: dict[str, Any] = {"prior": self.describe()}
        if self.estimator is not None:
            with self.estimator.sync_context(dist_sync_fn=self.estimator.dist_sync_fn):
                state["online_sums"] = self.estimator.sums.detach().cpu().clone()
                state["online_counts"] = self.estimator.counts.detach().cpu().clone()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("online_sums") is not None:
            self._restored_online = {"sums": state_dict["online_sums"], "counts": state_dict["online_counts"]}
            if self.estimator is not None:  # a strategy that restores after `on_fit_start`
                self._load_online_sums(self.estimator)

    @staticmethod
    def _check_prior(prior: Any) -> str | Tensor:
        if isinstance(prior, str):
            if prior not in get_args(PriorName):
                raise ValueError(
                    f"Expected argument `prior` to be one of {get_args(PriorName)}, a sequence of floats or a"
                    f" tensor, but got {prior!r}"
                )
            return prior
        return fixed_prior(prior)

    def _check_target(self, pl_module: pl.LightningModule) -> None:
        if isinstance(self.prior, str) and self.prior == "uniform":
            return
        if not isinstance(pl_module, LabelSmoothingMixin):
            raise ValueError(
                f"`{type(self).__name__}(prior={self.describe()!r})` needs a module derived from"
                f" `ls_lightning.LabelSmoothingMixin` that computes its loss with `self.label_smoothed_loss`, but"
                f" {type(pl_module).__name__} is not one. Derive it from the mixin, or use `prior=None` (uniform, which"
                " `torch.nn.CrossEntropyLoss` supports)."
            )
        if pl_module.ls_task != "multiclass":
            raise ValueError(
                f"`{type(self).__name__}(prior={self.describe()!r})` is for multi-class tasks, but the module's task is"
                f" {pl_module.ls_task!r}: a binary label is smoothed towards 1/2. Use `prior=None` or 'uniform'."
            )

    def _check_single_source(self, trainer: pl.Trainer) -> None:
        sources = [c for c in cast(Any, trainer).callbacks if _prior_callback(c) is not None]
        if len(sources) > 1:
            raise ValueError(
                f"Several callbacks set the label-smoothing prior ({[repr(c) for c in sources]}): keep one of them"
            )

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
                f"`{type(self).__name__}(prior={self.describe()!r})` needs the number of classes, but neither the"
                f" module ({type(pl_module).__name__}: a `num_classes` hyper-parameter or attribute) nor the datamodule"
                " has one. Set `LabelSmoothing(..., num_classes=...)` or `LabelSmoothingPrior(..., num_classes=...)`."
            )
        return found

    def _count_class_frequency(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor:
        """One pass over this rank's train dataloader (labels only, no forward), summed over processes."""
        num_classes = cast(int, self._resolve_num_classes(trainer, pl_module, required=True))
        trainer.fit_loop.setup_data()  # what `estimated_stepping_batches` does; Lightning skips it once done
        loader = trainer.train_dataloader
        if loader is None or isinstance(loader, (dict, list, tuple)):
            raise ValueError(
                f"`{type(self).__name__}(prior='class_frequency')` counts the labels of one train dataloader, but the"
                f" trainer has {type(loader).__name__}. Pass the counted distribution as a fixed prior instead:"
                " `prior=ls_lightning.losses.class_frequency(labels, num_classes)`."
            )
        ignore_index = cast(LabelSmoothingMixin, pl_module).ls_ignore_index
        with isolate_rng():  # a shuffling sampler draws its seed from the global generator: keep training's draws
            return class_frequency(loader, num_classes, ignore_index, device=pl_module.device)

    def _start_online_prior(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        num_classes = cast(int, self._resolve_num_classes(trainer, pl_module, required=True))
        module = cast(LabelSmoothingMixin, pl_module)
        self.estimator = OnlinePrior(num_classes, module.ls_ignore_index).to(pl_module.device)
        if self._restored_online is not None:  # resumed: the module's matrix came back with its state_dict
            self._load_online_sums(self.estimator)
        else:
            module.label_smoothing_prior = None  # epoch 0 smooths uniformly

    def _load_online_sums(self, estimator: OnlinePrior) -> None:
        """The checkpoint holds the sums of all processes: rank 0 takes them, the others start from 0."""
        restored, self._restored_online = self._restored_online or {}, None
        if self._global_rank == 0 and restored:
            estimator.sums.copy_(restored["sums"])
            estimator.counts.copy_(restored["counts"])

    @staticmethod
    def _advance_online_prior(module: LabelSmoothingMixin, estimator: OnlinePrior) -> None:
        """Turn this epoch's sums (over all processes) into the next epoch's prior and start a new epoch."""
        estimator.previous.copy_(prior_matrix(module.label_smoothing_prior, estimator.num_classes))
        module.label_smoothing_prior = estimator.compute()
        estimator.reset()


def check_num_classes(num_classes: Any) -> int | None:
    """``num_classes``: None or a positive int."""
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"Expected argument `num_classes` to be a positive int or None, but got {num_classes!r}")
    return num_classes


def _prior_callback(callback: Any) -> LabelSmoothingPrior | None:
    """The prior callback that ``callback`` is or holds (``LabelSmoothing(prior=...)``), else None."""
    if isinstance(callback, LabelSmoothingPrior):
        return callback
    inner = getattr(callback, "prior_callback", None)
    return inner if isinstance(inner, LabelSmoothingPrior) else None
