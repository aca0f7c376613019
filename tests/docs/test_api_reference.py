"""The API reference (docs/api/*.rst) documents every public name of the package under its home: the layer package
that exports it (``ls_lightning.losses``, ``.metrics``, ``.integration``, ``.smoothing``; a headline name may be shown
as ``ls_lightning.<name>``), else the module that defines it (the command line's modules, the shared checks, the
plotting functions)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

pytest.importorskip("hydra")  # the command line's modules are public too

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ls_lightning"
# an autodoc directive, its target and its option lines
DIRECTIVE = re.compile(r"^\.\. auto(class|function|data|exception|method|module)::\s+(\S+)\n((?:   .*\n)*)", re.M)


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return [name for name in names if name not in ("ls_lightning", "ls_lightning._graveyard")]


def _homes() -> dict[str, str]:
    """Home path of every public name -> the headline path that may stand for it."""
    import ls_lightning

    homes = {}
    for name in _modules():
        module = importlib.import_module(name)
        package = importlib.import_module(".".join(name.split(".")[:2]))
        for item in getattr(module, "__all__", ()):
            home = package.__name__ if item in getattr(package, "__all__", ()) else name
            headline = f"ls_lightning.{item}" if item in ls_lightning.__all__ else f"{home}.{item}"
            homes[f"{home}.{item}"] = headline
    return homes


def _documented() -> set[str]:
    documented = set()
    for page in sorted((ROOT / "docs" / "api").glob("*.rst")):
        for kind, target, options in DIRECTIVE.findall(page.read_text()):
            if kind != "module":
                documented.add(target)
                continue
            members = re.search(r":members:(.*)", options)
            if members is None:
                continue
            module = importlib.import_module(target)
            listed = [m.strip() for m in members.group(1).split(",") if m.strip()] or module.__all__
            # autodoc's :members: shows the classes and functions a module defines; a constant needs an autodata
            documented |= {f"{target}.{m}" for m in listed if callable(getattr(module, m))}
    return documented


def test_every_public_name_is_in_the_api_reference() -> None:
    documented = _documented()
    missing = sorted(home for home, headline in _homes().items() if not {home, headline} & documented)
    assert not missing, "not in docs/api/*.rst: " + ", ".join(missing)


def test_the_api_reference_uses_the_homes() -> None:
    """No page documents a name under an old (graveyard) path or a module that is not its home."""
    homes = _homes()
    allowed = set(homes) | set(homes.values())
    documented = {target for target in _documented() if not target.endswith(".__call__")}
    wrong = sorted(target for target in documented if target not in allowed)
    assert not wrong, "not the home of the name: " + ", ".join(wrong)
