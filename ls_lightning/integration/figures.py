"""`log_figure`: hand a matplotlib figure to each logger of a run through that logger's own image API."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["log_figure"]


def log_figure(
    target: Trainer | Logger | Iterable[Logger], name: str, figure: Figure, step: int | None = None
) -> list[Logger]:
    """Send ``figure`` to every logger of ``target`` that takes images, each through its public API.

    - :class:`~lightning.pytorch.loggers.TensorBoardLogger`: ``experiment.add_figure(name, figure, step)``, an image
      under the tag ``name``;
    - :class:`~lightning.pytorch.loggers.MLFlowLogger`: ``experiment.log_figure(run_id, figure, artifact_file)``, a
      PNG artifact of the run, ``{name}/step_{step}.png`` (``{name}.png`` without a step);
    - :class:`~lightning.pytorch.loggers.WandbLogger`: ``log_image(name, [figure], step)``, a ``wandb.Image`` in the
      run's history (``files/media/images/``).

    Other loggers (``CSVLogger`` among them) get nothing: the callers save the PNG beside ``metrics.csv`` themselves.
    The figure is left open (the caller owns it). Call it on global rank 0 only, as Lightning's loggers expect.

    Args:
        target: A trainer (its ``loggers``), one logger, or several.
        name: The tag, artifact path or key of the image, e.g. ``val/reliability_diagram``.
        figure: A matplotlib figure.
        step: The global step the figure belongs to; ``None`` for a figure of the whole run.

    Returns:
        The loggers that received the figure.

    Raises:
        TypeError: When ``target`` is neither a trainer, a logger nor an iterable of loggers.
        ValueError: When ``name`` is empty or ``step`` is negative.

    Example:
        >>> from matplotlib.figure import Figure
        >>> log_figure([], "val/reliability_diagram", Figure(), step=0)
        []
    """
    loggers = _loggers(target)
    if not isinstance(name, str) or not name:
        raise ValueError(f"Expected argument `name` to be a non-empty string, but got {name!r}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"Expected argument `step` to be None or an integer >= 0, but got {step!r}")
    return [logger for logger in loggers if _send(logger, name, figure, step)]


def _loggers(target: Trainer | Logger | Iterable[Logger]) -> list[Logger]:
    if isinstance(target, Trainer):
        return list(target.loggers)
    if isinstance(target, Logger):
        return [target]
    if isinstance(target, Iterable) and not isinstance(target, (str, bytes)):
        loggers = list(target)
        if all(isinstance(logger, Logger) for logger in loggers):
            return loggers
    raise TypeError(f"Expected argument `target` to be a Trainer, a Logger or loggers, but got {target!r}")


def _send(logger: Logger, name: str, figure: Figure, step: int | None) -> bool:
    if isinstance(logger, TensorBoardLogger):
        # close=False: the figure is not pyplot's, and closing it would import pyplot's figure manager
        logger.experiment.add_figure(name, figure, global_step=step, close=False)
    elif isinstance(logger, MLFlowLogger):
        artifact = f"{name}.png" if step is None else f"{name}/step_{step}.png"
        logger.experiment.log_figure(logger.run_id, figure, artifact)
    elif isinstance(logger, WandbLogger):
        logger.log_image(name, [figure], step=step)
    else:
        return False
    return True
