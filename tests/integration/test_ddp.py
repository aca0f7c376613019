"""Exact metrics under DDP: two gloo CPU processes (``ddp_spawn`` to fit, forked to
test) against one process on the same weights.

The model, data and callbacks are defined at module level so that the spawned processes can unpickle them. Each rank
writes what it saw to a JSON file in ``tmp_path``; the test compares the ranks with each other and with a
single-process run (and that run with PyTorch's ``F.cross_entropy`` on the whole split).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, Net, quiet_trainer, run_once
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from ls_lightning import LabelSmoothing
from ls_lightning.cli.data import TensorDataModule
from ls_lightning.smoothing import Cosine

C, FEATURES = 4, 5
# train: even over 2 ranks (training pads, by design) but not over the batch size, with ignored labels, so that the
# per-batch and per-rank counts differ; val: 7 samples (ranks get 4 and 3); test: 1 sample (rank 1 gets none)
SIZES = {"train": 26, "val": 7, "test": 1}
BATCH = 3
SCHEDULE = Cosine(0.2, 0.0)
RUN = {"max_epochs": 2, "num_sanity_val_steps": 0}

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


class Data(TensorDataModule):
    num_features, num_classes = FEATURES, C

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(0)
        splits = {}
        for name, size in SIZES.items():
            x = torch.randn(size, FEATURES, generator=generator)
            y = torch.randint(0, C, (size,), generator=generator)
            if name == "train":
                y[torch.rand(size, generator=generator) < 0.3] = IGNORE
            splits[name] = (x, y)
        return splits


class Seeded(Net):
    """The same initial weights in every process; lr=0 keeps them, so that training aggregates are comparable between 1
    and 2 processes. Records (step, ε) of each training step."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(FEATURES, C, lr=0.0)
        self.epsilons: list[tuple[int, float]] = []

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.epsilons.append((self.global_step, self.label_smoothing))
        return super().training_step(batch, batch_idx)


class Recorder(L.Callback):
    """Writes each rank's synced epoch metrics, ε per step and warnings to ``<out>/<stage>_rank<r>.json``."""

    def __init__(self, out: str) -> None:
        self.out = out
        self._caught: list[warnings.WarningMessage] = []
        self._catcher: Any = None

    def _start(self) -> None:
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")

    def _dump(self, trainer: L.Trainer, stage: str, **extra: Any) -> None:
        if self._catcher is not None:
            self._catcher.__exit__(None, None, None)
            self._catcher = None
        record = {
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
            "warnings": [str(w.message) for w in self._caught],
            **extra,
        }
        Path(self.out, f"{stage}_rank{trainer.global_rank}.json").write_text(json.dumps(record))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._start()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._dump(trainer, "validate")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._dump(trainer, "fit", epsilons=cast_net(pl_module).epsilons)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._dump(trainer, "test")


def cast_net(module: L.LightningModule) -> Seeded:
    assert isinstance(module, Seeded)
    return module


def _callbacks(out: Path) -> list[L.Callback]:
    # ε per epoch: the same ε schedule on 1 and 2 processes, so that the loss is comparable as well
    return [LabelSmoothing(SCHEDULE, interval="epoch"), Recorder(str(out))]


def _read(out: Path, stage: str, rank: int = 0) -> dict[str, Any]:
    return json.loads((out / f"{stage}_rank{rank}.json").read_text())


def _fit_and_test(root: Path) -> None:
    """On 2 processes, fit on spawned ranks (the module, data module and callbacks pickled), then test on forked
    ones: a test under ``ddp_spawn`` would start two more processes, each importing Lightning again."""
    for devices in (1, 2):
        out = root / f"devices{devices}"
        out.mkdir()
        strategy = "ddp_spawn" if devices > 1 else "auto"
        trainer = quiet_trainer(out, callbacks=_callbacks(out), devices=devices, strategy=strategy, **RUN)
        trainer.fit(Seeded(), datamodule=Data(batch_size=BATCH))
        if devices > 1:
            trainer = quiet_trainer(out, callbacks=_callbacks(out), devices=devices, strategy="ddp_fork", **RUN)
        trainer.test(Seeded(), datamodule=Data(batch_size=BATCH), verbose=False)


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fit (2 epochs, validation each epoch) then test, on 1 process and on 2; the same initial weights."""
    root = run_once(tmp_path_factory, "test_ddp", _fit_and_test)
    return {f"devices{devices}": root / f"devices{devices}" for devices in (1, 2)}


def _whole_split_reference(split: str) -> dict[str, float]:
    """PyTorch's cross-entropies and the accuracy over the whole split, from the initial weights."""
    data = Data()
    data.setup()
    x, y = data.splits[split].tensors
    with torch.no_grad():
        z = Seeded()(x)
    keep = y != IGNORE
    return {
        "h_pq": F.cross_entropy(z, y, ignore_index=IGNORE).item(),
        "h_uq": F.cross_entropy(z[keep], torch.full((int(keep.sum()), C), 1.0 / C)).item(),
        "acc": (z.argmax(1) == y)[keep].float().mean().item(),
    }


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["fit", "test"])
def test_two_processes_log_what_one_process_logs(runs: dict[str, Path], stage: str) -> None:
    one, ranks = _read(runs["devices1"], stage), [_read(runs["devices2"], stage, r) for r in (0, 1)]
    prefix = ("train/", "val/") if stage == "fit" else ("test/",)
    # step values are each rank's own batch; epoch values are synced, so every rank holds the global value
    keys = {k for k in one["metrics"] if k.startswith(prefix) and not k.endswith("_step") and k != "train/epsilon"}
    assert {k: ranks[0]["metrics"][k] for k in keys} == {k: ranks[1]["metrics"][k] for k in keys}
    assert {f"{p}{m}" for p in prefix for m in ("h_pq", "h_uq", "acc", "ece")} <= {
        k.removesuffix("_epoch") for k in keys
    }
    for key in sorted(keys):
        assert ranks[0]["metrics"][key] == pytest.approx(one["metrics"][key], abs=1e-6), key


@pytest.mark.slow
@pytest.mark.parametrize(("split", "stage", "prefix"), [("val", "fit", "val/"), ("test", "test", "test/")])
def test_single_process_values_are_the_whole_split_reference(
    runs: dict[str, Path], split: str, stage: str, prefix: str
) -> None:
    logged = _read(runs["devices1"], stage)["metrics"]
    for name, value in _whole_split_reference(split).items():
        assert logged[prefix + name] == pytest.approx(value, abs=1e-6), name


@pytest.mark.slow
def test_train_aggregates_are_the_whole_split_reference(runs: dict[str, Path]) -> None:
    """lr=0: the last epoch's train values over both ranks are the whole training split's, counted once each."""
    logged = _read(runs["devices2"], "fit")["metrics"]
    reference = _whole_split_reference("train")
    assert logged["train/h_pq_epoch"] == pytest.approx(reference["h_pq"], abs=1e-6)
    assert logged["train/acc"] == pytest.approx(reference["acc"], abs=1e-6)


@pytest.mark.slow
def test_every_rank_uses_the_same_epsilon_at_every_step(runs: dict[str, Path]) -> None:
    seen = [_read(runs["devices2"], "fit", r)["epsilons"] for r in (0, 1)]
    assert seen[0] == seen[1]
    per_epoch = math.ceil(SIZES["train"] / 2 / BATCH)  # 13 samples per rank in batches of 3
    assert [step for step, _ in seen[0]] == list(range(2 * per_epoch))
    expected = [SCHEDULE(step // per_epoch / 2) for step in range(2 * per_epoch)]  # t = epoch / max_epochs
    assert [eps for _, eps in seen[0]] == pytest.approx(expected)
    assert expected[0] == pytest.approx(0.2) and expected[-1] == pytest.approx(0.1)


@pytest.mark.slow
def test_a_padding_sampler_in_a_user_loader_warns_once_under_ddp(tmp_path: Path) -> None:
    """Lightning gives a user's plain val loader a padding DistributedSampler: the mixin says so, once."""
    data = Data()
    data.setup()
    loader = DataLoader(data.splits["val"], batch_size=BATCH)  # 7 samples: Lightning pads rank 1 with sample 0
    trainer = quiet_trainer(tmp_path, callbacks=_callbacks(tmp_path), devices=2, strategy="ddp_fork", **RUN)
    trainer.validate(Seeded(), loader, verbose=False)  # forked: no re-import
    caught = [w for w in _read(tmp_path, "validate")["warnings"] if "pads the data with repeated samples" in w]
    assert len(caught) == 1 and "UnpaddedDistributedSampler" in caught[0]


def test_an_empty_rank_gets_one_empty_batch_of_the_right_shapes(tmp_path: Path) -> None:
    data = Data(batch_size=BATCH)
    data.setup()
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        loader = data.test_dataloader()
    finally:
        torch.distributed.destroy_process_group()
    assert isinstance(loader.sampler, DistributedSampler)  # Lightning keeps it as it is
    loader.sampler.rank, loader.sampler.num_replicas = 1, 2  # what rank 1 of 2 sees: no test sample
    ((x, y),) = list(loader)
    assert x.shape == (0, FEATURES) and x.dtype == torch.float32 and y.shape == (0,) and y.dtype == torch.int64
    model = Seeded()
    assert model.label_smoothed_loss(model(x), y).item() == 0.0  # counts nothing
