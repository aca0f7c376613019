"""Priors u of label smoothing beyond uniform, the ``prior`` argument of the losses: a fixed distribution, and the
class frequencies of the training labels. Online label smoothing's prior, estimated during training, is
:class:`ls_lightning.metrics.OnlinePrior`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ls_lightning.losses.checks import check_prior

__all__ = ["LABEL_KEYS", "batch_labels", "class_frequency", "fixed_prior", "prior_matrix"]

# keys under which a mapping batch holds its labels, tried in this order
LABEL_KEYS = ("target", "targets", "label", "labels", "y")


def fixed_prior(values: Sequence[float] | Sequence[Sequence[float]] | Tensor, num_classes: int | None = None) -> Tensor:
    """Return ``values`` as a float32 prior after checking that it is a (C,) distribution or a (C, C) row matrix.

    Args:
        values: the distribution u (a list from a config, or a tensor); a (C, C) matrix holds u(·|y) in row y.
        num_classes: C, checked when given.

    Returns:
        A float32 CPU tensor of shape (C,) or (C, C).

    Raises:
        ValueError: if ``values`` is not numeric, has the wrong shape, a negative entry or a row not summing to 1.

    Example:
        >>> fixed_prior([0.25, 0.75])
        tensor([0.2500, 0.7500])
    """
    if isinstance(values, (str, bytes)):
        raise ValueError(f"Expected argument `prior` to be a sequence of floats, but got {values!r}")
    try:
        prior = values.detach().cpu().float() if isinstance(values, Tensor) else torch.tensor(values).float()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"Expected argument `prior` to be a sequence of floats, but got {values!r}") from None
    check_prior(prior, num_classes)
    return prior


def prior_matrix(prior: Tensor | None, num_classes: int) -> Tensor:
    """The (C, C) matrix whose row y is u(·|y): uniform for ``None``, a (C,) prior repeated in every row.

    Example:
        >>> prior_matrix(None, 2)
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]])
    """
    if prior is None:
        return torch.full((num_classes, num_classes), 1.0 / num_classes)
    return prior.expand(num_classes, num_classes).clone() if prior.dim() == 1 else prior.clone()


def batch_labels(batch: Any) -> Tensor:
    """The labels of a training batch: the second item of an ``(input, target, ...)`` tuple or list, or the first of
    the keys ``target``, ``targets``, ``label``, ``labels``, ``y`` of a mapping.

    Raises:
        TypeError: if the batch has neither form.
    """
    if isinstance(batch, Mapping):
        for key in LABEL_KEYS:
            if key in batch:
                return batch[key]
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    raise TypeError(
        "Expected each training batch to be an (input, target, ...) tuple or a mapping with one of the keys"
        f" {LABEL_KEYS}, but got {type(batch).__name__}. Count the labels yourself with"
        " `ls_lightning.losses.class_frequency(labels, num_classes)` and pass the result as a fixed prior."
    )


def class_frequency(
    source: Tensor | Iterable[Any],
    num_classes: int,
    ignore_index: int = -100,
    *,
    device: torch.device | str | None = None,
    sync: bool = True,
) -> Tensor:
    r"""The class distribution of training labels, the unigram prior of label smoothing.

    .. math:: u_c = \frac{n_c}{\sum_k n_k}

    ``n_c`` counts the positions labelled c (probability targets add their probabilities). When ``torch.distributed``
    is initialised and ``sync`` is set, the counts are summed over all processes: give each process its own shard (a
    process that passes the whole data set changes nothing, since every count is multiplied by the same world size).
    A ``DistributedSampler`` that pads the ranks to equal length counts its up to W - 1 repeated samples twice.

    Args:
        source: labels (class indices of any shape, or (N, C, ...) probabilities), or an iterable of batches such as a
            ``DataLoader``, whose labels :func:`batch_labels` takes from each batch.
        num_classes: C.
        ignore_index: label value that is not counted (padding).
        device: where counts are summed and all-reduced (the process group's device, e.g. CUDA under NCCL).
        sync: sum the counts over processes (a collective: every rank must call it).

    Returns:
        A float32 (C,) distribution on ``device``.

    Raises:
        ValueError: if a label lies outside [0, C) and is not ``ignore_index``, or nothing is counted.
        TypeError: if the labels are neither integer nor floating point tensors.

    Example:
        >>> class_frequency(torch.tensor([0, 1, 1, 3, -100]), num_classes=4)
        tensor([0.2500, 0.5000, 0.0000, 0.2500])
    """
    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    for labels in [source] if isinstance(source, Tensor) else map(batch_labels, source):
        counts += _label_counts(labels, num_classes, ignore_index).to(counts.device)
    if sync and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    total = counts.sum()
    if total <= 0:
        raise ValueError(
            f"Expected argument `source` to hold at least one label that is not {ignore_index}, but got none"
        )
    return (counts / total).float()


def _label_counts(labels: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    if not isinstance(labels, Tensor) or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"Expected the labels to be a tensor of class indices, but got {type(labels).__name__}")
    if labels.is_floating_point():  # probabilities (N, C, ...): the expected count of each class
        if labels.dim() < 2 or labels.shape[1] != num_classes:
            raise ValueError(
                f"Expected probability labels of shape (N, {num_classes}, ...), but got {tuple(labels.shape)}"
            )
        return labels.detach().movedim(1, -1).reshape(-1, num_classes).sum(0).double()
    labels = labels.detach().reshape(-1)
    labels = labels[labels != ignore_index]
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"Expected labels in [0, {num_classes}) or ignore_index={ignore_index} (is `num_classes` right?), but got"
            f" {labels[bad][0].item()}"
        )
    return torch.bincount(labels, minlength=num_classes).double()
