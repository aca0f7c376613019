"""`PenultimateProjection`: the penultimate layer's activations projected onto the plane of three class templates
after every validation epoch (Müller, Kornblith and Hinton, 2019, Figure 1), and how tight their clusters are."""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from ls_lightning.integration.figures import log_figure
from ls_lightning.losses import LABEL_KEYS, batch_labels
from ls_lightning.metrics.penultimate import (
    WithinBetweenRatio,
    project_to_template_plane,
    template_classes_arg_validation,
)

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch.utils.hooks import RemovableHandle

__all__ = ["PROJECTION_FILE", "PROJECTION_IMAGE", "RATIO_KEY", "PenultimateProjection"]

# The logged number, per stage: f"{stage}/{RATIO_KEY}" (train, val).
RATIO_KEY = "penultimate_within_between"
# The tag (TensorBoard), artifact folder (MLflow) or key (W&B) of the figure.
PROJECTION_IMAGE = "val/penultimate_projection"
# The latest picture in the run directory (ls-report puts the settings' side by side).
PROJECTION_FILE = "penultimate_projection.png"
_STAGES = ("train", "val")
_DEFAULT_CLASSES = (0, 1, 2)


class _ClassSample:
    """A uniform sample without replacement of at most ``size`` feature vectors of each of three classes.

    Every vector seen gets a uniform random key, and the ``size`` smallest keys of each class are kept (bottom-k
    sampling). The union of several such samples, cut again to its ``size`` smallest keys, is a uniform sample of
    everything the processes saw, so per-process samples merge exactly. Fixed shapes, no host sync per batch.
    """

    def __init__(self, classes: tuple[int, int, int], size: int, num_features: int) -> None:
        self.classes, self.size, self.num_features = classes, size, num_features
        self.keys = torch.full((3, size), torch.inf)
        self.features = torch.zeros(3, size, num_features)
        self.generator = torch.Generator()

    def reset(self, device: torch.device, seed: int) -> None:
        self.keys = torch.full((3, self.size), torch.inf, device=device)
        self.features = torch.zeros(3, self.size, self.num_features, device=device)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Offer ``(M, D)`` vectors with their ``(M,)`` labels; other classes and ignored labels are never kept."""
        if not labels.numel():
            return
        device, size = self.keys.device, self.size
        features, labels = features.to(device=device, dtype=torch.float32), labels.to(device)
        random = torch.rand(labels.shape[0], generator=self.generator, device=device)
        member = labels.unsqueeze(0) == torch.tensor(self.classes, device=device).unsqueeze(1)  # (3, M)
        keys = torch.cat([self.keys, torch.where(member, random, torch.inf)], dim=1)  # (3, S + M)
        self.keys, index = keys.topk(size, dim=1, largest=False)  # the S smallest keys of each class
        old = self.features[torch.arange(3, device=device).unsqueeze(1), index.clamp(max=size - 1)]
        self.features = torch.where((index < size).unsqueeze(-1), old, features[(index - size).clamp(min=0)])

    def gathered(self, trainer: pl.Trainer) -> tuple[Tensor, Tensor]:
        """The sample of all processes (a collective under DDP): CPU ``(m, D)`` vectors and ``(m,)`` labels."""
        keys, features = self.keys, self.features
        if trainer.world_size > 1:
            all_keys, all_features = trainer.strategy.all_gather(keys), trainer.strategy.all_gather(features)
            keys = all_keys.transpose(0, 1).reshape(3, -1)  # (W, 3, S) -> (3, W·S)
            features = all_features.transpose(0, 1).reshape(3, -1, self.num_features)
            keys, index = keys.topk(self.size, dim=1, largest=False)
            features = features[torch.arange(3, device=index.device).unsqueeze(1), index]
        kept = keys.isfinite().cpu()
        labels = torch.tensor(self.classes).unsqueeze(1).expand(3, self.size)
        return features.cpu()[kept], labels[kept]


class PenultimateProjection(Callback):
    r"""Draw the penultimate layer's activations of three classes in the plane of their templates, and log how tight
    the class clusters are, after every validation epoch.

    Müller, Kornblith and Hinton (2019, "When does label smoothing help?", Figure 1) project the activations
    :math:`h` (the last linear layer's input) onto the plane through the templates :math:`w_a, w_b, w_c` (rows of
    that layer's weight): coordinates :math:`Q^\top h` with :math:`Q` from the QR decomposition of
    :math:`[w_a - w_c, w_b - w_c]` (:func:`~ls_lightning.metrics.project_to_template_plane`). Without label smoothing
    the clusters are broad; with it they are tight and equidistant. The number that says so is logged per stage:

    .. math::
        R = \frac{\frac{1}{N}\sum_i \|h_i - \mu_{y_i}\|^2}{\frac{2}{K'(K'-1)}\sum_{j<k} \|\mu_j - \mu_k\|^2}

    over all classes and all (not ignored) positions (:class:`~ls_lightning.metrics.WithinBetweenRatio`), as
    ``train/penultimate_within_between`` (the training epoch, at its end) and ``val/penultimate_within_between``.
    Its states are per-class sums reduced across processes: under DDP the value equals one process's on all samples.

    **The layer.** ``layer="net.3"`` names it (a key of ``pl_module.named_modules()``); otherwise it is the last
    ``nn.Linear`` in ``named_modules()`` order (definition order) whose ``out_features`` equals ``num_classes``, or
    the last ``nn.Linear`` at all when ``num_classes`` is ``None``. Its input is read by a forward hook registered in
    ``setup`` and removed in ``teardown``; the module itself is left as it is. In each training or validation batch the
    layer's last call is taken, with the labels of the batch: an ``(input, target, ...)`` tuple or list, or a mapping
    with one of the keys ``target``, ``targets``, ``label``, ``labels``, ``y``. Sequence models: an ``(N, T, D)`` input
    with ``(N, T)`` labels counts each position; positions labelled ``ignore_index`` are left out. A batch whose
    labels do not match the layer's input (or are not class indices), or in which the layer is not called (the fused
    ``label_smoothed_linear_loss`` takes the layer's weight and never calls it), is skipped with a warning.

    **The picture.** After each validation epoch (not the sanity check), the activations of ``classes`` from the
    training epoch just run (during ``fit``) and from the validation epoch are drawn side by side into ``dirpath``:
    ``penultimate/val_epoch{N}.png`` and ``penultimate_projection.png`` (overwritten: the latest), and sent to each
    TensorBoard, MLflow and W&B logger as ``val/penultimate_projection``
    (:func:`~ls_lightning.integration.figures.log_figure`). The projection uses the layer's weight at that moment. To
    keep memory bounded, each stage keeps a uniform random sample of at most ``samples_per_class`` activations per
    drawn class (seeded); under DDP the samples of all processes are gathered and merged into a uniform sample of
    the same size over all of them, drawn by process 0. The logged number is never subsampled.

    Attributes:
        layer_name: The name of the hooked layer, known after ``setup``.
        projections: After each validation epoch, per stage, the drawn ``(points, labels)``: (M, 2) float64
            coordinates and (M,) class indices, on every process.

    Args:
        classes: The three classes (a, b, c) to draw; ``(0, 1, 2)`` when ``None``.
        layer: The name of the last linear layer; found by the rule above when ``None``.
        num_classes: The number of classes, used to find the layer.
        dirpath: Folder of the files; ``None`` uses the trainer's ``log_dir`` (``default_root_dir`` without a logger).
        samples_per_class: Most activations drawn per class and stage.
        ignore_index: Label of positions left out.
        seed: Seed of the sampling.
        enabled: ``False`` makes the callback do nothing.
        log_image: Hand the figure to the trainer's TensorBoard, MLflow and W&B loggers.
        dpi: Resolution of the PNG files.

    Raises:
        ValueError: On bad arguments; in ``setup``, when ``layer`` names no module or not an ``nn.Linear``, when no
            linear layer fits the rule, when the layer has fewer than three outputs, or a class is out of its range.

    Example:
        >>> callback = PenultimateProjection(classes=(3, 5, 8), layer="net.model.9")
        >>> callback.classes
        (3, 5, 8)
    """

    def __init__(
        self,
        classes: Sequence[int] | None = None,
        layer: str | None = None,
        *,
        num_classes: int | None = None,
        dirpath: str | Path | None = None,
        samples_per_class: int = 500,
        ignore_index: int = -100,
        seed: int = 0,
        enabled: bool = True,
        log_image: bool = True,
        dpi: int = 120,
    ) -> None:
        self.classes = template_classes_arg_validation(_DEFAULT_CLASSES if classes is None else classes)
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise ValueError(f"Expected argument `layer` to be None or a module name, but got {layer!r}")
        _check_int("num_classes", num_classes, minimum=3, optional=True)
        _check_int("samples_per_class", samples_per_class, minimum=1)
        _check_int("ignore_index", ignore_index)
        _check_int("seed", seed, minimum=0)
        _check_int("dpi", dpi, minimum=1)
        self.layer, self.num_classes, self.samples_per_class = layer, num_classes, samples_per_class
        self.ignore_index, self.seed, self.dpi = ignore_index, seed, dpi
        self.dirpath = None if dirpath is None else str(dirpath)
        self.enabled, self.log_image = bool(enabled), log_image
        self.layer_name: str | None = None
        self.projections: dict[str, tuple[Tensor, Tensor]] = {}
        self._linear: nn.Linear | None = None
        self._handle: RemovableHandle | None = None
        self._metrics: dict[str, WithinBetweenRatio] = {}
        self._samples: dict[str, _ClassSample] = {}
        self._stage: str | None = None  # the stage whose batch is running: the hook keeps the layer's input then
        self._captured: Tensor | None = None
        self._warned: set[str] = set()
        self._can_plot = False

    # --- setup and teardown ----------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.enabled:
            return
        self.layer_name, self._linear = self._find_layer(pl_module)
        num_classes, num_features = self._linear.out_features, self._linear.in_features
        if num_classes < 3:
            raise ValueError(
                f"Expected argument `layer` to be a linear layer with at least three outputs, but got "
                f"{self.layer_name!r} with out_features={num_classes}"
            )
        template_classes_arg_validation(self.classes, num_classes)
        self._metrics = {s: WithinBetweenRatio(num_classes, num_features, self.ignore_index, False) for s in _STAGES}
        self._samples = {s: _ClassSample(self.classes, self.samples_per_class, num_features) for s in _STAGES}
        if self._handle is not None:
            self._handle.remove()
        self._handle = self._linear.register_forward_hook(self._capture, with_kwargs=True)
        if self.dirpath is None:
            self.dirpath = trainer.log_dir or trainer.default_root_dir  # log_dir broadcasts: every rank calls it
        self._can_plot = importlib.util.find_spec("matplotlib") is not None
        if not self._can_plot:
            rank_zero_warn("`PenultimateProjection` draws with matplotlib (`pip install 'ls-lightning[plot]'`): only "
                           "the numbers will be logged.")  # fmt: skip

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._captured, self._stage = None, None, None

    def _find_layer(self, pl_module: pl.LightningModule) -> tuple[str, nn.Linear]:
        modules = dict(pl_module.named_modules())
        if self.layer is not None:
            found = modules.get(self.layer)
            if not isinstance(found, nn.Linear):
                kind = "no such module" if found is None else f"a {type(found).__name__}"
                raise ValueError(
                    f"Expected argument `layer` to name an `nn.Linear` of {type(pl_module).__name__}, but got "
                    f"{self.layer!r} ({kind}); its linear layers: {_linear_names(modules)}"
                )
            return self.layer, found
        linear = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
        fits = [(n, m) for n, m in linear if self.num_classes is None or m.out_features == self.num_classes]
        if not fits:
            raise ValueError(
                f"Expected {type(pl_module).__name__} to hold an `nn.Linear` with out_features=`num_classes`="
                f"{self.num_classes}, but its linear layers are {_linear_names(modules)}: name one with `layer`"
            )
        return fits[-1]

    # --- collecting --------------------------------------------------------------------------------------------------

    def _capture(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self._stage is not None:
            self._captured = (args[0] if args else kwargs["input"]).detach()

    def _reset(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # On the module's device from the start: a process with no batch must still join the sync on that device.
        self._metrics[stage].to(pl_module.device).reset()
        seed = (
            (self.seed * 2 + _STAGES.index(stage)) * 1_000_003 + trainer.current_epoch
        ) * 1_009 + trainer.global_rank
        self._samples[stage].reset(pl_module.device, seed)

    def _consume(self, stage: str, batch: Any) -> None:
        features, self._captured, self._stage = self._captured, None, None
        pair = self._pair(features, batch)
        if isinstance(pair, str):
            if stage not in self._warned:
                self._warned.add(stage)
                rank_zero_warn(f"`PenultimateProjection` skips {stage} batches where {pair}.")
            return
        self._metrics[stage].update(*pair)
        self._samples[stage].update(*pair)

    def _pair(self, features: Tensor | None, batch: Any) -> tuple[Tensor, Tensor] | str:
        """The layer's ``(M, D)`` input rows and the ``(M,)`` labels of the batch, or why there are none."""
        if features is None:
            return f"{self.layer_name!r} was not called in the step"
        try:
            labels = batch_labels(batch)
        except TypeError:
            return f"the batch is neither an (input, target, ...) tuple nor a mapping with a key of {LABEL_KEYS}"
        if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
            return "the labels are not a tensor of class indices"
        features = features.reshape(-1, features.shape[-1])
        if labels.numel() != features.shape[0]:
            return f"{labels.numel()} labels come with {features.shape[0]} input rows of {self.layer_name!r}"
        return features, labels.reshape(-1).to(features.device)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._handle is not None:
            self._reset("train", trainer, pl_module)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._handle is not None and not trainer.sanity_checking:
            self._reset("val", trainer, pl_module)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._stage, self._captured = "train", None

    @override
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._stage, self._captured = (None if trainer.sanity_checking else "val"), None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._handle is not None:
            self._consume("train", batch)

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._handle is not None and not trainer.sanity_checking:
            self._consume("val", batch)

    # --- epoch ends: the numbers and the picture -------------------------------------------------------------------

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._handle is not None:
            value = _compute(self._metrics["train"])  # syncs the per-class sums: a collective under DDP
            pl_module.log(f"train/{RATIO_KEY}", value, on_step=False, on_epoch=True, sync_dist=False)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._handle is None or self._linear is None or trainer.sanity_checking:
            return
        stages = _STAGES if trainer.state.fn == TrainerFn.FITTING else ("val",)
        ratios = {stage: _compute(self._metrics[stage]) for stage in stages}  # collectives: every rank
        pl_module.log(f"val/{RATIO_KEY}", ratios["val"], on_step=False, on_epoch=True, sync_dist=False)
        weight = self._linear.weight.detach().cpu()
        self.projections = {}
        for stage in stages:
            features, labels = self._samples[stage].gathered(trainer)  # a collective: every rank
            self.projections[stage] = (project_to_template_plane(features, weight, self.classes), labels)
        if trainer.is_global_zero and self._can_plot:
            self._draw(trainer, {stage: float(ratios[stage]) for stage in stages})

    def _draw(self, trainer: pl.Trainer, ratios: dict[str, float]) -> None:
        from ls_lightning.metrics.plotting import plot_penultimate_projection, save_figure

        epoch, step = trainer.current_epoch, trainer.global_step
        names = {"train": f"train (epoch {epoch})", "val": f"validation (epoch {epoch}, step {step})"}
        panels = [
            (f"{names[stage]}\nwithin/between = {ratios[stage]:.4g}", *self.projections[stage]) for stage in ratios
        ]
        title = f"input of {self.layer_name!r}, classes {', '.join(map(str, self.classes))}"
        figure = plot_penultimate_projection(panels, self.classes, title=title)
        folder = Path(str(self.dirpath))
        path = save_figure(figure, folder / "penultimate" / f"val_epoch{epoch}.png", dpi=self.dpi)
        shutil.copyfile(path, folder / PROJECTION_FILE)
        if self.log_image:
            log_figure(trainer, PROJECTION_IMAGE, figure, step=step)


def _compute(metric: WithinBetweenRatio) -> Tensor:
    """``metric.compute()``; NaN without torchmetrics' warning when this process counted nothing (its share of a
    DDP run can be empty, and a skipped batch was warned about already)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The ``compute`` method of metric", category=UserWarning)
        return metric.compute()


def _check_int(name: str, value: Any, *, minimum: int | None = None, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"Expected argument `{name}` to be an integer{bound}, but got {value!r}")


def _linear_names(modules: dict[str, nn.Module]) -> list[str]:
    return [f"{n} ({m.in_features} -> {m.out_features})" for n, m in modules.items() if isinstance(m, nn.Linear)]
