"""Structured configs (schemas) of the Hydra app and the range checks run on a composed config before training.

The YAML files in ``ls_lightning/conf`` extend these dataclasses through their defaults lists
(``- /schedule_cosine_schema@_here_``), so OmegaConf type-checks every value when the config is composed. Ranges
(ε ∈ [0, 1], epochs ≥ 1, ...) are declared next to each field and checked by :func:`validate_config` once the config
is complete.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from ls_lightning.cli.checkpoint import LIGHTNING_CKPT_NAMES, check_checkpoint
from ls_lightning.cli.errors import ConfigValueError
from ls_lightning.cli.loggers import register_resolvers

# OmegaConf 2.3 reads annotations at run time and does not understand ``X | None``: the dataclasses below use
# ``Optional`` on purpose (hence the UP045 exemption).
# ruff: noqa: UP045

__all__ = [
    "BreastCancerDataConfig",
    "CNNConfig",
    "CalibrationConfig",
    "DataConfig",
    "DigitsDataConfig",
    "LabelSmoothingConfig",
    "MLPConfig",
    "MNIST1DCNNConfig",
    "MNIST1DDataConfig",
    "MNIST1DGRUConfig",
    "MNIST1DMLPConfig",
    "ModelConfig",
    "PathsConfig",
    "PriorConfig",
    "ScheduleConfig",
    "SyntheticDataConfig",
    "TextDataConfig",
    "TrainConfig",
    "TrainerConfig",
    "TransformerConfig",
    "defaults_of",
    "register_configs",
    "validate_config",
]


@dataclass(frozen=True)
class _Range:
    """Allowed values of a numeric field (or of each element of a list field); ``None`` bounds are open-ended."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False  # null is allowed as well
    hint: str = ""  # appended to the message, e.g. what to use instead

    def contains(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            if self.low == self.high:
                text = f"expected {self.low:g}"
            else:
                left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
                text = f"expected a value in {left}{self.low:g}, {self.high:g}{right}"
        elif self.low is not None:
            text = f"expected a value {'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = f"expected a value {'<' if self.high_open else '<='} {self.high:g}"
        text += " or null" if self.optional else ""
        return f"{text} ({self.hint})" if self.hint else text


@dataclass(frozen=True)
class _Choices:
    """Allowed values of a string field."""

    values: tuple[Any, ...]

    def contains(self, value: Any) -> bool:
        return value in self.values

    def describe(self) -> str:
        return "expected one of " + ", ".join(repr(v) for v in self.values)


def _ranged(default: Any, rule: _Range | _Choices) -> Any:
    """A dataclass field with a scalar default and a rule checked by :func:`validate_config`."""
    return field(default=default, metadata={"rule": rule})


_UNIT = _Range(0.0, 1.0)
_POSITIVE_UNIT = _Range(0.0, 1.0, low_open=True, hint="a geometric schedule never reaches 0")
_FRACTION = _Range(0.0, 1.0, low_open=True, high_open=True)
_POSITIVE_INT = _Range(1)
_NON_NEGATIVE = _Range(0)


# --- label smoothing ---------------------------------------------------------------------------------------------


@dataclass
class ScheduleConfig:
    """Base of the ``label_smoothing/schedule`` options: ``_target_`` is a class of :mod:`ls_lightning.schedules`."""

    _target_: str = MISSING


@dataclass
class NoneScheduleConfig(ScheduleConfig):
    """No smoothing: ε = 0 throughout (the callback still logs ``train/epsilon``)."""

    _target_: str = "ls_lightning.smoothing.Constant"
    epsilon: float = _ranged(0.0, _Range(0.0, 0.0, hint="schedule none means no smoothing; use constant"))


@dataclass
class ConstantScheduleConfig(ScheduleConfig):
    _target_: str = "ls_lightning.smoothing.Constant"
    epsilon: float = _ranged(0.1, _UNIT)


@dataclass
class LinearScheduleConfig(ScheduleConfig):
    _target_: str = "ls_lightning.smoothing.Linear"
    start: float = _ranged(0.1, _UNIT)
    end: float = _ranged(0.0, _UNIT)


@dataclass
class CosineScheduleConfig(ScheduleConfig):
    _target_: str = "ls_lightning.smoothing.Cosine"
    start: float = _ranged(0.1, _UNIT)
    end: float = _ranged(0.0, _UNIT)


@dataclass
class ExponentialScheduleConfig(ScheduleConfig):
    _target_: str = "ls_lightning.smoothing.Exponential"
    start: float = _ranged(0.1, _POSITIVE_UNIT)
    end: float = _ranged(0.001, _POSITIVE_UNIT)


@dataclass
class StepScheduleConfig(ScheduleConfig):
    _target_: str = "ls_lightning.smoothing.Step"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75], metadata={"rule": _UNIT})
    values: list[float] = field(default_factory=lambda: [0.1, 0.05, 0.0], metadata={"rule": _UNIT})


@dataclass
class TwoStageScheduleConfig(ScheduleConfig):
    _target_: str = "ls_lightning.smoothing.TwoStage"
    epsilon: float = _ranged(0.1, _UNIT)
    switch_at: float = _ranged(0.5, _UNIT)


@dataclass
class PriorConfig:
    """The prior u: ``uniform``, ``class_frequency`` (training labels), ``fixed`` (``values``) or ``online`` (OLS).

    ``spec`` is what the LabelSmoothing callback receives as ``prior``: the name, or the list for ``fixed``.
    """

    name: str = _ranged("uniform", _Choices(("uniform", "class_frequency", "fixed", "online")))
    values: Optional[list[float]] = None  # fixed only: a distribution over the C classes
    spec: Any = "uniform"


@dataclass
class LabelSmoothingConfig:
    schedule: ScheduleConfig = MISSING
    prior: PriorConfig = MISSING
    interval: str = _ranged("step", _Choices(("step", "epoch")))
    total_steps: Optional[int] = _ranged(None, _Range(1, optional=True))
    # the loss: label smoothing or a relative (ls_lightning.losses.objectives); the schedule weighs it (ε, β or λ)
    objective: str = _ranged(
        "label_smoothing", _Choices(("label_smoothing", "confidence_penalty", "focal", "flsd53", "mbls"))
    )
    focal_gamma: float = _ranged(3.0, _Range(0.0))  # γ of objective=focal
    margin: float = _ranged(10.0, _Range(0.0))  # m of objective=mbls


# --- data and model ----------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    # the task of the data module's labels (its `task` attribute): not a config key, read by the checks below
    task: ClassVar[str] = "multiclass"

    _target_: str = MISSING
    batch_size: int = _ranged(64, _POSITIVE_INT)
    num_workers: int = _ranged(0, _NON_NEGATIVE)


@dataclass
class DigitsDataConfig(DataConfig):
    _target_: str = "ls_lightning.cli.data.DigitsDataModule"
    val_fraction: float = _ranged(0.2, _FRACTION)
    test_fraction: float = _ranged(0.2, _FRACTION)
    split_seed: int = 0


@dataclass
class BreastCancerDataConfig(DataConfig):
    task: ClassVar[str] = "binary"

    _target_: str = "ls_lightning.cli.data.BreastCancerDataModule"
    batch_size: int = _ranged(32, _POSITIVE_INT)
    val_fraction: float = _ranged(0.2, _FRACTION)
    test_fraction: float = _ranged(0.2, _FRACTION)
    split_seed: int = 0


@dataclass
class SyntheticDataConfig(DataConfig):
    _target_: str = "ls_lightning.cli.data.SyntheticDataModule"
    num_classes: int = _ranged(10, _Range(2))
    num_features: int = _ranged(20, _POSITIVE_INT)
    num_train: int = _ranged(2000, _POSITIVE_INT)
    num_val: int = _ranged(500, _POSITIVE_INT)
    num_test: int = _ranged(500, _POSITIVE_INT)
    class_sep: float = _ranged(1.0, _Range(0.0))
    label_noise: float = _ranged(0.0, _UNIT)
    seed: int = 0


@dataclass
class TextDataConfig(DataConfig):
    _target_: str = "ls_lightning.cli.data.TextDataModule"
    batch_size: int = _ranged(16, _POSITIVE_INT)
    vocab_size: int = _ranged(8192, _Range(258, hint="the 256 bytes and 2 special tokens"))
    block_size: int = _ranged(64, _POSITIVE_INT)
    max_corpus_bytes: int = _ranged(1_000_000, _POSITIVE_INT)
    val_fraction: float = _ranged(0.03, _FRACTION)
    test_fraction: float = _ranged(0.03, _FRACTION)
    train_sequences_per_epoch: Optional[int] = _ranged(256, _Range(1, optional=True))
    min_frequency: int = _ranged(2, _POSITIVE_INT)
    split_seed: int = 0
    cache_dir: Optional[str] = None


@dataclass
class MNIST1DDataConfig(DataConfig):
    _target_: str = "ls_lightning.cli.data.MNIST1DDataModule"
    batch_size: int = _ranged(100, _POSITIVE_INT)
    val_fraction: float = _ranged(0.1, _FRACTION)
    train_sequences_per_epoch: Optional[int] = _ranged(30000, _Range(1, optional=True))
    # false: every pass over the training split in one fixed order, as the authors' training loop takes it
    shuffle: bool = True
    num_samples: int = _ranged(
        5000, _Range(10, hint="a multiple of 10: make_dataset takes num_samples // 10 per class")
    )
    train_split: float = _ranged(0.8, _FRACTION)
    shuffle_seq: bool = False
    seed: int = 42
    split_seed: int = 0
    cache_dir: Optional[str] = None


@dataclass
class ModelConfig:
    _target_: str = MISSING
    lr: float = _ranged(1e-3, _Range(0.0, low_open=True))
    weight_decay: float = _ranged(0.0, _Range(0.0))
    # "batch": each step's loss is its batch's mean; "step": the mean over all counted positions of the optimizer
    # step's micro-batches on all processes (padded sequences, accumulation, DDP), see ls_lightning.integration
    loss_normalization: str = _ranged("batch", _Choices(("batch", "step")))


@dataclass
class MLPConfig(ModelConfig):
    _target_: str = "ls_lightning.cli.models.MLP"
    lr: float = _ranged(0.005, _Range(0.0, low_open=True))
    hidden_sizes: list[int] = field(default_factory=lambda: [128], metadata={"rule": _POSITIVE_INT})
    dropout: float = _ranged(0.0, _Range(0.0, 1.0, high_open=True))


@dataclass
class CNNConfig(ModelConfig):
    _target_: str = "ls_lightning.cli.models.CNN"
    image_size: int = _ranged(8, _POSITIVE_INT)
    channels: list[int] = field(default_factory=lambda: [16, 32], metadata={"rule": _POSITIVE_INT})
    hidden_size: int = _ranged(64, _POSITIVE_INT)
    dropout: float = _ranged(0.0, _Range(0.0, 1.0, high_open=True))


@dataclass
class TransformerConfig(ModelConfig):
    _target_: str = "ls_lightning.cli.models.Transformer"
    d_model: int = _ranged(128, _POSITIVE_INT)
    num_layers: int = _ranged(2, _POSITIVE_INT)
    num_heads: int = _ranged(4, _POSITIVE_INT)
    dim_feedforward: int = _ranged(512, _POSITIVE_INT)
    dropout: float = _ranged(0.0, _Range(0.0, 1.0, high_open=True))
    tie_weights: bool = True
    lr: float = _ranged(0.002, _Range(0.0, low_open=True))


@dataclass
class MNIST1DMLPConfig(ModelConfig):
    _target_: str = "ls_lightning.cli.models.MNIST1DMLP"
    lr: float = _ranged(1e-2, _Range(0.0, low_open=True))
    hidden_size: int = _ranged(100, _POSITIVE_INT)


@dataclass
class MNIST1DCNNConfig(ModelConfig):
    _target_: str = "ls_lightning.cli.models.MNIST1DCNN"
    lr: float = _ranged(1e-2, _Range(0.0, low_open=True))
    channels: int = _ranged(25, _POSITIVE_INT)


@dataclass
class MNIST1DGRUConfig(ModelConfig):
    _target_: str = "ls_lightning.cli.models.MNIST1DGRU"
    lr: float = _ranged(1e-2, _Range(0.0, low_open=True))
    hidden_size: int = _ranged(6, _POSITIVE_INT)
    bidirectional: bool = True


# --- trainer, paths, root ----------------------------------------------------------------------------------------


@dataclass
class TrainerConfig:
    """Every scalar argument of ``lightning.pytorch.Trainer``; ``Any`` where Lightning takes a union."""

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "auto"
    # a registered name (auto, ddp, ddp_spawn, ...) or a strategy node with a ``_target_`` (trainer=fsdp)
    strategy: Any = "auto"
    devices: Any = 1
    num_nodes: int = _ranged(1, _POSITIVE_INT)
    precision: Any = None
    fast_dev_run: Any = False
    max_epochs: Optional[int] = _ranged(None, _Range(1, optional=True))
    min_epochs: Optional[int] = _ranged(None, _Range(0, optional=True))
    max_steps: int = _ranged(-1, _Range(-1))
    min_steps: Optional[int] = _ranged(None, _Range(0, optional=True))
    max_time: Optional[str] = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    overfit_batches: Any = 0.0
    val_check_interval: Any = None
    check_val_every_n_epoch: Optional[int] = _ranged(1, _Range(1, optional=True))
    num_sanity_val_steps: Optional[int] = _ranged(None, _Range(-1, optional=True))
    log_every_n_steps: Optional[int] = _ranged(None, _Range(1, optional=True))
    enable_checkpointing: Optional[bool] = None
    enable_progress_bar: Optional[bool] = None
    enable_model_summary: Optional[bool] = None
    accumulate_grad_batches: int = _ranged(1, _POSITIVE_INT)
    gradient_clip_val: Optional[float] = _ranged(None, _Range(0.0, optional=True))
    gradient_clip_algorithm: Optional[str] = None
    deterministic: Any = None
    benchmark: Optional[bool] = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: Optional[str] = None
    detect_anomaly: bool = False
    barebones: bool = False
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = _ranged(0, _NON_NEGATIVE)
    default_root_dir: Optional[str] = None


@dataclass
class PathsConfig:
    output_dir: str = MISSING
    checkpoint_dir: str = MISSING


@dataclass
class CalibrationConfig:
    """What a run shows of calibration besides the logged measures (booleans: OmegaConf rejects anything else)."""

    # reliability diagrams of every validation and reliability.json (ls_lightning.integration.ReliabilityDiagram)
    diagrams: bool = True
    # fit T on the validation logits, log val/temperature and val/ece_ts (keeps the logits: O(N·C) memory)
    temperature_scaling: bool = False
    # the penultimate layer's activations projected on the plane of three classes' templates (Müller et al. 2019) and
    # {stage}/penultimate_within_between (ls_lightning.integration.PenultimateProjection)
    penultimate: bool = False


@dataclass
class TrainConfig:
    """The root of ``train.yaml`` and ``eval.yaml``."""

    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    label_smoothing: LabelSmoothingConfig = field(default_factory=LabelSmoothingConfig)
    trainer: TrainerConfig = MISSING
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    logger: Any = None
    callbacks: Any = None
    paths: PathsConfig = MISSING
    task_name: str = "train"
    seed: int = 0
    ckpt_path: Optional[str] = None
    optimized_metric: Optional[str] = None
    # torch's intra-op threads (ls_lightning.cli.threads.set_num_threads); null: OMP_NUM_THREADS, else the idle cores
    num_threads: Optional[int] = _ranged(None, _Range(1, optional=True))


def defaults_of(schema: type) -> dict[str, Any]:
    """The default of every field of a structured config but ``_target_`` (lists as tuples): the one source of the
    defaults of the class it configures, whose signature reads them from here.

    Example:
        >>> defaults_of(MLPConfig)["hidden_sizes"]
        (128,)
    """
    found = {}
    for item in fields(schema):
        if item.name == "_target_":
            continue
        value = item.default_factory() if item.default_factory is not MISSING_FIELD else item.default
        found[item.name] = tuple(value) if isinstance(value, list) else value
    return found


# Root-level names (no group): a schema stored as an option of its group (``data/digits_schema``) would be listed
# among the valid options when a group option is mistyped. A YAML file extends one with ``- /<name>@_here_``.
_SCHEMAS: dict[str, type] = {
    "train_schema": TrainConfig,
    "data_digits_schema": DigitsDataConfig,
    "data_breast_cancer_schema": BreastCancerDataConfig,
    "data_synthetic_schema": SyntheticDataConfig,
    "data_text_schema": TextDataConfig,
    "data_mnist1d_schema": MNIST1DDataConfig,
    "model_mlp_schema": MLPConfig,
    "model_cnn_schema": CNNConfig,
    "model_transformer_schema": TransformerConfig,
    "model_mnist1d_mlp_schema": MNIST1DMLPConfig,
    "model_mnist1d_cnn_schema": MNIST1DCNNConfig,
    "model_mnist1d_gru_schema": MNIST1DGRUConfig,
    "schedule_none_schema": NoneScheduleConfig,
    "schedule_constant_schema": ConstantScheduleConfig,
    "schedule_linear_schema": LinearScheduleConfig,
    "schedule_cosine_schema": CosineScheduleConfig,
    "schedule_exponential_schema": ExponentialScheduleConfig,
    "schedule_step_schema": StepScheduleConfig,
    "schedule_two_stage_schema": TwoStageScheduleConfig,
    "prior_schema": PriorConfig,
    "trainer_schema": TrainerConfig,
    "paths_schema": PathsConfig,
}


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore under the root-level names the YAML files extend, and register the
    resolver ``${ls_wandb_mode:}`` of ``logger=wandb`` (:func:`ls_lightning.cli.loggers.wandb_mode`); idempotent.
    """
    store = ConfigStore.instance()
    for name, node in _SCHEMAS.items():
        store.store(name=name, node=node)
    register_resolvers()


# --- validation --------------------------------------------------------------------------------------------------


def validate_config(cfg: DictConfig, *, require_ckpt: bool = False) -> None:
    """Check every ranged field of a composed config, and the checkpoint path, before anything is built.

    Args:
        cfg: the composed config (``train.yaml`` or ``eval.yaml``).
        require_ckpt: whether ``ckpt_path`` must be set (``ls-eval``).

    Raises:
        ConfigValueError: naming each key whose value is out of range, as ``key=value is out of range: expected ...``.
        CheckpointError: if ``ckpt_path`` names no readable checkpoint of plain data (:func:`check_checkpoint`).
    """
    errors = [message for key in cfg if key != "hydra" for message in _check_root_item(cfg, str(key))]
    if not errors:  # the schedule's own checks would repeat a range error
        errors += _check_schedule(cfg) + _check_prior(cfg)
    errors += _check_ckpt(cfg, require_ckpt)
    if errors:
        raise ConfigValueError(errors)
    if cfg.ckpt_path is not None:  # read only once the values are right: it imports torch
        check_checkpoint(cfg.ckpt_path)


def _check_root_item(cfg: DictConfig, key: str) -> Iterator[str]:
    if OmegaConf.is_missing(cfg, key):
        return
    rule = next((f.metadata["rule"] for f in fields(TrainConfig) if f.name == key and "rule" in f.metadata), None)
    if rule is not None:  # a ranged key at the root (num_threads)
        yield from _check_value(key, cfg[key], rule)
    elif isinstance(cfg[key], DictConfig):
        yield from _check(cfg[key], key)


def _check(node: DictConfig, key: str) -> Iterator[str]:
    """Yield a message for each ranged field of ``node`` and its children whose value breaks its rule."""
    schema = OmegaConf.get_type(node)
    rules = {f.name: f.metadata["rule"] for f in fields(schema) if "rule" in f.metadata} if is_dataclass(schema) else {}
    for name in map(str, node):  # the keys of a composed config are strings
        path, rule = f"{key}.{name}", rules.get(name)
        if OmegaConf.is_missing(node, name):
            continue
        if rule is not None:
            yield from _check_value(path, node[name], rule)
        # interpolations are left alone: `${hydra:...}` needs a running app, and a node is checked where it lives
        elif not OmegaConf.is_interpolation(node, name) and isinstance(node[name], DictConfig):
            yield from _check(node[name], path)


def _check_value(path: str, value: Any, rule: _Range | _Choices) -> Iterator[str]:
    values = list(value) if isinstance(value, ListConfig) else [value]
    if not all(rule.contains(v) for v in values):
        shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
        yield f"{path}={_show(shown)} is out of range: {rule.describe()}"


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def _check_schedule(cfg: DictConfig) -> list[str]:
    """Let the schedule class check what ranges cannot (e.g. ``Step``'s lengths and ordering)."""
    from hydra.utils import instantiate

    schedule = OmegaConf.select(cfg, "label_smoothing.schedule")
    if schedule is None:
        return []
    try:
        instantiate(schedule)
    except Exception as error:  # Hydra wraps the schedule's ValueError in an InstantiationException
        cause = error.__cause__ or error
        return [f"label_smoothing.schedule: {cause}"]
    return []


def _check_prior(cfg: DictConfig) -> list[str]:
    """A binary task takes no prior, and a ``fixed`` prior must be a distribution: checked before anything is built."""
    prior = OmegaConf.select(cfg, "label_smoothing.prior")
    if prior is None or prior.get("name") == "uniform":
        return []
    data = OmegaConf.select(cfg, "data")
    schema = OmegaConf.get_type(data) if isinstance(data, DictConfig) else None
    if isinstance(schema, type) and issubclass(schema, DataConfig) and schema.task == "binary":
        return [
            f"label_smoothing/prior={prior.name} does not apply to a binary task ({data.get('_target_')}): a binary"
            " label is smoothed towards 1/2 and takes no prior; use label_smoothing/prior=uniform and a"
            " label_smoothing/variant without a prior"
        ]
    if prior.get("name") != "fixed":
        return []
    if OmegaConf.is_missing(prior, "values") or prior["values"] is None:
        return ["label_smoothing.prior.values is required with label_smoothing/prior=fixed: a list of C floats"]
    from ls_lightning.losses import fixed_prior

    values = list(prior["values"])
    try:
        fixed_prior(values)
    except (TypeError, ValueError) as error:
        return [f"label_smoothing.prior.values={values} is not a distribution: {error}"]
    return []


def _check_ckpt(cfg: DictConfig, require: bool) -> list[str]:
    if OmegaConf.is_missing(cfg, "ckpt_path") or (require and cfg.ckpt_path is None):
        return ["ckpt_path is required: pass ckpt_path=PATH/TO/checkpoint.ckpt"]
    path = cfg.ckpt_path
    if path is not None and path not in LIGHTNING_CKPT_NAMES and not os.path.exists(path):
        return [f"ckpt_path={path} is not a file: nothing exists at that path"]
    return []
