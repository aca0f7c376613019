"""The package's shape, read from the source (AST) and from the imported modules: layers whose imports go down only,
no cycles, one home per public name (configs included), no attribute written on the user's module, public names
across layers, and no private attribute of a torch, torchmetrics or Lightning object."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ls_lightning"
# Layer of each subpackage, lowest first: imports reach only a strictly lower layer or their own package. The
# top-level package (the headline names, resolved lazily) and its private ``_graveyard`` (the old paths) sit above.
LAYERS = {"smoothing": 0, "losses": 0, "metrics": 1, "integration": 2, "cli": 3, "conf": 4}
FACADE = 99
# Third-party packages each subpackage may import, besides those of the layers below it.
THIRD_PARTY = {
    "smoothing": set(),  # plain Python: the command line checks a schedule before importing torch
    "losses": {"torch", "typing_extensions"},
    "metrics": {"torchmetrics", "matplotlib", "mpl_toolkits"},  # matplotlib: reliability diagrams (the plot extra)
    "integration": {"lightning"},
    "cli": {"hydra", "omegaconf", "sklearn", "tokenizers", "optuna", "yaml", "numpy", "mnist1d"},
    "conf": {"hydra", "omegaconf"},
}
# The headline names: exported by `ls_lightning` itself as well as by their layer package.
HEADLINE = {
    "label_smoothed_cross_entropy",
    "LabelSmoothedCE",
    "LabelSmoothedCrossEntropy",
    "linear_label_smoothed_cross_entropy",
    "binary_label_smoothed_cross_entropy",
    "BinaryLabelSmoothedCrossEntropy",
    "LabelSmoothingMixin",
    "LabelSmoothing",
    "BinnedCalibrationError",
}
# The one private torch name the package reads, on purpose: a device-side assert with no public equivalent (a check
# without a host sync on accelerators). It is read once, with a synchronous fallback; test_assert_async_still_works
# fails when torch changes it.
ALLOWED_PRIVATE = {("losses/checks.py", "_assert_async")}


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
    return LAYERS.get(_subpackage(module), FACADE)


def _subpackage(module: str) -> str:
    """The layer package of ``module`` ('' for the top level and its private modules)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else ""


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
        if _layer(module) == FACADE:
            continue
        for target, names, line in _imports(module):
            for reached in _resolve(target, names) if target.startswith("ls_lightning") else []:
                same = _subpackage(reached) == _subpackage(module)
                if not same and _layer(reached) >= _layer(module):
                    wrong.append(f"{module}:{line} imports {reached}")
    assert not wrong, "\n".join(wrong)


def _allowed_third_party(package: str) -> set[str]:
    if not package:  # the top level re-exports the layers' names, resolved lazily: only the standard library
        return set()
    return set().union(*(THIRD_PARTY[p] for p in THIRD_PARTY if LAYERS[p] < LAYERS[package] or p == package))


def test_each_layer_imports_only_its_own_third_party_packages() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    wrong = []
    for module in MODULES:
        allowed = _allowed_third_party(_subpackage(module))
        for target, _, line in _imports(module):
            top = target.split(".")[0]
            if top not in stdlib and top != "ls_lightning" and top not in allowed:
                wrong.append(f"{module}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_every_module_of_the_lightning_layer_uses_lightning() -> None:
    """Code that needs no Lightning lives in a lower layer (a package __init__ only re-exports)."""
    lacking = [
        module
        for module, path in MODULES.items()
        if _subpackage(module) == "integration"
        and path.name != "__init__.py"
        and not any(target.split(".")[0] == "lightning" for target, _, _ in _imports(module))
    ]
    assert not lacking, lacking


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
                if _subpackage(reached) == own and (own or reached == "ls_lightning._graveyard"):
                    continue  # within a layer package, or the top level's own graveyard
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


def _imported_modules() -> dict[str, object]:
    """Every module of the package, imported (the cli's need its extra, as the tests do)."""
    return {name: importlib.import_module(name) for name in MODULES}


def _home(obj: object) -> str:
    """The documented path of a class or function of the package: its layer package when that exports it, else the
    module that defines it (the command line's modules, whose package exports only the console scripts)."""
    defining = obj.__module__  # type: ignore[attr-defined]
    parts = defining.split(".")
    package = importlib.import_module(".".join(parts[:2])) if len(parts) > 1 else None
    if package is not None and obj.__name__ in getattr(package, "__all__", ()):  # type: ignore[attr-defined]
        return package.__name__
    return defining


def test_each_public_name_is_exported_by_its_module_its_package_and_for_headline_names_the_top_level() -> None:
    wrong = []
    for name, module in _imported_modules().items():
        if name == "ls_lightning._graveyard":
            continue
        for exported in getattr(module, "__all__", ()):
            obj = getattr(module, exported)
            defining = getattr(obj, "__module__", None)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not str(defining).startswith("ls_lightning"):
                continue  # constants and type aliases: their module is checked by the AST test below
            allowed = {defining, ".".join(defining.split(".")[:2])}
            if exported in HEADLINE:
                allowed.add("ls_lightning")
            if name not in allowed:
                wrong.append(f"{name} exports {exported}, defined in {defining}")
    assert not wrong, "\n".join(wrong)


def test_each_module_exports_only_what_it_defines_and_each_package_only_its_modules_names() -> None:
    """``__all__`` of a module lists names it defines; of a package, names of its own modules (AST and import)."""
    wrong = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        if path.name == "__init__.py":
            if name != "ls_lightning" and exported is None and any(isinstance(n, ast.ImportFrom) for n in tree.body):
                wrong.append(f"{name} imports names but has no __all__")
            for item in exported or ():
                defining = str(getattr(getattr(module, item), "__module__", name))
                if item != "__version__" and not defining.startswith("ls_lightning") and not item.isupper():
                    continue  # a type alias (Literal): its module is the package's
            continue
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}
        for node in tree.body:
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            defined |= {t.id for t in targets if isinstance(t, ast.Name)}
        wrong += [f"{name} exports {item}, which it does not define" for item in exported or () if item not in defined]
    assert not wrong, "\n".join(wrong)


def _config_targets() -> Iterator[tuple[str, str]]:
    """(where, target) of every ``_target_`` in the shipped configs, the structured configs and the example entry."""
    files = [
        *sorted((PACKAGE / "conf").rglob("*.yaml")),
        ROOT / "examples" / "existing_project" / "label_smoothing.yaml",
    ]
    for path in [*files, PACKAGE / "cli" / "config.py"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = re.search(r"_target_\W+\s*\"?(ls_lightning[\w.]+)", line)
            if match:
                yield f"{path.relative_to(ROOT)}:{number}", match.group(1)


def test_config_targets_name_the_homes() -> None:
    from hydra.utils import get_object

    targets = list(_config_targets())
    assert len(targets) > 15, targets  # the scan sees them
    wrong = []
    for where, target in targets:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # an old path resolves, but warns
            obj = get_object(target)
        home = f"{_home(obj)}.{obj.__name__}"
        if target != home:
            wrong.append(f"{where}: {target} (home: {home})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("old", sorted(__import__("ls_lightning._graveyard", fromlist=["MOVED"]).MOVED))
def test_old_paths_resolve_to_their_home_with_a_warning_that_names_it(old: str) -> None:
    from ls_lightning import _graveyard

    module = importlib.import_module(old)
    assert set(_graveyard.MOVED[old]) <= set(module.__all__)
    for name, home in _graveyard.MOVED[old].items():
        with pytest.warns(FutureWarning, match=re.escape(f"`{old}.{name}` has moved to `{home}.{name}`")):
            value = getattr(module, name)
        assert value is getattr(importlib.import_module(home), name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert _home(value) == home, (old, name)


_MODULE_NAMES = {"pl_module", "module", "model", "lightning_module"}
# What a callback may set on a module: the mixin's documented, settable ε and prior (a buffer, checkpointed), and ε of
# the loss submodules of a module without the mixin (torch.nn.CrossEntropyLoss's own public attribute).
_SETTABLE = {"label_smoothing", "label_smoothing_prior"}


def _attribute_writes(tree: ast.AST) -> Iterator[tuple[int, str, str]]:
    """(line, object, attribute) of every assignment, augmented assignment, deletion, setattr and delattr of an
    attribute of a plainly named object."""
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"setattr", "delattr"}
            and node.args
            and isinstance(node.args[0], ast.Name)
        ):
            attr = node.args[1].value if isinstance(node.args[1], ast.Constant) else "<dynamic>"
            yield node.lineno, node.args[0].id, str(attr)
        for target in targets:
            for item in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name):
                    yield item.lineno, item.value.id, item.attr


def test_nothing_in_the_package_writes_an_attribute_on_a_lightning_module() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, obj, attr in _attribute_writes(ast.parse(path.read_text(), str(path))):
            if obj in _MODULE_NAMES and attr not in _SETTABLE:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} sets {obj}.{attr}")
    assert not wrong, "\n".join(wrong)


def test_the_attribute_scan_sees_a_write() -> None:
    tree = ast.parse("def on_fit_start(self, trainer, pl_module):\n    pl_module.ls_estimator = 1\n")
    assert list(_attribute_writes(tree)) == [(2, "pl_module", "ls_estimator")]


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
from ls_lightning.cli.config import register_configs, validate_config
from ls_lightning.cli.errors import ConfigValueError

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
