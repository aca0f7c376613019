"""The import paths of ls_lightning 0.1 that moved to the layer packages: each old module is an alias that warns.

``ls_lightning.schedules.Cosine`` and the like (the ``_target_`` of a run directory's saved ``.hydra/config.yaml``,
user code) still resolve, to the same object as the new home, with a ``FutureWarning`` naming that home. As in
Lightning's ``_graveyard``, the aliases are modules made on import (a finder that ``ls_lightning`` installs);
nothing is imported until a name is read. The entry points moved too, to ``python -m ls_lightning.cli.train`` (and
``.cli.eval``, ``.cli.report``); ``python -m ls_lightning.train`` still runs, with the same warning.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import CodeType, ModuleType
from typing import Any

_LOSSES = "ls_lightning.losses"
_SMOOTHING = "ls_lightning.smoothing"
_METRICS = "ls_lightning.metrics"
_INTEGRATION = "ls_lightning.integration"

# old module -> {name: the module that is its home now}
MOVED: dict[str, dict[str, str]] = {
    "ls_lightning.functional": dict.fromkeys(
        (
            "BinaryLossStats",
            "LabelSmoothedCE",
            "LossStats",
            "Reduction",
            "binary_label_smoothed_cross_entropy",
            "binary_label_smoothed_cross_entropy_with_stats",
            "check_label_smoothing",
            "check_prior",
            "check_softcap",
            "check_z_loss",
            "label_smoothed_cross_entropy",
            "label_smoothed_cross_entropy_with_stats",
            "linear_label_smoothed_cross_entropy",
            "linear_label_smoothed_cross_entropy_with_stats",
        ),
        _LOSSES,
    ),
    "ls_lightning.schedules": dict.fromkeys(
        ("Constant", "Cosine", "Exponential", "Linear", "Schedule", "Step", "TwoStage"), _SMOOTHING
    ),
    "ls_lightning.priors": {
        "OnlinePrior": _METRICS,
        **dict.fromkeys(("batch_labels", "class_frequency", "fixed_prior", "prior_matrix"), _LOSSES),
    },
    "ls_lightning.data": {
        "UnpaddedDistributedSampler": _METRICS,
        "MissingDependencyError": "ls_lightning.cli.errors",
        **dict.fromkeys(
            (
                "BreastCancerDataModule",
                "DigitsDataModule",
                "SequencesPerEpochSampler",
                "SyntheticDataModule",
                "TensorDataModule",
                "TextDataModule",
            ),
            "ls_lightning.cli.data",
        ),
    },
    "ls_lightning.models": dict.fromkeys(("CNN", "MLP", "Classifier", "Transformer"), "ls_lightning.cli.models"),
    "ls_lightning.search": dict.fromkeys(
        ("EPSILON_RANGE", "PEAK_KEYS", "check_sweeper_plugins", "suggest_epsilon"), "ls_lightning.cli.search"
    ),
    "ls_lightning.plotting": dict.fromkeys(
        ("plot_reliability_curves", "plot_reliability_diagram", "save_figure", "save_reliability_diagram"),
        "ls_lightning.metrics.plotting",
    ),
    "ls_lightning.temperature": {"fit_temperature": _METRICS},
    "ls_lightning.diagrams": dict.fromkeys(
        ("RELIABILITY_JSON", "ReliabilityDiagram", "TemperatureScaling", "log_figure"), _INTEGRATION
    ),
    "ls_lightning.mixin": dict.fromkeys(
        ("DEFAULT_LOG_METRICS", "METRIC_GROUPS", "LabelSmoothingMixin", "MetricGroup"), _INTEGRATION
    ),
    "ls_lightning.callback": {"LabelSmoothing": _INTEGRATION},
    "ls_lightning.report": dict.fromkeys(("main", "rank_settings", "rank_table", "report"), "ls_lightning.cli.report"),
    "ls_lightning.train": dict.fromkeys(("main", "train"), "ls_lightning.cli.train"),
    "ls_lightning.eval": dict.fromkeys(("evaluate", "main"), "ls_lightning.cli.eval"),
}

# Names that became methods: old module -> {name: (home module, attribute path)}
RENAMED: dict[str, dict[str, tuple[str, str]]] = {
    "ls_lightning.diagrams": {
        "bin_stats_to_dict": (_METRICS, "BinStats.to_dict"),
        "bin_stats_from_dict": (_METRICS, "BinStats.from_dict"),
    },
}


class MovedModule(ModuleType):
    """A module of ls_lightning 0.1 whose names now live elsewhere: reading one warns and returns the new object."""

    def __init__(self, name: str) -> None:
        super().__init__(name, f"Moved: the names of ``{name}`` live in the layer packages (see CHANGELOG.md).")
        self.moved = {name_: (home, name_) for name_, home in MOVED.get(name, {}).items()}
        self.moved.update(RENAMED.get(name, {}))
        self.__all__ = sorted(self.moved)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name not in self.moved:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        home, path = self.moved[name]
        warnings.warn(
            f"`{self.__name__}.{name}` has moved to `{home}.{path}`; the old path will be removed in a future release",
            FutureWarning,
            stacklevel=2,
        )
        value: Any = importlib.import_module(home)
        for part in path.split("."):
            value = getattr(value, part)
        return value

    def __dir__(self) -> list[str]:
        return list(self.__all__)


# old entry point -> the module whose ``main`` it runs (``python -m ls_lightning.train``)
ENTRY_POINTS = {
    name: MOVED[name]["main"] for name in ("ls_lightning.train", "ls_lightning.eval", "ls_lightning.report")
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old modules (nothing else) and makes each a :class:`MovedModule`; runs an old entry point."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED and fullname not in RENAMED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, origin="moved (see CHANGELOG.md)")

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return MovedModule(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        pass

    def get_code(self, fullname: str) -> CodeType:
        """What ``python -m <old entry point>`` runs: a warning naming the new one, then its ``main()``."""
        home = ENTRY_POINTS.get(fullname)
        if home is None:
            raise ImportError(f"`{fullname}` has moved and cannot be run: see CHANGELOG.md", name=fullname)
        message = (
            f"`python -m {fullname}` has moved to `python -m {home}`; the old path will be removed in a future release"
        )
        source = f"import warnings\nwarnings.warn({message!r}, FutureWarning)\nfrom {home} import main\nmain()\n"
        return compile(source, f"<{fullname}>", "exec")


_FINDER = _MovedModuleFinder()


def install() -> None:
    """Let the old modules be imported (idempotent)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)
