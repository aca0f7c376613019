r"""Kernel of the fused linear + label-smoothed loss: logits ``h @ W.T + b`` made and used one chunk of rows at a time.

Each chunk of logits goes through the one-pass kernel of :mod:`.fused` (row statistics and, when a gradient is
needed, the gradient ``g`` of the logits), and is then folded at once into the gradients the loss must return:
``dh = g @ W``, ``dW += g.T @ h``, ``db += Σ g``. Backward only scales those by grad_output, so the loss never holds
more than one chunk of logits (and its gradient) on top of the gradients of its inputs.

Eager code calls :class:`LinearLabelSmoothedCEFunction`; under ``torch.compile`` the same kernel runs as the
registered custom op ``ls_lightning::linear_ce`` (:func:`linear_custom_op`, with a fake implementation and an
autograd formula), so the compiled graph has no break and does not depend on ε's value.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ls_lightning.losses.ops import fused as _fused
from ls_lightning.losses.ops.fused import ACCELERATOR_CHUNK_ELEMENTS

# Logits per chunk on the CPU (64 MiB of float32; the gradient overwrites its chunk of logits, so that is all the
# workspace), and at least MIN_CHUNK_ROWS rows whatever the vocabulary. Each chunk streams the whole of W twice and
# dW (V×D) once from memory, so rows, not elements, set the speed at large V: 1024×512→128000 fwd+bwd took 12.1 s
# in 32-row chunks, 8.1 s in 131, 5.8 s in 262 and 5.2 s in one chunk (2 loaded cores; with the three-pass CPU
# training pass, 512 and 1024 rows then took 0.98× and 0.95× the time of 256). 4096×512→32000 takes 524-row
# chunks: 0.125× the logits. Sweep with `python benchmarks/linear.py --chunk N --min-rows R`.
LINEAR_CHUNK_ELEMENTS = 1 << 24
MIN_CHUNK_ROWS = 256


class Grads(NamedTuple):
    """Gradients of the loss with respect to the hidden states, the weight and the bias (None: not needed)."""

    input: Tensor | None
    weight: Tensor | None
    bias: Tensor | None


def chunk_rows(num_classes: int, device: torch.device) -> int:
    """Rows per chunk of logits: the element budget of the device over the number of classes, at least
    ``MIN_CHUNK_ROWS``."""
    budget = LINEAR_CHUNK_ELEMENTS if device.type == "cpu" else ACCELERATOR_CHUNK_ELEMENTS
    return max(MIN_CHUNK_ROWS, 1, budget // max(1, num_classes))


class _Accumulator:
    """dh, dW and db of one pass, built chunk by chunk (dW and db in float32 for half-precision parameters)."""

    def __init__(self, h: Tensor, w: Tensor, b: Tensor | None, need: tuple[bool, bool, bool], acc: torch.dtype):
        self.h = h.new_empty(h.shape) if need[0] else None  # contiguous: its row slices are matmul outputs
        self.first = True
        # A half-precision dW summed over chunks in its own dtype would round once per chunk: sum in float32.
        self.wide = w.dtype != acc and h.shape[0] > chunk_rows(w.shape[0], h.device)
        self.w = None if not need[1] else w.new_empty(w.shape, dtype=acc if self.wide else w.dtype)
        self.b = None if not (need[2] and b is not None) else w.new_zeros(w.shape[0], dtype=acc)
        self.tmp: Tensor | None = None

    def add(self, g: Tensor, g_acc: Tensor, hc: Tensor, w: Tensor, r: slice) -> None:
        """Fold one chunk's logit gradient ``g`` (matmul dtype; ``g_acc`` its float32 original) into the sums."""
        if self.h is not None:
            torch.mm(g, w, out=self.h[r])
        if self.w is not None:
            if self.first:
                torch.mm(g.t(), hc, out=self.w) if not self.wide else self.w.zero_()
            if self.wide:
                self.tmp = torch.mm(g.t(), hc, out=self.tmp) if self.tmp is not None else torch.mm(g.t(), hc)
                self.w.add_(self.tmp)
            elif not self.first:
                self.w.addmm_(g.t(), hc)
        if self.b is not None:
            self.b.add_(g_acc.sum(0))
        self.first = False

    def result(self, w: Tensor, b: Tensor | None) -> Grads:
        gw = self.w if self.w is None or self.w.dtype == w.dtype else self.w.to(w.dtype)
        gb = self.b if self.b is None or b is None else self.b.to(b.dtype)
        return Grads(self.h, gw, gb)


def _chunked_pass(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    prep: _fused.Prepared,
    coefs: tuple[Tensor, Tensor, Tensor] | None,
    need: tuple[bool, bool, bool],
    stats: tuple[bool, bool] = (False, False),
    uniform: tuple[float, float] | None = None,
    softcap: float | None = None,
    z_coef: Tensor | None = None,
) -> tuple[list[_fused.Terms], Grads]:
    """Chunk by chunk: logits, the fused pass (with ``coefs``: their gradient), and that gradient's matmuls.

    ``stats`` asks the pass for (argmax, ‖q‖); ``uniform`` is :func:`_fused.uniform_coefficients` of ``coefs``;
    ``z_coef`` the z-loss's per-row coefficient (:func:`_fused.z_coefficient`). In float32 and float64 the gradient
    overwrites its chunk of logits in place (one buffer, not two): the pass then takes its argmax path, which reads
    each logit before it writes the softmax over it, and z_y is read first. With ``softcap`` each chunk of logits
    is capped in place, and its gradient gets a buffer of its own: the chain rule's ``1 − (c/s)²`` needs ``c``.
    """
    m, num_classes = h.shape[0], w.shape[0]
    acc = prep.valid.dtype
    rows = min(max(m, 1), chunk_rows(num_classes, h.device))
    logits = h.new_empty(rows, num_classes)
    in_place = coefs is not None and h.dtype == acc and softcap is None
    grad = logits if in_place else None if coefs is None else h.new_empty(rows, num_classes, dtype=acc)
    narrow = None if grad is None or h.dtype == acc else h.new_empty(rows, num_classes)  # half: g in matmul dtype
    sums = _Accumulator(h, w, b, need if coefs is not None else (False, False, False), acc)
    fast = _prior_projection(w, b, prep.smoothing) if in_place and not any(stats) and h.device.type == "cpu" else None
    terms = []
    for r0 in range(0, max(m, 1), rows):
        r = slice(r0, min(m, r0 + rows))
        hc, n, y = h[r], r.stop - r0, prep.y[r]
        lc = torch.mm(hc, w.t(), out=logits[:n]) if b is None else torch.addmm(b, hc, w.t(), out=logits[:n])
        if softcap is not None:  # c = s·tanh(z/s)
            lc.div_(softcap).tanh_().mul_(softcap)
        z_y = lc.gather(1, y.unsqueeze(1))  # (n, 1), read before the pass may overwrite the logits
        gc = None if grad is None else grad[:n]
        chunk_coefs = None if coefs is None else (coefs[0][r], coefs[1][r], coefs[2][r])
        chunk_z = None if z_coef is None else z_coef[r]
        if fast is not None and chunk_coefs is not None:
            row_stats = _loss_pass(lc, hc, w, b, y, z_y, fast, prep.smoothing, chunk_coefs, uniform, chunk_z)
        else:
            argmax, sqnorm = stats[0] or in_place, stats[1]
            row_stats = _fused.row_pass(lc, y, prep.smoothing, chunk_coefs, gc, argmax, sqnorm, uniform, chunk_z)
        # row_terms reads z_y from its first argument at the rows' labels: here the (n, 1) column, label 0
        part = _fused.Prepared(torch.zeros_like(y), prep.valid[r], prep.wy[r], prep.total[r], prep.smoothing)
        terms.append(_fused.row_terms(z_y, part, row_stats))
        if gc is not None:
            if softcap is not None:  # dc/dz = 1 − tanh²(z/s) = 1 − (c/s)²
                gc.addcmul_(gc, lc.div_(softcap).square_(), value=-1.0)
            sums.add(gc if narrow is None else narrow[:n].copy_(gc), gc, hc, w, r)
    return terms, sums.result(w, b)


def _prior_projection(w: Tensor, b: Tensor | None, smoothing: _fused.Smoothing) -> tuple[Tensor, Tensor] | None:
    """(W^T v, b·v) so that v·z = h·(W^T v) + b·v for a (V,) or uniform v (uniform: v = 1, the kernel's Σz);
    None for a (V, V) prior, or for few classes (there _fused's separate-ops kernel is the faster one)."""
    v = smoothing.v
    if (isinstance(v, Tensor) and v.dim() == 2) or w.shape[0] < _fused.SOFTMAX_MIN_CLASSES:
        return None
    if isinstance(v, float):
        return w.sum(0), (w.new_zeros(()) if b is None else b.sum())
    v = v.to(w.dtype)
    return torch.mv(w.t(), v), (w.new_zeros(()) if b is None else torch.dot(b, v))


def _loss_pass(
    lc: Tensor,
    hc: Tensor,
    w: Tensor,
    b: Tensor | None,
    y: Tensor,
    z_y: Tensor,
    projection: tuple[Tensor, Tensor],
    smoothing: _fused.Smoothing,
    coefs: tuple[Tensor, Tensor, Tensor],
    uniform: tuple[float, float] | None,
    z_coef: Tensor | None = None,
) -> _fused.RowStats:
    """The loss alone, on the CPU, in place: the chunk's logits become its gradient in three passes, not six.

    v·z comes from the hidden states (``projection``, no pass over the logits); lse = z_y − log q_y from the
    label's own pair after a softmax in place (no max passes); then :func:`.fused.chunk_gradient`. Rows go in
    blocks of ``fused.CACHE_CHUNK_ELEMENTS`` (cache-sized); a block where some q_y is not a normal float (its log
    would lose digits) has its logits remade and takes :func:`.fused.row_pass` instead (no sync on the CPU).
    """
    n, num_classes = lc.shape
    vz = torch.addmv(projection[1], hc, projection[0])
    q_y, top = lc.new_empty(n), z_y.reshape(-1).clone()
    step = max(1, _fused.CACHE_CHUNK_ELEMENTS // num_classes)
    tiny = torch.finfo(lc.dtype).tiny
    for s0 in range(0, n, step):
        s = slice(s0, min(n, s0 + step))
        block, label, block_coefs = lc[s], y[s], (coefs[0][s], coefs[1][s], coefs[2][s])
        torch.softmax(block, 1, out=block)
        torch.gather(block, 1, label.unsqueeze(1), out=q_y[s].unsqueeze(1))
        if bool((q_y[s] >= tiny).all()):
            if z_coef is not None:  # the z-loss's 2γ·lse·q, lse = z_y − log q_y
                block_coefs = (block_coefs[0] + z_coef[s] * (top[s] - q_y[s].log()), *block_coefs[1:])
            _fused.chunk_gradient(block, label, smoothing, block_coefs, uniform)
            continue
        torch.mm(hc[s], w.t(), out=block) if b is None else torch.addmm(b, hc[s], w.t(), out=block)
        zc = None if z_coef is None else z_coef[s]
        rows = _fused.row_pass(block, label, smoothing, block_coefs, block, True, False, uniform, zc)
        q_y[s], top[s], vz[s] = rows.qmax, rows.top, rows.vz
    return _fused.RowStats(q_y, top, None, vz, None)


def _concat(terms: list[_fused.Terms]) -> _fused.Terms:
    """The per-chunk terms and row statistics as one set over all rows."""
    if len(terms) == 1:
        return terms[0]

    def cat(parts: list[Any]) -> Any:
        return None if parts[0] is None else torch.cat(parts)

    rows = _fused.RowStats(*(cat([t.rows[i] for t in terms]) for i in range(len(_fused.RowStats._fields))))
    h_pq, h_uq, lse, z_y = (cat([t[i] for t in terms]) for i in range(4))
    return _fused.Terms(h_pq, h_uq, lse, z_y, rows)


class Forward(NamedTuple):
    """One forward pass: the reduced outputs, the label preparation, the gradients and the detached stats."""

    out: _fused.Outputs
    prep: _fused.Prepared
    grads: Grads
    stats: tuple[Tensor, ...]


def linear_forward(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    target: Tensor,
    eps: float | Tensor,
    weight: Tensor | None,
    prior: Tensor | None,
    ignore_index: int,
    reduction: str,
    with_stats: bool,
    brier: bool,
    need: tuple[bool, bool, bool],
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Forward:
    """Loss, terms and stats of (M, D) hidden states ``h``; with ``need``, d loss / d(h, W, b) in the same pass.

    The mean's denominator depends on the labels only: it is computed first and folded into the gradients, so
    backward has nothing to do for ``loss.backward()``. ``reduction="none"`` makes no gradient here (each row's
    weight in it, grad_output, is known only in backward). ``z_loss`` and ``softcap`` as in the public function.
    """
    with torch.autocast(h.device.type, enabled=False):
        acc = torch.float64 if h.dtype == torch.float64 else torch.float32
        prep = _fused.prepare_labels(h.new_empty(0, w.shape[0], dtype=acc), target, weight, prior, ignore_index)
        weight_sum = prep.wy.sum()
        denominator = _fused.mean_denominator(weight_sum, reduction)
        coefs, uniform, z_coef = None, None, None
        if any(need) and reduction != "none":
            scale = None if denominator is None else denominator.reciprocal()
            coefs = _fused.forward_coefficients(prep, eps, scale)
            z_coef = _fused.z_coefficient(prep, z_loss, reduction) if z_loss else None
            uniform = _fused.uniform_coefficients(h, prep, coefs) if z_coef is None else None
        stats = (with_stats, with_stats and brier)
        parts, grads = _chunked_pass(h, w, b, prep, coefs, need, stats, uniform, softcap, z_coef)
        terms = _concat(parts)
        h_pq = _fused.reduce_rows(terms.h_pq, reduction, denominator, target.shape)
        h_uq = _fused.reduce_rows(terms.h_uq, reduction, denominator, target.shape)
        loss, z_rows = _fused.mix_terms(h_pq, h_uq, eps), None
        if z_loss:
            z_rows, z_term = _fused.z_loss_term(terms.lse, prep.valid, z_loss, reduction, target.shape)
            loss = loss + z_term
        out = _fused.Outputs(loss, h_pq, h_uq, weight_sum, denominator, terms, z_rows)
        return Forward(out, prep, grads, _fused.row_stats(out, target, prep, with_stats))


def linear_gradients(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    prep: _fused.Prepared,
    eps: float | Tensor,
    norm: Tensor | None,
    g_out: tuple[Tensor | None, Tensor | None, Tensor | None],
    need: tuple[bool, bool, bool],
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Grads:
    """Gradients of g·loss + g_pq·h_pq + g_uq·h_uq = α·H(p,q) + β·H(u,q) (+ g·z-loss) from a second pass (logits
    remade)."""
    with torch.autocast(h.device.type, enabled=False):
        g_loss, g_pq, g_uq = g_out
        zero = torch.zeros((), dtype=prep.wy.dtype, device=h.device)
        g_loss = zero if g_loss is None else g_loss
        alpha = g_loss * (1 - eps) + (zero if g_pq is None else g_pq)
        beta = g_loss * eps + (zero if g_uq is None else g_uq)
        if norm is not None:
            alpha, beta = alpha / norm, beta / norm
        alpha, beta = alpha.reshape(-1).to(zero.dtype), beta.reshape(-1).to(zero.dtype)
        z_coef = _fused.z_coefficient(prep, z_loss, "mean" if norm is not None else "sum", g_loss) if z_loss else None
        coefs = _fused.coefficients(prep, alpha, beta)
        return _chunked_pass(h, w, b, prep, coefs, need, softcap=softcap, z_coef=z_coef)[1]


def _scale(grads: Grads, g: Tensor) -> Grads:
    """The precomputed gradients times a 0-d grad_output, in place (nothing to do for a CPU 1)."""
    if not _fused.is_cpu_one(g):
        for t in grads:
            if t is not None:
                t.mul_(g.to(t.dtype))
    return grads


class LinearLabelSmoothedCEFunction(torch.autograd.Function):
    """Autograd wrapper of :func:`linear_forward` (eager): the gradients come from forward, backward scales them.

    Outputs: loss, h_pq, h_uq, then the non-differentiable stats (confidence, correct, valid, brier, weight_sum,
    z_loss). A gradient through ``h_pq`` or ``h_uq``, or of ``reduction="none"``, remakes the logits in backward.
    """

    @staticmethod
    def forward(
        ctx: Any,
        h: Tensor,
        w: Tensor,
        b: Tensor | None,
        target: Tensor,
        eps: float | Tensor,
        weight: Tensor | None,
        prior: Tensor | None,
        ignore_index: int,
        reduction: str,
        with_stats: bool,
        brier: bool,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> tuple[Tensor, ...]:
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], b is not None and ctx.needs_input_grad[2])
        args = (h, w, b, target, eps, weight, prior, ignore_index, reduction, with_stats, brier, need)
        fwd = linear_forward(*args, z_loss, softcap)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*fwd.stats)
        ctx.save_for_backward(h, w, b)
        ctx.grads = fwd.grads if reduction != "none" else None
        ctx.prep, ctx.eps, ctx.norm, ctx.need = fwd.prep, eps, fwd.out.denominator, need
        ctx.z_loss, ctx.softcap = z_loss, softcap
        return (fwd.out.loss, fwd.out.h_pq, fwd.out.h_uq, *fwd.stats)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_loss: Tensor | None, g_pq: Tensor | None, g_uq: Tensor | None, *_: Any) -> tuple:
        grads, ctx.grads = ctx.grads, None  # handed out once; a second backward (retain_graph) recomputes
        if g_loss is None and g_pq is None and g_uq is None:
            return (None,) * 13
        if grads is not None and g_pq is None and g_uq is None and g_loss is not None:
            grads = _scale(grads, g_loss)
        else:
            h, w, b = ctx.saved_tensors
            g_out = (g_loss, g_pq, g_uq)
            grads = linear_gradients(h, w, b, ctx.prep, ctx.eps, ctx.norm, g_out, ctx.need, ctx.z_loss, ctx.softcap)
        return (*grads, *(None,) * 10)


# ------------------------------------------------------------------------------------------ torch.compile: custom op

_EMPTY = (0,)


@torch.library.custom_op("ls_lightning::linear_ce", mutates_args=())
def _linear_ce(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    target: Tensor,
    eps: Tensor,
    weight: Tensor | None,
    prior: Tensor | None,
    ignore_index: int,
    reduction: str,
    with_stats: bool,
    brier: bool,
    need_h: bool,
    need_w: bool,
    need_b: bool,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """loss, h_pq, h_uq, dh, dW, db (empty where not made), confidence, correct, valid, brier, weight_sum, z_loss,
    entropy."""
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    need = (need_h, need_w, need_b and b is not None) if reduction != "none" else (False, False, False)
    e = eps.to(device=h.device, dtype=acc)
    fwd = linear_forward(
        h, w, b, target, e, weight, prior, ignore_index, reduction, with_stats, brier, need, z_loss, softcap
    )
    grads = tuple(h.new_empty(_EMPTY) if g is None else g for g in fwd.grads)
    return (fwd.out.loss, fwd.out.h_pq, fwd.out.h_uq, *grads, *fwd.stats)  # type: ignore[return-value]


@_linear_ce.register_fake
def _linear_ce_fake(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    target: Tensor,
    eps: Tensor,
    weight: Tensor | None,
    prior: Tensor | None,
    ignore_index: int,
    reduction: str,
    with_stats: bool,
    brier: bool,
    need_h: bool,
    need_w: bool,
    need_b: bool,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, ...]:
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    shape = target.shape if reduction == "none" else ()
    early = reduction != "none"
    m = h.shape[0] if with_stats else 0
    return (
        *(h.new_empty(shape, dtype=acc) for _ in range(3)),
        h.new_empty(h.shape if early and need_h else _EMPTY),
        w.new_empty(w.shape if early and need_w else _EMPTY),
        h.new_empty(_EMPTY) if b is None or not (early and need_b) else b.new_empty(b.shape),
        h.new_empty(m, dtype=torch.float32),
        h.new_empty(m, dtype=torch.bool),
        h.new_empty(m, dtype=torch.bool),
        h.new_empty(m if brier else 0, dtype=torch.float32),
        h.new_empty((), dtype=torch.float32),
        h.new_empty(m if z_loss else 0, dtype=torch.float32),
        h.new_empty(m if brier else 0, dtype=torch.float32),
    )


@torch.library.custom_op("ls_lightning::linear_ce_backward", mutates_args=())
def _linear_ce_backward(
    grad_h: Tensor,
    grad_w: Tensor,
    grad_b: Tensor,
    g_loss: Tensor | None,
    g_pq: Tensor | None,
    g_uq: Tensor | None,
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    target: Tensor,
    eps: Tensor,
    weight: Tensor | None,
    prior: Tensor | None,
    ignore_index: int,
    reduction: str,
    need_h: bool,
    need_w: bool,
    need_b: bool,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """dh, dW, db: the forward's gradients times grad_output, or a second pass when h_pq, h_uq or rows need it.

    Compiled code hands zeros, not None, for outputs that get no gradient: which ones carry one is read here (free
    on the CPU; one host synchronisation per backward on an accelerator).
    """
    need = (need_h, need_w, need_b and b is not None)
    untouched = all(g is None or not bool(g.any()) for g in (g_pq, g_uq))
    if reduction != "none" and untouched and g_loss is not None:
        grads = tuple(
            t * g_loss.to(t.dtype) if n else None for t, n in zip((grad_h, grad_w, grad_b), need, strict=True)
        )
    else:
        acc = torch.float64 if h.dtype == torch.float64 else torch.float32
        prep = _fused.prepare_labels(h.new_empty(0, w.shape[0], dtype=acc), target, weight, prior, ignore_index)
        norm = _fused.mean_denominator(prep.wy.sum(), reduction)
        e = eps.to(device=h.device, dtype=acc)
        grads = linear_gradients(h, w, b, prep, e, norm, (g_loss, g_pq, g_uq), need, z_loss, softcap)
    return tuple(h.new_empty(_EMPTY) if g is None else g for g in grads)  # type: ignore[return-value]


@_linear_ce_backward.register_fake
def _linear_ce_backward_fake(
    grad_h: Tensor,
    grad_w: Tensor,
    grad_b: Tensor,
    g_loss: Tensor | None,
    g_pq: Tensor | None,
    g_uq: Tensor | None,
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    target: Tensor,
    eps: Tensor,
    weight: Tensor | None,
    prior: Tensor | None,
    ignore_index: int,
    reduction: str,
    need_h: bool,
    need_w: bool,
    need_b: bool,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, ...]:
    return (
        h.new_empty(h.shape if need_h else _EMPTY),
        w.new_empty(w.shape if need_w else _EMPTY),
        h.new_empty(_EMPTY) if b is None or not need_b else b.new_empty(b.shape),
    )


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    h, w, b, target, eps, weight, prior, ignore_index, reduction, _, _, need_h, need_w, need_b, z_loss, softcap = inputs
    ctx.save_for_backward(*output[3:6], h, w, b, target, eps, weight, prior)
    ctx.args = (ignore_index, reduction, need_h, need_w, need_b and b is not None, z_loss, softcap)


def _backward(ctx: Any, g_loss: Tensor | None, g_pq: Tensor | None, g_uq: Tensor | None, *_: Any) -> tuple:
    need_h, need_w, need_b = ctx.args[2:5]
    saved = ctx.saved_tensors
    dh, dw, db = torch.ops.ls_lightning.linear_ce_backward(*saved[:3], g_loss, g_pq, g_uq, *saved[3:], *ctx.args)
    return (dh if need_h else None, dw if need_w else None, db if need_b else None, *(None,) * 13)


_linear_ce.register_autograd(_backward, setup_context=_setup_context)


def linear_custom_op(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    target: Tensor,
    eps: float | Tensor,
    weight: Tensor | None,
    prior: Tensor | None,
    ignore_index: int,
    reduction: str,
    with_stats: bool,
    brier: bool,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[Tensor, ...]:
    """The custom op for traced code; ε enters as a 0-d tensor, so no guard is put on its value (``z_loss`` and
    ``softcap`` enter as numbers: the graph specialises on them, as on any float argument)."""
    grad = torch.is_grad_enabled()
    need = (grad and h.requires_grad, grad and w.requires_grad, grad and b is not None and b.requires_grad)
    e = eps.reshape(()).to(torch.float64) if isinstance(eps, Tensor) else h.new_ones((), dtype=torch.float64) * eps
    out = torch.ops.ls_lightning.linear_ce(
        h, w, b, target, e, weight, prior, ignore_index, reduction, with_stats, brier, *need, z_loss, softcap
    )
    return (*out[:3], *(s.detach() for s in out[6:]))
