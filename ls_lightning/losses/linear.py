r"""The fused linear + label-smoothed loss: the cross-entropy of ``h @ W.T + b`` without building those logits.

The public functions validate and dispatch; the kernel (the chunked pass, its autograd Function and the custom op
``torch.compile`` traces) is :mod:`ls_lightning.losses.ops.linear`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ls_lightning.losses.checks import check_linear_arguments, check_softcap, check_z_loss
from ls_lightning.losses.functional import LabelSmoothedCE, LossStats, Reduction
from ls_lightning.losses.ops.linear import LinearLabelSmoothedCEFunction, linear_custom_op, linear_forward


def linear_label_smoothed_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    label_smoothing: float | Tensor = 0.0,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    prior: Tensor | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> LabelSmoothedCE:
    r"""Label-smoothed cross-entropy of the logits ``F.linear(input, linear_weight, linear_bias)``, never built whole.

    .. math::
        L = (1 - \varepsilon)\,H(p, q) + \varepsilon\,H(u, q) + \gamma\,\mathrm{lse}(c)^2, \qquad
        q = \mathrm{softmax}(c), \quad c = s \tanh((h W^\top + b) / s)

    with ``γ = z_loss`` and ``s = softcap`` (by default 0 and None: ``c = h W^T + b``), as in
    :func:`~ls_lightning.losses.label_smoothed_cross_entropy`. Both are applied to each chunk of logits as it is
    made, so they build nothing of the logits' size either (soft-capping holds a second chunk-sized buffer: the
    gradient of the capped logits, next to the capped logits that its chain rule reads).

    Equal in value and in the gradients of ``input``, ``linear_weight`` and ``linear_bias`` to
    ``label_smoothed_cross_entropy(F.linear(input, linear_weight, linear_bias).reshape(-1, V), target.reshape(-1),
    ...)`` (reshaped back to the target's shape for ``reduction="none"``). The logits are made one chunk of rows at a
    time (``LINEAR_CHUNK_ELEMENTS`` logits on the CPU, ``ACCELERATOR_CHUNK_ELEMENTS`` elsewhere, at least
    ``MIN_CHUNK_ROWS`` rows) and each chunk's gradient goes at once into the gradients of the hidden states, the
    weight and the bias: besides those, the loss holds one chunk of logits, which their gradient overwrites (half
    precision: also a float32 chunk for the gradient). Backward scales them by grad_output; it remakes the logits
    only for a gradient through ``h_pq`` or ``h_uq`` themselves, or with ``reduction="none"`` (each position's
    weight is known only then). Without a gradient (validation) no gradient is made.

    Half-precision ``input`` and ``linear_weight`` are multiplied in their dtype, the softmax statistics summed in
    float32, dW summed over chunks in float32; gradients come back in the parameters' dtype. Under autocast the
    three tensors are cast to the autocast dtype first, as ``F.linear`` would. A weight shared with an embedding
    (tied) gets the sum of both gradients, as autograd gives any shared parameter. Under ``torch.compile`` the
    kernel runs as the custom op ``ls_lightning::linear_ce``: no graph break; ε enters the graph as data.

    Args:
        input: Hidden states, class-last.
        linear_weight: Weight of the output layer.
        target: Class indices.
        label_smoothing: ε in [0, 1]; a float or a 0-d tensor.
        linear_bias: Bias of the output layer.
        weight: Class weights, shape (V,).
        ignore_index: Target value whose positions contribute nothing.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        prior: Smoothing distribution u: (V,), or (V, V) whose row y is u(·|y). A (V, V) prior holds V² numbers
            and is refused above ``MAX_MATRIX_PRIOR_CLASSES`` (16384) classes.
        z_loss: γ ≥ 0, the weight of ``lse(c)²`` (PaLM, OLMo: 1e-4).
        softcap: s > 0 or None: cap the logits to ``s·tanh(z / s)`` (Gemma 2: 30).

    Returns:
        LabelSmoothedCE ``(loss, h_pq, h_uq)``, reduced like ``F.cross_entropy``'s result; float32 for half precision.

    Raises:
        ValueError: If the shapes or dtypes of ``input``, ``linear_weight``, ``linear_bias`` and ``target`` do not
            match, ``target`` is not integer, a (V, V) prior is too large, or for any reason
            :func:`~ls_lightning.losses.label_smoothed_cross_entropy` raises on the same arguments.

    Shape:
        - input: (..., D).
        - linear_weight: (V, D); linear_bias: (V).
        - target: (...), the input's shape without its last dimension.
        - output: () for ``mean``/``sum``, else the target's shape.

    Example:
        >>> import torch
        >>> from ls_lightning.losses.functional import label_smoothed_cross_entropy
        >>> h, w = torch.randn(2, 5, 8), torch.randn(100, 8)
        >>> target = torch.randint(0, 100, (2, 5))
        >>> out = linear_label_smoothed_cross_entropy(h, w, target, 0.1)
        >>> ref = label_smoothed_cross_entropy((h @ w.T).reshape(-1, 100), target.reshape(-1), 0.1)
        >>> torch.allclose(out.loss, ref.loss)
        True
    """
    args = (input, linear_weight, target, label_smoothing, linear_bias, weight, ignore_index, reduction, prior)
    return _linear_compute(*args, z_loss=z_loss, softcap=softcap)[0]


def linear_label_smoothed_cross_entropy_with_stats(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    label_smoothing: float | Tensor = 0.0,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    prior: Tensor | None = None,
    brier: bool = True,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[LabelSmoothedCE, LossStats]:
    """:func:`linear_label_smoothed_cross_entropy` plus per-position :class:`~ls_lightning.losses.LossStats`.

    The statistics (confidence, correctness, Brier score per position) come from the same chunked pass; nothing of
    the logits' size is kept. Positions are those of ``target.reshape(-1)``. ``brier=False`` leaves the Brier
    values empty and saves computing ‖q‖. With ``softcap`` the statistics are those of the capped logits; with
    ``z_loss`` > 0, ``LossStats.z_loss`` holds each position's z-loss term.

    Example:
        >>> import torch
        >>> h, w = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[3.0, 0.0], [0.0, 0.0]])
        >>> _, stats = linear_label_smoothed_cross_entropy_with_stats(h, w, torch.tensor([0, -100]))
        >>> stats.correct.tolist(), stats.valid.tolist(), stats.weight_sum.item()
        ([True, False], [True, False], 1.0)
    """
    args = (input, linear_weight, target, label_smoothing, linear_bias, weight, ignore_index, reduction, prior)
    return _linear_compute(*args, True, brier, z_loss=z_loss, softcap=softcap)


def _linear_compute(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    eps: float | Tensor,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    prior: Tensor | None = None,
    with_stats: bool = False,
    brier: bool = True,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[LabelSmoothedCE, LossStats]:
    """Validate, flatten the positions, and dispatch: eager autograd Function, no-grad pass, or the custom op.

    ``LossStats`` fields are empty unless ``with_stats`` (``weight_sum`` always set); ``brier=False`` leaves the
    Brier values empty and saves computing ‖q‖.
    """
    h, w, b = _autocast(input, linear_weight, linear_bias)
    check_linear_arguments(h, w, b, target, eps, weight, ignore_index, reduction, prior)
    check_z_loss(z_loss)
    check_softcap(softcap)
    h2, t = h.reshape(-1, h.shape[-1]), target.long()
    args = (h2, w, b, t, eps, weight, prior, ignore_index, reduction, with_stats, brier)
    if torch.compiler.is_compiling():
        outputs = linear_custom_op(*args, z_loss, softcap)
    elif torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (h2, w, b)):
        outputs = LinearLabelSmoothedCEFunction.apply(*args, z_loss, softcap)
    else:
        fwd = linear_forward(*args, need=(False, False, False), z_loss=z_loss, softcap=softcap)
        outputs = (fwd.out.loss, fwd.out.h_pq, fwd.out.h_uq, *fwd.stats)
    loss, h_pq, h_uq, *stats = outputs
    return LabelSmoothedCE(loss, h_pq, h_uq), LossStats(*stats)


def _autocast(h: Tensor, w: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Under autocast, the tensors in the autocast dtype (what ``F.linear`` would multiply); else unchanged."""
    if not isinstance(h, Tensor) or not torch.is_autocast_enabled(h.device.type):
        return h, w, b
    dtype = torch.get_autocast_dtype(h.device.type)
    cast_w = w.to(dtype) if isinstance(w, Tensor) and w.is_floating_point() else w
    cast_b = b.to(dtype) if isinstance(b, Tensor) and b.is_floating_point() else b
    return (h.to(dtype) if h.is_floating_point() else h), cast_w, cast_b
