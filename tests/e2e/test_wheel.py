"""The built wheel carries the configs: installed (not editable) into a fresh venv, ``ls-train`` runs anywhere."""

from __future__ import annotations

import importlib.util
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["trainer.accelerator=cpu", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "HYDRA_FULL_ERROR")}
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _build_wheel(out: Path) -> Path:
    command = [sys.executable, "-m", "build", "--wheel", "--outdir", out, ROOT]
    if importlib.util.find_spec("hatchling") is not None:
        command.append("--no-isolation")  # offline: the build backend is already installed
    _run(command, ROOT)
    (wheel,) = out.glob("ls_lightning-*.whl")
    return wheel


def _fresh_venv(path: Path) -> Path:
    """A venv without the project that reuses this environment's dependencies (torch, lightning, hydra, ...).

    A ``.pth`` file of plain directory lines appends our site-packages to the venv's ``sys.path``; Python processes
    ``.pth`` files only in site directories, so the editable install's own ``.pth`` there stays inert.
    """
    _run([sys.executable, "-m", "venv", "--without-pip", path], path.parent)
    python = path / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], path.parent)
    (Path(purelib.stdout.strip()) / "_parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


@pytest.mark.slow
def test_wheel_ships_the_configs_and_trains_from_another_directory(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path / "dist")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("ls_lightning/conf/")}
    source = {
        str(p.relative_to(ROOT)) for p in (ROOT / "ls_lightning" / "conf").rglob("*") if p.suffix in (".yaml", ".py")
    }
    assert shipped == source
    # the license pyproject.toml declares (Apache-2.0), its text in the wheel
    (license_file,) = (n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/licenses/LICENSE"))
    assert zipfile.ZipFile(wheel).read(license_file) == (ROOT / "LICENSE").read_bytes()
    assert b"Apache License" in (ROOT / "LICENSE").read_bytes()[:200]

    python = _fresh_venv(tmp_path / "venv")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = _run([python, "-c", "import ls_lightning.cli.train as t; print(t.__file__)"], elsewhere).stdout.strip()
    assert Path(found).is_relative_to(tmp_path / "venv"), found  # the wheel, not the source tree

    _run([tmp_path / "venv" / "bin" / "ls-train", "trainer.max_epochs=1", *QUIET], elsewhere)
    (metrics,) = elsewhere.rglob("metrics.csv")
    assert metrics.parent.parent.parent == elsewhere / "outputs" / "train"
    assert (metrics.parent / "checkpoints" / "last.ckpt").is_file()
