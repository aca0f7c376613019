"""FSDP2: the built-in models sharded with ``fully_shard`` (their ``configure_model``) against one unsharded process.

Two gloo CPU processes (``torch.multiprocessing.spawn``) shard each model and take one step on half of a batch each;
a copy that is not sharded takes the step on the whole batch with the materialised loss (``F.linear`` then PyTorch's
``F.cross_entropy(label_smoothing=...)``). Rank 0 saves both (float64) and the test compares them: the loss, every
gradient and every parameter after one optimizer step. The command line's ``trainer=fsdp_cpu``:
tests/e2e/test_ls_train_fsdp.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import run_once
from torch import Tensor

from ls_lightning.cli.models import CNN, MLP, Transformer

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

EPS, IGNORE, WORLD, ROWS = 0.2, -100, 2, 4
V, T = 40, 6


def meshed(cls: type[L.LightningModule]) -> type[L.LightningModule]:
    """``cls`` with a settable ``device_mesh``: what Lightning's ModelParallelStrategy gives, without a Trainer."""

    class Meshed(cls):  # type: ignore[valid-type,misc]
        mesh: Any = None

        @property
        def device_mesh(self) -> Any:
            return self.mesh

    Meshed.__name__ = Meshed.__qualname__ = f"Meshed{cls.__name__}"
    return Meshed


def _lm(tie_weights: bool) -> Callable[[], L.LightningModule]:
    def make() -> L.LightningModule:
        return meshed(Transformer)(
            num_features=T, num_classes=V, d_model=8, num_heads=2, dim_feedforward=16, tie_weights=tie_weights
        )

    return make


# name -> (model, whether it reads token blocks)
MODELS: dict[str, tuple[Callable[[], L.LightningModule], bool]] = {
    "transformer_tied": (_lm(True), True),
    "transformer_untied": (_lm(False), True),
    "mlp": (lambda: meshed(MLP)(num_features=16, num_classes=5, hidden_sizes=[12, 10]), False),
    "cnn": (lambda: meshed(CNN)(num_features=16, num_classes=5, image_size=4, channels=[3, 4], hidden_size=6), False),
}


def _batch(tokens: bool) -> tuple[Tensor, Tensor]:
    """The whole batch; ignored targets sit alike in each rank's half, so that each rank counts as many."""
    generator = torch.Generator().manual_seed(1)
    if tokens:
        x = torch.randint(0, V, (ROWS, T), generator=generator)
        y = torch.randint(0, V, (ROWS, T), generator=generator)
        y[:, -2:] = IGNORE
        return x, y
    return torch.randn(ROWS, 16, generator=generator, dtype=torch.float64), torch.randint(0, 5, (ROWS,))


def _materialised_loss(model: L.LightningModule, x: Tensor, y: Tensor) -> Tensor:
    """PyTorch's label-smoothed cross-entropy of the full logits: the reference."""
    logits = F.linear(model.hidden(x), model.lm_head_weight) if isinstance(model, Transformer) else model(x)
    return F.cross_entropy(logits.flatten(0, -2), y.flatten(), label_smoothing=EPS, ignore_index=IGNORE)


def _full(tensor: Tensor) -> Tensor:
    from torch.distributed.tensor import DTensor

    assert isinstance(tensor, DTensor)  # the parameters and gradients are sharded
    return tensor.full_tensor()


def _one_step(name: str, rank: int, mesh: Any) -> dict[str, Any]:
    make, tokens = MODELS[name]
    torch.manual_seed(0)
    model = make().double()
    model.label_smoothing = EPS
    reference = copy.deepcopy(model)
    model.mesh = mesh
    model.configure_model()
    model.configure_model()  # Lightning calls it for fit, validate and test: the second call does nothing
    x, y = _batch(tokens)
    half = slice(rank * ROWS // WORLD, (rank + 1) * ROWS // WORLD)
    # the fused loss (Transformer) or the mixin's loss of the logits, inside the step FSDP has gathered the weights for
    loss = model.training_step((x[half], y[half]), 0)
    loss.backward()
    expected = _materialised_loss(reference, x, y)
    expected.backward()
    mean = loss.detach().clone()
    torch.distributed.all_reduce(mean)  # each rank's mean over as many targets: their mean is the batch's
    record: dict[str, Any] = {"loss": (mean / WORLD, expected.detach())}
    record["grad"] = [(_full(p.grad), q.grad) for p, q in zip(model.parameters(), reference.parameters(), strict=True)]
    for module in (model, reference):  # SGD: Adam would blow up round-off in gradients that are 0 (attention key bias)
        torch.optim.SGD(module.parameters(), lr=0.5).step()
    record["param"] = [
        (_full(p.detach()), q.detach()) for p, q in zip(model.parameters(), reference.parameters(), strict=True)
    ]
    if isinstance(model, Transformer):  # after the backward FSDP has resharded the weights: outside a step, refused
        hidden = torch.zeros(ROWS, T, 8, dtype=torch.float64)
        record["outside_a_step"] = _refusal(lambda: model.label_smoothed_linear_loss(hidden, model.lm_head_weight, y))
    return record


def _refusal(call: Callable[[], Any]) -> str:
    try:
        call()
    except TypeError as error:
        return str(error)
    return ""


def _worker(rank: int, store: str, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    mesh = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
    records = {name: _one_step(name, rank, mesh) for name in MODELS}
    tensor_parallel = init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("data_parallel", "tensor_parallel"))
    refused = meshed(MLP)(num_features=4, num_classes=3)
    refused.mesh = tensor_parallel
    try:
        refused.configure_model()
        records["tensor_parallel_refusal"] = ""
    except ValueError as error:
        records["tensor_parallel_refusal"] = str(error)
    if rank == 0:
        torch.save(records, out)
    torch.distributed.destroy_process_group()


def _spawn(folder: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(str(folder / "store"), str(folder / "records.pt")), nprocs=WORLD)


@pytest.fixture(scope="session")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = run_once(tmp_path_factory, "test_fsdp", _spawn)
    return torch.load(folder / "records.pt", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_fully_sharded_step_equals_the_materialised_loss_on_one_process(records: dict[str, Any], name: str) -> None:
    record = records[name]
    torch.testing.assert_close(*record["loss"], rtol=1e-12, atol=1e-12)
    for key in ("grad", "param"):
        assert len(record[key]) == len(list(MODELS[name][0]().parameters()))  # tied: one parameter
        for sharded, reference in record[key]:
            torch.testing.assert_close(sharded, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["transformer_tied", "transformer_untied"])
def test_a_weight_still_sharded_is_refused_with_where_to_call_the_loss(records: dict[str, Any], name: str) -> None:
    message = records[name]["outside_a_step"]
    assert "DTensor" in message and "register_fsdp_forward_method" in message


@pytest.mark.slow
def test_a_tensor_parallel_mesh_is_refused_with_what_to_set(records: dict[str, Any]) -> None:
    assert "tensor_parallel_size=1" in records["tensor_parallel_refusal"]


def test_configure_model_does_nothing_without_a_device_mesh() -> None:
    model = MODELS["transformer_tied"][0]()
    before = {name: p for name, p in model.named_parameters()}
    model.configure_model()
    assert type(model).__name__ == "MeshedTransformer"
    assert all(p is before[name] for name, p in model.named_parameters())
