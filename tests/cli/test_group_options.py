"""A misspelled config group option stops the composition with the group's options (the commands themselves:
tests/e2e/test_commands.py).

The groups are read from the composed defaults list (``hydra.runtime.choices``), so a group added later is covered.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

import pytest
from helpers import listed_options
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException

from ls_lightning.cli.config import register_configs

CONF = resources.files("ls_lightning.conf")
CONFIGS = ("train", "eval")


def choices(config_name: str) -> dict[str, str | None]:
    """Every config group of the composed defaults list (ours and Hydra's own) and its chosen option."""
    register_configs()
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        cfg = compose(config_name, return_hydra_config=True)
    return dict(cfg.hydra.runtime.choices)


def shipped_groups(folder: Traversable = CONF, prefix: str = "") -> set[str]:
    """The folders of ``ls_lightning/conf`` that hold options (YAML files), e.g. ``label_smoothing/schedule``."""
    groups = set()
    for child in folder.iterdir():
        if child.is_dir() and not child.name.startswith("__"):
            name = f"{prefix}{child.name}"
            if any(p.name.endswith(".yaml") for p in child.iterdir()):
                groups.add(name)
            groups |= shipped_groups(child, f"{name}/")
    return groups


def shipped_options(group: str) -> set[str]:
    """Our options of ``group`` (none for Hydra's own groups such as ``hydra/launcher``)."""
    folder = CONF.joinpath(group)
    return (
        {p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")}
        if folder.is_dir()
        else set()
    )


@pytest.mark.parametrize("config_name", CONFIGS)
def test_every_group_with_options_is_in_the_defaults_list(config_name: str) -> None:
    assert shipped_groups() <= set(choices(config_name))


@pytest.mark.parametrize("config_name", CONFIGS)
def test_a_misspelled_option_of_any_group_stops_the_composition_with_the_groups_options(config_name: str) -> None:
    groups = choices(config_name)
    assert {"data", "model", "experiment", "callbacks", "hydra", "hydra/launcher"} <= set(groups)
    for group, choice in groups.items():
        typo, options = f"{choice or 'none'}z", shipped_options(group)
        assert typo not in options
        with (
            initialize_config_module("ls_lightning.conf", version_base="1.3"),
            pytest.raises(ConfigCompositionException) as error,
        ):
            compose(config_name, overrides=[f"{group}={typo}"])
        message = str(error.value)
        if options:
            assert f"Could not find '{group}/{typo}'" in message, group
            assert options <= listed_options(message, group), group
        else:  # a group of Hydra's without options of its own (hydra/callbacks): refused as well
            assert f"'{group}" in message, message
