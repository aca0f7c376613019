"""The package's shape: layers whose imports go down only, no cycles, public names across layers, and no private
attribute of a torch, torchmetrics or Lightning object (read from the source, as an AST)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ls_lightning"
# Layer of each subpackage, lowest first; the modules at the top (``ls_lightning/*.py``) are the public paths that
# re-export from the layers, and no layer imports them.
LAYERS = {"losses": 0, "metrics": 1, "integration": 2, "cli": 3, "conf": 3}
FACADE = -1
# Third-party packages each layer may import (with everything a lower layer may).
THIRD_PARTY = {
    0: {"torch", "typing_extensions"},
    1: {"torchmetrics", "matplotlib", "mpl_toolkits"},  # matplotlib: reliability diagrams (the plot extra)
    2: {"lightning"},
    3: {"hydra", "omegaconf", "sklearn", "tokenizers", "optuna", "yaml", "numpy", "mnist1d"},
}
# The one private torch name the package reads, on purpose: a device-side assert with no public equivalent (a check
# without a host sync on accelerators). It is read once, with a synchronous fallback; test_assert_async_still_works
# fails when torch changes it.
ALLOWED_PRIVATE = {("losses/functional.py", "_assert_async")}


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS and f"ls_lightning.{parts[1]}" in MODULES:
        return LAYERS[parts[1]]
    return FACADE


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and _layer(module) != FACADE else ""


def _imports(module: str) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, imported names, line) of every import in ``module``, nested ones included."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield base, [alias.name for alias in node.names], node.lineno


def _resolve(target: str, names: list[str]) -> list[str]:
    """The package modules an import reaches: ``from a.b import c`` reaches ``a.b.c`` when that is a module."""
    reached = [f"{target}.{name}" for name in names if f"{target}.{name}" in MODULES]
    return reached or ([target] if target in MODULES else [])


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_imports_go_down_the_layers_only() -> None:
    wrong = []
    for module in MODULES:
        layer = _layer(module)
        if layer == FACADE:
            continue
        for target, names, line in _imports(module):
            for reached in _resolve(target, names) if target.startswith("ls_lightning") else []:
                if _layer(reached) == FACADE or _layer(reached) > layer:
                    wrong.append(f"{module}:{line} imports {reached}")
    assert not wrong, "\n".join(wrong)


def test_each_layer_imports_only_its_own_third_party_packages() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    wrong = []
    for module in MODULES:
        layer = _layer(module)
        allowed = set().union(*(THIRD_PARTY[i] for i in range(max(layer, 0) + 1)))
        for target, _, line in _imports(module):
            top = target.split(".")[0]
            third_party = top not in stdlib and top != "ls_lightning"
            # the public paths at the top re-export the layers' names: only Hydra is kept out of them
            refused = top in {"hydra", "omegaconf"} if layer == FACADE else top not in allowed
            if third_party and refused:
                wrong.append(f"{module}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = {
        module: {
            reached
            for target, names, _ in _imports(module)
            if target.startswith("ls_lightning")
            for reached in _resolve(target, names)
            if reached != module
        }
        for module in MODULES
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            # a package's __init__ importing its own submodules is not a cycle of the code
            if len(component) > 1 and not all(m.startswith(min(component, key=len)) for m in component):
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles


def test_no_private_name_is_imported_across_subpackages() -> None:
    wrong = []
    for module in MODULES:
        own = _subpackage(module)
        for target, names, line in _imports(module):
            if not target.startswith("ls_lightning"):
                continue
            for reached in _resolve(target, names) or [target]:
                if _subpackage(reached) == own and own:
                    continue
                private = [part for part in reached.split(".") if _is_private(part)]
                private += [name for name in names if _is_private(name) and f"{target}.{name}" not in MODULES]
                if private:
                    wrong.append(f"{module}:{line} imports {private} from {reached}")
    assert not wrong, "\n".join(wrong)


def _library_private_names() -> set[str]:
    """Private attribute names of the torch, torchmetrics and Lightning objects the package works with."""
    import lightning.pytorch as pl
    import torch
    import torchmetrics
    from torch.utils.data import DistributedSampler

    class _Metric(torchmetrics.Metric):
        def update(self) -> None: ...

        def compute(self) -> None: ...

    objects = [
        torch,
        torch.nn.Module(),
        torch.zeros(()),
        torch.autograd.Function,
        pl.LightningModule(),
        pl.LightningDataModule(),
        pl.Callback(),
        pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False),
        _Metric(),
        DistributedSampler(range(2), num_replicas=1, rank=0),
    ]
    return {name for obj in objects for name in dir(obj) if _is_private(name)}


def _private_uses() -> Iterator[tuple[str, int, str]]:
    """(file, line, name) of each ``x._name`` and ``getattr(x, "_name")`` in the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                yield str(path.relative_to(PACKAGE)), node.lineno, node.attr
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"getattr", "setattr", "hasattr", "delattr"}
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and _is_private(node.args[1].value)
            ):
                yield str(path.relative_to(PACKAGE)), node.lineno, node.args[1].value


def test_no_private_attribute_of_torch_torchmetrics_or_lightning_objects() -> None:
    library = _library_private_names()
    assert {"_modules", "_forward_cache", "_results", "_trainer", "_apply"} <= library  # the check sees them
    wrong = [
        f"{file}:{line} uses {name}"
        for file, line, name in _private_uses()
        if name in library and (file, name) not in ALLOWED_PRIVATE
    ]
    assert not wrong, "\n".join(wrong)


def test_no_instance_dict_access() -> None:
    wrong = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute) and node.attr == "__dict__"
    ]
    assert not wrong, "\n".join(wrong)


def test_assert_async_still_works() -> None:
    """The allowed private name: torch's device-side assert still takes (condition, message) and fails on False."""
    import torch

    assert hasattr(torch, "_assert_async")
    torch._assert_async(torch.tensor(True), "never raised")
    with pytest.raises(RuntimeError):
        torch._assert_async(torch.tensor(False), "raised")


@pytest.mark.parametrize(
    "path",
    [
        "ls_lightning.functional",
        "ls_lightning.metrics",
        "ls_lightning.schedules",
        "ls_lightning.priors",
        "ls_lightning.losses",
        "ls_lightning.data",
        "ls_lightning.models",
        "ls_lightning.search",
        "ls_lightning.plotting",
        "ls_lightning.temperature",
        "ls_lightning.diagrams",
        "ls_lightning.mixin",
        "ls_lightning.callback",
        "ls_lightning.report",
        "ls_lightning.train",
        "ls_lightning.eval",
    ],
)
def test_documented_paths_keep_their_names(path: str) -> None:
    """Each module path of DESIGN.md still gives its names, the same objects as their home in the layers."""
    import importlib

    module = importlib.import_module(path)
    assert module.__all__, path
    for name in module.__all__:
        value = getattr(module, name)
        home = getattr(value, "__module__", "")
        assert not home.startswith("ls_lightning") or _layer(home) != FACADE, (path, name, home)


def test_the_core_never_imports_hydra() -> None:
    """A fresh interpreter uses the loss, the mixin and the callback in a fit without importing Hydra or OmegaConf."""
    code = """
import sys
import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from ls_lightning import LabelSmoothing, LabelSmoothingMixin, label_smoothed_cross_entropy

class Net(LabelSmoothingMixin, L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
    def training_step(self, batch, batch_idx):
        return self.label_smoothed_loss(self.layer(batch[0]), batch[1])
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
label_smoothed_cross_entropy(x[:, :3], y, 0.1)
trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, callbacks=[LabelSmoothing(0.2)])
trainer.fit(Net(), DataLoader(TensorDataset(x, y), batch_size=8))
assert "train/loss" in trainer.callback_metrics
print(sorted(m for m in sys.modules if m.split(".")[0] in ("hydra", "omegaconf")))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_bad_value_is_reported_before_lightning_is_imported() -> None:
    """The command line checks a composed config (every range, the schedule's own arguments, ``ckpt_path``) with the
    schedules alone: a mistake is reported in a second, without waiting for Lightning, torchmetrics or torch."""
    code = """
import sys
from hydra import compose, initialize_config_module
from ls_lightning.cli.config import ConfigValueError, register_configs, validate_config

register_configs()
with initialize_config_module("ls_lightning.conf", version_base="1.3"):
    cfg = compose("eval", overrides=["label_smoothing/schedule=step", "label_smoothing.schedule.values=[0.1]"])
try:
    validate_config(cfg, require_ckpt=True)
except ConfigValueError as error:
    print(error)
print(sorted({m.split(".")[0] for m in sys.modules} & {"lightning", "torchmetrics", "torch"}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    message, imported = result.stdout.strip().splitlines()[-2:]
    assert "label_smoothing.schedule:" in message and "ckpt_path is required" in message, message
    assert imported == "[]"


@pytest.mark.parametrize("script", ["train_main", "eval_main", "report_main"])
def test_the_command_line_without_its_extra_exits_2_naming_the_install(script: str) -> None:
    code = (
        "import sys; sys.modules['hydra'] = sys.modules['omegaconf'] = None\n"  # as if the cli extra were missing
        f"from ls_lightning.cli import {script}; sys.argv = ['prog']; {script}()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'ls-lightning[cli]'" in lines[0], result.stderr
