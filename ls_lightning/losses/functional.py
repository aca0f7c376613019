"""The label-smoothed cross-entropy, a drop-in for ``F.cross_entropy`` that also returns both of its terms.

Class-index targets go through the fused one-pass kernel in :mod:`.ops.fused`; probability targets take
the exact composite path built on ``log_softmax`` (same values, autograd's own gradient). Small inputs without
weights or prior (at most ``SMALL_ELEMENTS`` logits in at most ``SMALL_ROWS`` rows) take a short ``log_softmax``
path: there, each PyTorch op costs microseconds of dispatch whatever its size, and the chunked kernel's extra ops
cost more than the memory it saves (measured at one thread: 64×10 forward + backward 1.21× PyTorch's time against
the kernel's 2.66×; the kernel wins from about 1024 rows at C = 10 and from 128 rows at C = 1000).

Under ``torch.compile`` class indices take :mod:`.ops.traced`: the same terms written as formulas that
Inductor fuses into one reduction forward and one pointwise pass backward, with no graph break and nothing read
back to the host. ε stays data in the graph (the code never branches on its value), so a tensor ε never
recompiles. The chunked kernel is not used there: its ``out=`` calls and host reads do not trace, and as an opaque
custom op it would keep at best its eager time (see :mod:`ls_lightning.losses.ops.traced` for the measurements).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ls_lightning.losses.checks import check_loss_arguments, check_softcap, check_z_loss
from ls_lightning.losses.ops import fused as _fused
from ls_lightning.losses.ops import traced as _traced

Reduction = Literal["none", "mean", "sum"]
# The short log_softmax path (a few small ops and three autograd nodes) is faster than the chunked kernel for inputs
# of at most SMALL_ELEMENTS logits in at most SMALL_ROWS rows: its cost grows with the rows (PyTorch's log_softmax
# costs ~0.2 µs a row at C = 10), the kernel's is ~40 ops of dispatch plus the elements. Measured forward + backward,
# one thread (the other helpers' load stalls two), ratio to F.cross_entropy, short path / kernel: 64×10 1.21/2.66,
# 512×100 1.56/1.84, 1024×100 1.36/1.34, 2048×10 1.15/0.75, 4096×10 1.11/0.64, 128×1000 1.42/1.18. Its full-size
# temporaries are at most 256 KiB of float32.
SMALL_ELEMENTS = 1 << 16
SMALL_ROWS = 512


class LabelSmoothedCE(NamedTuple):
    """Result of :func:`label_smoothed_cross_entropy`: ``loss == (1 - ε)·h_pq + ε·h_uq``."""

    loss: Tensor
    h_pq: Tensor
    h_uq: Tensor


class LossStats(NamedTuple):
    """Per-position statistics from the same pass as the loss (detached), for accuracy and calibration metrics.

    ``M`` is the number of positions (N·d1·…, 1 for an unbatched (C) input).
    """

    confidence: Tensor  # (M,) float32: max softmax probability
    correct: Tensor  # (M,) bool: argmax(input) == target class (probability targets: argmax of the target)
    valid: Tensor  # (M,) bool: position is not ignore_index (all True for probability targets)
    brier: Tensor  # (M,) float32: Σ_c (q_c − onehot_c)², onehot of the target class
    weight_sum: Tensor  # 0-d float32: the denominator of reduction="mean"
    z_loss: Tensor | None = None  # (M,) float32: z_loss·lse² (0 where ignored); empty (or None) without a z-loss
    entropy: Tensor | None = None  # (M,) float32: predictive entropy H(q) = −Σ_c q_c log q_c; empty without Brier


def label_smoothed_cross_entropy(
    input: Tensor,
    target: Tensor,
    label_smoothing: float | Tensor = 0.0,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    prior: Tensor | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> LabelSmoothedCE:
    r"""Label-smoothed cross-entropy and its two terms, equal to ``F.cross_entropy(..., label_smoothing=ε)``.

    .. math::
        L = (1 - \varepsilon)\,H(p, q) + \varepsilon\,H(u, q) + \gamma\,\mathrm{lse}(c)^2, \qquad
        q = \mathrm{softmax}(c), \quad c = s \tanh(\text{input} / s)

    with ``γ = z_loss`` (0 by default) and ``s = softcap`` (None by default: ``c = input``). The z-loss term is
    reduced like the loss over the counted (not ignored) positions, without class weights: ``mean`` divides it by
    their number. ``h_pq`` and ``h_uq`` are the two cross-entropies of ``c``, without it.

    With class weights ``w``, position i with label y contributes ``H(p,q)_i = w_y (−log q_y)`` and
    ``H(u,q)_i = Σ_c w_c u_c (−log q_c)``, and ``mean`` divides both by Σ w_y over non-ignored positions, as
    PyTorch does. With a ``prior`` and no weights this equals ``F.cross_entropy(input, (1-ε)·onehot + ε·u)``; with
    weights too, ``none`` and ``sum`` equal that soft-target call, while ``mean`` keeps the class-index
    denominator Σ w_y (the soft-target call divides by the number of positions). Probability targets follow
    PyTorch: smoothing applies on top of the given p, ``mean`` divides by the number of positions.

    Unlike PyTorch, ``mean`` over a zero total weight (every position ignored, an empty batch, or class weights that
    are 0 at every counted label) is 0 with zero gradient, not NaN; docs/existing-projects.md lists every difference.

    ``torch.compile(label_smoothed_cross_entropy, fullgraph=True)`` compiles without a graph break, to one fused
    reduction forward and one pointwise pass backward. A 0-d tensor ε never recompiles when its value changes
    (:class:`~ls_lightning.losses.LabelSmoothedCrossEntropy` passes one); a Python float ε is Dynamo's to
    specialise: the first compile takes it as a constant, the first change compiles once more with ε as an input,
    and no later value recompiles (``dynamic=True`` makes it an input from the start).

    Args:
        input: Logits.
        target: Class indices, or class probabilities of ``input``'s shape.
        label_smoothing: ε in [0, 1]; a float or a 0-d tensor (a tensor on an accelerator, or under
            ``torch.compile``, is not range-checked: that would need a host synchronisation or a value guard).
        weight: Class weights, shape (C,).
        ignore_index: Target value whose positions contribute nothing (class-index targets only).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        prior: Smoothing distribution u: shape (C,), or (C, C) whose row y is u(·|y) (for probability targets
            the row mixture ``p @ prior``). Uniform when None.
        z_loss: γ ≥ 0, the weight of ``lse(c)²`` (PaLM, OLMo: 1e-4), which keeps the log-partition near 0.
        softcap: s > 0, or None: the logits are soft-capped to ``s·tanh(input / s)`` (Gemma 2: 30) before the loss.

    Returns:
        LabelSmoothedCE ``(loss, h_pq, h_uq)``, each reduced like ``F.cross_entropy``'s result; float32 for
        half-precision input.

    Raises:
        ValueError: If ε is outside [0, 1], ``z_loss`` is not a finite number ≥ 0, ``softcap`` is not None or a
            finite number > 0, a class index is outside [0, C) and not ``ignore_index``, the prior is
            not a distribution, shapes do not match, ``weight`` is not (C,), or ``reduction`` is unknown. Checks
            that need tensor values run where reading them is free: on CPU tensors. On an accelerator the class
            indices and prior are checked by an asynchronous device assert (a RuntimeError at the next
            synchronisation) and a tensor ε is not checked, so that no step waits on the device.

    Shape:
        - input: (C), (N, C) or (N, C, d1, …).
        - target: () / (N) / (N, d1, …) class indices, or the input's shape for probabilities.
        - output: () for ``mean``/``sum``, else the target's shape without the class dimension.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
        >>> out = label_smoothed_cross_entropy(logits, torch.tensor([0, 2]), 0.1)
        >>> torch.allclose(out.loss, torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]),
        ...                                                            label_smoothing=0.1))
        True
        >>> torch.allclose(out.loss, 0.9 * out.h_pq + 0.1 * out.h_uq)
        True
    """
    args = (input, target, label_smoothing, weight, ignore_index, reduction, prior, False)
    return _compute(*args, z_loss=z_loss, softcap=softcap)[0]


def label_smoothed_cross_entropy_with_stats(
    input: Tensor,
    target: Tensor,
    label_smoothing: float | Tensor = 0.0,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    prior: Tensor | None = None,
    brier: bool = True,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[LabelSmoothedCE, LossStats]:
    """:func:`label_smoothed_cross_entropy` plus per-position :class:`LossStats` from the same pass.

    Makes no host synchronisation for accelerator tensors, so it can run every step. ``brier=False`` may leave
    ``LossStats.brier`` empty where computing it costs a pass of its own. With ``softcap`` the statistics are those
    of ``softmax(c)``; with ``z_loss`` > 0, ``LossStats.z_loss`` holds each position's z-loss term.

    Example:
        >>> import torch
        >>> _, stats = label_smoothed_cross_entropy_with_stats(torch.tensor([[3.0, 0.0], [0.0, 0.0]]),
        ...                                                    torch.tensor([0, -100]))
        >>> stats.correct.tolist(), stats.valid.tolist(), stats.weight_sum.item()
        ([True, False], [True, False], 1.0)
    """
    args = (input, target, label_smoothing, weight, ignore_index, reduction, prior, True, brier)
    return _compute(*args, z_loss=z_loss, softcap=softcap)


def _compute(
    input: Tensor,
    target: Tensor,
    eps: float | Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    prior: Tensor | None,
    with_stats: bool,
    brier: bool = True,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[LabelSmoothedCE, LossStats]:
    """Validate, add a batch dimension to (C) input, soft-cap, dispatch, and drop that dimension again.

    ``brier=False`` may leave ``LossStats.brier`` empty where computing it costs a pass of its own. Soft-capping is
    a pointwise map in front of the loss that autograd differentiates (traced, Inductor fuses it into the loss).
    """
    check_loss_arguments(input, target, eps, weight, ignore_index, reduction, prior)
    check_z_loss(z_loss)
    check_softcap(softcap)
    if isinstance(eps, int) or _readable(eps):  # the float paths: label_smoothing=0 (an int), a CPU tensor's value
        eps = float(eps)
    unbatched = input.dim() == 1
    x, t = (input.unsqueeze(0), target.unsqueeze(0)) if unbatched else (input, target)
    if softcap is not None:
        x = torch.tanh(x / softcap) * softcap
    if t.is_floating_point():
        outputs = _composite(x, t, eps, weight, ignore_index, reduction, prior, z_loss)
    elif torch.compiler.is_compiling():
        args = (x, t.long(), eps, weight, prior, ignore_index, reduction, with_stats, brier, z_loss)
        outputs = _traced.traced_loss_and_stats(*args)
    elif weight is None and prior is None and x.numel() <= SMALL_ELEMENTS and x.numel() <= SMALL_ROWS * x.shape[1]:
        outputs = _small(x, t.long(), eps, ignore_index, reduction, with_stats, brier, z_loss)
    elif torch.is_grad_enabled() and x.requires_grad:
        outputs = _fused.FusedLabelSmoothedCEFunction.apply(
            x, t.long(), eps, weight, prior, ignore_index, reduction, with_stats, brier, z_loss
        )
    else:
        args = (x, t.long(), eps, weight, prior, ignore_index, reduction, with_stats, brier, z_loss)
        outputs = _fused_no_grad(*args)
    loss, h_pq, h_uq, *stats = outputs
    if unbatched and reduction == "none":
        loss, h_pq, h_uq = loss.squeeze(0), h_pq.squeeze(0), h_uq.squeeze(0)
    return LabelSmoothedCE(loss, h_pq, h_uq), LossStats(*stats)


def _readable(eps: float | Tensor) -> bool:
    """A tensor ε whose value costs nothing to read (on the CPU, outside torch.compile) and that needs no gradient."""
    if not isinstance(eps, Tensor) or eps.requires_grad or torch.compiler.is_compiling():
        return False
    return eps.device.type == "cpu"


def _fused_no_grad(
    x: Tensor,
    target: Tensor,
    eps: float | Tensor,
    weight: Tensor | None,
    prior: Tensor | None,
    ignore_index: int,
    reduction: str,
    with_stats: bool,
    brier: bool,
    z_loss: float,
) -> tuple[Tensor, ...]:
    """The fused forward without autograd and without a gradient buffer (validation, inference)."""
    args = (x, target, eps, weight, prior, ignore_index, reduction, with_stats, None, brier, z_loss)
    _, out, stats = _fused.loss_and_row_stats(*args)
    return (out.loss, out.h_pq, out.h_uq, *stats)


def _small(
    x: Tensor,
    target: Tensor,
    eps: float | Tensor,
    ignore_index: int,
    reduction: str,
    with_stats: bool,
    brier: bool,
    z_loss: float,
) -> tuple[Tensor, ...]:
    """Few-op path for small inputs (uniform prior, no weights); autograd differentiates it.

    The loss is ``Σ log q · t`` with the smoothed target ``t = −s·((1 − ε)·onehot + ε/C)`` built without autograd
    (``s``: 1 per valid position, over the count for ``mean``), so backward runs three nodes; ``h_pq`` and ``h_uq``
    branch off ``log q`` and cost backward nothing unless differentiated themselves.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    num_classes = x.shape[1]
    logp = torch.log_softmax(x, 1, dtype=acc)
    keep = target != ignore_index
    valid = keep.to(acc)
    weight_sum = valid.sum()
    denominator = weight_sum.clamp(min=1)  # all ignored: every term is 0, and so is the mean
    scale = valid / denominator if reduction == "mean" else valid
    y = torch.where(keep, target, 0).unsqueeze(1)
    # Ignored rows are masked, not multiplied by 0: a −inf logit there would make 0·inf = NaN (PyTorch masks them).
    # On the CPU, where the read costs no synchronisation, a batch without ignored rows skips the masks (4 ops).
    mask = keep if x.device.type != "cpu" or not bool(keep.all()) else None
    h_uq_rows = logp.sum(1) if mask is None else torch.where(mask, logp.sum(1), 0.0)
    if reduction == "none":
        h_pq = F.nll_loss(logp, target, ignore_index=ignore_index, reduction="none")  # 0 where ignored
        h_uq = h_uq_rows * (scale / -num_classes)
    else:
        h_pq = F.nll_loss(logp, target, ignore_index=ignore_index, reduction="sum")
        h_uq = torch.dot(h_uq_rows.reshape(-1), scale.reshape(-1)) / -num_classes
        if reduction == "mean":
            h_pq = h_pq / denominator
    if isinstance(eps, float) and eps == 0:  # PyTorch's loss at ε = 0 has no H(u,q) term (infinite with a −inf logit)
        loss = h_pq.clone()  # a tensor of its own: a caller may scale the loss in place
    else:
        loss = _smoothed_loss(logp, y, mask, scale, eps, reduction)
        if isinstance(eps, Tensor):  # at ε = 0, the rows' zeros times a −inf logit are NaN
            loss = torch.where(eps.to(acc) == 0, h_pq, loss)
    loss, z_rows = _add_z_loss(loss, x, valid, z_loss, reduction, with_stats)
    if not with_stats:
        empty = [x.new_empty(0, dtype=dtype) for dtype in (torch.float32, torch.bool, torch.bool, torch.float32)]
        return (loss, h_pq, h_uq, *empty, weight_sum.float(), z_rows, x.new_empty(0, dtype=torch.float32))
    *stats, entropy = _composite_stats(logp.detach(), target, keep, weight_sum, brier)
    return (loss, h_pq, h_uq, *stats, z_rows, entropy)


def _smoothed_loss(
    logp: Tensor, y: Tensor, mask: Tensor | None, scale: Tensor, eps: float | Tensor, reduction: str
) -> Tensor:
    """``Σ log q · t`` per row (``none``) or summed, t = −scale·((1 − ε)·onehot + ε/C) built without autograd; rows
    outside ``mask`` (ignored) are 0."""
    num_classes = logp.shape[1]
    if isinstance(eps, float):  # −ε/C everywhere, −(1 − ε + ε/C) at the label, times the row's scale
        smoothed = torch.full_like(logp, -eps / num_classes).scatter_(1, y, eps - 1.0 - eps / num_classes)
    else:
        e = eps.to(logp.dtype)
        smoothed = (-e / num_classes).expand(logp.shape).scatter_add(1, y, (e - 1).expand(y.shape))
    smoothed.mul_(scale.unsqueeze(1))
    if mask is None:
        return (logp * smoothed).sum(1) if reduction == "none" else (logp * smoothed).sum()
    rows = torch.where(mask, (logp * smoothed).sum(1), 0.0)
    return rows if reduction == "none" else rows.sum()


def _add_z_loss(
    loss: Tensor, x: Tensor, valid: Tensor, z_loss: float, reduction: str, with_stats: bool
) -> tuple[Tensor, Tensor]:
    """``loss`` plus its z-loss term (:func:`~ls_lightning.losses.ops.fused.z_loss_term`), and the term per position
    for the statistics (empty unless ``with_stats``); nothing is computed without a z-loss."""
    none = x.new_empty(0, dtype=torch.float32)
    if not z_loss:
        return loss, none
    lse = torch.logsumexp(x if x.dtype == valid.dtype else x.to(valid.dtype), 1)
    rows, term = _fused.z_loss_term(lse.reshape(-1), valid.reshape(-1), z_loss, reduction, lse.shape)
    return loss + term, rows.detach().float() if with_stats else none


def _composite(
    x: Tensor,
    target: Tensor,
    eps: float | Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    prior: Tensor | None,
    z_loss: float = 0.0,
) -> tuple[Tensor, ...]:
    """Exact path on ``log_softmax`` (probability targets; traced by torch.compile): autograd differentiates it."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(x, 1, dtype=acc)
    if target.is_floating_point():
        h_pq, h_uq, label, valid, wsum = _soft_terms(logp, target.to(acc), weight, prior)
    else:
        h_pq, h_uq, label, valid, wsum = _index_terms(logp, target, weight, ignore_index, prior)
    shape, denominator = h_pq.shape, _fused.mean_denominator(wsum, reduction)
    h_pq = _fused.reduce_rows(h_pq.reshape(-1), reduction, denominator, shape)
    h_uq = _fused.reduce_rows(h_uq.reshape(-1), reduction, denominator, shape)
    loss, z_rows = _add_z_loss(_fused.mix_terms(h_pq, h_uq, eps), x, valid.to(acc), z_loss, reduction, True)
    *stats, entropy = _composite_stats(logp.detach(), label, valid, wsum)
    return (loss, h_pq, h_uq, *stats, z_rows, entropy)


def _class_view(t: Tensor, logp: Tensor) -> Tensor:
    """A (C,) tensor shaped to broadcast along the class dimension of ``logp``."""
    return t.to(logp.dtype).view(1, -1, *([1] * (logp.dim() - 2)))


def _soft_terms(
    logp: Tensor, p: Tensor, weight: Tensor | None, prior: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-position H(p,q), H(u,q) for probability targets; the mean divides by the number of positions."""
    wlogp = logp if weight is None else logp * _class_view(weight, logp)
    if prior is None:
        h_uq = -wlogp.sum(1) / logp.shape[1]
    elif prior.dim() == 1:
        h_uq = -(wlogp * _class_view(prior, logp)).sum(1)
    else:  # the label is itself a distribution: smooth towards the mixture of the prior's rows
        u = torch.movedim(p.movedim(1, -1) @ prior.to(p.dtype), -1, 1)
        h_uq = -(wlogp * u).sum(1)
    h_pq = -(wlogp * p).sum(1)
    valid = torch.ones(h_pq.shape, dtype=torch.bool, device=p.device)
    return h_pq, h_uq, p.argmax(1), valid, h_pq.new_full((), float(h_pq.numel()))


def _index_terms(
    logp: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, prior: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-position H(p,q), H(u,q) for class indices, PyTorch's weighting; the mean divides by Σ w_y."""
    valid = target != ignore_index
    y = torch.where(valid, target, 0).long()
    validf = valid.to(logp.dtype)
    wy = validf if weight is None else weight.to(logp.dtype)[y] * validf
    wlogp = logp if weight is None else logp * _class_view(weight, logp)
    if prior is None:
        h_uq = -wlogp.sum(1) / logp.shape[1]
    elif prior.dim() == 1:
        h_uq = -(wlogp * _class_view(prior, logp)).sum(1)
    else:
        h_uq = -(wlogp * prior.to(logp.dtype)[y].movedim(-1, 1)).sum(1)
    h_pq = -logp.gather(1, y.unsqueeze(1)).squeeze(1) * wy
    return h_pq, h_uq * validf, target, valid, wy.sum()


def _composite_stats(
    logp: Tensor, label: Tensor, valid: Tensor, wsum: Tensor, brier: bool = True
) -> tuple[Tensor, ...]:
    """LossStats fields but z_loss from log-probabilities: confidence, correct, valid, Brier (against the one-hot of
    ``label``), weight_sum and the predictive entropy (Brier and entropy empty unless ``brier``)."""
    top, argmax = logp.max(1)
    confidence, correct = top.exp().reshape(-1).float(), (argmax == label).reshape(-1)
    if not brier:
        return confidence, correct, valid.reshape(-1), confidence.new_empty(0), wsum.float(), confidence.new_empty(0)
    q = logp.exp()
    q_y = q.gather(1, torch.where(valid, label, 0).long().unsqueeze(1)).squeeze(1)
    brier_values = q.square().sum(1) - 2 * q_y + 1
    entropy = -torch.special.xlogy(q, q).sum(1)  # 0·log 0 = 0 where a −inf logit makes q = 0
    return (
        confidence,
        correct,
        valid.reshape(-1),
        brier_values.reshape(-1).float(),
        wsum.float(),
        entropy.reshape(-1).float(),
    )
