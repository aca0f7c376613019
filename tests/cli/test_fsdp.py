"""FSDP2: the built-in models sharded with ``fully_shard`` (their ``configure_model``) against one unsharded process.

Two gloo CPU processes (``torch.multiprocessing.spawn``) shard each model and take one step on half of a batch each;
a copy that is not sharded takes the step on the whole batch with the materialised loss (``F.linear`` then PyTorch's
``F.cross_entropy(label_smoothing=...)``). Rank 0 saves both (float64) and the test compares them: the loss, every
gradient and every parameter after one optimizer step. The command line's ``trainer=fsdp_cpu`` trains the language
model on two processes, resumes from ``last``, and is tested against a 1-process ``ls-eval`` of the checkpoint it
wrote (this is also the command-line test of the language-model path on two processes).
"""

from __future__ import annotations

import copy
import csv
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from trainers import run_once

from ls_lightning.cli.models import CNN, MLP, Transformer
from ls_lightning.cli.report import main as report_main

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


# --- the command line ----------------------------------------------------------------------------------------------

BIN = Path(sys.executable).parent
SIZES = ["data.vocab_size=300", "data.block_size=16", "data.max_corpus_bytes=30000", "data.batch_size=8"]
SIZES += ["model.d_model=32", "model.num_heads=2", "model.dim_feedforward=64", "data.val_fraction=0.1"]
QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
COMMON = ["data=text", "model=transformer", *SIZES, *QUIET]
VAL_KEYS = ("val/loss", "val/h_pq", "val/h_uq", "val/acc", "val/ece", "val/brier", "val/perplexity")


def _last_values(path: Path) -> dict[str, float]:
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return {key: float(next(r[key] for r in reversed(rows) if r.get(key))) for key in VAL_KEYS}


def _run(args: list[str], cwd: Path, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``args`` in ``cwd`` with the tokenizer cache ``cache`` (default: ``cwd/cache``)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["LS_LIGHTNING_CACHE"] = str(cache or cwd / "cache")
    # the processes import this checkout (Lightning re-launches rank 1 with the same environment)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


TRAIN = [str(BIN / "ls-train"), *COMMON, "trainer=fsdp_cpu", "data.train_sequences_per_epoch=32"]
TRAIN += ["calibration.temperature_scaling=true", "hydra.run.dir=run"]


def _train(folder: Path) -> None:
    """``ls-train data=text model=transformer trainer=fsdp_cpu`` for one epoch into ``folder/run``, then resumed in
    place with ``ckpt_path=last`` for a second. Each launch's output is kept in ``folder`` (``first.out``,
    ``second.out``), and the first launch's checkpoint as ``first.ckpt``."""
    for name, extra in (("first", ["trainer.max_epochs=1"]), ("second", ["trainer.max_epochs=2", "ckpt_path=last"])):
        result = _run([*TRAIN, *extra], folder)
        assert result.returncode == 0, result.stderr[-3000:]
        (folder / f"{name}.out").write_text(result.stdout + result.stderr)
        if name == "first":
            shutil.copy(folder / "run" / "checkpoints" / "last.ckpt", folder / "first.ckpt")


@pytest.fixture(scope="session")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_once(tmp_path_factory, "test_fsdp_cli", _train)


@pytest.mark.slow
def test_ls_train_fsdp_cpu_trains_on_tokens_on_two_processes(fsdp_run: Path) -> None:
    """Two processes, the tokenizer trained once then read from the cache, the language-model keys logged, the
    summary table and the report."""
    first, second = (fsdp_run / "first.out").read_text(), (fsdp_run / "second.out").read_text()
    assert "Starting with 2 processes" in first and "Starting with 2 processes" in second
    # once, with its time (Lightning's INFO lines go through Hydra's console handler, on stdout)
    assert first.count("Trained a byte-level BPE tokenizer of 300 tokens") == 1
    assert "Trained a byte" not in second  # the cached tokenizer
    run = fsdp_run / "run"
    with open(run / "metrics.csv", newline="") as file:
        keys = set(next(csv.reader(file)))
    assert {"train/perplexity", "val/perplexity", "test/perplexity", "val/ece", "test/ece", "val/ece_ts"} <= keys
    assert (run / "reliability.json").is_file()
    table = second[second.index("stage") :].splitlines()
    assert table[0].split() == ["stage", "acc", "ece", "h_pq", "loss", "perplexity"]
    assert report_main([str(run)]) == 0  # ls-report on the run
    assert "val perplexity" in (run / "report.md").read_text() and (run / "report.png").is_file()


@pytest.mark.slow
def test_ls_train_fsdp_cpu_resumes_from_last(fsdp_run: Path) -> None:
    first = torch.load(fsdp_run / "first.ckpt", weights_only=False)
    resumed = torch.load(fsdp_run / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert (first["epoch"], resumed["epoch"]) == (0, 1)
    assert resumed["global_step"] == first["global_step"] * 2  # the second epoch only, after the one restored
    # AdamW's state came back from the full checkpoint and went on: one more epoch of steps
    assert resumed["optimizer_states"][0]["state"][0]["step"] == first["optimizer_states"][0]["state"][0]["step"] * 2
    # the first launch's rows are kept beside the second's
    assert (fsdp_run / "run" / "metrics.1.csv").is_file()


@pytest.mark.slow
def test_ls_train_fsdp_cpu_metrics_equal_a_one_process_ls_eval(fsdp_run: Path, tmp_path: Path) -> None:
    """The resumed run's last validation equals a 1-process ``ls-eval`` of the checkpoint it wrote."""
    checkpoint = fsdp_run / "run" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()  # one file with the full weights, not a folder of shards
    evaluate = [str(BIN / "ls-eval"), *COMMON, f"ckpt_path={checkpoint}", "hydra.run.dir=eval", "trainer=cpu"]
    result = _run(evaluate, tmp_path, cache=fsdp_run / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Trained a byte" not in result.stdout + result.stderr  # the training run's tokenizer, from the cache
    trained, evaluated = _last_values(fsdp_run / "run" / "metrics.csv"), _last_values(tmp_path / "eval" / "metrics.csv")
    for key in VAL_KEYS:
        assert math.isclose(trained[key], evaluated[key], rel_tol=1e-5, abs_tol=1e-7), (key, trained, evaluated)
