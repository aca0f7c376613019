"""Run directories: each run claims one of its own, a refused run leaves none behind, a sweep says where it wrote.

Hydra names a run's directory by the time (``outputs/train/<date>/<HH-MM-SS>``), so two runs started in the same
second from the same directory would share one. :class:`RunDirectories`, a Hydra callback (``conf/hydra/default.yaml``),
claims the directory atomically before Hydra writes into it (``os.mkdir`` fails if the name exists; the next free
``<HH-MM-SS>_<k>`` is taken), remembers which directories this process made, and prints the sweep directory when a
multirun ends. :func:`discard_refused_run` removes the directory of a run refused before training.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from ls_lightning.cli.launch import _hydra_node, env_rank_is_zero

__all__ = ["RunDirectories", "claim_directory", "discard_refused_run"]

# what Hydra writes into its output subdirectory (`.hydra` unless hydra.output_subdir says otherwise)
_HYDRA_FILES = frozenset({"config.yaml", "hydra.yaml", "overrides.yaml"})
# what Hydra's launchers write into a sweep directory besides the jobs' directories
_SWEEP_FILES = frozenset({"multirun.yaml"})
# the directories this process made, each with the parents it made for it (deepest first)
_made: dict[str, list[str]] = {}


def claim_directory(path: str, *, fresh: bool) -> str:
    """Make the directory ``path`` (and its parents) for this process and return the one made.

    Args:
        path: the directory wanted.
        fresh: claim a directory no other run has: ``path`` if it does not exist, else the first free ``path_<k>``
            (k = 1, 2, ...). ``os.mkdir`` fails on an existing name, so two processes never claim the same one.
            Without ``fresh``, an existing ``path`` is joined (a run resumed in its directory).

    Returns:
        The directory claimed (``path`` or ``path_<k>``), as given: relative if ``path`` was.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> [os.path.basename(claim_directory(f"{root}/12-00-00", fresh=True)) for _ in range(3)]
        ['12-00-00', '12-00-00_1', '12-00-00_2']
        >>> shutil.rmtree(root)
    """
    parents: list[str] = []
    k = 0
    while True:
        candidate = path if k == 0 else f"{path}_{k}"
        parents += _make_parents(os.path.dirname(os.path.abspath(candidate)))
        try:
            os.mkdir(candidate)
        except FileExistsError:
            if not fresh:
                return path
            k += 1
            continue
        except FileNotFoundError:  # a parent was removed meanwhile (another run's clean-up): make it again
            continue
        _made[os.path.abspath(candidate)] = parents
        return candidate


def _make_parents(directory: str) -> list[str]:
    """``os.makedirs(directory, exist_ok=True)``; returns the directories it made, deepest first."""
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    os.makedirs(missing[0] if missing else directory, exist_ok=True)
    return missing


def _time_stamped(node: DictConfig, key: str) -> bool:
    """Whether the config value at ``key`` holds a ``${now:...}`` interpolation (before it is resolved)."""
    raw = OmegaConf.to_container(node, resolve=False)
    return isinstance(raw, dict) and "${now:" in str(raw.get(key, ""))


class RunDirectories(Callback):
    """Hydra callback: claims each run's directory, and prints the sweep directory at the end of a multirun.

    Only global rank 0 acts (:func:`ls_lightning.cli.launch.env_rank_is_zero`): the other ranks join rank 0's
    directory (Lightning re-launches them with ``hydra.run.dir=<rank 0's>``) or write nothing.

    - A single run whose ``hydra.run.dir`` is time-stamped (holds ``${now:...}``, as the default does) gets a
      directory no other run has: :func:`claim_directory` with ``fresh=True``, written back into ``hydra.run.dir``
      before Hydra makes it. Any other ``hydra.run.dir`` (given by the user, or ``hydra=slurm``'s job id) is used
      as it is, so that ``ckpt_path=last`` resumes in it.
    - A multirun remembers whether it made its sweep directory, and prints ``sweep directory: <path>`` when it ends.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not env_rank_is_zero():
            return
        run = config.hydra.run
        claimed = claim_directory(str(run.dir), fresh=_time_stamped(run, "dir"))
        with read_write(config.hydra):
            run.dir = claimed

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # resolved on the config that the sweeper and launcher resolve too: `${now:...}` is cached there
        if env_rank_is_zero():
            claim_directory(str(config.hydra.sweep.dir), fresh=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if env_rank_is_zero():
            print(f"sweep directory: {os.path.abspath(str(config.hydra.sweep.dir))}", flush=True)


def discard_refused_run() -> list[str]:
    """Remove the directory of a Hydra job refused before training, if this process made it and Hydra alone wrote in
    it (``.hydra/`` and the job's log file), with the parents made for it that are left empty.

    A directory the run joined (``ckpt_path=last`` in an earlier run's), or one that holds anything else, is kept; so
    is everything outside a Hydra app and on ranks > 0. In a sweep, the refused job's directory goes, and the sweep
    directory too when nothing but ``multirun.yaml`` is left in it.

    Returns:
        The directories removed.
    """
    node = _hydra_node()
    if node is None or not env_rank_is_zero():
        return []
    job = os.path.abspath(str(node.runtime.output_dir))
    owner = next((made for made in _made if job == made or job.startswith(made + os.sep)), None)
    if owner is None or not _holds_only_hydra_files(job, node):
        return []
    shutil.rmtree(job)
    removed = [job]
    directory = os.path.dirname(job)
    while directory.startswith(owner) and _remove_if_left_empty(directory, _SWEEP_FILES if directory == owner else ()):
        removed.append(directory)
        directory = os.path.dirname(directory)
    if removed[-1] == owner:
        removed += [made for made in _made.pop(owner) if _remove_if_left_empty(made, ())]
    return removed


def _holds_only_hydra_files(job: str, node: Any) -> bool:
    subdir = node.output_subdir
    allowed = {f"{node.job.name}.log", *([str(subdir)] if subdir is not None else [])}
    entries = set(os.listdir(job))
    if not entries <= allowed:
        return False
    output = os.path.join(job, str(subdir)) if subdir is not None else None
    return output is None or not os.path.isdir(output) or set(os.listdir(output)) <= _HYDRA_FILES


def _remove_if_left_empty(directory: str, files: frozenset[str] | tuple[()]) -> bool:
    """Remove ``directory`` if it holds nothing but (some of) ``files``; ``rmdir`` keeps one another run fills."""
    try:
        entries = os.listdir(directory)
        if not set(entries) <= set(files):
            return False
        for name in entries:
            os.remove(os.path.join(directory, name))
        os.rmdir(directory)
    except OSError:
        return False
    return True
