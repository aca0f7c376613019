"""`ReliabilityDiagram`: the reliability diagram of every validation epoch, from the mixin's synced ECE state."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from lightning.pytorch import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from ls_lightning.integration.figures import log_figure
from ls_lightning.integration.mixin import LabelSmoothingMixin
from ls_lightning.metrics import BinStats

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["RELIABILITY_JSON", "ReliabilityDiagram"]

# The file ``ls-report`` reads the final validation's curve from.
RELIABILITY_JSON = "reliability.json"
_IMAGE_TAG = "val/reliability_diagram"


def _has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


class ReliabilityDiagram(Callback):
    r"""Draw the reliability diagram of every validation epoch from the synced ECE state of the mixin.

    .. math::
        \text{ECE} = \sum_b \frac{n_b}{N} \left| \text{acc}_b - \text{conf}_b \right|

    At the end of each validation epoch (not the sanity check) every process sums the per-bin state of
    ``val/ece`` (:meth:`~ls_lightning.LabelSmoothingMixin.calibration_bins`, a collective); process 0 then writes
    into ``dirpath``:

    - ``reliability/val_epoch{N}.png``: the diagram of epoch N (with several validations per epoch, the last one);
    - ``reliability_diagram.png`` and ``reliability.json``: overwritten at each validation, so that after ``fit`` they
      hold the final validation (and after ``validate``, that run's). The JSON holds the per-bin sums (counts,
      confidence sums, correct sums, edges), from which ``ls-report`` overlays the curves of a sweep.

    For binary and multi-label tasks (the mixin's ``task``) the bins are those of torchmetrics'
    ``BinaryCalibrationError``: the predicted probability of the positive label against the share of positive labels
    in the bin (all label positions pooled); the JSON's ``task`` says which.

    The figure also goes to each TensorBoard, MLflow and W&B logger of the trainer, as ``val/reliability_diagram``
    at the global step (:func:`~ls_lightning.integration.figures.log_figure`); other loggers get nothing. No pass
    over the data is added. Without matplotlib (the ``plot`` extra) a warning is given once and only the JSON is
    written.

    Args:
        dirpath: Folder of the files; ``None`` uses the trainer's ``log_dir`` (``default_root_dir`` without a logger).
        enabled: ``False`` makes the callback do nothing (lets a config switch it with one flag).
        log_image: Hand the figure to the trainer's TensorBoard, MLflow and W&B loggers.
        dpi: Resolution of the PNG files.

    Raises:
        ValueError: When ``dpi`` is not a positive integer.

    Example:
        >>> callback = ReliabilityDiagram(dirpath="outputs/run")
        >>> callback.dirpath
        'outputs/run'
    """

    def __init__(
        self, dirpath: str | Path | None = None, *, enabled: bool = True, log_image: bool = True, dpi: int = 120
    ) -> None:
        if not isinstance(dpi, int) or isinstance(dpi, bool) or dpi < 1:
            raise ValueError(f"Expected argument `dpi` to be a positive integer, but got {dpi!r}")
        self.dirpath = None if dirpath is None else str(dirpath)
        self.enabled = bool(enabled)
        self.log_image = log_image
        self.dpi = dpi
        self._active = False  # set in setup: enabled, and the module has the mixin's state
        self._can_plot = False
        self._task = "multiclass"  # the module's task, read in setup

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.enabled:
            return
        if self.dirpath is None:
            self.dirpath = trainer.log_dir or trainer.default_root_dir  # log_dir broadcasts: every rank calls it
        self._active = isinstance(pl_module, LabelSmoothingMixin)
        self._task = getattr(pl_module, "ls_task", "multiclass")
        if not self._active:
            rank_zero_warn(
                f"`ReliabilityDiagram` draws from the state of `LabelSmoothingMixin`, which "
                f"{type(pl_module).__name__} does not have: no reliability diagram will be drawn."
            )
        self._can_plot = _has_matplotlib()
        if self._active and not self._can_plot:
            rank_zero_warn(
                "Reliability diagrams need matplotlib (`pip install 'ls-lightning[plot]'`): only "
                f"{RELIABILITY_JSON} will be written."
            )

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active or trainer.sanity_checking:
            return
        stats = pl_module.calibration_bins("val", sync=True)  # type: ignore[operator]  # collective: every rank
        if stats is not None and trainer.is_global_zero:
            self._write(trainer, stats.cpu())

    def _write(self, trainer: pl.Trainer, stats: BinStats) -> None:
        folder = Path(str(self.dirpath))
        folder.mkdir(parents=True, exist_ok=True)
        epoch, step = trainer.current_epoch, trainer.global_step
        record = {"stage": "val", "epoch": epoch, "global_step": step, "task": self._task, **stats.to_dict()}
        (folder / RELIABILITY_JSON).write_text(json.dumps(record, indent=1) + "\n")
        if not self._can_plot:
            return
        from ls_lightning.metrics.plotting import plot_reliability_diagram, save_figure

        # binary and multi-label: the bins hold σ(z) and the share of positive labels, not top-1 confidence and accuracy
        kind = "" if self._task == "multiclass" else f", {self._task}: P(label = 1) against share of positives"
        figure = plot_reliability_diagram(stats, title=f"validation, epoch {epoch} (step {step}){kind}")
        path = save_figure(figure, folder / "reliability" / f"val_epoch{epoch}.png", dpi=self.dpi)
        shutil.copyfile(path, folder / "reliability_diagram.png")
        if self.log_image:
            log_figure(trainer, _IMAGE_TAG, figure, step=step)
