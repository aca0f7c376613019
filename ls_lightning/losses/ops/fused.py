r"""One-pass, chunked label-smoothed cross-entropy for class-index targets, as a ``torch.autograd.Function``.

The logits are read in row chunks small enough to stay in cache. Each chunk yields the row statistics (top
probability, argmax, v·z, ‖q‖) and, only when a gradient is needed, the gradient of the smoothed loss written into
one buffer of the logits' size, which backward hands to autograd (scaled in place unless grad_output is 1).

Notation, per row i with label y, class weights w (ones without ``weight``) and prior u_i (u or row y of u):

.. math::
    v_i = w \odot u_i, \quad V_i = \textstyle\sum_c v_{ic}, \quad
    H(p,q)_i = w_y (\mathrm{lse}_i - z_{iy}), \quad H(u,q)_i = V_i\,\mathrm{lse}_i - v_i \cdot z_i,

    \partial_z [\alpha H(p,q)_i + \beta H(u,q)_i]
    = (\alpha w_y + \beta V_i)\,q_i - \alpha w_y\,\delta_y - \beta v_i.

A z-loss ``γ·lse_i²`` (PaLM) adds ``2γ·lse_i·q_i`` to its row's gradient: one more per-row coefficient of q, formed
from the pass's own row statistics (``lse = top − log qmax``) just before the chunk's gradient is written.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor


def cache_chunk_elements(fallback: int = 1 << 22) -> int:
    """Elements per CPU chunk: as many as fit a chunk of float32 logits and its gradient (8 bytes an element) in the
    last-level cache, read once from sysfs (Linux); ``fallback`` (16 MiB of float32) where it cannot be read.

    What a chunk buys is that the ops after the first read it from cache; what it costs is a few OpenMP fork/joins,
    each of which stalls for a time slice when another process holds a core. So a chunk should be as large as the
    cache holds, no smaller: 2**22 with 32 MiB of L3, 2**20 with 8 MiB. Measured with ``python benchmarks/loss.py
    --chunk N`` (1024×32000, fwd+bwd): on an AMD EPYC with 32 MiB of L3, flat from 2**18 elements to the whole
    tensor when quiet, 2**22 about 3× less sensitive to load than 2**20; on an Intel Xeon with 300 MiB of L3 (the
    whole 128 MiB input fits), one chunk took 2.2× the floor (best of 15) against 5.9× for chunks of 2**22 under a
    load of 6 on its 2 cores.
    """
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        levels = []
        for index in os.listdir(root):
            if index.startswith("index"):
                with open(f"{root}/{index}/type") as kind, open(f"{root}/{index}/size") as size:
                    if kind.read().strip() != "Instruction":
                        levels.append(_parse_size(size.read().strip()))
    except (OSError, ValueError):
        return fallback
    if not levels:
        return fallback
    return max(1 << 18, min(1 << 26, max(levels) // 8))


def _parse_size(text: str) -> int:
    """sysfs cache sizes: "48K", "2048K", "300M", "1024" (bytes)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


# Elements per chunk on the CPU (see :func:`cache_chunk_elements`); `python benchmarks/loss.py` prints it.
CACHE_CHUNK_ELEMENTS = cache_chunk_elements()
# Where the pass needs a workspace besides the gradient (no gradient, half precision, (N, C, d1, …) input), a chunk
# is at most 2**22 elements, so that the workspace stays within 16 MiB of float32 whatever the cache.
WORKSPACE_ELEMENTS = 1 << 22
# On an accelerator a chunk costs ~10 kernel launches of a few µs each, and no cache holds it anyway: a
# 8192×32000 input in CPU-sized chunks would spend longer launching kernels than moving its 1 GiB. There the chunk
# is 2**26 elements (a 256 MiB float32 workspace at most): 8192×32000 takes four chunks. Not yet measured on a GPU.
ACCELERATOR_CHUNK_ELEMENTS = 1 << 26
# From this many classes on, PyTorch's fused softmax kernel beats max/sub/exp/sum ops (measured crossover ≈ 50).
SOFTMAX_MIN_CLASSES = 64


class RowStats(NamedTuple):
    """Per-row results of one pass over the logits (rows: positions, flattened)."""

    # (top, qmax): a logit and its softmax probability, so that lse = top − log qmax. The top class's (qmax ≥ 1/C: its
    # log never underflows), except in the CPU loss-only path, which takes the label's where no q_y underflows.
    # Confidence (with stats) and the few-class path's normaliser are the top class's.
    qmax: Tensor
    top: Tensor
    argmax: Tensor | None  # index of the max probability, for correctness; None when not asked for
    vz: Tensor  # v_i · z_i (before the 1/C factor when v is uniform)
    sqnorm: Tensor | None  # ‖q‖, for Σ q² (Brier); None when not asked for
    plogp: Tensor | None = None  # Σ q log q = −H(q), the predictive entropy's negative; asked for with ``sqnorm``


class Smoothing(NamedTuple):
    """The prior term folded with the class weights: ``v`` is a Python scalar, a (C,) row or a (C, C) matrix."""

    v: float | Tensor
    total: float | Tensor  # V: Σ_c v_c, scalar, 0-d, or (C,) per label for a (C, C) prior


def make_smoothing(num_classes: int, weight: Tensor | None, prior: Tensor | None, dtype: torch.dtype) -> Smoothing:
    """Fold the prior u (uniform when None) with the class weights into ``v = w ⊙ u`` and ``V = Σ v``."""
    if prior is None:
        if weight is None:
            return Smoothing(1.0 / num_classes, 1.0)
        v = weight.to(dtype) / num_classes
        return Smoothing(v, v.sum())
    u = prior.to(dtype)
    v = u if weight is None else u * weight.to(dtype)
    return Smoothing(v, v.sum(-1))


def sample_rows(x: Tensor) -> tuple[Tensor, int]:
    """(N, C, d1, …) -> (N, C, D) view and D; rows of the flattened problem are (n, d) pairs in that order."""
    inner = x[0, 0].numel() if x.dim() > 2 else 1
    return x.reshape(x.shape[0], x.shape[1], inner), inner


def chunk_view(x3: Tensor, n0: int, n1: int) -> Tensor:
    """Rows of samples n0:n1 as a (rows, C) tensor: a view for (N, C) input, a chunk-sized copy otherwise."""
    chunk = x3[n0:n1]
    if chunk.shape[2] == 1:
        return chunk.squeeze(2)
    return chunk.transpose(1, 2).reshape(-1, chunk.shape[1])


def row_pass(
    x: Tensor,
    y: Tensor,
    smoothing: Smoothing,
    coefs: tuple[Tensor, Tensor, Tensor] | None,
    grad: Tensor | None,
    argmax: bool = False,
    sqnorm: bool = False,
    uniform: tuple[float, float] | None = None,
    z_coef: Tensor | None = None,
) -> RowStats:
    """Read ``x`` once in row chunks; return the row statistics and, given ``grad`` and ``coefs``, fill ``grad``.

    ``coefs`` are the per-row (a, −b, −c) of the gradient ``a·q − b·v − c·δ_y``. ``y`` holds the flattened labels,
    ignored rows set to a valid class. Rows are (n, d) pairs in that order, as ``target.reshape(-1)``. ``argmax``
    and ``sqnorm`` ask for those statistics (correctness, Brier): PyTorch's max-with-index reduction costs about
    four times its max-only one on CPU, so the loss alone does without it. ``uniform`` gives (a, −b) as numbers
    when every row has the same (see :func:`uniform_coefficients`). ``z_coef`` (per row, see :func:`z_coefficient`)
    adds the z-loss's ``z_coef·lse·q`` to the gradient (``uniform`` must then be None).
    """
    x3, inner = sample_rows(x)
    n, num_classes = x3.shape[0], x3.shape[1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = RowStats(
        x.new_empty(y.numel(), dtype=acc),
        x.new_empty(y.numel(), dtype=acc),
        torch.empty(y.numel(), dtype=torch.long, device=x.device) if argmax else None,
        x.new_empty(y.numel(), dtype=acc),
        x.new_empty(y.numel(), dtype=acc) if sqnorm else None,
        x.new_empty(y.numel(), dtype=acc) if sqnorm else None,
    )
    direct = grad is not None and inner == 1 and grad.dtype == acc  # the gradient rows serve as workspace
    budget = CACHE_CHUNK_ELEMENTS if x.device.type == "cpu" else ACCELERATOR_CHUNK_ELEMENTS
    per_chunk = max(1, (budget if direct else min(budget, WORKSPACE_ELEMENTS)) // (num_classes * inner))
    ws = None if direct else x.new_empty(min(n, per_chunk) * inner, num_classes, dtype=acc)
    grad3 = None if grad is None else grad.view(x3.shape)
    for n0 in range(0, n, per_chunk):
        n1 = min(n, n0 + per_chunk)
        r = slice(n0 * inner, n1 * inner)
        work = grad3[n0:n1].squeeze(2) if direct else ws[: (n1 - n0) * inner]  # type: ignore[index]
        normalised = _chunk(chunk_view(x3, n0, n1), work, y[r], smoothing, out, r)
        if grad3 is not None and coefs is not None:
            a = coefs[0][r]
            if z_coef is not None:  # z-loss: d lse²/dz = 2·lse·q, lse from this chunk's (logit, probability) pair
                a = a + z_coef[r] * (out.top[r] - out.qmax[r].log())
            a = a if normalised else a * out.qmax[r]  # exp(z − max)·qmax = softmax(z)
            chunk_gradient(work, y[r], smoothing, (a, coefs[1][r], coefs[2][r]), uniform if normalised else None)
            if not direct:
                grad3[n0:n1].copy_(work.view(n1 - n0, inner, num_classes).transpose(1, 2))
    return out


def _chunk(xc: Tensor, work: Tensor, yc: Tensor, smoothing: Smoothing, out: RowStats, r: slice) -> bool:
    """Statistics of one chunk; leaves softmax(z) in ``work`` (returns True) or exp(z − max) (returns False)."""
    source = xc
    if xc.dtype != work.dtype:  # half precision: a float32 copy of the chunk only, never of the whole input
        xc = work.copy_(xc)  # (the sums below read it: a float32 pass is several times faster than a half one)
    v = smoothing.v
    if isinstance(v, float):
        torch.sum(xc, 1, out=out.vz[r])
    elif v.dim() == 1:
        torch.mv(xc, v, out=out.vz[r])
    else:
        torch.sum(xc * v.index_select(0, yc), 1, out=out.vz[r])
    qmax, top, norm = out.qmax[r], out.top[r], None if out.sqnorm is None else out.sqnorm[r]
    plogp = None if out.plogp is None else out.plogp[r]
    index = None if out.argmax is None else out.argmax[r]
    if xc.shape[1] >= SOFTMAX_MIN_CLASSES:
        # One fused kernel (max, exp and sum, scale); lse = top − log q_top for a (top logit, its probability) pair.
        if index is None and norm is None and xc.device.type == "cpu":
            # The loss alone, on the CPU: the label's own pair, z_y and q_y, saves two max reductions (~25% of
            # the pass at 1024×32000). Where some q_y is not a normal float its log loses digits: that chunk takes
            # the max pair instead (reading the check costs no device sync on the CPU).
            torch.softmax(xc, 1, out=work)
            label = yc.unsqueeze(1)
            torch.gather(work, 1, label, out=qmax.unsqueeze(1))
            if bool((qmax >= torch.finfo(qmax.dtype).tiny).all()):
                top.copy_(source.gather(1, label).squeeze(1))
                return True
            top.copy_(source.amax(1))
            torch.amax(work, 1, out=qmax)
            return True
        torch.amax(xc, 1, out=top)  # before the softmax: for half precision ``xc`` is ``work``
        torch.softmax(xc, 1, out=work)
        if index is None:
            torch.amax(work, 1, out=qmax)
        else:
            torch.max(work, 1, out=(qmax, index))
        if norm is not None:
            torch.linalg.vector_norm(work, dim=1, out=norm)
        if plogp is not None:  # xlogy: 0 where q = 0 (a −inf logit), where q·log q would be NaN
            torch.sum(torch.special.xlogy(work, work), 1, out=plogp)
        return True
    # Few classes: that kernel's per-row overhead dominates, separate ops are several times faster.
    if index is None:
        torch.amax(xc, 1, out=top)
    else:
        torch.max(xc, 1, out=(top, index))
    torch.sub(xc, top.unsqueeze(1), out=work).exp_()
    torch.sum(work, 1, out=qmax)
    qmax.reciprocal_()  # the top probability is exp(0) / Σ exp(z − max)
    if norm is not None:
        torch.linalg.vector_norm(work, dim=1, out=norm).mul_(qmax)
    if plogp is not None:  # q = qmax·w with w = exp(z − max): Σ q log q = qmax·Σ w log w + log qmax
        torch.sum(torch.special.xlogy(work, work), 1, out=plogp).mul_(qmax).add_(qmax.log())
    return False


def chunk_gradient(
    work: Tensor,
    yc: Tensor,
    smoothing: Smoothing,
    coefs: tuple[Tensor, Tensor, Tensor],
    uniform: tuple[float, float] | None = None,
) -> None:
    """Turn ``work`` into the gradient ``a·q − b·v − c·δ_y`` in place (coefs: a, −b, −c; ``a·work`` = ``a·q``).

    With ``uniform`` (a, −b as numbers, the same for every row) one ``add`` with a scalar ``alpha`` does the first
    two terms: on CPU that pass costs under half of the three-tensor ``addcmul`` (1024×32000: 3.7 ms against 8.5).
    """
    a, neg_b, neg_c = coefs
    v = smoothing.v
    if uniform is not None and not (isinstance(v, Tensor) and v.dim() == 2):
        scale, shift = uniform
        term = work.new_full((), shift * v) if isinstance(v, float) else v * shift
        torch.add(term, work, alpha=scale, out=work)
    elif isinstance(v, float):  # one pass: work = −b·v + a·work
        torch.addcmul((neg_b * v).unsqueeze(1), work, a.unsqueeze(1), out=work)
    elif v.dim() == 1:
        work.mul_(a.unsqueeze(1)).addr_(neg_b, v)
    else:
        work.mul_(a.unsqueeze(1)).addcmul_(neg_b.unsqueeze(1), v.index_select(0, yc))
    work.scatter_add_(1, yc.unsqueeze(1), neg_c.unsqueeze(1))


class Prepared(NamedTuple):
    """Per-row quantities that depend on the labels only, not on the logits."""

    y: Tensor  # (M,) labels, ignored rows set to 0
    valid: Tensor  # (M,) 1.0 where not ignored, else 0.0 (accumulation dtype)
    wy: Tensor  # (M,) w[y] · valid
    total: Tensor  # (M,) V_i · valid
    smoothing: Smoothing


def prepare_labels(
    x: Tensor, target: Tensor, weight: Tensor | None, prior: Tensor | None, ignore_index: int
) -> Prepared:
    """Labels, validity, label weights and prior totals per row; no host synchronisation."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    keep = target.reshape(-1) != ignore_index
    y = torch.where(keep, target.reshape(-1), 0)
    valid = keep.to(acc)
    wy = valid if weight is None else weight.to(acc)[y] * valid
    smoothing = make_smoothing(x.shape[1], weight, prior, acc)
    total = smoothing.total
    if isinstance(total, Tensor) and total.dim() == 1:  # (C, C) prior: V depends on the label
        total = total[y]
    return Prepared(y, valid, wy, valid if weight is None and prior is None else valid * total, smoothing)


def coefficients(prep: Prepared, alpha: float | Tensor, beta: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(a, −b, −c) of the gradient of ``α·H(p,q) + β·H(u,q)`` per row (α, β scalars or per-row)."""
    alpha_wy = alpha * prep.wy
    return alpha_wy + beta * prep.total, -beta * prep.valid, -alpha_wy


def forward_coefficients(prep: Prepared, eps: float | Tensor, scale: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`coefficients` of the loss, α = (1 − ε)·s and β = ε·s, in few ops (they count when C is small)."""
    if prep.total is not prep.wy:
        alpha, beta = ((1 - eps), eps) if scale is None else ((1 - eps) * scale, eps * scale)
        return coefficients(prep, alpha, beta)
    base = prep.wy if scale is None else prep.wy * scale  # uniform prior, no weights: V_i = w_y = valid
    return base, base * -eps, base * (eps - 1)


class Terms(NamedTuple):
    """Both cross-entropies per row and the row statistics they came from."""

    h_pq: Tensor
    h_uq: Tensor
    lse: Tensor
    z_y: Tensor
    rows: RowStats


def row_terms(x: Tensor, prep: Prepared, rows: RowStats) -> Terms:
    """H(p,q) and H(u,q) per row from the pass's statistics (vectorised over rows, O(M))."""
    index_shape = (x.shape[0], 1, *x.shape[2:])
    lse = rows.top - rows.qmax.log()
    z_y = x.gather(1, prep.y.view(index_shape)).reshape(-1).to(lse.dtype)
    h_pq = prep.wy * (lse - z_y)
    v = prep.smoothing.v
    if isinstance(v, float):  # v = 1/C: no weights, uniform prior, V_i = valid
        h_uq = prep.valid * torch.add(lse, rows.vz, alpha=-v)
    else:
        h_uq = prep.total * lse - prep.valid * rows.vz
    return Terms(counted(h_pq, prep.valid), counted(h_uq, prep.valid), lse, z_y, rows)


def counted(rows: Tensor, valid: Tensor) -> Tensor:
    """``rows`` with ignored rows set to 0: multiplying by ``valid`` leaves 0·inf = NaN where an ignored row holds a
    −inf logit (PyTorch masks those rows out)."""
    return torch.where(valid != 0, rows, 0.0)


class Outputs(NamedTuple):
    """Reduced terms, the mean's denominator and the per-row stats of one fused forward."""

    loss: Tensor
    h_pq: Tensor
    h_uq: Tensor
    weight_sum: Tensor
    denominator: Tensor | None  # of reduction="mean"; None for the others
    terms: Terms
    z_rows: Tensor | None = None  # z_loss·lse² per row (0 where ignored); None without a z-loss


def z_loss_term(lse: Tensor, valid: Tensor, z_loss: float, reduction: str, shape: torch.Size) -> tuple[Tensor, Tensor]:
    """``z_loss·lse²`` per row (0 where ignored) and reduced like the loss over the counted rows, unweighted: the
    mean divides by their number (0 when there are none)."""
    rows = counted(z_loss * lse.square(), valid)
    return rows, reduce_rows(rows, reduction, mean_denominator(valid.sum(), reduction), shape)


def z_coefficient(prep: Prepared, z_loss: float, reduction: str, g_loss: Tensor | None = None) -> Tensor:
    """Per row ``k`` such that the z-loss term adds ``k·lse·q`` to the gradient: 2·z_loss·valid, times grad_output
    ``g_loss`` (0-d or per row) when given, over the number of counted rows for the mean."""
    k = prep.valid * (2 * z_loss)
    if g_loss is not None:
        k = k * g_loss.reshape(-1).to(k.dtype)
    denominator = mean_denominator(prep.valid.sum(), reduction)
    return k if denominator is None else k / denominator


def reduce_rows(rows: Tensor, reduction: str, denominator: Tensor | None, shape: torch.Size) -> Tensor:
    """PyTorch's reductions; ``mean`` divides by ``denominator`` (see :func:`mean_denominator`)."""
    if reduction == "none":
        return rows.view(shape)
    if reduction == "sum" or denominator is None:
        return rows.sum()
    return rows.sum() / denominator


def mean_denominator(weight_sum: Tensor, reduction: str) -> Tensor | None:
    """Σ w[y] over counted rows, the mean's divisor as PyTorch's (negative too, with negative class weights), with 0
    replaced by inf: when nothing is counted, or the counted rows' weights are all 0, the mean is 0 with zero gradient
    (PyTorch: NaN). None unless mean."""
    if reduction != "mean":
        return None
    return torch.where(weight_sum != 0, weight_sum, torch.full_like(weight_sum, float("inf")))


def fused_forward(
    x: Tensor,
    target: Tensor,
    eps: float | Tensor,
    prep: Prepared,
    reduction: str,
    with_stats: bool,
    grad: Tensor | None,
    brier: bool = True,
    z_loss: float = 0.0,
) -> Outputs:
    """Loss, both terms and row stats from one pass; writes d loss / dx into ``grad`` when given.

    ``with_stats`` asks for the argmax (correctness) and, with ``brier``, ‖q‖ per row as well. ``z_loss`` > 0 adds
    ``z_loss·lse²`` (see :func:`z_loss_term`) to the loss and its gradient.

    The mean's denominator depends on the labels only, so it is folded into the gradient here: backward then has
    nothing to do for the usual ``loss.backward()`` (grad_output 1).
    """
    weight_sum = prep.wy.sum()
    denominator = mean_denominator(weight_sum, reduction)
    coefs = None
    if grad is not None:
        coefs = forward_coefficients(prep, eps, None if denominator is None else denominator.reciprocal())
    z_coef = z_coefficient(prep, z_loss, reduction) if z_loss and grad is not None else None
    uniform = None if coefs is None or z_coef is not None else uniform_coefficients(x, prep, coefs)
    rows = row_pass(x, prep.y, prep.smoothing, coefs, grad, with_stats, with_stats and brier, uniform, z_coef)
    terms = row_terms(x, prep, rows)
    h_pq = reduce_rows(terms.h_pq, reduction, denominator, target.shape)
    h_uq = reduce_rows(terms.h_uq, reduction, denominator, target.shape)
    loss = mix_terms(h_pq, h_uq, eps)
    if not z_loss:
        return Outputs(loss, h_pq, h_uq, weight_sum, denominator, terms)
    z_rows, z_term = z_loss_term(terms.lse, prep.valid, z_loss, reduction, target.shape)
    return Outputs(loss + z_term, h_pq, h_uq, weight_sum, denominator, terms, z_rows)


def uniform_coefficients(x: Tensor, prep: Prepared, coefs: tuple[Tensor, Tensor, Tensor]) -> tuple[float, float] | None:
    """(a, −b) as numbers when every row has the same: no class weights, no ignored row, no (C, C) prior.

    Read on the CPU only, where it costs no device synchronisation; elsewhere, and under ``torch.compile``, None.
    """
    if x.device.type != "cpu" or torch.compiler.is_compiling() or prep.wy is not prep.valid or prep.y.numel() == 0:
        return None
    if isinstance(prep.smoothing.v, Tensor) and prep.smoothing.v.dim() == 2:
        return None
    if not bool(prep.valid.all()):
        return None
    return float(coefs[0][0]), float(coefs[1][0])


def mix_terms(h_pq: Tensor, h_uq: Tensor, eps: float | Tensor) -> Tensor:
    """(1 − ε)·h_pq + ε·h_uq as PyTorch sums it, and h_pq itself at ε = 0.

    A −inf logit makes H(u,q) infinite: at ε = 0 PyTorch has no H(u,q) term, and 0·inf would be NaN. Not ``lerp``:
    h_pq + ε·(h_uq − h_pq) is NaN where both are infinite (a −inf logit at the label), PyTorch's sum is inf. A tensor
    ε is compared on the terms' device (a CPU ε is read as a scalar there, never copied: no synchronisation).
    """
    if not isinstance(eps, Tensor):
        loss = h_pq * (1 - eps)
        return loss if eps == 0 else loss + h_uq * eps
    e = h_pq.new_zeros(()) + eps.to(h_pq.dtype)
    return torch.where(e == 0, h_pq, (1 - e) * h_pq + e * h_uq)


def loss_and_row_stats(
    x: Tensor,
    target: Tensor,
    eps: float | Tensor,
    weight: Tensor | None,
    prior: Tensor | None,
    ignore_index: int,
    reduction: str,
    with_stats: bool,
    grad: Tensor | None,
    brier: bool = True,
    z_loss: float = 0.0,
) -> tuple[Prepared, Outputs, tuple[Tensor, ...]]:
    """Prepare the labels, make the pass (filling ``grad`` when given) and return the row stats with it.

    ``brier=False`` leaves the Brier values empty and saves the pass computing ‖q‖ (training needs no Brier score).
    """
    prep = prepare_labels(x, target, weight, prior, ignore_index)
    out = fused_forward(x, target, eps, prep, reduction, with_stats, grad, brier, z_loss)
    return prep, out, row_stats(out, target, prep, with_stats)


class FusedLabelSmoothedCEFunction(torch.autograd.Function):
    """Autograd wrapper of :func:`fused_forward`: one gradient buffer, scaled in place by backward.

    Outputs: loss, h_pq, h_uq, then the non-differentiable stats (confidence, correct, valid, brier, weight_sum,
    z_loss). A gradient through ``h_pq`` or ``h_uq`` (rare: they are usually logged) recomputes the buffer from the
    logits.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        target: Tensor,
        eps: float | Tensor,
        weight: Tensor | None,
        prior: Tensor | None,
        ignore_index: int,
        reduction: str,
        with_stats: bool,
        brier: bool,
        z_loss: float = 0.0,
    ) -> tuple[Tensor, ...]:
        grad = torch.empty(x.shape, dtype=x.dtype, device=x.device) if ctx.needs_input_grad[0] else None
        args = (x, target, eps, weight, prior, ignore_index, reduction, with_stats, grad, brier, z_loss)
        prep, out, stats = loss_and_row_stats(*args)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*stats)
        ctx.save_for_backward(x)
        ctx.grad, ctx.prep, ctx.eps, ctx.reduction, ctx.z_loss = grad, prep, eps, reduction, z_loss
        ctx.norm = out.denominator
        return (out.loss, out.h_pq, out.h_uq, *stats)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_loss: Tensor | None, g_pq: Tensor | None, g_uq: Tensor | None, *_: Any) -> tuple:
        if not ctx.needs_input_grad[0] or (g_loss is None and g_pq is None and g_uq is None):
            return (None,) * 10
        grad, ctx.grad = ctx.grad, None  # hand the buffer out once; a second backward (retain_graph) recomputes
        if grad is not None and g_pq is None and g_uq is None and g_loss is not None:
            if not is_cpu_one(g_loss):  # reading a CPU scalar costs no device synchronisation
                grad.mul_(g_loss.unsqueeze(1) if g_loss.dim() > 0 else g_loss)
        else:
            if grad is None:
                grad = torch.empty_like(ctx.saved_tensors[0], memory_format=torch.contiguous_format)
            _recompute_grad(ctx, g_loss, g_pq, g_uq, grad)
        return (grad, *(None,) * 9)


def is_cpu_one(g: Tensor) -> bool:
    """True for a 0-d CPU gradient equal to 1, the grad_output of ``loss.backward()`` on a reduced loss."""
    return g.dim() == 0 and g.device.type == "cpu" and not torch.compiler.is_compiling() and bool(g == 1)


def _recompute_grad(ctx: Any, g_loss: Tensor | None, g_pq: Tensor | None, g_uq: Tensor | None, grad: Tensor) -> None:
    """Gradient of g·loss + g_pq·h_pq + g_uq·h_uq = α·H(p,q) + β·H(u,q), from a second pass over the logits."""
    (x,) = ctx.saved_tensors
    eps = ctx.eps
    zero = torch.zeros((), dtype=ctx.prep.wy.dtype, device=x.device)
    g_loss = zero if g_loss is None else g_loss
    alpha = g_loss * (1 - eps) + (zero if g_pq is None else g_pq)
    beta = g_loss * eps + (zero if g_uq is None else g_uq)
    if ctx.norm is not None:
        alpha, beta = alpha / ctx.norm, beta / ctx.norm
    alpha, beta = alpha.reshape(-1).to(zero.dtype), beta.reshape(-1).to(zero.dtype)
    z_coef = z_coefficient(ctx.prep, ctx.z_loss, ctx.reduction, g_loss) if ctx.z_loss else None
    row_pass(x, ctx.prep.y, ctx.prep.smoothing, coefficients(ctx.prep, alpha, beta), grad, z_coef=z_coef)


def row_stats(out: Outputs, target: Tensor, prep: Prepared, with_stats: bool) -> tuple[Tensor, ...]:
    """confidence, correct, valid, brier, weight_sum, z_loss and entropy, float32 where real-valued (all but
    weight_sum empty unless with_stats; brier and entropy empty unless the pass kept ‖q‖, z_loss unless there is
    one)."""
    rows = out.terms.rows
    if out.z_rows is None or not with_stats:
        z_rows = rows.qmax.new_empty(0, dtype=torch.float32)
    else:
        z_rows = out.z_rows.detach().float()

    def none() -> Tensor:  # a tensor of its own each: outputs of the linear loss's custom op may not alias
        return rows.qmax.new_empty(0, dtype=torch.float32)

    if not with_stats:
        empty = [rows.qmax.new_empty(0, dtype=dtype) for dtype in (torch.float32, torch.bool, torch.bool)]
        return (*empty, none(), out.weight_sum.float(), z_rows, none())
    if rows.sqnorm is None:
        brier, entropy = none(), none()
    else:
        brier = (rows.sqnorm.square() - 2 * (out.terms.z_y - out.terms.lse).exp() + 1).float()
        entropy = (-cast(Tensor, rows.plogp)).float()
    correct = cast(Tensor, rows.argmax) == target.reshape(-1)
    return rows.qmax.float(), correct, prep.valid.bool(), brier, out.weight_sum.float(), z_rows, entropy
