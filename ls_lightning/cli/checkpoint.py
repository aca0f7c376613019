"""What the command line accepts as ``ckpt_path``: a readable checkpoint of plain data, checked before anything runs."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any

from ls_lightning.cli.errors import CheckpointError

__all__ = ["LIGHTNING_CKPT_NAMES", "callback_states", "check_checkpoint"]

# values of `ckpt_path` that Lightning resolves itself (the newest last*.ckpt, the best model, an HPC checkpoint)
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc")
# how torch.save's files begin: a zip archive (its format since PyTorch 1.6), or a pickle (the legacy format)
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
# what Lightning reads from every checkpoint before anything else
_VERSION_KEY = "pytorch-lightning_version"
# a checkpoint saved as a folder of shards (FSDP, ModelParallelStrategy) keeps Lightning's own state in this file
_SHARDED_METADATA = "meta.pt"


def check_checkpoint(path: str) -> None:
    """Refuse a ``ckpt_path`` that Lightning could not load, or must not, naming the cause in one line.

    The file is read as the command line's ``Trainer`` calls read it, with ``torch.load(weights_only=True)``:
    objects other than tensors and plain containers are refused, never unpickled. A zip archive (what
    ``Trainer.save_checkpoint`` writes) is memory-mapped, so that the tensors' bytes are not read: a few milliseconds
    for a digits MLP, 25 ms for an 800 MB file of 200 tensors. A folder of shards (``save_distributed_checkpoint``) is
    checked by its ``meta.pt``. ``last``, ``best`` and ``hpc`` are left to Lightning.

    Args:
        path: the value of ``ckpt_path``.

    Raises:
        CheckpointError: ``ckpt_path=<path>: <cause>`` when the path is a directory, an empty file, a file that is no
            checkpoint, a damaged (truncated) checkpoint, one that holds objects that are not plain data, or one
            without a ``state_dict``.

    Example:
        >>> check_checkpoint("last")  # resolved by Lightning, not here
    """
    if path in LIGHTNING_CKPT_NAMES:
        return
    cause = _why_not_loadable(path)
    if cause is not None:
        raise CheckpointError(f"ckpt_path={path}: {cause}")


def callback_states(path: str) -> dict[str, Any]:
    """The callbacks' states saved in the checkpoint ``path`` (its ``"callbacks"`` entry, keyed by ``state_key``).

    Read like :func:`check_checkpoint` (``weights_only=True``; a zip archive memory-mapped, so that the weights are not
    read; a folder of shards through its ``meta.pt``), after it: the file is known to load. ``last``, ``best`` and
    ``hpc``, which Lightning resolves, give ``{}``.

    Args:
        path: the value of ``ckpt_path``, accepted by :func:`check_checkpoint`.

    Returns:
        ``{state_key: state}``; ``{}`` when the checkpoint saved no callback state.

    Example:
        >>> callback_states("last")
        {}
    """
    if path in LIGHTNING_CKPT_NAMES:
        return {}
    if os.path.isdir(path):
        path = os.path.join(path, _SHARDED_METADATA)
    import torch

    with open(path, "rb") as file:
        mmap = file.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    states = checkpoint.get("callbacks")
    return dict(states) if isinstance(states, dict) else {}


def _why_not_loadable(path: str, *, state_dict: bool = True) -> str | None:
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, _SHARDED_METADATA)):  # the shards' Lightning state: plain data too
            return _why_not_loadable(os.path.join(path, _SHARDED_METADATA), state_dict=False)
        last = os.path.join(path, "checkpoints", "last.ckpt")
        hint = f"; a run directory's is {last}" if os.path.isfile(last) else ""
        return f"is a directory, not a checkpoint file{hint}"
    try:
        with open(path, "rb") as file:
            head = file.read(len(_ZIP_MAGIC))
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if not head:
        return "is an empty file, not a checkpoint"
    if head == _ZIP_MAGIC:
        # a zip archive is read from its end (the central directory): a cut-off file has none
        if not zipfile.is_zipfile(path):
            return "not a readable checkpoint (truncated?)"
        return _why_not_plain_data(path, mmap=True, state_dict=state_dict)
    if head.startswith(_PICKLE_PROTO):  # torch.save(_use_new_zipfile_serialization=False): cannot be memory-mapped
        return _why_not_plain_data(path, mmap=False, state_dict=state_dict)
    return "not a checkpoint: expected a file written by torch.save, such as a run's checkpoints/last.ckpt"


def _why_not_plain_data(path: str, *, mmap: bool, state_dict: bool) -> str | None:
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        # torch's weights-only unpickler names the first global it refused: "Unsupported global: GLOBAL os.system"
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        named = f" ({found.group(1)})" if found else ""
        return f"holds objects that are not plain data{named}; refusing to unpickle them"
    except Exception:  # whatever a damaged archive raises: RuntimeError, OSError, EOFError, KeyError, ...
        return "not a readable checkpoint (truncated?)"
    needed = (*(["state_dict"] if state_dict else []), _VERSION_KEY)
    missing = [key for key in needed if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        return f"holds no {' and no '.join(missing)}: not a Lightning checkpoint (written by Trainer.save_checkpoint)"
    return None
