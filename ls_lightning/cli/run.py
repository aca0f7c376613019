"""Shared parts of ``ls-train`` and ``ls-eval``: build the run's objects from a config, report errors and results.

Lightning is imported only once a config has been composed and validated, so that a bad value is reported at once.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from ls_lightning.cli.errors import CheckpointError, ConfigValueError, MissingDependencyError
from ls_lightning.cli.loggers import keep_offline

if TYPE_CHECKING:
    import lightning.pytorch as L

    from ls_lightning.smoothing import Schedule

# shown in the final table, in this order
SUMMARY_METRICS = ("acc", "ece", "h_pq", "loss")


class Run(NamedTuple):
    """The objects of one run, built from its config."""

    datamodule: L.LightningDataModule
    model: L.LightningModule
    trainer: L.Trainer
    schedule: Schedule


def build_run(cfg: DictConfig) -> Run:
    """Instantiate the data module, model, schedule, callbacks, loggers and trainer of a validated config.

    Raises:
        ConfigValueError: if an object refuses its arguments (the message names the config node).
    """
    from lightning.pytorch.utilities import rank_zero_warn

    from ls_lightning.integration import LabelSmoothing

    datamodule = _make(cfg, "data")
    schedule = _make(cfg, "label_smoothing.schedule")
    # the prior (label_smoothing/prior) reaches the model through the LabelSmoothing callback, at fit start
    model = _make(
        cfg,
        "model",
        num_features=datamodule.num_features,
        num_classes=datamodule.num_classes,
        task=getattr(datamodule, "task", "multiclass"),  # a binary set: one logit, the label-smoothed BCE
        label_smoothing=schedule(0.0),
    )
    callbacks = _make_all(cfg, "callbacks")
    # Hydra makes the run directory; train(cfg) called directly may not have it yet, and MLflow's SQLite store in it
    # would wait for it (MLflow 2 retries the connection for minutes)
    os.makedirs(cfg.paths.output_dir, exist_ok=True)
    for node in (cfg.get("logger") or {}).values():
        if isinstance(node, DictConfig) and node.get("_target_") == "lightning.pytorch.loggers.WandbLogger":
            keep_offline(node.get("mode"))
    loggers = _make_all(cfg, "logger")
    log_through_root()
    quiet_fresh_csv_dirs(loggers)
    trainer = _make(cfg, "trainer", callbacks=callbacks, logger=loggers or False)
    if not any(isinstance(c, LabelSmoothing) for c in callbacks):
        rank_zero_warn("No `LabelSmoothing` callback is configured: ε stays at the schedule's start for the whole run.")
    return Run(datamodule, model, trainer, schedule)


def log_through_root() -> None:
    """Send Lightning's log records through the root logger's handlers only, when the root logger has handlers.

    Importing ``lightning`` gives its ``lightning`` logger a console handler of its own, and the records of
    ``lightning.pytorch`` (imported after Hydra set up the job's logging) also propagate to the root logger, where
    Hydra's handlers print them again and write them to the job's log file: each INFO line showed twice. Without the
    package's handler every line is printed once, in Hydra's format, and kept in the job's log file. A process whose
    root logger has no handler (no Hydra, no ``logging.basicConfig``) keeps Lightning's handler.
    """
    if not logging.getLogger().handlers:
        return
    lightning_logger = logging.getLogger("lightning")
    for handler in list(lightning_logger.handlers):
        lightning_logger.removeHandler(handler)
    lightning_logger.propagate = True


def quiet_fresh_csv_dirs(loggers: list[Any]) -> None:
    """Silence ``CSVLogger``'s "Previous log files in this directory will be deleted" where there is nothing to delete.

    The CSV logger writes ``metrics.csv`` directly into the run directory, where Hydra has already written ``.hydra/``
    and the job's log file; Lightning warns whenever its directory is not empty, but the only file it deletes is an
    earlier ``metrics.csv``. With none there (``ls-train`` keeps an earlier one as ``metrics.<k>.csv`` before a fit),
    the warning is dropped for that directory; with one there (``ls-eval`` in a run directory), it is kept.
    """
    from lightning.pytorch.loggers import CSVLogger

    for logger in loggers:
        if isinstance(logger, CSVLogger) and not os.path.isfile(os.path.join(logger.log_dir, "metrics.csv")):
            directory = re.escape(os.path.normpath(logger.log_dir))
            pattern = f"Experiment logs directory {directory}/* exists and is not empty"
            warnings.filterwarnings("ignore", message=pattern)


def _make(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """Instantiate the node at ``key``; an object refusing its arguments becomes a message naming the key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    node = OmegaConf.select(cfg, key)
    try:
        # plain lists and dicts: OmegaConf containers in hyper-parameters would make checkpoints fail to load with
        # torch.load(weights_only=True)
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as error:
        cause = error.__cause__ if error.__cause__ is not None else error
        raise ConfigValueError([f"{key} ({node.get('_target_')}): {cause}"]) from None


def _make_all(cfg: DictConfig, group: str) -> list[Any]:
    """Instantiate each entry of a group such as ``callbacks`` (null entries are switched off)."""
    node = cfg.get(group)
    if not node:
        return []
    return [_make(cfg, f"{group}.{name}") for name, child in node.items() if isinstance(child, DictConfig)]


def finish_runs(trainer: L.Trainer) -> None:
    """End the W&B runs of the trainer's loggers, which Lightning leaves open until the process exits.

    ``train(cfg)`` and ``evaluate(cfg)`` own the loggers they build: a second call in the same process (a notebook,
    the tests) must start a run of its own, not continue this one, and the offline run's files are complete on return.
    """
    from lightning.pytorch.loggers import WandbLogger

    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def collect_metrics(trainer: L.Trainer, stage: str) -> dict[str, float]:
    """Return the epoch values of ``{stage}/...`` in the trainer's callback metrics, as floats."""
    prefix = f"{stage}/"
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix) and v.numel() == 1}


def log_prefix(model: L.LightningModule) -> str:
    """What the plugin puts between ``{stage}/`` and its keys for ``model`` under its trainer (``log_prefix`` of the
    LabelSmoothing callback or of the module): ``""`` unless one is set, and for a module without the mixin."""
    from ls_lightning.integration import LabelSmoothingMixin

    return model.ls_log_prefix if isinstance(model, LabelSmoothingMixin) else ""


def print_summary(metrics: Mapping[str, float], output_dir: str, prefix: str = "") -> None:
    """Print the final val/test metrics as a small table and the run directory (on global rank 0 only).

    ``prefix`` is the plugin's ``log_prefix`` (:func:`log_prefix`): the table shows ``{stage}/{prefix}acc``, ...
    """
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    # language models (model=transformer) log perplexity as well
    perplexity = any(k.endswith(f"/{prefix}perplexity") for k in metrics)
    names = [f"{prefix}{m}" for m in (*SUMMARY_METRICS, *(["perplexity"] if perplexity else []))]
    width = max(len(m) for m in names) + 6
    lines = ["", "stage " + "".join(f"{m:>{width}}" for m in names)]
    for stage in ("val", "test"):
        values = [metrics.get(f"{stage}/{m}") for m in names]
        cells = "".join(f"{v:>{width}.4f}" if v is not None else f"{'n/a':>{width}}" for v in values)
        lines.append(f"{stage:<6}{cells}")
    lines.append(f"run directory: {output_dir}")
    print("\n".join(lines), flush=True)


def _is_user_error(error: Exception) -> bool:
    """Errors that mean "the configuration is wrong": reported in one paragraph, without a traceback."""
    if isinstance(error, (CheckpointError, ConfigValueError, MissingDependencyError)):
        return True
    # Lightning's own refusals of a setting (strategy, devices, callbacks); only loaded if Lightning was
    exceptions = sys.modules.get("lightning.fabric.utilities.exceptions")
    return exceptions is not None and isinstance(error, exceptions.MisconfigurationException)


def run_main(task: Callable[[DictConfig], dict[str, float]], cfg: DictConfig, prog: str) -> float | None:
    """Run ``task(cfg)`` for a ``@hydra.main`` entry point: configuration errors exit with code 2 and one paragraph.

    Torch's threads are chosen first (``num_threads``, :func:`ls_lightning.cli.threads.set_num_threads`). A refused
    run leaves no directory behind: the one Hydra made for it is removed when this process made it and Hydra's files
    are all it holds (:func:`ls_lightning.cli.directories.discard_refused_run`).

    Returns:
        The value of ``cfg.optimized_metric`` when set (for hyper-parameter sweepers), else ``None``.
    """
    from ls_lightning.cli.directories import discard_refused_run
    from ls_lightning.cli.threads import set_num_threads

    requested = cfg.get("num_threads") if isinstance(cfg, DictConfig) else None
    try:
        # a value out of range is left to the task's checks, which refuse it
        set_num_threads(requested if isinstance(requested, int) and requested >= 1 else None)
        metrics = task(cfg)
    except Exception as error:
        if not _is_user_error(error):
            raise
        discard_refused_run()
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    key = OmegaConf.select(cfg, "optimized_metric")
    return metrics.get(key) if key else None
