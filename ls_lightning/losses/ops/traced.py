r"""The label-smoothed loss for class indices as formulas Inductor fuses: the path ``torch.compile`` traces.

Forward is one reduction over the logits (max, Σ exp, v·z), backward one pointwise pass that recomputes q from
the saved lse and writes the gradient ``a·q − b·v − c·δ_y`` (notation of :mod:`ls_lightning.losses.ops.fused`); nothing
of the logits' size is kept between them or built besides that gradient, and ε is only ever multiplied, never
compared, so its value is never guarded on. Compiled ``F.cross_entropy`` has the same shape: one kernel forward,
one backward.

Why not the eager chunked kernel as an opaque custom op: it would keep at best its eager time. Measured with
``python benchmarks/loss.py`` (columns "ours / c.torch" against "c.ours / c.torch"), that is 4–5 % faster than
these formulas compiled at 1024×32000 and 256×128000 on a quiet machine (and up to 1.6× slower under load, which
stalls its many short parallel regions), 10 % slower at 4096×1000 and 2× slower at 4096×10. Compiled, its
backward would also need a logits-sized pass of its own to scale the gradient made in forward by grad_output
(eager skips it for ``loss.backward()``), which costs more than those 5 %, and its gradient buffer costs 1.08×
the logits' size of peak memory against 1.00×.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ls_lightning.losses.ops import fused as _fused


def _class_row(v: Tensor | None, y: Tensor, x: Tensor) -> Tensor | float:
    """v broadcast along the class dimension of ``x``: 1/C (None), a (C,) row, or row y of a (C, C) matrix."""
    if v is None:
        return 1.0 / x.shape[1]
    if v.dim() == 1:
        return v.view(1, -1, *([1] * (x.dim() - 2)))
    return v[y].movedim(-1, 1)


class _RowTermsFunction(torch.autograd.Function):
    """Per-position H(p,q), H(u,q), lse, top logit and (``with_argmax``, else None) its class, of (N, C, d1, …)
    logits; ``wy`` and ``total`` None mean ``valid``. The argmax comes from the max's own reduction: asked for
    separately it would cost a pass over the logits of its own. ``lse_grad``: lse is differentiable too (its
    gradient, q, joins the same pointwise pass), for the z-loss."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        y: Tensor,
        valid: Tensor,
        wy: Tensor | None,
        total: Tensor | None,
        v: Tensor | None,
        with_argmax: bool,
        lse_grad: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        xf = x.to(valid.dtype)
        if with_argmax:
            top, index = xf.max(1, keepdim=True)
        else:  # amax with keepdim: the form that Inductor's online-softmax rewrite matches (GPU)
            top, index = xf.amax(1, keepdim=True), None
        shifted = xf - top
        log_sum = shifted.exp().sum(1).log()
        # H(u,q) = V·lse − v·z = V·log Σ exp(z − top) − v·(z − top): v·(z − top) is read in the same loop as the
        # sum of exponentials (v·z itself would be a reduction of its own, a pass more when the argmax is asked for)
        v_shifted = shifted.sum(1) / x.shape[1] if v is None else (shifted * _class_row(v, y, x)).sum(1)
        top = top.squeeze(1)
        lse = top + log_sum
        z_y = xf.gather(1, y.unsqueeze(1)).squeeze(1)
        h_pq = _fused.counted((valid if wy is None else wy) * (lse - z_y), valid)
        h_uq = _fused.counted((valid if total is None else total) * log_sum - valid * v_shifted, valid)
        ctx.save_for_backward(x, y, valid, wy, total, v, lse)
        ctx.mark_non_differentiable(*([] if lse_grad else [lse]), top, *([] if index is None else [index]))
        ctx.lse_grad = lse_grad
        return h_pq, h_uq, lse, top, None if index is None else index.squeeze(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_pq: Tensor, g_uq: Tensor, g_lse: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        x, y, valid, wy, total, v, lse = ctx.saved_tensors
        alpha = g_pq * (valid if wy is None else wy)
        beta = g_uq * valid
        a = alpha + beta * (valid if total is None else total)
        if ctx.lse_grad:  # d lse / dz = q
            a = a + g_lse
        q = (x.to(lse.dtype) - lse.unsqueeze(1)).exp()
        classes = torch.arange(x.shape[1], device=x.device).view(1, -1, *([1] * (x.dim() - 2)))
        label = torch.where(classes == y.unsqueeze(1), alpha.unsqueeze(1), 0.0)
        grad = a.unsqueeze(1) * q - beta.unsqueeze(1) * _class_row(v, y, x) - label
        return grad.to(x.dtype), None, None, None, None, None, None, None


def traced_loss_and_stats(
    x: Tensor,
    target: Tensor,
    eps: float | Tensor,
    weight: Tensor | None,
    prior: Tensor | None,
    ignore_index: int,
    reduction: str,
    with_stats: bool,
    brier: bool = True,
    z_loss: float = 0.0,
) -> tuple[Tensor, ...]:
    """loss, h_pq, h_uq and the LossStats fields (empty unless ``with_stats``) of (N, C, d1, …) logits; ``z_loss``
    adds ``z_loss·lse²`` (:func:`~ls_lightning.losses.ops.fused.z_loss_term`) to the loss, differentiated through
    lse."""
    prep = _fused.prepare_labels(x, target, weight, prior, ignore_index)
    shape, v = target.shape, prep.smoothing.v
    h_pq, h_uq, lse, top, argmax = _RowTermsFunction.apply(
        x,
        prep.y.view(shape),
        prep.valid.view(shape),
        None if prep.wy is prep.valid else prep.wy.view(shape),
        None if prep.total is prep.valid else prep.total.view(shape),
        None if isinstance(v, float) else v,
        with_stats,
        bool(z_loss),
    )
    weight_sum = prep.wy.sum()
    denominator = _fused.mean_denominator(weight_sum, reduction)
    h_pq = _fused.reduce_rows(h_pq, reduction, denominator, shape)
    h_uq = _fused.reduce_rows(h_uq, reduction, denominator, shape)
    # ε as a tensor: _fused.mix_terms's test of a float ε for 0 would put a guard on its value (a recompilation)
    e = eps if isinstance(eps, Tensor) else torch.scalar_tensor(eps, dtype=h_pq.dtype, device=h_pq.device)
    loss = _fused.mix_terms(h_pq, h_uq, e)
    z_rows = x.new_empty(0, dtype=torch.float32)
    if z_loss:
        rows, z_term = _fused.z_loss_term(lse.reshape(-1), prep.valid, z_loss, reduction, shape)
        loss, z_rows = loss + z_term, rows.detach().float() if with_stats else z_rows
    if not with_stats:
        empty = [x.new_empty(0, dtype=dtype) for dtype in (torch.float32, torch.bool, torch.bool, torch.float32)]
        return (loss, h_pq, h_uq, *empty, weight_sum.float(), z_rows, x.new_empty(0, dtype=torch.float32))
    lse = lse.detach()
    confidence = (top - lse).exp().reshape(-1).float()
    correct = (argmax == target).reshape(-1)
    none = (confidence.new_empty(0), confidence.new_empty(0))
    values, entropy = _brier_and_entropy(x.detach(), target, prep, lse) if brier else none
    return (loss, h_pq, h_uq, confidence, correct, prep.valid.bool(), values, weight_sum.float(), z_rows, entropy)


def _brier_and_entropy(x: Tensor, target: Tensor, prep: _fused.Prepared, lse: Tensor) -> tuple[Tensor, Tensor]:
    """Σ_c (q_c − onehot_c)² and the entropy −Σ_c q_c log q_c per position, flattened: a pass over the logits of its
    own (both need lse first)."""
    xf = x.to(lse.dtype)
    z_y = xf.gather(1, prep.y.view(target.shape).unsqueeze(1)).squeeze(1)
    q = (xf - lse.unsqueeze(1)).exp()
    entropy = -torch.special.xlogy(q, q).sum(1)  # 0·log 0 = 0 where a −inf logit makes q = 0
    brier = q.square().sum(1) - 2 * (z_y - lse).exp() + 1
    return brier.reshape(-1).float(), entropy.reshape(-1).float()
