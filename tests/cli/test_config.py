"""Composition of every config group option, structured-config typing and the range checks of the Hydra app."""

from __future__ import annotations

import dataclasses
import inspect
import re
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from ls_lightning import LabelSmoothing
from ls_lightning.cli import config as schemas
from ls_lightning.cli.config import validate_config
from ls_lightning.cli.data import (
    TensorDataModule,
)
from ls_lightning.cli.errors import ConfigValueError
from ls_lightning.cli.models import Classifier
from ls_lightning.cli.run import build_run
from ls_lightning.smoothing import Constant, Cosine, Exponential, Linear, Step, TwoStage

CONF = resources.files("ls_lightning.conf")
GROUPS = ("data", "model", "label_smoothing/schedule", "label_smoothing/prior", "trainer", "logger", "callbacks")


def _options(group: str) -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in CONF.joinpath(group).iterdir() if p.name.endswith(".yaml"))


def make_cfg(overrides: list[str], tmp_path: Path, config_name: str = "train") -> DictConfig:
    """Compose a config as the app does, with the run directory in ``tmp_path`` (no Hydra run is active)."""
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        return compose(config_name, overrides=[*overrides, f"paths.output_dir={tmp_path}"])


def test_groups_hold_the_options_of_the_design() -> None:
    assert _options("label_smoothing/schedule") == sorted(
        ["none", "constant", "linear", "cosine", "exponential", "step", "two_stage"]
    )
    assert _options("trainer") == ["cpu", "ddp", "ddp_cpu", "default", "fsdp", "fsdp_cpu", "gpu", "slurm"]
    assert _options("logger") == ["csv", "many", "mlflow", "none", "tensorboard", "wandb"]
    assert {"digits", "synthetic"} <= set(_options("data"))
    assert {"mlp", "cnn"} <= set(_options("model"))
    assert _options("label_smoothing/prior") == ["class_frequency", "fixed", "online", "uniform"]


def test_defaults(tmp_path: Path) -> None:
    cfg = make_cfg([], tmp_path)
    validate_config(cfg)
    assert OmegaConf.get_type(cfg) is schemas.TrainConfig
    assert OmegaConf.get_type(cfg.data) is schemas.DigitsDataConfig
    assert OmegaConf.get_type(cfg.model) is schemas.MLPConfig
    assert OmegaConf.get_type(cfg.label_smoothing.schedule) is schemas.ConstantScheduleConfig
    assert cfg.label_smoothing.schedule.epsilon == 0.1
    assert cfg.label_smoothing.prior.name == "uniform"
    assert cfg.seed == 0 and cfg.ckpt_path is None
    assert list(cfg.logger) == ["csv"]
    assert cfg.callbacks.model_checkpoint.filename == "last" and cfg.callbacks.model_checkpoint.every_n_epochs == 1
    assert cfg.trainer.default_root_dir == str(tmp_path)


def _class_default(cls: type, name: str) -> object:
    """The default of ``cls``'s argument ``name``: from the first class of its MRO whose ``__init__`` names it."""
    for klass in cls.__mro__:
        parameter = inspect.signature(klass.__init__).parameters.get(name)
        if parameter is not None:
            return parameter.default
    raise AssertionError(f"{cls.__name__} takes no argument {name!r}")


@pytest.mark.parametrize("group", ["data", "model"])
def test_the_class_the_config_and_the_yaml_agree_on_every_default(group: str, tmp_path: Path) -> None:
    """One source per default: each built-in class's argument defaults are its structured config's field defaults,
    and each option's YAML sets only the keys whose value differs from them (e.g. `mnist1d_linear`'s MLP without
    hidden layers); `ls-train` then builds what the class would be by default."""
    for option in _options(group):
        schema = OmegaConf.get_type(make_cfg([f"{group}={option}"], tmp_path)[group])
        assert dataclasses.is_dataclass(schema), option
        raw = yaml.safe_load(CONF.joinpath(group, f"{option}.yaml").read_text())
        cls = get_class(raw["_target_"])
        for item in dataclasses.fields(schema):
            if item.name == "_target_":
                continue
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            ours = _class_default(cls, item.name)
            assert list(ours) == default if isinstance(default, list) else ours == default, (option, item.name)
            if item.name in raw:
                assert raw[item.name] != default, f"{group}/{option}.yaml repeats the default {item.name}={default!r}"


# options that cannot run on their defaults alone
OPTION_NEEDS = {"fixed": ["label_smoothing.prior.values=[0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1]"]}


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_and_builds(group: str, tmp_path: Path) -> None:
    for option in _options(group):
        overrides = [f"{group}={option}", *OPTION_NEEDS.get(option, [])]
        if torch.cuda.device_count() < {"gpu": 1, "ddp": 2, "fsdp": 2, "slurm": 1}.get(option, 0):
            cfg = make_cfg(overrides, tmp_path)
            validate_config(cfg)  # composes and type-checks; building a GPU trainer needs a GPU
            assert cfg.trainer.accelerator == "gpu"
            continue
        cfg = make_cfg(overrides, tmp_path)
        validate_config(cfg)
        run = build_run(cfg)
        assert run.trainer.default_root_dir == str(tmp_path)
        assert isinstance(run.model, Classifier)
        assert isinstance(run.datamodule, TensorDataModule)


SCHEDULES = {
    "none": Constant(0.0),
    "constant": Constant(0.1),
    "linear": Linear(0.1, 0.0),
    "cosine": Cosine(0.1, 0.0),
    "exponential": Exponential(0.1, 0.001),
    "step": Step([0.5, 0.75], [0.1, 0.05, 0.0]),
    "two_stage": TwoStage(0.1, 0.5),
}


@pytest.mark.parametrize(("option", "expected"), SCHEDULES.items())
def test_schedule_reaches_the_callback(option: str, expected: object, tmp_path: Path) -> None:
    run = build_run(make_cfg([f"label_smoothing/schedule={option}"], tmp_path))
    callback = next(c for c in run.trainer.callbacks if isinstance(c, LabelSmoothing))
    assert callback.schedule == expected and run.schedule == expected
    assert callback.interval == "step" and callback.total_steps is None
    assert run.model.label_smoothing == expected(0.0)  # type: ignore[operator]


def test_overrides_of_the_design(tmp_path: Path) -> None:
    cfg = make_cfg(
        [
            "label_smoothing/schedule=cosine",
            "label_smoothing.schedule.start=0.2",
            "trainer.max_epochs=3",
            "seed=1",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy=ddp",
            "label_smoothing.interval=epoch",
        ],
        tmp_path,
    )
    validate_config(cfg)
    assert cfg.label_smoothing.schedule.start == 0.2 and cfg.trainer.max_epochs == 3 and cfg.seed == 1
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.strategy) == ("cpu", 2, "ddp")
    assert make_cfg(["label_smoothing.schedule.epsilon=0.2"], tmp_path).label_smoothing.schedule.epsilon == 0.2


def test_class_frequency_prior_is_the_class_frequency_of_the_train_split(tmp_path: Path) -> None:
    cfg = make_cfg(
        [
            "label_smoothing/prior=class_frequency",
            "data=synthetic",
            "data.num_train=7",
            "data.num_classes=3",
            "trainer.fast_dev_run=1",
            "logger=none",
        ],
        tmp_path,
    )
    run = build_run(cfg)
    assert run.model.label_smoothing_prior is None  # type: ignore[attr-defined]  # set by the callback at fit start
    run.trainer.fit(run.model, datamodule=run.datamodule)
    labels = run.datamodule.splits["train"].tensors[1]  # type: ignore[attr-defined]
    expected = torch.tensor([(labels == c).float().mean().item() for c in range(3)])
    torch.testing.assert_close(run.model.label_smoothing_prior, expected)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], "uniform"),
        (["label_smoothing/prior=online"], "online"),
        (["label_smoothing/prior=fixed", "label_smoothing.prior.values=[0.5,0.25,0.25]"], [0.5, 0.25, 0.25]),
    ],
)
def test_prior_reaches_the_callback(tmp_path: Path, overrides: list[str], expected: object) -> None:
    cfg = make_cfg(overrides, tmp_path)
    validate_config(cfg)
    (callback,) = [c for c in build_run(cfg).trainer.callbacks if isinstance(c, LabelSmoothing)]  # type: ignore[attr-defined]
    prior = callback.prior_callback.prior
    assert prior == expected or torch.equal(torch.as_tensor(prior), torch.tensor(expected))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["label_smoothing/prior=fixed"], "label_smoothing.prior.values is required"),
        (["label_smoothing/prior=fixed", "label_smoothing.prior.values=[0.5,0.6]"], "label_smoothing.prior.values="),
        (["label_smoothing/prior=fixed", "label_smoothing.prior.values=[-0.5,1.5]"], "label_smoothing.prior.values="),
    ],
)
def test_fixed_prior_must_be_a_distribution(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigValueError, match=re.escape(message)):
        validate_config(make_cfg(overrides, tmp_path))


def test_experiments_compose(tmp_path: Path) -> None:
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=compare_schedules"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = cfg.hydra.sweeper.params
    assert params["label_smoothing/variant"].split(",") == ["none", "constant", "cosine", "two_stage", "online"]
    cfg = make_cfg(["experiment=cnn_digits"], tmp_path)
    validate_config(cfg)
    assert OmegaConf.get_type(cfg.model) is schemas.CNNConfig
    assert OmegaConf.get_type(cfg.label_smoothing.schedule) is schemas.CosineScheduleConfig


def test_eval_config_requires_a_checkpoint(tmp_path: Path) -> None:
    cfg = make_cfg([], tmp_path, config_name="eval")
    assert cfg.task_name == "eval"
    with pytest.raises(ConfigValueError, match="ckpt_path is required"):
        validate_config(cfg, require_ckpt=True)
    with pytest.raises(ConfigValueError, match="is not a file"):
        validate_config(make_cfg([f"ckpt_path={tmp_path}/nope.ckpt"], tmp_path, "eval"), require_ckpt=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["label_smoothing.schedule.epsilon=1.5"],
            "label_smoothing.schedule.epsilon=1.5 is out of range: expected a value in [0, 1]",
        ),
        (["label_smoothing.schedule.epsilon=-0.1"], "label_smoothing.schedule.epsilon=-0.1 is out of range"),
        (["trainer.max_epochs=-1"], "trainer.max_epochs=-1 is out of range: expected a value >= 1 or null"),
        (
            ["label_smoothing/schedule=exponential", "label_smoothing.schedule.end=0"],
            "label_smoothing.schedule.end=0.0 is out of range: expected a value in (0, 1]",
        ),
        (
            ["label_smoothing/schedule=step", "label_smoothing.schedule.values=[0.1,1.2,0]"],
            "label_smoothing.schedule.values=[0.1, 1.2, 0.0] is out of range",
        ),
        (
            ["label_smoothing/schedule=step", "label_smoothing.schedule.values=[0.1,0.2]"],
            "label_smoothing.schedule: Expected argument `values` to hold",
        ),
        (["label_smoothing/schedule=none", "label_smoothing.schedule.epsilon=0.1"], "schedule none means no smoothing"),
        (
            ["label_smoothing.interval=batch"],
            "label_smoothing.interval=batch is out of range: expected one of 'step', 'epoch'",
        ),
        (["data.val_fraction=1.0"], "data.val_fraction=1.0 is out of range: expected a value in (0, 1)"),
        (["data.batch_size=0"], "data.batch_size=0 is out of range: expected a value >= 1"),
        (["model.dropout=1"], "model.dropout=1.0 is out of range: expected a value in [0, 1)"),
        (["model.hidden_sizes=[0]"], "model.hidden_sizes=[0] is out of range"),
        (["data=synthetic", "data.label_noise=2"], "data.label_noise=2.0 is out of range: expected a value in [0, 1]"),
    ],
)
def test_out_of_range_values_name_the_key(overrides: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigValueError) as info:
        validate_config(make_cfg(overrides, tmp_path))
    assert message in str(info.value)


def test_all_range_errors_are_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigValueError) as info:
        validate_config(make_cfg(["label_smoothing.schedule.epsilon=2", "trainer.max_epochs=0"], tmp_path))
    assert [e.split("=")[0] for e in info.value.errors] == ["label_smoothing.schedule.epsilon", "trainer.max_epochs"]


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["trainer.max_epochs=abc"], ConfigCompositionException, "trainer.max_epochs"),
        (["seed=one"], ConfigCompositionException, "seed"),
        (
            ["label_smoothing/schedule=cosine", "label_smoothing.schedule.epsilon=0.2"],
            ConfigCompositionException,
            "epsilon",
        ),
        (["label_smoothing/schedule=warmup"], MissingConfigException, "label_smoothing/schedule/warmup"),
    ],
)
def test_composition_type_checks(overrides: list[str], error: type, message: str, tmp_path: Path) -> None:
    with pytest.raises(error) as info:
        make_cfg(overrides, tmp_path)
    assert message in str(info.value) + str(info.value.__cause__)


def test_bad_object_arguments_name_the_node(tmp_path: Path) -> None:
    cfg = make_cfg(["data=synthetic", "model=cnn"], tmp_path)
    with pytest.raises(
        ConfigValueError, match=r"model \(ls_lightning.cli.models.CNN\): Expected the data's `num_features`"
    ):
        build_run(cfg)


def test_fsdp_options_build_a_model_parallel_strategy_that_saves_one_file(tmp_path: Path) -> None:
    from lightning.pytorch.strategies import ModelParallelStrategy

    cfg = make_cfg(["trainer=fsdp_cpu"], tmp_path)
    validate_config(cfg)
    run = build_run(cfg)
    assert isinstance(run.trainer.strategy, ModelParallelStrategy)
    assert run.trainer.strategy.process_group_backend == "gloo" and run.trainer.num_devices == 2
    assert (cfg.trainer.strategy.data_parallel_size, cfg.trainer.strategy.tensor_parallel_size) == (2, 1)
    assert cfg.trainer.strategy.save_distributed_checkpoint is False  # last.ckpt: a file that ls-eval reads
    gpus = make_cfg(["trainer=fsdp", "trainer.devices=4"], tmp_path)
    validate_config(gpus)
    assert gpus.trainer.strategy.data_parallel_size == 4 and gpus.trainer.inference_mode is False


def test_log_options_from_hydra() -> None:
    from helpers import Net, quiet_trainer
    from hydra.utils import instantiate

    from ls_lightning.cli.config import register_configs
    from ls_lightning.integration import DEFAULT_LOG_METRICS

    register_configs()
    overrides = ["callbacks.label_smoothing.log_prefix=ls_", "callbacks.label_smoothing.log_metrics=[terms,acc]"]
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    node = cfg.callbacks.label_smoothing
    callback = instantiate(node, _convert_="all")
    assert callback.log_prefix == "ls_" and callback.log_metrics == ("terms", "acc")
    module = Net()
    module.trainer = quiet_trainer(callbacks=[callback])  # the mixin reads the settings its trainer's callbacks pass
    assert module.ls_log_prefix == "ls_" and module.ls_log_metrics == ("terms", "acc")
    module.trainer = None  # nothing was written on the module
    assert module.ls_log_prefix == "" and module.ls_log_metrics == DEFAULT_LOG_METRICS
