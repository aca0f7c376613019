r"""Kernels of the relatives of label smoothing: confidence penalty, focal loss and margin-based label smoothing.

Per position i with logits z, q = softmax(z), label y, the three losses combine three row values,

.. math::
    \ell_i = -\log q_y, \qquad H_i = -\textstyle\sum_k q_k \log q_k, \qquad
    S_i = \textstyle\sum_k \max(0,\ \max_j z_j - z_k - m),

and their gradients have closed forms with per-row coefficients A and B (δ_y: one-hot of the label):

.. math::
    \partial_z [A\,\ell_i - B\,H_i] &= q \odot \bigl(A + B(\log q + H_i)\bigr) - A\,\delta_y
    \qquad \text{(confidence penalty, } \partial H / \partial z_j = -q_j(\log q_j + H)\text{)}

    \partial_z\, A\,\mathrm{focal}(\ell_i) &= A\,\varphi(\ell_i)\,(q - \delta_y), \quad
    \varphi = \frac{d\,\mathrm{focal}}{d\ell} = (1 - p)^\gamma \Bigl(1 + \gamma\,\frac{p\,\ell}{1 - p}\Bigr),
    \ p = e^{-\ell}

    \partial_z [A\,\ell_i + B\,S_i] &= A\,(q - \delta_y) - B\,[\text{gap} > 0] + B\,n_i\,t_i
    \qquad \text{(MbLS; gap} = \max z - z - m,\ n_i = \#\{k: \text{gap}_k > 0\}\text{)},

with t_i the indicator of the row's maximum over the number of its ties (one entry of 1 where it is unique).

Eager (:func:`row_pass`, :class:`RelativeCEFunction`): as :mod:`.fused`, the logits are read once in row chunks that
stay in cache; each chunk yields the row values and, when a gradient is wanted, writes it into one buffer of the
logits' size with the mean's denominator folded in, which backward hands to autograd (scaled in place unless
grad_output is 1). Besides that buffer a pass holds chunk-sized workspaces, each at most an eighth of the logits
(:data:`WORKSPACE_FRACTION`): one for the confidence penalty and MbLS on (N, C) float32 logits, none for the focal
loss, one or two more for (N, C, d1, …) or half-precision input. PyTorch's ``exp`` on the CPU is several times
slower than its fused softmax kernel, so q always comes from ``softmax`` and log q from ``z − lse``, with
``lse = max z − log max q``.

Traced (:class:`RelativeRowTermsFunction`, :func:`traced_relative_loss_and_stats`): the row values as formulas that
Inductor fuses into one reduction forward (max, then one loop for Σ exp, Σ q·z, Σ q², the margin sums) and one
pointwise pass backward that recomputes q from the saved lse. β and λ are only ever multiplied, never compared, so
their values are never guarded on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor

from ls_lightning.losses.ops import fused as _fused

# Each workspace besides the gradient (one chunk) is at most this fraction of the logits: with the gradient itself, a
# pass over (N, C) float32 logits holds 1.125× their size for the confidence penalty and MbLS (one workspace) and
# 1.0× for the focal loss (none, unless statistics are asked for).
WORKSPACE_FRACTION = 8
# Below this many elements a chunk costs more in per-op dispatch than it saves: the whole input is one chunk.
MIN_CHUNK_ELEMENTS = 1 << 16
# FLSD-53 (Mukhoti et al. 2020): γ = 5 where the label's probability is below 0.2, else 3.
FLSD53 = (0.2, 5.0, 3.0)


class Spec(NamedTuple):
    """Which relative and its constants: ``weight`` is β (penalty) or λ (margin), ``gamma`` a number or
    ``"flsd53"`` (focal), ``margin`` m (margin)."""

    kind: str  # "penalty" | "focal" | "margin"
    weight: float | Tensor = 0.0
    gamma: float | str = 0.0
    margin: float = 0.0


class Rows(NamedTuple):
    """Row values of one pass (rows: positions, flattened), in the accumulation dtype; None where not asked for."""

    nll: Tensor  # −log q_y
    entropy: Tensor | None  # H(q)
    gap_sum: Tensor | None  # S: Σ_k max(0, max z − z_k − m), not divided by C
    confidence: Tensor | None  # max_k q_k
    argmax: Tensor | None  # its class
    square_sum: Tensor | None  # Σ_k q_k² (Brier)


class Chunk(NamedTuple):
    """One chunk of rows: logits ``x`` (rows, C) in the accumulation dtype, workspaces and labels."""

    x: Tensor
    work: Tensor  # (rows, C): the gradient rows at the end when one is asked for
    spare: Tensor | None  # (rows, C), or None for the focal loss without statistics
    y: Tensor  # (rows,)


# Per-row gradient coefficients (A, B) of a chunk's rows, given their slice and their −log q_y.
Coefficients = Callable[[slice, Tensor], tuple[Tensor, Tensor | None]]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------------- focal rows


def focal_gamma(nll: Tensor, gamma: float | str) -> float | Tensor:
    """γ, or per row for ``"flsd53"``: 5 where q_y = exp(−ℓ) < 0.2, else 3, with q_y taken as a constant."""
    if not isinstance(gamma, str):
        return gamma
    threshold, low, high = FLSD53
    return torch.where(torch.exp(-nll.detach()) < threshold, low, high).to(nll.dtype)


def focal_terms(nll: Tensor, gamma: float | Tensor) -> tuple[Tensor, Tensor]:
    """``(1 − p)^γ·ℓ`` and its derivative φ in ℓ, p = exp(−ℓ), stable where p rounds to 1 (then φ = [γ = 0]).

    ``1 − p`` is ``−expm1(−ℓ)`` (exact for small ℓ), and ``ℓ / (1 − p)`` → 1 as p → 1 stands in where 1 − p is 0.
    """
    nll = nll.clamp_min(0)
    p = torch.exp(-nll)
    u = -torch.expm1(-nll)
    ug = u.pow(gamma)
    ratio = torch.where(u > 0, nll / torch.where(u > 0, u, 1), 1)
    return ug * nll, ug * (1 + gamma * p * ratio)


class FocalRowsFunction(torch.autograd.Function):
    """``(1 − p)^γ·ℓ`` per row with the stable derivative of :func:`focal_terms` (autograd's own derivative of
    ``u^γ`` is ∞·0 = NaN where p rounds to 1 and γ < 1)."""

    @staticmethod
    def forward(ctx: Any, nll: Tensor, gamma: float | Tensor) -> Tensor:
        focal, phi = focal_terms(nll, gamma)
        ctx.save_for_backward(phi)
        return focal

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (phi,) = ctx.saved_tensors
        return grad * phi, None


# --------------------------------------------------------------------------------------------------- eager pass


def chunk_samples(x: Tensor, sample_elements: int) -> int:
    """Samples per chunk: as many as the cache budget of :mod:`.fused` holds, at most 1/WORKSPACE_FRACTION of the
    input (each workspace besides the gradient is one chunk), at least one."""
    budget = _fused.CACHE_CHUNK_ELEMENTS if x.device.type == "cpu" else _fused.ACCELERATOR_CHUNK_ELEMENTS
    budget = min(budget, max(MIN_CHUNK_ELEMENTS, x.numel() // WORKSPACE_FRACTION))
    return max(1, budget // sample_elements)


def row_pass(
    x: Tensor,
    y: Tensor,
    spec: Spec,
    coefs: Coefficients | None,
    grad: Tensor | None,
    stats: bool = False,
    brier: bool = False,
) -> Rows:
    """Read ``x`` (N, C, d1, …) once in row chunks; return the row values and, given ``grad`` and ``coefs``, write
    the gradient into ``grad``. ``y``: flattened labels, ignored rows set to a valid class. ``stats`` asks for the
    entropy, confidence and argmax of every row, ``brier`` for Σ q² too."""
    x3, inner = _fused.sample_rows(x)
    n, num_classes = x3.shape[0], x3.shape[1]
    acc = accumulation_dtype(x.dtype)
    m = y.numel()

    def rows(wanted: bool) -> Tensor | None:
        return x.new_empty(m, dtype=acc) if wanted else None

    index = torch.empty(m, dtype=torch.long, device=x.device) if stats else None
    entropy, gap_sum = rows(stats or spec.kind == "penalty"), rows(spec.kind == "margin")
    out = Rows(x.new_empty(m, dtype=acc), entropy, gap_sum, rows(stats), index, rows(brier))
    direct = grad is not None and inner == 1 and grad.dtype == acc  # the gradient rows serve as workspace
    per_chunk = chunk_samples(x, num_classes * inner)
    size = (min(n, per_chunk) * inner, num_classes)
    ws = None if direct else x.new_empty(size, dtype=acc)
    spare = x.new_empty(size, dtype=acc) if spec.kind != "focal" or stats else None
    grad3 = None if grad is None else grad.view(x3.shape)
    step = _STEPS[spec.kind]
    for n0 in range(0, n, per_chunk):
        n1 = min(n, n0 + per_chunk)
        r, k = slice(n0 * inner, n1 * inner), (n1 - n0) * inner
        work = grad3[n0:n1].squeeze(2) if grad3 is not None and direct else ws[:k]  # type: ignore[index]
        chunk = Chunk(_fused.chunk_view(x3, n0, n1).to(acc), work, None if spare is None else spare[:k], y[r])
        step(chunk, out, r, None if grad3 is None else coefs, spec.margin)
        if grad3 is not None and not direct:
            grad3[n0:n1].copy_(work.view(n1 - n0, inner, num_classes).transpose(1, 2))
    return out


def _softmax_rows(c: Chunk, q: Tensor, out: Rows, r: slice) -> tuple[Tensor, Tensor]:
    """q = softmax(x) into ``q``; returns (lse, top). lse = top − log q_top (q_top ≥ 1/C: its log never underflows).
    Fills the confidence and argmax when asked for (PyTorch's max with index costs ~15× its max alone on the CPU)."""
    top = torch.amax(c.x, 1)
    torch.softmax(c.x, 1, out=q)
    if out.argmax is not None and out.confidence is not None:
        qmax, index = torch.max(q, 1)
        out.argmax[r] = index
        out.confidence[r] = qmax
    else:
        qmax = torch.amax(q, 1)
    if out.square_sum is not None:
        out.square_sum[r] = torch.linalg.vector_norm(q, dim=1).square()
    return top - qmax.log(), top


def _entropy(c: Chunk, q: Tensor, lse: Tensor, top: Tensor, scratch: Tensor) -> Tensor:
    """H = −Σ q (z − lse) = (lse − top) + (top − Σ q z): two non-negative terms, no cancellation between them."""
    torch.mul(q, c.x, out=scratch)
    return (lse - top) + (top - scratch.sum(1))


def _label_nll(c: Chunk, q: Tensor, nll: Tensor) -> bool:
    """q = softmax(x) into ``q`` and ℓ = −log q_y into ``nll``, saving the two max reductions of lse; False (and
    ``nll`` unset) where some q_y is not a normal float, whose log would lose digits. Reads a flag: CPU only."""
    torch.softmax(c.x, 1, out=q)
    q_y = q.gather(1, c.y.unsqueeze(1)).squeeze(1)
    if not bool((q_y >= torch.finfo(q_y.dtype).tiny).all()):
        return False
    torch.log(q_y, out=nll).neg_()
    return True


def _penalty_step(c: Chunk, out: Rows, r: slice, coefs: Coefficients | None, _margin: float) -> None:
    """Confidence penalty: ℓ, H and the gradient ``q ⊙ (A + B(log q + H)) − A δ_y`` (q in ``spare``)."""
    q, label = cast(Tensor, c.spare), c.y.unsqueeze(1)
    lse, top = _softmax_rows(c, q, out, r)
    out.nll[r] = lse - c.x.gather(1, label).squeeze(1)
    h = _entropy(c, q, lse, top, c.work)
    cast(Tensor, out.entropy)[r] = h
    if coefs is None:
        return
    a, b = coefs(r, out.nll[r])
    b = cast(Tensor, b)
    # q ⊙ (A + B(z − lse + H)) = B·(q ⊙ z) + (A + B(H − lse))·q, and ``work`` holds q ⊙ z: two in-place passes
    # (PyTorch's out-of-place addcmul with per-row factors costs several times an in-place one on the CPU)
    c.work.mul_(b.unsqueeze(1)).addcmul_(q, (a + b * (h - lse)).unsqueeze(1))
    c.work.scatter_add_(1, label, -a.unsqueeze(1))


def _focal_step(c: Chunk, out: Rows, r: slice, coefs: Coefficients | None, _margin: float) -> None:
    """Focal loss: ℓ (and H with statistics) and the gradient ``A·φ(ℓ)·(q − δ_y)`` (q in ``work``)."""
    q, label = c.work, c.y.unsqueeze(1)
    if out.confidence is None and c.x.device.type == "cpu" and _label_nll(c, q, out.nll[r]):
        pass  # the loss alone on the CPU: ℓ = −log q_y straight from the softmax (as :mod:`.fused` does)
    else:
        lse, top = _softmax_rows(c, q, out, r)
        out.nll[r] = lse - c.x.gather(1, label).squeeze(1)
        if out.entropy is not None and c.spare is not None:
            out.entropy[r] = _entropy(c, q, lse, top, c.spare)
    if coefs is None:
        return
    a, _ = coefs(r, out.nll[r])
    q.mul_(a.unsqueeze(1)).scatter_add_(1, label, -a.unsqueeze(1))


def _margin_step(c: Chunk, out: Rows, r: slice, coefs: Coefficients | None, margin: float) -> None:
    """MbLS: ℓ, S (and H with statistics) and the gradient ``A(q − δ_y) − B[gap > 0] + B·n·t`` (q in ``spare``, the
    gaps in ``work``), t the indicator of the row's maximum over the number of its ties: the maximum's part of the
    gradient is split among tied maxima, as PyTorch's ``amax`` does (by-liu/MbLS's ``max(dim=1)`` gives it to one
    of them; the same wherever the maximum is unique). Finding the argmax instead costs ~15× a max on the CPU."""
    q, gap, label = cast(Tensor, c.spare), c.work, c.y.unsqueeze(1)
    lse, top = _softmax_rows(c, q, out, r)
    out.nll[r] = lse - c.x.gather(1, label).squeeze(1)
    if out.entropy is not None:
        out.entropy[r] = _entropy(c, q, lse, top, gap)
    torch.sub((top - margin).unsqueeze(1), c.x, out=gap).clamp_min_(0)
    cast(Tensor, out.gap_sum)[r] = gap.sum(1)
    if coefs is None:
        return
    a, b = coefs(r, out.nll[r])
    b = cast(Tensor, b)
    count = gap.sign_().sum(1)
    gap.mul_(-b.unsqueeze(1)).addcmul_(q, a.unsqueeze(1)).scatter_add_(1, label, -a.unsqueeze(1))
    bn = b * count
    if c.x.device.type == "cpu" and not bool((bn != 0).any()):
        return  # no gap above the margin in this chunk: nothing flows to the maximum (reading a CPU flag is free)
    ties = torch.eq(c.x, top.unsqueeze(1), out=q)  # q is no longer needed: 1 at the maximum (and its ties), else 0
    gap.addcmul_(ties, (bn / ties.sum(1)).unsqueeze(1))


_STEPS = {"penalty": _penalty_step, "focal": _focal_step, "margin": _margin_step}


# ------------------------------------------------------------------------------------------- losses from the rows


def reduce_relative_terms(
    spec: Spec,
    nll: Tensor,
    extra: Tensor | None,
    weights: tuple[Tensor | None, Tensor | None],
    denominator: Tensor | None,
    reduction: str,
    shape: Any,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(loss, h_pq, term) from the row values, reduced like ``F.cross_entropy`` (``mean`` divides by
    ``denominator``). ``weights``: those of ℓ and of the regulariser per row (None: weighted already, or 1).
    ``extra``: H (penalty), S / C (margin) or the focal rows (None: formed here from ℓ by
    :class:`FocalRowsFunction`)."""
    nll_weight, term_weight = weights

    def reduce(values: Tensor, weight: Tensor | None) -> Tensor:
        rows = values.reshape(-1) if weight is None else weight * values.reshape(-1)
        return _fused.reduce_rows(rows, reduction, denominator, shape)

    h_pq = reduce(nll, nll_weight)
    if spec.kind == "focal":
        focal = FocalRowsFunction.apply(nll, focal_gamma(nll, spec.gamma)) if extra is None else extra
        return reduce(focal, term_weight), h_pq, None
    term = reduce(cast(Tensor, extra), term_weight)
    weight = spec.weight.to(h_pq.dtype) if isinstance(spec.weight, Tensor) else spec.weight
    return (h_pq - weight * term if spec.kind == "penalty" else h_pq + weight * term), h_pq, term


def coefficients(
    spec: Spec, scale: Tensor, num_classes: int, grads: tuple[Tensor | None, ...] | None = None
) -> Coefficients:
    """Per-row (A, B) of the gradient of ``g_loss·loss + g_pq·h_pq + g_term·term``; ``scale``: w_y over the mean's
    denominator per row; ``grads``: (g_loss, g_pq, g_term), each None (0), 0-d or per row; None: (1, 0, 0)."""

    def flat(g: Tensor | None) -> Tensor | float:
        return 0.0 if g is None else (g if g.dim() == 0 else g.reshape(-1)).to(scale.dtype)

    g_loss, g_pq, g_term = (1.0, 0.0, 0.0) if grads is None else tuple(flat(g) for g in grads)
    a = (g_loss + g_pq) * scale
    if spec.kind == "focal":
        loss_scale, pq_scale = g_loss * scale, g_pq * scale

        def focal(r: slice, nll: Tensor) -> tuple[Tensor, None]:
            _, phi = focal_terms(nll, focal_gamma(nll, spec.gamma))
            return loss_scale[r] * phi + pq_scale[r], None

        return focal
    weight = spec.weight.to(scale.dtype) if isinstance(spec.weight, Tensor) else spec.weight
    if spec.kind == "penalty":
        b = (weight * g_loss - g_term) * scale
    else:
        b = (weight * g_loss + g_term) * scale / num_classes
    return lambda r, _nll: (a[r], b[r])


class Result(NamedTuple):
    """Reduced terms and per-row statistics of one eager pass, with what backward needs."""

    loss: Tensor
    h_pq: Tensor
    term: Tensor | None
    stats: tuple[Tensor, ...]
    y: Tensor
    scale: Tensor


def relative_loss_and_row_stats(
    x: Tensor,
    target: Tensor,
    spec: Spec,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    with_stats: bool,
    brier: bool,
    grad: Tensor | None,
) -> Result:
    """Prepare the labels, make the pass (filling ``grad`` when given) and form the terms and statistics."""
    prep = _fused.prepare_labels(x, target, weight, None, ignore_index)
    weight_sum = prep.wy.sum()
    denominator = _fused.mean_denominator(weight_sum, reduction)
    scale = prep.wy if denominator is None else prep.wy / denominator
    coefs = None if grad is None else coefficients(spec, scale, x.shape[1])
    rows = row_pass(x, prep.y, spec, coefs, grad, with_stats, with_stats and brier)
    extra = rows.entropy if spec.kind == "penalty" else None
    if rows.gap_sum is not None:
        extra = rows.gap_sum / x.shape[1]
    weights = (prep.wy, prep.wy)
    loss, h_pq, term = reduce_relative_terms(spec, rows.nll, extra, weights, denominator, reduction, target.shape)
    stats = row_stats(rows, target.reshape(-1), prep.valid.bool(), weight_sum, with_stats)
    return Result(loss, h_pq, term, stats, prep.y, scale)


def row_stats(rows: Rows, label: Tensor, valid: Tensor, weight_sum: Tensor, with_stats: bool) -> tuple[Tensor, ...]:
    """The LossStats fields (confidence, correct, valid, brier, weight_sum, z_loss, entropy), detached; float32 where
    real-valued; all but weight_sum empty unless ``with_stats``, brier empty unless asked for, z_loss always empty."""
    empty = rows.nll.new_empty(0, dtype=torch.float32)
    if not with_stats or rows.confidence is None or rows.argmax is None or rows.entropy is None:
        flags = rows.nll.new_empty(0, dtype=torch.bool)
        return (empty, flags, flags, empty, weight_sum.detach().float(), empty, empty)
    nll = rows.nll.detach().reshape(-1)
    brier = empty if rows.square_sum is None else (rows.square_sum.reshape(-1) - 2 * torch.exp(-nll) + 1).float()
    correct = rows.argmax.reshape(-1) == label
    confidence, entropy = rows.confidence.detach().reshape(-1).float(), rows.entropy.detach().reshape(-1).float()
    return (confidence, correct, valid, brier.detach(), weight_sum.detach().float(), empty, entropy)


class RelativeCEFunction(torch.autograd.Function):
    """Autograd wrapper of :func:`relative_loss_and_row_stats`: one gradient buffer made in forward, scaled in place
    by backward.

    Outputs: loss, h_pq, the regulariser's term (None for the focal loss), then the LossStats fields (not
    differentiable). A gradient through ``h_pq`` or the term (rare: they are usually logged) recomputes the buffer
    from the logits with the coefficients of :func:`coefficients`.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        target: Tensor,
        spec: Spec,
        weight: Tensor | None,
        ignore_index: int,
        reduction: str,
        with_stats: bool,
        brier: bool,
    ) -> tuple[Tensor | None, ...]:
        grad = torch.empty(x.shape, dtype=x.dtype, device=x.device) if ctx.needs_input_grad[0] else None
        result = relative_loss_and_row_stats(x, target, spec, weight, ignore_index, reduction, with_stats, brier, grad)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*result.stats)
        ctx.save_for_backward(x)
        ctx.grad, ctx.spec, ctx.y, ctx.scale = grad, spec, result.y, result.scale
        return (result.loss, result.h_pq, result.term, *result.stats)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_loss: Tensor | None, g_pq: Tensor | None, g_term: Tensor | None, *_: Any) -> tuple:
        nones = (None,) * 7
        if not ctx.needs_input_grad[0] or (g_loss is None and g_pq is None and g_term is None):
            return (None, *nones)
        grad, ctx.grad = ctx.grad, None  # hand the buffer out once; a second backward (retain_graph) recomputes
        if grad is not None and g_pq is None and g_term is None and g_loss is not None:
            if not _fused.is_cpu_one(g_loss):  # reading a CPU scalar costs no device synchronisation
                grad.mul_(g_loss.unsqueeze(1) if g_loss.dim() > 0 else g_loss)
            return (grad, *nones)
        (x,) = ctx.saved_tensors
        if grad is None:
            grad = torch.empty_like(x, memory_format=torch.contiguous_format)
        coefs = coefficients(ctx.spec, ctx.scale, x.shape[1], (g_loss, g_pq, g_term))
        row_pass(x, ctx.y, ctx.spec, coefs, grad)
        return (grad, *nones)


def relative_loss_no_grad(
    x: Tensor,
    target: Tensor,
    spec: Spec,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    with_stats: bool,
    brier: bool,
) -> tuple[Tensor | None, ...]:
    """The eager pass without autograd and without a gradient buffer (validation, inference)."""
    result = relative_loss_and_row_stats(x, target, spec, weight, ignore_index, reduction, with_stats, brier, None)
    return (result.loss, result.h_pq, result.term, *result.stats)


# ------------------------------------------------------------------------------------------------------- traced


class RelativeRowTermsFunction(torch.autograd.Function):
    """Per-position ℓ, H (``entropy``) and S / C (``margin`` not None) of (N, C, d1, …) logits, differentiable, and
    lse, the top logit, its class (``index``, else None) and Σ q² (``square``, else None), not differentiable."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, y: Tensor, entropy: bool, margin: float | None, index: bool, square: bool
    ) -> tuple[Tensor | None, ...]:
        xf = x.to(accumulation_dtype(x.dtype))
        if index:
            top, idx = xf.max(1, keepdim=True)
        else:  # amax with keepdim: the form that Inductor's online-softmax rewrite matches (GPU)
            top, idx = xf.amax(1, keepdim=True), None
        shifted = xf - top
        e = shifted.exp()
        s0 = e.sum(1)
        log_s0 = s0.log()
        lse = top.squeeze(1) + log_s0
        nll = lse - xf.gather(1, y.unsqueeze(1)).squeeze(1)
        h = log_s0 - (e * shifted).sum(1) / s0 if entropy else None  # H = lse − Σ q z, shifted by the top logit
        squares = (e * e).sum(1) / s0.square() if square else None
        gap_mean = share = None
        if margin is not None:
            gap = (-shifted - margin).clamp_min(0)  # (max z − z) − m, in the order MbLS writes it
            gap_mean = gap.sum(1) / x.shape[1]
            share = (gap > 0).sum(1).to(xf.dtype) / (shifted == 0).sum(1).to(xf.dtype)  # n over the ties
        index_out = None if idx is None else idx.squeeze(1)
        top = top.squeeze(1)
        ctx.save_for_backward(x, y, lse, h, top, share)
        ctx.margin = margin
        ctx.mark_non_differentiable(lse, top, *(t for t in (index_out, squares) if t is not None))
        return nll, h, gap_mean, lse, top, index_out, squares

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_nll: Tensor, g_h: Tensor | None, g_gap: Tensor | None, *_: Any) -> tuple:
        x, y, lse, h, top, share = ctx.saved_tensors
        xf = x.to(lse.dtype)
        log_q = xf - lse.unsqueeze(1)
        q = log_q.exp()
        classes = torch.arange(x.shape[1], device=x.device).view(1, -1, *([1] * (x.dim() - 2)))
        g = g_nll.unsqueeze(1)
        grad = g * q - torch.where(classes == y.unsqueeze(1), g, 0.0)
        if h is not None and g_h is not None:  # ∂H/∂z = −q (log q + H)
            grad = grad - g_h.unsqueeze(1) * q * (log_q + h.unsqueeze(1))
        if ctx.margin is not None and g_gap is not None:  # the maximum's part is split among its ties, as amax's
            b = (g_gap / x.shape[1]).unsqueeze(1)
            gap = top.unsqueeze(1) - xf
            grad = grad - b * (gap - ctx.margin > 0).to(xf.dtype) + torch.where(gap == 0, b * share.unsqueeze(1), 0.0)
        return grad.to(x.dtype), None, None, None, None, None


def traced_relative_loss_and_stats(
    x: Tensor,
    target: Tensor,
    spec: Spec,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    with_stats: bool,
    brier: bool,
) -> tuple[Tensor | None, ...]:
    """loss, h_pq, term and the LossStats fields of (N, C, d1, …) logits and class indices, as formulas
    ``torch.compile`` fuses."""
    prep = _fused.prepare_labels(x, target, weight, None, ignore_index)
    shape = target.shape
    margin = spec.margin if spec.kind == "margin" else None
    entropy = spec.kind == "penalty" or with_stats
    nll, h, gap_mean, lse, top, index, squares = RelativeRowTermsFunction.apply(
        x, prep.y.view(shape), entropy, margin, with_stats, with_stats and brier
    )
    weight_sum = prep.wy.sum()
    denominator = _fused.mean_denominator(weight_sum, reduction)
    extra = h if spec.kind == "penalty" else gap_mean
    loss, h_pq, term = reduce_relative_terms(spec, nll, extra, (prep.wy, prep.wy), denominator, reduction, shape)
    confidence = None if not with_stats else (top - lse).exp()
    rows = Rows(nll.detach(), None if h is None else h.detach(), None, confidence, index, squares)
    return (loss, h_pq, term, *row_stats(rows, target.reshape(-1), prep.valid.bool(), weight_sum, with_stats))
