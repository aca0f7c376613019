"""How many threads torch runs a command-line run on: the ``num_threads`` key, ``OMP_NUM_THREADS``, or the idle cores.

PyTorch starts one intra-op thread per core by default. When another process keeps some of those cores busy, the
threads wait for each other at the end of every parallel region: on a 2-core machine with one busy process the
default job took 3 times as long on 2 threads as on 1.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence

__all__ = ["idle_cores", "set_num_threads"]

log = logging.getLogger(__name__)

_STAT = "/proc/stat"


def set_num_threads(requested: int | None, environ: Mapping[str, str] | None = None) -> int | None:
    """Set torch's intra-op threads for a run: ``requested`` if given, else ``OMP_NUM_THREADS`` (left to torch), else
    the cores of this process that are idle now (:func:`idle_cores`).

    Args:
        requested: the config's ``num_threads`` (``None``: choose).
        environ: the environment (``os.environ`` by default).

    Returns:
        The number of threads set, or ``None`` when ``OMP_NUM_THREADS`` decides (torch already reads it).
    """
    import torch

    environ = os.environ if environ is None else environ
    if requested is None and environ.get("OMP_NUM_THREADS", "").strip():
        return None
    threads = requested if requested is not None else idle_cores()
    if threads != torch.get_num_threads():
        why = "num_threads" if requested is not None else f"{threads} of {len(_usable_cpus())} cores idle"
        log.debug(f"torch runs on {threads} thread{'s' if threads > 1 else ''} ({why}; num_threads=N chooses)")
        torch.set_num_threads(threads)
    return threads


def idle_cores(interval: float = 0.1) -> int:
    """The number of cores this process may run on that no other process keeps busy, measured over ``interval``
    seconds (at least 1).

    The cores are those of the process's CPU affinity (``os.sched_getaffinity``); their idle time is read from
    ``/proc/stat`` before and after the interval. Where that file is missing (not Linux), all usable cores count.

    Example:
        >>> 1 <= idle_cores(0.01) <= (os.cpu_count() or 1)
        True
    """
    cpus = _usable_cpus()
    before = _read_stat()
    if before is None:
        return len(cpus)
    time.sleep(interval)
    after = _read_stat()
    return _idle_of(cpus, before, after or before)


def _usable_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _read_stat() -> dict[int, tuple[int, int]] | None:
    """``{cpu: (idle ticks, total ticks)}`` from ``/proc/stat``, or ``None`` where it cannot be read."""
    try:
        with open(_STAT) as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    found = {}
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(v) for v in values]
            found[int(name[3:])] = (ticks[3] + (ticks[4] if len(ticks) > 4 else 0), sum(ticks[:8]))  # idle + iowait
    return found


def _idle_of(cpus: Sequence[int], before: Mapping[int, tuple[int, int]], after: Mapping[int, tuple[int, int]]) -> int:
    """The idle cores among ``cpus`` between two readings of ``/proc/stat``, rounded, at least 1."""
    idle = 0.0
    for cpu in cpus:
        if cpu not in before or cpu not in after:
            continue
        total = after[cpu][1] - before[cpu][1]
        idle += (after[cpu][0] - before[cpu][0]) / total if total > 0 else 1.0
    return max(1, min(len(cpus), round(idle)))
