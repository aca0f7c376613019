"""Hyper-parameter search with Hydra's sweeper plugins (``ls-train hparams_search=optuna``): the check that the plugin
is installed, and the search space of ε, whose key depends on the schedule chosen."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from ls_lightning.cli.errors import MissingDependencyError

if TYPE_CHECKING:
    import optuna

__all__ = ["EPSILON_RANGE", "PEAK_KEYS", "check_sweeper_plugins", "suggest_epsilon"]

# hparams_search (or hydra/sweeper) option -> (module of the Hydra plugin, its PyPI name, our extra)
SWEEPER_PLUGINS = {"optuna": ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper", "optuna")}
# the key of each label_smoothing/schedule option that holds its largest ε (none has no free ε; step has several)
PEAK_KEYS = {
    "constant": "epsilon",
    "two_stage": "epsilon",
    "linear": "start",
    "cosine": "start",
    "exponential": "start",
}
# the interval searched for that ε
EPSILON_RANGE = (0.0, 0.3)
_SCHEDULE_GROUP = "label_smoothing/schedule"


def check_sweeper_plugins(overrides: Sequence[str]) -> None:
    """Refuse, before Hydra composes anything, a command line that asks for a sweeper whose plugin is missing.

    Without it Hydra would stop with a traceback about a missing ``hydra/sweeper/optuna`` config; this says which
    extra to install.

    Args:
        overrides: the command-line arguments, e.g. ``["hparams_search=optuna", "seed=1"]``.

    Raises:
        MissingDependencyError: naming the override, the plugin and the extra that installs it.
    """
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key not in ("hparams_search", "hydra/sweeper") or value not in SWEEPER_PLUGINS:
            continue
        module, package, extra = SWEEPER_PLUGINS[value]
        try:
            importlib.import_module(f"{module}.{value}_sweeper")
        except ImportError as error:
            raise MissingDependencyError(
                f"{key}={value} needs Hydra's {value} sweeper plugin ({package}), which cannot be imported "
                f"({error}): install it with `pip install 'ls-lightning[{extra}]'`"
            ) from None


def suggest_epsilon(cfg: DictConfig, trial: optuna.trial.Trial) -> None:
    """Optuna sweeper extension (``hydra.sweeper.custom_search_space``): suggest the chosen schedule's peak ε.

    The schedules name their largest ε differently (``epsilon`` of constant and two_stage, ``start`` of linear, cosine
    and exponential), so a single ``params`` entry cannot search it for all of them. This suggests
    ``label_smoothing.schedule.<key>`` in :data:`EPSILON_RANGE` for the schedule this trial chose
    (``trial.params["label_smoothing/schedule"]``, else the config's choice); the trial's parameters become the job's
    overrides and appear in ``optimization_results.yaml``.

    Args:
        cfg: the sweep's config, with its ``hydra`` node.
        trial: the Optuna trial being configured.

    Raises:
        ValueError: when the schedule has no single peak ε (``none``, ``step``).
    """
    schedule = trial.params.get(_SCHEDULE_GROUP) or OmegaConf.select(cfg, f"hydra.runtime.choices.{_SCHEDULE_GROUP}")
    if schedule not in PEAK_KEYS:
        raise ValueError(
            f"Expected argument `{_SCHEDULE_GROUP}` to be one of {sorted(PEAK_KEYS)} for an ε search, "
            f"but got {schedule!r}"
        )
    low, high = EPSILON_RANGE
    trial.suggest_float(f"label_smoothing.schedule.{PEAK_KEYS[schedule]}", low, high)
