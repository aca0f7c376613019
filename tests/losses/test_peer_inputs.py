"""Our losses on the inputs PyTorch and Liger-Kernel test their own cross-entropy with (see tests/peer_cases.py).

Each case runs in float32 and float64 through each path of the loss (the short path for small inputs, the fused
kernel with and without a gradient, the code torch.compile traces), values and gradients, against PyTorch's
``F.cross_entropy`` / ``F.binary_cross_entropy_with_logits`` in float64 (for float32 inputs: the float64 result of the
same values, so that what is measured is our error alone), and against Liger's reference formulation where z-loss and
soft-capping enter. The tolerance is a forward-error bound, not a constant: ``K`` units of the dtype's epsilon times
the magnitudes the result is computed from (:func:`_scales`), plus the float64 reference's own rounding. The
deliberate differences from PyTorch (docs/existing-projects.md, "Where we differ from PyTorch on purpose") are
asserted as such on the inputs that show them, and the bugs these inputs found are pinned by tests of their own.

``PEER_RATIOS=1 python -m pytest -n0 -s tests/losses/test_peer_inputs.py`` prints each group's largest error in
units of the bound (``PEER_K=1e9`` to see them all without failing).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import peer_cases as peers
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ls_lightning.losses import functional
from ls_lightning.losses.binary import binary_label_smoothed_cross_entropy
from ls_lightning.losses.functional import label_smoothed_cross_entropy, label_smoothed_cross_entropy_with_stats
from ls_lightning.losses.linear import linear_label_smoothed_cross_entropy

# The allowed error, in units of the bound (_scales). Measured with PEER_RATIOS=1 (torch 2.13.0 CPU build, 2 cores):
# largest over all cases 2.84 in float32 (an OpInfo sample with class weights, its gradient) and 1.66 in float64 for
# F.cross_entropy; 3.89 and 2.90 for the fused linear loss (dW; its logits come out of a matmul of H = 1024 terms).
K = float(os.environ.get("PEER_K", 6.0))
PATHS = ("auto", "kernel", "no_grad", "traced")
DTYPE_IDS = ["float32", "float64"]
EPS64 = torch.finfo(torch.float64).eps


@pytest.fixture(scope="session")
def torch_inputs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """PyTorch's generated inputs, kept in pytest's cache folder (per torch build: its generators take ~5 s of CPU,
    most of it importing torch.testing._internal), else in the session's temporary folder."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return peers.pytorch_inputs(cache.mkdir("ls_lightning_peer_inputs"))
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers, made by the first
    return peers.pytorch_inputs(root)


@contextlib.contextmanager
def _path(path: str) -> Iterator[None]:
    """Run our loss through one of its paths: ``kernel`` (the fused kernel even for small inputs), ``no_grad`` (the
    kernel's forward without autograd), ``traced`` (what torch.compile traces, run eagerly; for the linear loss its
    custom op), or ``auto`` (whatever the input's size and options choose)."""
    with pytest.MonkeyPatch.context() as patch:
        if path in ("kernel", "no_grad"):
            patch.setattr(functional, "SMALL_ELEMENTS", 0)
        if path == "traced":
            patch.setattr(torch.compiler, "is_compiling", lambda: True)
        with torch.no_grad() if path == "no_grad" else contextlib.nullcontext():
            yield


# ------------------------------------------------------------------------------------------------ the error bound


class _Scales(NamedTuple):
    """What the tolerance multiplies (float64): ours in units of the dtype's epsilon, the reference's in float64's."""

    loss: Tensor  # the loss's shape
    z: Tensor  # the z-loss term's (reduced like the loss)
    grad: Tensor  # (M, C): d loss / d logits
    grad_ref: Tensor  # (M, C): PyTorch's backward sums grad_output over the classes (log_softmax's Σ g)
    zero_mean: bool  # reduction="mean" over a zero total weight: a documented difference, no bound


def _scales(
    z: Tensor, m: Tensor, target: Tensor, eps: float, kwargs: dict[str, Any], z_loss: float, g: Tensor
) -> _Scales:
    """Forward-error scales of the loss and of d loss / d logits, for (M, C) float64 logits ``z`` as the loss sees
    them (soft-capped), ``m`` the size of their own rounding (|logits|; |h|·|W|ᵀ + |b| when a matmul made them), ``g``
    the grad_output's size per position.

    log q_ic = z_ic − lse_i is off by a few ulps of e_ic = m_ic + E_i, E_i = |lse_i| + max_c m_ic + log C + 1; a
    position's loss sums |a_ic|·e_ic (a = w ⊙ t̃, t̃ the smoothed target, 0 where ignored; for class indices bounded
    by (1 − ε)|w_y| at the label plus ε/C·|w|), its z-loss γ·lse² is off by 2γ|lse|·E; the gradient entry
    (Σ_c a_ic)·q_ic − a_ic by |Σ a|·q·e + |a|. ``mean`` scales them by 1/|Σ w_y| (the z-loss by 1 over the number of
    counted positions). PyTorch's own float64 gradient adds q·Σ|a|·C/16: its log_softmax backward sums grad_output
    over the C classes in a few vector lanes (measured: 1857 ulps of q at C = 32000, where ours is within 2 of the
    exact value).
    """
    c = z.shape[1]
    weight = kwargs.get("weight")
    w = torch.ones(c, dtype=torch.float64) if weight is None else weight.double()
    lse = torch.logsumexp(z, 1)
    q = torch.exp(z - lse.unsqueeze(1))
    big = lse.abs() + m.amax(1) + math.log(c) + 1  # E
    if target.is_floating_point():
        valid = torch.ones(z.shape[0], dtype=torch.bool)
        a = ((1 - eps) * target.double() + eps / c) * w
        total, a_sum, a_abs = float(z.shape[0]), a.sum(1), a.abs()
        rows = (a_abs * m).sum(1) + big * a_abs.sum(1)
        a_size = a_abs.sum(1)
    else:
        valid = target != kwargs.get("ignore_index", -100)
        y = torch.where(valid, target, 0).long().unsqueeze(1)
        w_y = w[y.squeeze(1)] * valid
        total = float(w_y.sum())
        uniform = eps / c * valid.double()
        a_sum = (1 - eps) * w_y + uniform * w.sum()
        a_size = (1 - eps) * w_y.abs() + uniform * w.abs().sum()
        rows = (1 - eps) * w_y.abs() * (m.gather(1, y).squeeze(1) + big) + uniform * (m @ w.abs() + big * w.abs().sum())
        a_abs = (uniform.unsqueeze(1) * w.abs()).scatter_add_(1, y, ((1 - eps) * w_y.abs()).unsqueeze(1))
    reduction = kwargs.get("reduction", "mean")
    s = 1 / abs(total) if reduction == "mean" and total else 1.0
    s_z = 1 / max(int(valid.sum()), 1) if reduction == "mean" else 1.0
    g = g.reshape(-1, 1)
    z_rows = 2 * z_loss * lse.abs() * big * valid * s_z
    # q·e = q·m + q·E, and the z-loss's 2γ·q·(|lse|·e + E)
    qe = q * m + q * big.unsqueeze(1)
    grad = (s * a_sum.abs()).unsqueeze(1) * qe + s * a_abs
    if z_loss:
        grad += (2 * z_loss * s_z * valid).unsqueeze(1) * (lse.abs().unsqueeze(1) * qe + q * big.unsqueeze(1))
    grad_ref = (s * a_size * (c / 16)).unsqueeze(1) * q
    loss = rows * s + z_rows
    if reduction != "none":
        loss, z_rows = loss.sum(), z_rows.sum()
    zero_mean = reduction == "mean" and total == 0
    return _Scales(loss, z_rows, grad * g, grad_ref * g, zero_mean)


class _Check:
    """Collects the comparisons of one test: failures, and each comparison's largest error in units of the bound."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.failures: list[str] = []
        self.ratios: list[tuple[float, str]] = []

    def close(self, name: str, got: Tensor, expected: Tensor, unit: Tensor) -> None:
        """|got − expected| ≤ K·unit everywhere (exactly equal where the unit is 0; inf and NaN only where PyTorch has
        the same), in the same shape."""
        if got.shape != expected.shape:
            self.failures.append(f"{name}: shape {tuple(got.shape)}, PyTorch's {tuple(expected.shape)}")
            return
        a, b = got.detach().double(), expected.detach().double()
        units = torch.sub(a, b).abs_().div_(unit.double().reshape(a.shape) if unit.numel() == a.numel() else unit)
        equal = a == b
        if bool(units.isnan().any()):  # 0/0 where equal, inf − inf, or a NaN on either side
            equal |= a.isnan() & b.isnan()
        ratio = float(units.masked_fill_(equal, 0.0).max()) if units.numel() else 0.0
        self.ratios.append((ratio, name))
        if not ratio <= K:  # `not`: a NaN fails
            got_, expected_ = got.flatten()[:3].tolist(), expected.flatten()[:3].tolist()
            self.failures.append(f"{name}: {got_} vs {expected_}, {ratio:.3g} units")

    def done(self) -> None:
        if os.environ.get("PEER_RATIOS"):
            worst = max(self.ratios, default=(0.0, ""))
            print(f"\n{self.label}: {len(self.ratios)} comparisons, largest {worst[0]:.3g} units ({worst[1]})")
        assert not self.failures, f"{len(self.failures)} differ (error in units):\n" + "\n".join(self.failures[:20])


def _rows(t: Tensor, has_classes: bool) -> Tensor:
    """(N, C, d…) → (M, C), M = N·d…; (C) → (1, C); class indices (N, d…) → (M,)."""
    if not has_classes:
        return t.reshape(-1)
    return t.unsqueeze(0) if t.dim() == 1 else t.movedim(1, -1).reshape(-1, t.shape[1])


def _unrows(t: Tensor, shape: torch.Size) -> Tensor:
    """(M, C) back to an input of ``shape`` (inverse of ``_rows``)."""
    return t.reshape(shape) if len(shape) == 1 else t.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


def _grad_output(expected: Tensor, case: peers.Case | peers.LinearCase) -> Tensor:
    """Ones, or (where the peer's test does) a seeded random grad_output; times Liger's ×3 for "not last layer"."""
    gen = torch.Generator().manual_seed(0)
    g = (
        torch.rand(expected.shape, generator=gen, dtype=torch.float64)
        if case.random_grad
        else torch.ones_like(expected)
    )
    return g * getattr(case, "grad_scale", 1.0)


# ------------------------------------------------------------------------------------------ the multi-class loss


def _reference(x64: Tensor, target: Tensor, case: peers.Case, kwargs: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """PyTorch's loss (Liger's formulation where a z-loss or soft-cap enters) and the z-loss term, in float64."""
    if case.z_loss or case.softcap is not None:
        return peers.liger_reference(x64, target, case.eps, kwargs, case.z_loss, case.softcap)
    return F.cross_entropy(x64, target, label_smoothing=case.eps, **kwargs), x64.new_zeros(())


def _cast(case: peers.Case, dtype: torch.dtype) -> tuple[Tensor, Tensor, dict[str, Any]]:
    def to(t: Any) -> Any:
        return t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t

    return to(case.input).detach(), to(case.target), {k: to(v) for k, v in case.kwargs.items()}


class _Expected(NamedTuple):
    """The float64 reference of one case, its gradient, and the tolerance units of both (the dtype's scales)."""

    loss: Tensor
    grad: Tensor | None  # None: mean over nothing counted (documented: ours is 0 with zero gradient)
    loss_unit: Tensor
    grad_unit: Tensor
    grad_output: Tensor
    z_term: Tensor  # Liger's z-loss term (reduced), and its scale
    z_scale: Tensor


def _expected(case: peers.Case, dtype: torch.dtype) -> _Expected:
    x64, t64, kw64 = _cast(case, torch.float64)
    x64 = x64.clone().requires_grad_()
    loss, z_term = _reference(x64, t64, case, kw64)
    g = _grad_output(loss, case)
    with torch.no_grad():
        logits = _rows(x64, True)
        capped = logits if case.softcap is None else case.softcap * torch.tanh(logits / case.softcap)
        sizes = g.abs().reshape(-1) if g.dim() else g.abs().expand(logits.shape[0])
        target = _rows(t64, t64.is_floating_point())
        scales = _scales(capped, logits.abs(), target, case.eps, kw64, case.z_loss, sizes)
    eps = torch.finfo(dtype).eps
    if scales.zero_mean:
        zero = torch.zeros(())
        return _Expected(zero, None, zero, zero, g, z_term.detach(), scales.z)
    (grad,) = torch.autograd.grad(loss, x64, g)
    unit = _unrows(eps * scales.grad + EPS64 * scales.grad_ref, x64.shape)
    return _Expected(loss.detach(), grad, eps * scales.loss, unit, g, z_term.detach(), scales.z)


def _check_case(check: _Check, case: peers.Case, paths: tuple[str, ...], dtype: torch.dtype) -> _Expected:
    """Our loss on one case through each of ``paths`` against the float64 reference: value, and gradient (unless
    no_grad); where PyTorch's mean is over nothing counted, our documented 0 with zero gradient."""
    expected = _expected(case, dtype)
    x, target, kwargs = _cast(case, dtype)
    for path in paths:
        xg = x.clone().requires_grad_(path != "no_grad")
        with _path(path):
            got = label_smoothed_cross_entropy(xg, target, case.eps, **kwargs, z_loss=case.z_loss, softcap=case.softcap)
        name = f"{case.name} [{path}]" + (" (mean over nothing counted)" if expected.grad is None else "")
        check.close(f"{name} loss", got.loss, expected.loss, expected.loss_unit)
        if path != "no_grad":
            g = expected.grad_output.to(got.loss.dtype)
            (grad,) = torch.autograd.grad(got.loss, xg, g)
            reference = torch.zeros_like(grad) if expected.grad is None else expected.grad
            check.close(f"{name} grad", grad, reference, expected.grad_unit)
    return expected


def _run(cases: list[peers.Case], paths: tuple[str, ...], dtype: torch.dtype, label: str) -> None:
    check = _Check(f"{label} [{dtype}]")
    for case in cases:
        _check_case(check, case, paths, dtype)
    check.done()


def _strided(x: Tensor) -> Tensor:
    """The same values with the classes last in memory: a non-contiguous (N, C, d…) tensor ((C) inputs: strided)."""
    if x.dim() < 2:
        return x.repeat_interleave(2)[::2]
    return x.movedim(1, -1).contiguous().movedim(-1, 1) if x.dim() > 2 else x.t().contiguous().t()


@pytest.mark.parametrize("dtype", peers.DTYPES, ids=DTYPE_IDS)
def test_pytorch_cross_entropy_inputs(torch_inputs, dtype):
    """PyTorch's OpInfo samples of nn.functional.cross_entropy and module inputs of nn.CrossEntropyLoss, every path
    (and through the kernel laid out non-contiguously)."""
    cases = peers.pytorch_cross_entropy_cases(torch_inputs, dtype)
    _run(cases, PATHS, dtype, "PyTorch OpInfo and module inputs")
    strided = [case._replace(name=f"{case.name} non-contiguous", input=_strided(case.input)) for case in cases]
    _run(strided, ("kernel",), dtype, "PyTorch OpInfo and module inputs, non-contiguous")


@pytest.mark.parametrize("dtype", peers.DTYPES, ids=DTYPE_IDS)
def test_pytorch_label_smoothing_tests(dtype):
    """The inputs of test_nn.py's label-smoothing tests, every path."""
    _run(peers.nn_label_smoothing_cases(dtype), PATHS, dtype, "test_nn.py label smoothing")


@pytest.mark.parametrize("dtype", peers.DTYPES, ids=DTYPE_IDS)
def test_liger_cross_entropy_inputs(dtype):
    """Liger-Kernel's test_cross_entropy.py parametrisations (at V = 32000 "auto" is the kernel); with z-loss or
    soft-capping against their reference (``CrossEntropyWithZLoss`` on the capped logits), and where their tests
    return the z-loss term, ours (``LossStats.z_loss``, reduced like the loss) against theirs."""
    check = _Check(f"Liger cross entropy [{dtype}]")
    for case in peers.liger_cross_entropy_cases(dtype):
        expected = _check_case(check, case, ("auto", "no_grad", "traced"), dtype)
        if case.z_loss:
            _check_z_term(check, case, dtype, expected)
    check.done()


def _check_z_term(check: _Check, case: peers.Case, dtype: torch.dtype, expected: _Expected) -> None:
    """Our ``LossStats.z_loss`` (per position, float32) reduced like the loss, against Liger's z-loss output."""
    x, target, kwargs = _cast(case, dtype)
    _, stats = label_smoothed_cross_entropy_with_stats(
        x, target, case.eps, **kwargs, z_loss=case.z_loss, softcap=case.softcap
    )
    reduction = kwargs.get("reduction", "mean")
    got = stats.z_loss.double()
    got = got.sum() / stats.valid.sum() if reduction == "mean" else got.sum() if reduction == "sum" else got
    # the statistics are float32 whatever the input's dtype: their rounding is float32's, of the term and its sum
    unit = torch.finfo(torch.float32).eps * (expected.z_scale + expected.z_term.abs())
    check.close(f"{case.name} z-loss term", got, expected.z_term, unit)


# ------------------------------------------------------------------------------------------- the fused linear loss


@pytest.mark.parametrize("dtype", peers.DTYPES, ids=DTYPE_IDS)
def test_liger_fused_linear_inputs(dtype):
    """Liger-Kernel's test_fused_linear_cross_entropy.py parametrisations against the materialised logits and
    F.cross_entropy, and with z-loss and soft-capping against their ``TorchLMHeadCE`` formulation: the loss (also
    without a gradient: their forward-only test) and the gradients of the hidden states, the weight and the bias,
    eagerly and through the custom op torch.compile calls (``traced``, run eagerly)."""
    check = _Check(f"Liger fused linear [{dtype}]")
    for case in peers.liger_linear_cases(dtype):
        _check_linear(check, case, dtype)
    check.done()


def _check_linear(check: _Check, case: peers.LinearCase, dtype: torch.dtype) -> None:
    params64 = [None if t is None else t.detach().double().requires_grad_() for t in (case.h, case.w, case.b)]
    kwargs = {k: (v.to(dtype) if isinstance(v, Tensor) else v) for k, v in case.kwargs.items()}
    kw64 = {k: (v.double() if isinstance(v, Tensor) else v) for k, v in case.kwargs.items()}
    h64, w64, b64 = params64
    logits = F.linear(h64, w64, b64)
    if case.z_loss or case.softcap is not None:
        expected, _ = peers.liger_reference(logits, case.target, case.eps, kw64, case.z_loss, case.softcap)
    else:
        expected = F.cross_entropy(logits, case.target, label_smoothing=case.eps, **kw64)
    g = _grad_output(expected, case)
    present = [(name, i) for i, name in enumerate(("h", "W", "b")) if params64[i] is not None]
    grads64 = torch.autograd.grad(expected, [params64[i] for _, i in present], g)
    with torch.no_grad():
        h_abs, w_abs = h64.abs(), w64.abs()
        size = h_abs @ w_abs.t() + (0 if b64 is None else b64.abs())
        z = logits if case.softcap is None else case.softcap * torch.tanh(logits / case.softcap)
        scales = _scales(z, size, case.target, case.eps, kw64, case.z_loss, g.abs().expand(z.shape[0]))
        eps = torch.finfo(dtype).eps
        unit = eps * scales.grad + EPS64 * scales.grad_ref  # (M, V): of the logits' gradient
        units = {"h": unit @ w_abs, "W": unit.t() @ h_abs, "b": unit.sum(0)}
    # the custom op (traced) runs the eager pass: at (V, H) = (4096, 1024) only its W-sized passes would differ
    for path in ("auto", "no_grad", "traced") if case.w.shape[1] < 1024 else ("auto", "no_grad"):
        params = [
            None if t is None else t.detach().clone().requires_grad_(path != "no_grad")
            for t in (case.h, case.w, case.b)
        ]
        h, w, b = params
        with _path(path):
            got = linear_label_smoothed_cross_entropy(
                h, w, case.target, case.eps, linear_bias=b, **kwargs, z_loss=case.z_loss, softcap=case.softcap
            )
        check.close(f"{case.name} [{path}] loss", got.loss, expected, eps * scales.loss)
        if path == "no_grad":
            continue
        grads = torch.autograd.grad(got.loss, [params[i] for _, i in present], g.to(got.loss.dtype))
        for (name, _), grad, grad64 in zip(present, grads, grads64, strict=True):
            check.close(f"{case.name} [{path}] d{name}", grad, grad64, units[name])


# ------------------------------------------------------------------------------------------------ the binary loss


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("dtype", peers.DTYPES, ids=DTYPE_IDS)
def test_pytorch_bce_with_logits_inputs(torch_inputs, dtype, eps):
    """PyTorch's OpInfo samples of nn.functional.binary_cross_entropy_with_logits and module inputs of
    nn.BCEWithLogitsLoss: ours is that very call on the smoothed target ``t·(1−ε) + ε/2``, so value and gradients
    (of the logits and of the target) are bit for bit PyTorch's, h_pq and h_uq its calls on t and on ½."""
    failures = []
    for case in peers.pytorch_bce_cases(torch_inputs, dtype):
        x, target = case.input.clone().requires_grad_(), case.target.clone().requires_grad_()
        x2, target2 = case.input.clone().requires_grad_(), case.target.clone().requires_grad_()
        kw = case.kwargs
        weight, pos_weight = kw.get("weight"), kw.get("pos_weight")
        got = binary_label_smoothed_cross_entropy(
            x, target, eps, weight=weight, pos_weight=pos_weight, reduction=kw.get("reduction", "mean")
        )
        expected = F.binary_cross_entropy_with_logits(x2, target2 * (1 - eps) + eps / 2, **kw)
        terms = [
            F.binary_cross_entropy_with_logits(x2.detach(), t, **kw)
            for t in (target2.detach(), torch.full_like(target2, 0.5))
        ]
        g = torch.rand(expected.shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
        grads = torch.autograd.grad(got.loss, (x, target), g)
        grads2 = torch.autograd.grad(expected, (x2, target2), g)
        for what, a, b in (
            ("loss", got.loss, expected),
            ("h_pq", got.h_pq, terms[0]),
            ("h_uq", got.h_uq, terms[1]),
            ("d input", grads[0], grads2[0]),
            ("d target", grads[1], grads2[1]),
        ):
            if a.dtype != b.dtype or not torch.equal(a, b):
                failures.append(f"{case.name} ε={eps} {what}: {a.flatten()[:3].tolist()} vs {b.flatten()[:3].tolist()}")
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------- bugs these inputs found (now fixed)


@pytest.mark.parametrize("path", PATHS)
def test_negative_class_weights_divide_the_mean_like_pytorch(torch_inputs, path):
    """The class weights of OpInfo's samples and nn.CrossEntropyLoss's module inputs are ``make_tensor`` values in
    [−9, 9]: where Σ w_y over the counted positions was negative, our mean divided by 1 instead (the guard that makes
    the mean over nothing counted 0 took every non-positive sum for zero). Their inputs with a negative sum (float32
    and float64, each run in float64 here), and one written out."""
    cases = [
        case
        for dtype in peers.DTYPES
        for case in peers.pytorch_cross_entropy_cases(torch_inputs, dtype)
        if case.kwargs.get("reduction") == "mean"
        and case.kwargs.get("weight") is not None
        and not case.target.is_floating_point()
        and float(case.kwargs["weight"][case.target].sum()) < 0
    ]
    assert cases, "PyTorch's samples no longer hold a negative total weight"
    x = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], dtype=torch.float64)
    weight = torch.tensor([-0.5, 4.0, -7.0], dtype=torch.float64)
    cases.append(peers.Case("written out", x, torch.tensor([0, 2]), 0.1, {"weight": weight}))
    _run(cases, (path,), torch.float64, "negative total weight")


_INF = float("inf")


def _minus_inf_cases() -> list[tuple[str, Tensor, Tensor, dict[str, Any]]]:
    """Logits with −inf (a masked class) where PyTorch's loss is finite or +inf and ours was NaN."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    target = torch.tensor([0, 3, 1, 4])
    masked = x.clone()
    masked[0, 1] = -_INF  # not the label: H(u,q) is infinite, H(p,q) is not
    at_label = x.clone()
    at_label[1, 3] = -_INF  # the label's: both are infinite (lerp made inf + ε·(inf − inf) = NaN)
    ignored = target.clone()
    ignored[0] = -100
    spread = torch.tensor([[3e38, -3e38, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    return [
        ("−inf logit", masked, target, {}),
        ("−inf logit, none", masked, target, {"reduction": "none"}),
        ("−inf logit, weights", masked, target, {"weight": torch.rand(5, generator=gen, dtype=torch.float64)}),
        ("−inf logit at the label", at_label, target, {}),
        ("−inf logit in an ignored row", masked, ignored, {}),
        ("−inf logit in an ignored row, none", masked, ignored, {"reduction": "none"}),
        ("ignored row of −inf", torch.cat([torch.full((1, 5), -_INF, dtype=torch.float64), x[1:]]), ignored, {}),
        ("float32 logits 6e38 apart", spread.float(), torch.tensor([1, 0]), {}),
    ]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("eps", [0.0, 0, 0.1, "tensor 0", "tensor 0.1"])
def test_minus_inf_logits_like_pytorch(path, eps):
    """−inf logits (masked classes, padded vocabularies): at ε = 0 PyTorch's loss is the plain cross-entropy (it adds
    no smoothing term), ours was 0·inf = NaN; an ignored row holding a −inf logit counts 0 in PyTorch (masked) and
    made ours NaN (multiplied by 0); a −inf at the label, or logits whose difference overflows, give PyTorch inf and
    gave ours NaN (``lerp``). The gradients, finite in PyTorch, agree too (NaN where PyTorch's is)."""
    e = torch.tensor(float(eps[7:]), dtype=torch.float64) if isinstance(eps, str) else eps
    for name, x, target, kwargs in _minus_inf_cases():
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_(path != "no_grad")
        expected = F.cross_entropy(x1, target, label_smoothing=float(e), **kwargs)
        with _path(path):
            got = label_smoothed_cross_entropy(x2, target, e.to(x.dtype) if isinstance(e, Tensor) else e, **kwargs)
        torch.testing.assert_close(got.loss, expected, equal_nan=True, msg=lambda m, name=name: f"{name}: {m}")
        if path != "no_grad" and x.dtype == torch.float64:
            (grad,) = torch.autograd.grad(got.loss.sum(), x2)
            (grad_expected,) = torch.autograd.grad(expected.sum(), x1)
            torch.testing.assert_close(grad, grad_expected, equal_nan=True, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("path", PATHS)
def test_integer_epsilon(path):
    """Liger writes ``label_smoothing=0`` (an int); PyTorch takes ints: our short path raised AttributeError."""
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, -100])
    for eps in (0, 1):
        with _path(path):
            got = label_smoothed_cross_entropy(x, target, eps).loss
        torch.testing.assert_close(got, F.cross_entropy(x, target, label_smoothing=eps))


# ----------------------------------------------------------- where we differ from PyTorch on purpose (documented)


def _nothing_counted() -> list[tuple[str, Tensor, Tensor, dict[str, Any]]]:
    """test_nn.py's inputs whose mean PyTorch makes NaN: test_nll_loss_all_ignored and _total_weight_is_zero (ones of
    shape [2, 3], [2, 3, 5, 7], [2, 3, 5, 7, 9], targets 0, ignore_index 0 or a zero weight),
    test_nll_loss_empty_tensor_reduction_mean (shapes [0, 3], [0, 3, 5, 7], [2, 3, 0, 7], [2, 3, 5, 0],
    [2, 3, 5, 7, 0]), an empty batch of probability targets, and counted positions whose class weights are 0 while
    the other classes' are not, or cancel (Σ w_y = 0: PyTorch ±inf or NaN)."""
    cases = []
    for shape in ([2, 3], [2, 3, 5, 7], [2, 3, 5, 7, 9]):
        x, target = torch.ones(shape, dtype=torch.float64), torch.zeros(shape[:1] + shape[2:], dtype=torch.long)
        cases.append((f"all ignored {shape}", x, target, {"ignore_index": 0}))
        cases.append((f"total weight zero {shape}", x, target, {"weight": torch.zeros(3, dtype=torch.float64)}))
    for shape in ([0, 3], [0, 3, 5, 7], [2, 3, 0, 7], [2, 3, 5, 0], [2, 3, 5, 7, 0]):
        x = torch.rand(shape, dtype=torch.float64)
        cases.append((f"empty {shape}", x, torch.zeros(shape[:1] + shape[2:], dtype=torch.long), {}))
    cases.append(("empty probabilities [0, 3]", torch.rand(0, 3, dtype=torch.float64), torch.rand(0, 3), {}))
    x = torch.randn(4, 3, dtype=torch.float64)
    zero_counted, cancelling = torch.tensor([0.0, 1.0, 0.0]).double(), torch.tensor([1.0, -1.0, 2.0]).double()
    cases.append(("counted weights 0", x, torch.tensor([0, 0, 2, 2]), {"weight": zero_counted}))
    cases.append(("weights cancel", x, torch.tensor([0, 1, 0, 1]), {"weight": cancelling}))
    return cases


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_mean_over_nothing_counted_is_zero(path, eps):
    """PyTorch's mean over a zero total weight is NaN (±inf); ours is 0 with zero gradient, so that one rank's batch
    of padding does not poison a DDP all-reduce. ``sum`` and ``none`` are PyTorch's."""
    for name, x, target, kwargs in _nothing_counted():
        target = target.double() if name.startswith("empty probabilities") else target
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_(path != "no_grad")
        assert not torch.isfinite(F.cross_entropy(x1, target, label_smoothing=eps, **kwargs)), name
        with _path(path):
            got = label_smoothed_cross_entropy(x2, target, eps, **kwargs).loss
        assert got.item() == 0, name
        if path != "no_grad":
            assert not torch.autograd.grad(got, x2)[0].any(), name
        for reduction in ("sum", "none"):
            expected = F.cross_entropy(x1, target, label_smoothing=eps, reduction=reduction, **kwargs)
            with _path(path):
                got = label_smoothed_cross_entropy(x2, target, eps, reduction=reduction, **kwargs).loss
            torch.testing.assert_close(got, expected, msg=lambda m, label=f"{name}, {reduction}": f"{label}: {m}")


def test_epsilon_outside_the_unit_interval_is_refused():
    """test_nn.py's test_cross_entropy_label_smoothing_errors inputs (N, C = 3, 4, class indices and probabilities):
    at ε = 1.2 PyTorch raises RuntimeError, ours ValueError naming the argument; at ε = −0.1 PyTorch computes the
    unsmoothed loss without a word, ours refuses it too."""
    gen = torch.Generator().manual_seed(0)
    for target in (torch.arange(0, 4)[:3], torch.randn(3, 4, generator=gen)):
        x = torch.randn(3, 4, generator=gen)
        with pytest.raises(RuntimeError, match=r"label_smoothing must be between 0\.0 and 1\.0"):
            F.cross_entropy(x, target, label_smoothing=1.2)
        torch.testing.assert_close(F.cross_entropy(x, target, label_smoothing=-0.1), F.cross_entropy(x, target))
        for eps in (1.2, -0.1):
            with pytest.raises(ValueError, match=r"`label_smoothing` to be in \[0, 1\]"):
                label_smoothed_cross_entropy(x, target, eps)


def test_integer_targets_of_any_width():
    """test_nn.py's test_nll_loss_byte_target_matches_long input (N, C = 10, 4): uint8 targets give PyTorch's result;
    int32, int16 and int8, which PyTorch refuses ("expected target dtype to be Long or Byte"), the int64 result."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (10,), generator=gen)
    expected = F.cross_entropy(x, target, label_smoothing=0.1, reduction="none")
    for dtype in (torch.uint8, torch.int32, torch.int16, torch.int8):
        if dtype == torch.uint8:
            torch.testing.assert_close(
                F.cross_entropy(x, target.to(dtype), label_smoothing=0.1, reduction="none"), expected
            )
        else:
            with pytest.raises(RuntimeError, match="expected target dtype to be Long or Byte"):
                F.cross_entropy(x, target.to(dtype))
        got = label_smoothed_cross_entropy(x, target.to(dtype), 0.1, reduction="none").loss
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gives_float32(dtype):
    """Liger's bfloat16 inputs (randn(B·T, V), here (4, 1000)): PyTorch's result has the input's dtype, ours is
    float32, the loss of the same values computed in float32 (the gradient keeps the input's dtype, as PyTorch's)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1000, generator=gen).to(dtype).requires_grad_()
    target = torch.randint(0, 1000, (4,), generator=gen)
    assert F.cross_entropy(x, target, label_smoothing=0.1).dtype == dtype
    for path in PATHS:
        with _path(path):
            got = label_smoothed_cross_entropy(x, target, 0.1)
        assert got.loss.dtype == torch.float32
        expected = F.cross_entropy(x.detach().float(), target, label_smoothing=0.1)
        torch.testing.assert_close(got.loss, expected)
        if path != "no_grad":
            assert torch.autograd.grad(got.loss, x)[0].dtype == dtype


def test_probability_target_zero_at_a_minus_inf_logit():
    """A probability target that is 0 where the logit is −inf: PyTorch's smoothed target is ε/C > 0 there, its loss
    inf; ours is (1 − ε)·h_pq + ε·h_uq with h_pq PyTorch's own ε = 0 call, which is 0·(−inf) = NaN."""
    x = torch.tensor([[0.0, -_INF, 1.0], [0.5, 0.2, 0.1]], dtype=torch.float64)
    target = torch.tensor([[0.3, 0.0, 0.7], [0.2, 0.3, 0.5]], dtype=torch.float64)
    assert torch.isnan(F.cross_entropy(x, target)) and F.cross_entropy(x, target, label_smoothing=0.1) == _INF
    out = label_smoothed_cross_entropy(x, target, 0.1)
    assert torch.isnan(out.loss) and torch.isnan(out.h_pq) and out.h_uq == _INF


def test_probability_targets_refuse_ignore_index():
    """test_nn.py's "ignore_index is not supported for floating point target": PyTorch raises RuntimeError, ours
    ValueError naming the argument (the house rule for bad input)."""
    x, probabilities = torch.randn(3, 4), torch.rand(3, 4)
    with pytest.raises(RuntimeError, match="ignore_index is not supported"):
        F.cross_entropy(x, probabilities, ignore_index=1)
    with pytest.raises(ValueError, match="`ignore_index`"):
        label_smoothed_cross_entropy(x, probabilities, ignore_index=1)


def test_binary_target_outside_the_unit_interval_is_refused(torch_inputs):
    """The module inputs of nn.BCEWithLogitsLoss with a target moved out of [0, 1]: PyTorch computes a loss, ours
    raises ValueError naming the target."""
    _, x, target, _ = torch_inputs["module_bce/float64"][0]
    for bad in (target + 1, target - 1):
        assert torch.isfinite(F.binary_cross_entropy_with_logits(x, bad))
        with pytest.raises(ValueError, match="`target` to hold values in \\[0, 1\\]"):
            binary_label_smoothed_cross_entropy(x, bad, 0.1)
