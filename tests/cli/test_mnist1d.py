"""data=mnist1d and the MNIST-1D paper's models: the generated splits against the authors' generator, the cache, the
models layer for layer against the authors' classes, a fast fit and the configs."""

from __future__ import annotations

import multiprocessing
import random
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ls_lightning.cli import config as schemas
from ls_lightning.cli.config import validate_config
from ls_lightning.cli.data import MNIST1DDataModule
from ls_lightning.cli.errors import ConfigValueError, MissingDependencyError
from ls_lightning.cli.mnist1d import load_or_generate_mnist1d, mnist1d_key, mnist1d_settings
from ls_lightning.cli.models import MLP, MNIST1DCNN, MNIST1DGRU, MNIST1DMLP
from ls_lightning.cli.run import build_run
from ls_lightning.cli.train import train

mnist1d_data = pytest.importorskip("mnist1d.data")

QUIET = [
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
SMALL = {"num_samples": 200}  # 160 training and 40 test sequences: generated in a few milliseconds


# ---- The paper's models (greydanus/mnist1d, models.py: LinearBase, MLPBase, ConvBase, GRUBase), restated here from
# their description as plain PyTorch: the parameter count the authors' code prints, and the forward pass written as
# functions of the parameters (in registration order), which our models must compute with the same weights.


def _linear(p: list[Tensor], x: Tensor) -> Tensor:
    return F.linear(x, p[0], p[1])


def _mlp(p: list[Tensor], x: Tensor) -> Tensor:
    """Linear-ReLU, a residual Linear-ReLU block of the hidden width, Linear."""
    h = F.linear(x, p[0], p[1]).relu()
    h = h + F.linear(h, p[2], p[3]).relu()
    return F.linear(h, p[4], p[5])


def _cnn(p: list[Tensor], x: Tensor) -> Tensor:
    """Three Conv1d-ReLU (kernel 5, 3, 3; stride 2; padding 1) on the (N, 1, 40) sequence, flattened, Linear."""
    h = x.view(-1, 1, x.shape[-1])
    h = F.conv1d(h, p[0], p[1], stride=2, padding=1).relu()
    h = F.conv1d(h, p[2], p[3], stride=2, padding=1).relu()
    h = F.conv1d(h, p[4], p[5], stride=2, padding=1).relu()
    return F.linear(h.flatten(1), p[6], p[7])


def _gru(p: list[Tensor], x: Tensor) -> Tensor:
    """A bidirectional GRU (hidden size 6) over the 40 steps from a zero state, all outputs flattened, Linear."""
    gru = nn.GRU(1, 6, batch_first=True, bidirectional=True).double()
    with torch.no_grad():
        for target, value in zip(gru.parameters(), p[:-2], strict=True):
            target.copy_(value)
    output, _ = gru(x.view(*x.shape[:2], 1))
    return F.linear(output.reshape(output.shape[0], -1), p[-2], p[-1])


# option: (the parameter count the authors' code prints, their forward)
PAPER_MODELS = {
    "mnist1d_linear": (410, _linear),
    "mnist1d_mlp": (15210, _mlp),
    "mnist1d_cnn": (5210, _cnn),
    "mnist1d_gru": (5134, _gru),
}


def make_cfg(overrides: list[str], output_dir: Path, hydra: bool = False) -> DictConfig:
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"], return_hydra_config=hydra)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the default (published) MNIST-1D, generated once for the module."""
    path = tmp_path_factory.mktemp("mnist1d-cache")
    load_or_generate_mnist1d(cache_dir=path)
    return path


@pytest.fixture(scope="module")
def reference() -> dict:
    """The authors' generator called directly, with its default arguments."""
    return mnist1d_data.make_dataset(mnist1d_data.get_dataset_args())


# ---- the data module


def test_splits_are_the_generated_sets(cache: Path, reference: dict) -> None:
    dm = MNIST1DDataModule(cache_dir=str(cache))
    dm.setup()
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (dm.splits[s].tensors for s in ("train", "val", "test"))
    assert (dm.num_features, dm.num_classes, dm.task) == (40, 10, "multiclass")
    assert x_train.shape == (3600, 40) and x_val.shape == (400, 40) and x_test.shape == (1000, 40)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    torch.testing.assert_close(x_test, torch.tensor(reference["x_test"], dtype=torch.float32), rtol=0, atol=0)
    assert torch.equal(y_test, torch.tensor(reference["y_test"]))
    # train and val are a partition of the generated training set: sort the rows to compare them as sets
    x, y = torch.cat([x_train, x_val]), torch.cat([y_train, y_val])
    expected_x, expected_y = torch.tensor(reference["x"], dtype=torch.float32), torch.tensor(reference["y"])
    ours, theirs = (
        _sorted_rows(torch.cat([x, y[:, None].float()], 1)),
        _sorted_rows(torch.cat([expected_x, expected_y[:, None].float()], 1)),
    )
    assert torch.equal(ours, theirs)


def _sorted_rows(a: torch.Tensor) -> torch.Tensor:
    for column in reversed(range(a.shape[1])):
        a = a[a[:, column].argsort(stable=True)]
    return a


def test_the_split_is_fixed_by_split_seed(cache: Path) -> None:
    first, again, other = (MNIST1DDataModule(cache_dir=str(cache), split_seed=s) for s in (0, 0, 1))
    for dm in (first, again, other):
        dm.setup()
    assert torch.equal(first.splits["val"].tensors[0], again.splits["val"].tensors[0])
    assert not torch.equal(first.splits["val"].tensors[0], other.splits["val"].tensors[0])


def test_an_epoch_is_train_sequences_per_epoch(cache: Path) -> None:
    dm = MNIST1DDataModule(cache_dir=str(cache), train_sequences_per_epoch=300)
    dm.setup()
    assert len(dm.train_dataloader()) == 3
    dm = MNIST1DDataModule(cache_dir=str(cache), train_sequences_per_epoch=None)
    dm.setup()
    assert len(dm.train_dataloader()) == 36  # one pass over 3600 sequences in batches of 100


def test_shuffle_false_takes_the_training_split_in_the_authors_fixed_order(cache: Path) -> None:
    """The authors' loop (train.py of greydanus/mnist1d, restated): step s trains on the rows
    [(s·B) mod N, (s·B) mod N + B) of the training set, in its order; ours on the 3600 rows of its training split."""
    dm = MNIST1DDataModule(cache_dir=str(cache), shuffle=False)
    dm.setup()
    x_train = dm.splits["train"].tensors[0]
    loader = dm.train_dataloader()
    sampler = loader.sampler
    steps = []
    for epoch in range(2):  # 2 × 300 steps: 600 steps cycle through the 36 batches of the split 16 times and more
        sampler.set_epoch(epoch)
        steps += [x for x, _ in loader]
    batch, size = 100, len(x_train)
    for step, x in enumerate(steps):
        start = (step * batch) % size
        assert torch.equal(x, x_train[start : start + batch]), step
    one_pass = MNIST1DDataModule(cache_dir=str(cache), shuffle=False, train_sequences_per_epoch=None)
    one_pass.setup()
    assert torch.equal(torch.cat([x for x, _ in one_pass.train_dataloader()]), x_train)
    shuffled = MNIST1DDataModule(cache_dir=str(cache))
    shuffled.setup()
    assert not torch.equal(next(iter(shuffled.train_dataloader()))[0], x_train[:batch])
    with pytest.raises(ValueError, match="`shuffle` to be a bool"):
        MNIST1DDataModule(cache_dir=str(cache), shuffle="no")


def test_generating_leaves_the_global_generators_alone(tmp_path: Path) -> None:
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    load_or_generate_mnist1d(**SMALL, cache_dir=tmp_path)  # make_dataset seeds both with 42
    assert (random.random(), np.random.rand()) == expected


def test_generated_once_then_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_or_generate_mnist1d(**SMALL, cache_dir=tmp_path)
    assert first.generated and first.path.parent == tmp_path / "mnist1d"
    monkeypatch.setattr(mnist1d_data, "make_dataset", _refuse)
    second = load_or_generate_mnist1d(**SMALL, cache_dir=tmp_path)
    assert not second.generated and second.path == first.path
    for name, array in first.arrays.items():
        np.testing.assert_array_equal(second.arrays[name], array)
    # other settings are another file
    keys = {mnist1d_key(mnist1d_settings(n, 0.8, shuffle, 42)) for n in (100, 200) for shuffle in (False, True)}
    assert len(keys) == 4


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("generated again")


def test_the_cache_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LS_LIGHTNING_CACHE", str(tmp_path))
    assert load_or_generate_mnist1d(**SMALL).path.parent == tmp_path / "mnist1d"


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError, match="disk full"):
        load_or_generate_mnist1d(**SMALL, cache_dir=tmp_path)
    assert list((tmp_path / "mnist1d").iterdir()) == []


def test_an_unreadable_cache_file_is_generated_again(tmp_path: Path) -> None:
    path = load_or_generate_mnist1d(**SMALL, cache_dir=tmp_path).path
    expected = np.load(path)["x"]
    path.write_bytes(b"truncated")
    again = load_or_generate_mnist1d(**SMALL, cache_dir=tmp_path)
    assert again.generated
    np.testing.assert_array_equal(np.load(path)["x"], expected)


def _load_in_process(cache_dir: str) -> np.ndarray:
    return load_or_generate_mnist1d(**SMALL, cache_dir=cache_dir).arrays["x"]


@pytest.mark.skipif(sys.platform != "linux", reason="forks the test process")
def test_processes_that_start_together_share_one_file(tmp_path: Path) -> None:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        first, second = pool.map(_load_in_process, [str(tmp_path)] * 2)
    np.testing.assert_array_equal(first, second)
    files = list((tmp_path / "mnist1d").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left


def test_generating_neither_downloads_nor_writes_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    workdir, cache_dir = tmp_path / "cwd", tmp_path / "cache"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    load_or_generate_mnist1d(**SMALL, cache_dir=cache_dir)
    assert list(workdir.iterdir()) == []  # get_dataset would have written mnist1d_data.pkl here
    assert [p.name for p in cache_dir.iterdir()] == ["mnist1d"]


def test_without_the_package_the_error_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(MissingDependencyError, match=r"pip install \"ls-lightning\[data\]\""):
        MNIST1DDataModule()


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("num_samples", 15),
        ("num_samples", 0),
        ("val_fraction", 1.0),
        ("train_split", 0.0),
        ("train_sequences_per_epoch", 0),
        ("shuffle_seq", "yes"),
    ],
)
def test_bad_arguments_are_refused(argument: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"`{argument}`"):
        MNIST1DDataModule(**{argument: value})


# ---- the models against the authors'


@pytest.mark.parametrize(
    ("option", "ours"),
    [("mnist1d_linear", MLP), ("mnist1d_mlp", MNIST1DMLP), ("mnist1d_cnn", MNIST1DCNN), ("mnist1d_gru", MNIST1DGRU)],
)
def test_models_are_the_papers_layer_for_layer(option: str, ours: type, tmp_path: Path) -> None:
    """Built from its YAML on data=mnist1d: the paper's parameter count, and its forward pass on the same weights."""
    cfg = make_cfg(["data=mnist1d", f"model={option}", f"data.cache_dir={tmp_path}"], tmp_path)
    validate_config(cfg)
    model = build_run(cfg).model.double()
    count, forward = PAPER_MODELS[option]
    assert isinstance(model, ours)
    assert sum(p.numel() for p in model.parameters()) == count
    assert (model.lr, model.weight_decay) == (1e-2, 0.0)  # the authors' Adam(lr=1e-2, weight_decay=0)
    x = torch.randn(5, 40, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), forward([p.detach() for p in model.parameters()], x))


def test_the_cnn_computes_its_classifier_width_from_the_length() -> None:
    assert MNIST1DCNN(num_features=64, num_classes=3)(torch.zeros(2, 64)).shape == (2, 3)
    with pytest.raises(ValueError, match="`num_features`"):
        MNIST1DCNN(num_features=2, num_classes=3)


# ---- a fit and the configs


def test_fast_dev_run_of_the_experiment(cache: Path, tmp_path: Path) -> None:
    overrides = ["experiment=mnist1d", "label_smoothing/variant=online", f"data.cache_dir={cache}"]
    metrics = train(make_cfg([*overrides, "trainer.fast_dev_run=true", *QUIET], tmp_path))
    assert 0.0 <= metrics["test/acc"] <= 1.0 and "val/ece_ts" in metrics


def test_configs_compose_into_their_schemas(tmp_path: Path) -> None:
    cfg = make_cfg(["data=mnist1d", "model=mnist1d_cnn"], tmp_path)
    validate_config(cfg)
    assert OmegaConf.get_type(cfg.data) is schemas.MNIST1DDataConfig
    assert OmegaConf.get_type(cfg.model) is schemas.MNIST1DCNNConfig
    # the authors' 6000 steps of 100: 20 epochs of 30000 sequences
    steps = cfg.trainer.max_epochs * cfg.data.train_sequences_per_epoch // cfg.data.batch_size
    assert (cfg.data.batch_size, steps) == (100, 6000)
    for option, schema in [("mnist1d_mlp", schemas.MNIST1DMLPConfig), ("mnist1d_gru", schemas.MNIST1DGRUConfig)]:
        assert OmegaConf.get_type(make_cfg([f"model={option}"], tmp_path).model) is schema
    with pytest.raises(ConfigValueError, match=r"data\.num_samples=5 is out of range"):
        validate_config(make_cfg(["data=mnist1d", "data.num_samples=5"], tmp_path))


def test_the_experiments(tmp_path: Path) -> None:
    cfg = make_cfg(["experiment=mnist1d"], tmp_path, hydra=True)
    validate_config(cfg)
    assert cfg.hydra.sweeper.params["label_smoothing/variant"] == "none,constant,cosine,two_stage,online"
    assert cfg.hydra.sweeper.params["seed"] == "0,1,2" and cfg.calibration.temperature_scaling is True
    assert cfg.model._target_.endswith("MNIST1DCNN") and cfg.data._target_.endswith("MNIST1DDataModule")
    cfg = make_cfg(["experiment=mnist1d_paper"], tmp_path, hydra=True)
    validate_config(cfg)
    assert cfg.hydra.sweeper.params["model"].split(",") == [
        "mnist1d_linear",
        "mnist1d_mlp",
        "mnist1d_cnn",
        "mnist1d_gru",
    ]
    assert cfg.label_smoothing.schedule.epsilon == 0.0
