"""Glue between Hydra and Lightning's multi-process launchers: all ranks of a job share its one run directory.

Lightning's ``ddp`` strategy re-runs the script for ranks 1..N-1 with ``sys.argv`` plus
``hydra.run.dir=<HydraConfig.get().run.dir> hydra.output_subdir=null``. That is right for a single run, but in a
multirun job ``sys.argv`` holds ``-m`` and the whole sweep, and ``hydra.run.dir`` is not the job's directory.
:func:`hydra_job_launch` points both at the current job; :func:`quiet_rank_overrides` keeps every process but global
rank 0 from writing Hydra's files (``.hydra/``, the job log), whoever launched it (Lightning, torchrun, SLURM).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = [
    "continued_metrics",
    "env_rank_is_zero",
    "hydra_job_launch",
    "job_argv",
    "keep_earlier_metrics",
    "quiet_rank_overrides",
]

# What launchers set to tell a process its place: torchrun (RANK, GROUP_RANK), Lightning's own re-launch (LOCAL_RANK,
# NODE_RANK), SLURM (SLURM_PROCID), LSF/jsrun (JSM_NAMESPACE_RANK). Global rank 0 is the process where all are 0.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
# What Lightning's launcher writes into the environment of the process that launches the others.
_LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra overrides of a multirun job that must not reach its re-launched ranks: they would start a sweep of their own
# or pick another directory. The ranks get `hydra.mode=RUN` and the job's directory instead.
_SWEEP_ONLY_KEYS = ("hydra.mode", "hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.output_subdir",
                    "hydra.job.name")  # fmt: skip
# Hydra's command-line flags that take a value and that a re-launched rank needs to find the same config.
_CONFIG_FLAGS = (("config_path", "--config-path"), ("config_name", "--config-name"), ("config_dir", "--config-dir"))


def env_rank_is_zero(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is global rank 0 by what its launcher announced (before any process group exists).

    Example:
        >>> env_rank_is_zero({}), env_rank_is_zero({"LOCAL_RANK": "0", "NODE_RANK": "1"})
        (True, False)
    """
    environ = os.environ if environ is None else environ
    return all(environ.get(name, "0").strip() in ("", "0") for name in _RANK_VARIABLES)


def quiet_rank_overrides(environ: Mapping[str, str] | None = None) -> list[str]:
    """Hydra overrides that keep a process of global rank > 0 from writing ``.hydra/`` and a job log file.

    Every rank of a multi-node or torchrun launch runs the whole Hydra app in the same run directory; only rank 0
    writes there (Lightning's loggers and checkpoints already follow that rule). Later overrides win in Hydra, so
    these go after the user's.

    Returns:
        ``[]`` on global rank 0, else the overrides to append to ``sys.argv``.
    """
    if env_rank_is_zero(environ):
        return []
    return ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~").strip()


def job_argv(argv: Sequence[str], task_overrides: Sequence[str], hydra_overrides: Sequence[str]) -> list[str]:
    """The command line that re-runs one job of a multirun as a single run: no ``-m``, the job's own overrides.

    Args:
        argv: ``sys.argv`` of the multirun (the program, Hydra flags, the sweep's overrides).
        task_overrides: the job's ``hydra.overrides.task`` (the sweep's values for this job and the fixed ones).
        hydra_overrides: the job's ``hydra.overrides.hydra``; those that choose a sweep or a directory are dropped.

    Example:
        >>> job_argv(["ls-train", "-m", "seed=0,1", "trainer.devices=2"], ["seed=1", "trainer.devices=2"],
        ...          ["hydra.mode=MULTIRUN", "hydra.job.chdir=false"])
        ['ls-train', 'seed=1', 'trainer.devices=2', 'hydra.job.chdir=false', 'hydra.mode=RUN']
    """
    from hydra._internal.utils import get_args_parser  # Hydra's own parser: the flags mean what they mean to Hydra

    args, _ = get_args_parser().parse_known_args(list(argv[1:]))
    flags = [f"{flag}={getattr(args, name)}" for name, flag in _CONFIG_FLAGS if getattr(args, name) is not None]
    kept = [o for o in hydra_overrides if _override_key(o) not in _SWEEP_ONLY_KEYS]
    return [argv[0], *flags, *task_overrides, *kept, "hydra.mode=RUN"]


def _hydra_node() -> Any:
    """The running Hydra job's ``hydra`` config node, or ``None`` outside a Hydra app (e.g. ``compose`` in tests)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    node = HydraConfig.get()
    return None if OmegaConf.is_missing(node.runtime, "output_dir") else node  # a job sets it before it starts


def _point_launcher_at_job(node: Any) -> None:
    """Make Lightning's re-launch of this job's ranks land in this job's directory, not a new or a sweep one."""
    from hydra.types import RunMode
    from omegaconf import read_write

    output_dir = str(node.runtime.output_dir)  # absolute and resolved once: `${now:...}` cannot differ per rank
    with read_write(node):
        node.run.dir = output_dir
    if node.mode == RunMode.MULTIRUN:
        sys.argv = job_argv(sys.argv, list(node.overrides.task), list(node.overrides.hydra))


@contextmanager
def hydra_job_launch() -> Iterator[None]:
    """Run a Hydra job's Trainer calls inside this, so that multi-process strategies work from the command line.

    On entry, inside a Hydra job, it points what Lightning's ``ddp`` launcher reads (``sys.argv``, the run dir) at
    this job. On exit it restores ``sys.argv`` and the launcher's environment variables and ends the process group
    that the Trainer started, so that the next job of a multirun launches its own ranks instead of waiting for the
    last job's. Outside a Hydra app only the clean-up applies.
    """
    saved_argv = list(sys.argv)
    saved_env = {name: os.environ.get(name) for name in _LAUNCHER_VARIABLES}
    had_process_group = _process_group_exists()  # a caller's own group is the caller's to end
    node = _hydra_node()
    try:
        if node is not None:
            _point_launcher_at_job(node)
        yield
    finally:
        sys.argv = saved_argv
        if not had_process_group and _process_group_exists():
            import torch.distributed as dist

            dist.destroy_process_group()
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def keep_earlier_metrics(output_dir: str) -> str | None:
    """Before a fit resumes in a run directory that has a ``metrics.csv``, rename it to ``metrics.<k>.csv``.

    Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` in its directory, which would lose the history of
    an interrupted run resumed in place (``ckpt_path=last``). Only global rank 0 renames.

    Returns:
        The new path of the earlier file, or ``None`` when there was none (or this is not rank 0).
    """
    current = os.path.join(output_dir, "metrics.csv")
    if not env_rank_is_zero() or not os.path.isfile(current):
        return None
    k = 1
    while os.path.exists(os.path.join(output_dir, f"metrics.{k}.csv")):
        k += 1
    earlier = os.path.join(output_dir, f"metrics.{k}.csv")
    os.replace(current, earlier)
    return earlier


@contextmanager
def continued_metrics(output_dir: str) -> Iterator[None]:
    """Around a second Trainer call of a run (``test`` after ``fit``): its rows go after those of the first.

    Under ``ddp_spawn`` each call runs in new processes, where Lightning's ``CSVLogger`` starts ``metrics.csv`` anew
    and deletes the first call's rows. Rank 0 moves the file aside and, afterwards, puts both parts into one file
    (columns: the union).
    """
    current = os.path.join(output_dir, "metrics.csv")
    earlier = current + ".part"
    if not env_rank_is_zero() or not os.path.isfile(current):
        yield
        return
    os.replace(current, earlier)
    try:
        yield
    finally:
        _append_csv(earlier, current)


def _append_csv(earlier: str, current: str) -> None:
    """Write the rows of ``earlier`` and then of ``current`` (if any) into ``current``; remove ``earlier``."""
    import csv

    parts = []
    for path in (earlier, current):
        if os.path.isfile(path):
            with open(path, newline="") as file:
                reader = csv.DictReader(file)
                parts.append((list(reader.fieldnames or []), list(reader)))
    columns = list(dict.fromkeys(name for fields, _ in parts for name in fields))
    with open(current, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for _, rows in parts:
            writer.writerows(rows)
    os.remove(earlier)


def _process_group_exists() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()
