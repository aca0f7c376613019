"""`PenultimateProjection` on a module shaped like lightning-hydra-template's ``MNISTLitModule`` with its
``SimpleDenseNet`` (tests/template_module.py; one fit with TensorBoard, MLflow and W&B offline); on a sequence model fed
mappings; under DDP (two forked gloo processes) against one process; and its refusals.

The references are the layer's inputs recorded by a forward hook of the test's own and labels taken from the batches,
projected with Gram–Schmidt and measured in float64 here.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import quiet_trainer
from lightning.pytorch.callbacks import Callback
from template_module import DenseNet, TemplateLitModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ls_lightning.integration import PenultimateProjection

PNG = b"\x89PNG\r\n\x1a\n"
IMAGE = "val/penultimate_projection"
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*",
    "ignore:The number of training batches",
)


# --- references written out here -------------------------------------------------------------------------------------


def _direct_ratio(features: Tensor, labels: Tensor) -> float:
    """Mean squared distance to the own class mean over samples / mean squared distance between two class means."""
    h = features.double()
    means = {int(k): h[labels == k].mean(0) for k in labels.unique()}
    within = sum(((h[labels == k] - mu) ** 2).sum() for k, mu in means.items()) / len(labels)
    pairs = list(itertools.combinations(means.values(), 2))
    return float(within / (sum(((a - b) ** 2).sum() for a, b in pairs) / len(pairs)))


def _projection(features: Tensor, weight: Tensor, classes: tuple[int, int, int]) -> Tensor:
    """Coordinates in the plane of the templates w_a, w_b, w_c: Gram–Schmidt on w_a - w_c, w_b - w_c, float64."""
    w = weight.double()
    a, b, c = classes
    u, v = w[a] - w[c], w[b] - w[c]
    e1 = u / u.norm()
    e2 = v - (v @ e1) * e1
    return features.double() @ torch.stack([e1, e2 / e2.norm()], dim=1)


def _rows(points: Tensor) -> Tensor:
    """Points in a fixed order (the callback's sample is in random-key order)."""
    order = sorted(range(len(points)), key=lambda i: tuple(points[i].tolist()))
    return points[order]


class Recorder(Callback):
    """The test's own forward hook on ``layer``: the inputs of each stage's last epoch, with the batches' labels."""

    def __init__(self, layer: str, label_key: str | None = None) -> None:
        self.layer, self.label_key = layer, label_key
        self.seen: dict[str, list[tuple[Tensor, Tensor]]] = {"train": [], "val": []}
        self._last: Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        module = dict(pl_module.named_modules())[self.layer]
        module.register_forward_hook(lambda m, args, out: setattr(self, "_last", args[0].detach().clone()))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen["train"] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen["val"] = []

    def _keep(self, stage: str, batch: Any) -> None:
        labels = batch[self.label_key] if self.label_key else batch[1]
        assert self._last is not None
        self.seen[stage].append((self._last.reshape(-1, self._last.shape[-1]), labels.reshape(-1)))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        self._keep("train", batch)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if not trainer.sanity_checking:
            self._keep("val", batch)

    def stage(self, stage: str, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
        features = torch.cat([f for f, _ in self.seen[stage]])
        labels = torch.cat([y for _, y in self.seen[stage]])
        kept = labels != ignore_index
        return features[kept], labels[kept]


def _check_picture(callback: PenultimateProjection, recorder: Recorder, weight: Tensor, stage: str) -> None:
    """The drawn points: every recorded activation of the three classes when they fit in the sample, otherwise a
    sample of exactly ``samples_per_class`` of them per class."""
    features, labels = recorder.stage(stage)
    points, drawn_labels = callback.projections[stage]
    assert points.dtype == torch.float64 and points.shape == (len(drawn_labels), 2)
    for cls in callback.classes:
        expected = _projection(features[labels == cls], weight, callback.classes)
        got = points[drawn_labels == cls]
        if len(expected) <= callback.samples_per_class:
            torch.testing.assert_close(_rows(got), _rows(expected), rtol=1e-5, atol=1e-5)
        else:  # a subsample: each drawn point is one of the class's points, none twice
            assert len(got) == callback.samples_per_class
            distance = torch.cdist(got, expected)
            assert (distance.min(dim=1).values < 1e-4).all()
            assert len(set(distance.argmin(dim=1).tolist())) == len(got)


# --- lightning-hydra-template's module, unchanged, with TensorBoard, MLflow and W&B ----------------------------------


def _mnist_loaders(n_train: int, n_val: int) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    loaders = []
    for n, batch in ((n_train, 40), (n_val, 30)):
        labels = torch.arange(n) % 10
        images = torch.rand(n, 1, 28, 28, generator=g) + 0.1 * labels.view(n, 1, 1, 1)  # MNIST-shaped, learnable
        loaders.append(DataLoader(TensorDataset(images, labels), batch_size=batch))
    return loaders[0], loaders[1]


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No W&B login, mode or project from the machine, W&B's folders in tmp_path, nothing sent (as test_loggers.py)."""
    wandb = pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("NETRC", os.devnull)
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    yield
    if wandb.run is not None:
        wandb.finish()


@pytest.mark.usefixtures("wandb_offline")
def test_template_module_numbers_pictures_and_three_loggers(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    net = DenseNet(input_size=784, lin1=32, lin2=32, lin3=16, output=10)
    model = TemplateLitModule(net, functools.partial(torch.optim.SGD, lr=0.1))
    callback = PenultimateProjection(classes=(7, 2, 4), samples_per_class=6, dirpath=tmp_path / "run")
    recorder = Recorder("net.model.9")
    loggers = [
        TensorBoardLogger(tmp_path, name="tb", version=""),
        MLFlowLogger(
            "penultimate", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "mlart")
        ),
        WandbLogger(save_dir=str(tmp_path), project="ls-lightning-test", mode="offline"),
    ]
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=loggers, callbacks=[callback, recorder])
    trainer.fit(model, *_mnist_loaders(n_train=120, n_val=60))
    loggers[2].experiment.finish()

    assert callback.layer_name == "net.model.9"  # the rule: the last nn.Linear (here the only one with 10 outputs)
    weight = net.model[9].weight.detach()
    for stage in ("train", "val"):  # the last epoch's numbers, over every recorded activation
        expected = _direct_ratio(*recorder.stage(stage))
        assert trainer.callback_metrics[f"{stage}/penultimate_within_between"].item() == pytest.approx(expected, 1e-5)
        _check_picture(callback, recorder, weight, stage)  # train: 12 per class > 6 (a sample); val: 6 per class
    assert callback._handle is None  # the hook is gone after fit

    run = tmp_path / "run"
    files = sorted(p.relative_to(run).as_posix() for p in run.rglob("*.png"))
    assert files == ["penultimate/val_epoch0.png", "penultimate/val_epoch1.png", "penultimate_projection.png"]
    assert all(p.read_bytes()[:8] == PNG for p in run.rglob("*.png"))
    steps = [3, 6]  # 120 samples in batches of 40: the validation ends at global steps 3 and 6
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    assert [event.step for event in events.Images(IMAGE)] == steps
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    artifacts = [a.path for a in client.list_artifacts(loggers[1].run_id, IMAGE)]
    assert artifacts == [f"{IMAGE}/step_{s}.png" for s in steps]
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    # W&B keeps each logged image under files/media/images/<key>_<its own step>_<hash>.png
    images = sorted((run_dir / "files" / "media" / "images" / "val").glob("penultimate_projection_*.png"))
    assert len(images) == 2 and all(p.read_bytes()[:8] == PNG for p in images)


# --- a sequence model fed mappings, validated only -------------------------------------------------------------------


class TinyLM(L.LightningModule):
    """Token embeddings -> tanh(linear) -> head applied to every position: (N, T, D) inputs of the head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed, self.body, self.head = nn.Embedding(20, 8), nn.Linear(8, 8), nn.Linear(8, 6)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(torch.tanh(self.body(self.embed(tokens))))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self(batch["tokens"])
        self.log("val/loss", F.cross_entropy(logits.transpose(1, 2), batch["labels"]))


class _Mappings(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(2)
        self.tokens = torch.randint(0, 20, (n, 7), generator=g)
        self.labels = self.tokens % 6
        self.labels[:, ::3] = -100

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"tokens": self.tokens[i], "labels": self.labels[i]}


def test_sequence_model_with_mapping_batches(tmp_path: Path) -> None:
    callback = PenultimateProjection(classes=(5, 0, 3), layer="head", samples_per_class=1000, dirpath=tmp_path)
    recorder = Recorder("head", label_key="labels")
    trainer = quiet_trainer(tmp_path, callbacks=[callback, recorder])
    model = TinyLM()
    (logged,) = trainer.validate(model, DataLoader(_Mappings(30), batch_size=8), verbose=False)
    features, labels = recorder.stage("val")
    assert features.shape == (30 * 7 - 30 * 3, 8)  # every position, the ignored ones left out
    assert logged["val/penultimate_within_between"] == pytest.approx(_direct_ratio(features, labels), rel=1e-5)
    assert list(callback.projections) == ["val"]  # no training: the validation alone
    _check_picture(callback, recorder, model.head.weight.detach(), "val")
    assert (tmp_path / "penultimate_projection.png").read_bytes()[:8] == PNG


# --- DDP: two forked processes against one --------------------------------------------------------------------------


class TinyNet(L.LightningModule):
    """lr = 0: the weights stay put, so the training activations do not depend on how the batches are split."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.net(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


class Keep(Callback):
    """Rank 0 writes the logged numbers and the drawn points at the end of fit."""

    def __init__(self, path: Path, projection: PenultimateProjection) -> None:
        self.path, self.projection = path, projection

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "penultimate" in k}
            torch.save({"metrics": metrics, "projections": self.projection.projections}, self.path)


def _fit(folder: Path, devices: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(4)
    data = []
    for n in (32, 20):  # even over two ranks: no sample repeated by the distributed sampler
        x, y = torch.randn(n, 12, generator=g), torch.randint(0, 5, (n,), generator=g)
        y[::6] = -100
        data.append(DataLoader(TensorDataset(x, y), batch_size=4))
    callback = PenultimateProjection(samples_per_class=100, dirpath=folder)
    trainer = quiet_trainer(
        folder,
        max_epochs=1,
        devices=devices,
        strategy="ddp_fork" if devices > 1 else "auto",
        callbacks=[callback, Keep(folder / "kept.pt", callback)],
    )
    trainer.fit(TinyNet(), *data)
    return torch.load(folder / "kept.pt")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Forked ranks must not enter an OpenMP pool their parent started (GNU OpenMP hangs there): one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_equal_one(tmp_path: Path) -> None:
    single, ddp = _fit(tmp_path / "single", 1), _fit(tmp_path / "ddp", 2)
    assert set(single["metrics"]) == {"train/penultimate_within_between", "val/penultimate_within_between"}
    for key, value in single["metrics"].items():
        assert ddp["metrics"][key] == pytest.approx(value, rel=1e-6), key
    for stage in ("train", "val"):  # every sample fits in the sample: the gathered points are all of them
        (points, labels), (ddp_points, ddp_labels) = single["projections"][stage], ddp["projections"][stage]
        for cls in (0, 1, 2):
            torch.testing.assert_close(_rows(ddp_points[ddp_labels == cls]), _rows(points[labels == cls]))
    assert (tmp_path / "ddp" / "penultimate" / "val_epoch0.png").exists()


# --- refusals and warnings --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": (0, 1)}, "`classes`"),
        ({"classes": (0, 1, 1)}, "`classes`"),
        ({"classes": (0, 1, -2)}, "`classes`"),
        ({"layer": ""}, "`layer`"),
        ({"samples_per_class": 0}, "`samples_per_class`"),
        ({"num_classes": 2}, "`num_classes`"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PenultimateProjection(**kwargs)


def test_pickles_before_setup() -> None:  # as ddp_spawn sends the trainer's callbacks
    callback = pickle.loads(pickle.dumps(PenultimateProjection(classes=(1, 2, 3), layer="net.2")))
    assert (callback.classes, callback.layer) == ((1, 2, 3), "net.2")


def test_labels_that_do_not_fit_the_layer_input_are_skipped_with_a_warning(tmp_path: Path) -> None:
    x, y = torch.randn(8, 12), torch.randint(0, 5, (8, 2))  # two labels per row of the layer's input
    callback = PenultimateProjection(dirpath=tmp_path)
    with pytest.warns(UserWarning, match="skips val batches where 8 labels come with 4 input rows of 'net.2'"):
        (logged,) = quiet_trainer(tmp_path, callbacks=[callback]).validate(
            TinyNet(), DataLoader(TensorDataset(x, y), batch_size=4), verbose=False
        )
    assert math.isnan(logged["val/penultimate_within_between"])  # nothing counted


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layer": "net.nope"}, "`layer` .*'net.nope' \\(no such module\\)"),
        ({"layer": "net.1"}, "`layer` .*'net.1' \\(a Tanh\\)"),
        ({"classes": (0, 1, 5), "layer": "net.2"}, "`classes` .*\\[0, 5\\).*\\(0, 1, 5\\)"),
        ({"num_classes": 7}, "`num_classes`=7"),
        ({"layer": "two"}, "`layer` .*at least three outputs.*'two'"),
    ],
)
def test_bad_layer_or_classes_for_the_module(kwargs: dict[str, Any], match: str, tmp_path: Path) -> None:
    model = TinyNet()
    model.two = nn.Linear(16, 2)
    with pytest.raises(ValueError, match=match):
        PenultimateProjection(**kwargs).setup(quiet_trainer(tmp_path), model, "fit")
