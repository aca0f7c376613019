"""z-loss and logit soft-capping: every path of both losses and the module against a materialised reference (through
the mixin: tests/integration/test_mixin_zloss_softcap.py).

The reference applies ``c = s·tanh(z/s)`` with PyTorch ops and adds ``z_loss·logsumexp(c)²`` (reduced over the
counted positions, unweighted) to ``F.cross_entropy(c, ..., label_smoothing=ε)``; autograd gives its gradients.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_to_largest, linear_inputs, logits_and_target
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ls_lightning import LabelSmoothedCrossEntropy, linear_label_smoothed_cross_entropy
from ls_lightning.losses import (
    functional,
    label_smoothed_cross_entropy,
    label_smoothed_cross_entropy_with_stats,
    linear_label_smoothed_cross_entropy_with_stats,
)
from ls_lightning.losses.ops import fused as _fused
from ls_lightning.losses.ops import linear as _linear

C = 7
EPS = 0.3
Z = 0.05  # large enough that a missing or misplaced z term shows at float64 tolerance
SETTINGS = [(Z, None), (0.0, 2.5), (Z, 2.5)]
SETTING_IDS = ["z", "softcap", "z+softcap"]


# ---------------------------------------------------------------------------------------------------------- reference


def _cap(x: Tensor, softcap: float | None) -> Tensor:
    return x if softcap is None else softcap * torch.tanh(x / softcap)


def _z_term(c: Tensor, valid: Tensor, z_loss: float, reduction: str) -> Tensor:
    rows = z_loss * torch.logsumexp(c, 1) ** 2 * valid
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / valid.sum().clamp(min=1)


def _reference(
    x: Tensor,
    target: Tensor,
    eps: float,
    z_loss: float,
    softcap: float | None,
    reduction: str = "mean",
    weight: Tensor | None = None,
    prior: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, h_pq, h_uq): F.cross_entropy of the capped logits, plus the z term; priors via the soft-target oracle."""
    c = _cap(x, softcap)
    soft = target.is_floating_point()
    valid = torch.ones_like(c[:, 0]) if soft else (target != -100).to(c.dtype)
    if prior is None:
        kw = {"weight": weight, "reduction": reduction}
        terms = [F.cross_entropy(c, target, label_smoothing=e, **kw) for e in (eps, 0.0, 1.0)]
    else:
        terms = [_prior_oracle(c, target, e, prior, reduction) for e in (eps, 0.0, 1.0)]
    return terms[0] + _z_term(c, valid, z_loss, reduction), terms[1], terms[2]


def _prior_oracle(c: Tensor, target: Tensor, eps: float, prior: Tensor, reduction: str) -> Tensor:
    """Σ −((1−ε)·onehot + ε·u)·log softmax(c) per counted position (index targets, no weights)."""
    keep = target != -100
    y = torch.where(keep, target, 0)
    u = prior[y].movedim(-1, 1) if prior.dim() == 2 else prior.view(1, -1, *([1] * (c.dim() - 2)))
    smoothed = (1 - eps) * F.one_hot(y, c.shape[1]).movedim(-1, 1).to(c.dtype) + eps * u
    rows = -(smoothed * torch.log_softmax(c, 1)).sum(1) * keep
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / keep.sum().clamp(min=1)


def _assert_values_and_grads(out, ref, inputs, tol=1e-10):
    """Values of the three outputs, and the gradient of a random mix of them (the recomputing backward too)."""
    for got, expected in zip(out, ref, strict=True):
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    for mix in (False, True):
        coefs = [torch.rand_like(r) if mix else torch.ones_like(r) if i == 0 else None for i, r in enumerate(ref)]
        outs = [o for o, g in zip(out, coefs, strict=True) if g is not None]
        refs = [r for r, g in zip(ref, coefs, strict=True) if g is not None]
        grads = [g for g in coefs if g is not None]
        got = torch.autograd.grad(outs, inputs, grad_outputs=grads, retain_graph=True)
        expected = torch.autograd.grad(refs, inputs, grad_outputs=grads, retain_graph=True)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------- functional: paths


@pytest.fixture(params=["small", "kernel-softmax", "kernel-separate", "traced"])
def path(request, monkeypatch):
    """Each path of the functional: the few-op small path, the chunked kernel (3-row chunks, both per-chunk
    kernels), and the code torch.compile traces (run eagerly, as tests/losses/test_compile.py does)."""
    if request.param.startswith("kernel"):
        monkeypatch.setattr(functional, "SMALL_ELEMENTS", 0)
        monkeypatch.setattr(_fused, "CACHE_CHUNK_ELEMENTS", 3 * C)
        softmax = request.param == "kernel-softmax"
        monkeypatch.setattr(_fused, "SOFTMAX_MIN_CLASSES", 1 if softmax else 10**9)
    elif request.param == "traced":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    return request.param


@pytest.mark.parametrize(("z_loss", "softcap"), SETTINGS, ids=SETTING_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("shape", "weighted"), [((10, C), False), ((4, C, 3), True)], ids=["2-D", "3-D-weighted"])
def test_functional_matches_reference(path, z_loss, softcap, shape, reduction, weighted):
    x, target = logits_and_target(shape)
    weight = torch.rand(C, dtype=torch.float64) + 0.1 if weighted else None
    kw = {"weight": weight, "reduction": reduction}
    out = label_smoothed_cross_entropy(x, target, EPS, z_loss=z_loss, softcap=softcap, **kw)
    _assert_values_and_grads(out, _reference(x, target, EPS, z_loss, softcap, **kw), [x])


@pytest.mark.parametrize("kind", ["vector", "matrix"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_functional_priors(path, kind, reduction):
    x, target = logits_and_target((10, C, 2))
    gen = torch.Generator().manual_seed(3)
    prior = torch.softmax(torch.randn((C, C) if kind == "matrix" else (C,), generator=gen, dtype=torch.float64), -1)
    out = label_smoothed_cross_entropy(x, target, EPS, prior=prior, reduction=reduction, z_loss=Z, softcap=2.5)
    _assert_values_and_grads(out, _reference(x, target, EPS, Z, 2.5, reduction, prior=prior), [x])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(10, C), (4, C, 3)], ids=["2-D", "3-D"])
def test_probability_targets(reduction, shape):
    """Soft targets take the composite path: every position counts in the z term's mean."""
    x, _ = logits_and_target(shape)
    p = torch.softmax(torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64), 1)
    out = label_smoothed_cross_entropy(x, p, EPS, reduction=reduction, z_loss=Z, softcap=2.5)
    _assert_values_and_grads(out, _reference(x, p, EPS, Z, 2.5, reduction), [x])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_and_zero_gradient(path, reduction):
    x, target = logits_and_target((6, C))
    target.fill_(-100)
    out = label_smoothed_cross_entropy(x, target, EPS, reduction=reduction, z_loss=Z, softcap=2.5)
    assert torch.equal(out.loss, torch.zeros_like(out.loss))
    (grad,) = torch.autograd.grad(out.loss.sum(), x)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_unbatched_input(path):
    x = torch.randn(C, dtype=torch.float64, requires_grad=True)
    target = torch.tensor(2)
    for reduction in ("mean", "none"):
        out = label_smoothed_cross_entropy(x, target, EPS, reduction=reduction, z_loss=Z, softcap=2.5)
        ref = _reference(x[None], target[None], EPS, Z, 2.5, reduction)
        torch.testing.assert_close(out.loss, ref[0].squeeze(0) if reduction == "none" else ref[0])


@pytest.mark.parametrize("shape", [(10, C), (4, C, 3)], ids=["2-D", "3-D"])
@pytest.mark.parametrize("grad", [False, True])
def test_stats_are_those_of_the_capped_logits(path, shape, grad):
    x, target = logits_and_target(shape)
    x.requires_grad_(grad)
    _, stats = label_smoothed_cross_entropy_with_stats(x, target, EPS, z_loss=Z, softcap=2.5)
    c = _cap(x.detach(), 2.5)
    q = torch.softmax(c, 1).movedim(1, -1).reshape(-1, C)
    y = target.reshape(-1)
    keep = y != -100
    onehot = F.one_hot(torch.where(keep, y, 0), C).double()
    torch.testing.assert_close(stats.confidence, q.max(1).values.float())
    assert torch.equal(stats.correct, q.argmax(1) == y)
    torch.testing.assert_close(stats.brier, ((q - onehot) ** 2).sum(1).float())
    z_rows = Z * torch.logsumexp(c, 1).reshape(-1) ** 2 * keep
    torch.testing.assert_close(stats.z_loss, z_rows.float())


def test_stats_without_a_z_loss_leave_the_field_empty(path):
    x, target = logits_and_target((10, C))
    _, stats = label_smoothed_cross_entropy_with_stats(x, target, EPS, softcap=2.5)
    assert stats.z_loss is not None and stats.z_loss.numel() == 0


def test_no_gradient_path(monkeypatch):
    """Validation: the fused pass without a gradient buffer gives the same values."""
    monkeypatch.setattr(functional, "SMALL_ELEMENTS", 0)
    x, target = logits_and_target((10, C))
    with torch.no_grad():
        out = label_smoothed_cross_entropy(x, target, EPS, z_loss=Z, softcap=2.5)
    ref = _reference(x.detach(), target, EPS, Z, 2.5)
    for got, expected in zip(out, ref, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_retain_graph_second_backward(monkeypatch):
    """The second backward recomputes the buffer: it must carry the z term and the cap's derivative again."""
    monkeypatch.setattr(functional, "SMALL_ELEMENTS", 0)
    x, target = logits_and_target((10, C))
    out = label_smoothed_cross_entropy(x, target, EPS, z_loss=Z, softcap=2.5)
    first = torch.autograd.grad(out.loss, x, retain_graph=True)[0]
    second = torch.autograd.grad(out.loss, x)[0]
    (expected,) = torch.autograd.grad(_reference(x, target, EPS, Z, 2.5)[0], x)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)


def test_default_arguments_change_nothing(path):
    """z_loss=0, softcap=None: the very same numbers as a call without them."""
    x, target = logits_and_target((4, C, 3))
    plain = label_smoothed_cross_entropy(x, target, EPS)
    explicit = label_smoothed_cross_entropy(x, target, EPS, z_loss=0.0, softcap=None)
    for a, b in zip(plain, explicit, strict=True):
        assert torch.equal(a, b)


def test_half_precision_kernel(monkeypatch):
    monkeypatch.setattr(functional, "SMALL_ELEMENTS", 0)
    x, target = logits_and_target((10, C, 2), dtype=torch.bfloat16)
    x_ref = x.detach().double().requires_grad_()
    out = label_smoothed_cross_entropy(x, target, EPS, z_loss=Z, softcap=2.5)
    ref = _reference(x_ref, target, EPS, Z, 2.5)[0]
    # measured against float64 on the same bfloat16 values: the loss to 7.7e-6 relative, the gradient's largest error
    # over its largest element 6.0e-3 (the cap c = s·tanh(z/s) is taken in bfloat16); tolerances 4 and 2.5 times that
    torch.testing.assert_close(out.loss.double(), ref, rtol=3e-5, atol=0.0)
    (got,) = torch.autograd.grad(out.loss, x)
    (expected,) = torch.autograd.grad(ref, x_ref)
    assert_close_to_largest(got.double(), expected, 1.5e-2)


# ---------------------------------------------------------------------------------------------------- torch.compile


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_fullgraph_no_recompilation_when_epsilon_changes(fresh_dynamo):
    """Inductor, one graph: values, gradients and the z term's stats equal the reference; a new ε (a tensor) does
    not recompile."""
    x, target = logits_and_target((4, C, 3))
    compiled = torch.compile(label_smoothed_cross_entropy_with_stats, fullgraph=True)
    for i, eps in enumerate((0.1, 0.4)):
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            out, stats = compiled(x, target, torch.tensor(eps, dtype=torch.float64), z_loss=Z, softcap=2.5)
        _assert_values_and_grads(out, _reference(x, target, eps, Z, 2.5), [x])
        c = _cap(x.detach(), 2.5)
        z_rows = Z * torch.logsumexp(c, 1).reshape(-1) ** 2 * (target.reshape(-1) != -100)
        torch.testing.assert_close(stats.z_loss, z_rows.float())


def test_compiled_linear_fullgraph(fresh_dynamo):
    """The custom op with z_loss and softcap: values and the gradients of input, weight and bias (the second
    reduction remakes the logits in backward); a new ε (a tensor) does not recompile."""
    h, w, b, target = _linear_data((9,))
    compiled = torch.compile(linear_label_smoothed_cross_entropy, backend="aot_eager", fullgraph=True)
    for reduction in ("mean", "none"):
        for i, eps in enumerate((0.1, 0.4)):
            e = torch.tensor(eps, dtype=torch.float64)
            with torch._dynamo.config.patch(error_on_recompile=i > 0):
                out = compiled(h, w, target, e, linear_bias=b, reduction=reduction, z_loss=Z, softcap=2.5)
            ref = _linear_reference(h, w, b, target, eps, Z, 2.5, reduction)
            _assert_values_and_grads(out, ref, [h, w, b])


# ----------------------------------------------------------------------------------------------- fused linear loss

V, D = 11, 6


def _linear_data(shape):
    return linear_inputs(shape, V, D, weight_scale=1.5)


def _linear_reference(h, w, b, target, eps, z_loss, softcap, reduction="mean", weight=None, prior=None):
    logits = F.linear(h, w, b).reshape(-1, V)
    out = _reference(logits, target.reshape(-1), eps, z_loss, softcap, reduction, weight, prior)
    return tuple(t.view(target.shape) for t in out) if reduction == "none" else out


@pytest.fixture(params=[1, 3, 1000], ids=["1-row-chunks", "3-row-chunks", "one-chunk"])
def chunks(request, monkeypatch):
    monkeypatch.setattr(_linear, "LINEAR_CHUNK_ELEMENTS", request.param * V)
    monkeypatch.setattr(_linear, "MIN_CHUNK_ROWS", 1)
    return request.param


@pytest.fixture(params=["softmax-kernel", "separate-ops"])
def kernel(request, monkeypatch):
    monkeypatch.setattr(_fused, "SOFTMAX_MIN_CLASSES", 1 if request.param == "softmax-kernel" else 10**9)


@pytest.mark.parametrize(("z_loss", "softcap"), SETTINGS, ids=SETTING_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("shape", "weighted"), [((9,), False), ((2, 5), True)], ids=["2-D", "3-D-weighted"])
def test_linear_matches_materialised_logits(chunks, z_loss, softcap, shape, reduction, weighted):
    h, w, b, target = _linear_data(shape)
    weight = torch.rand(V, dtype=torch.float64) + 0.1 if weighted else None
    kw = {"reduction": reduction, "weight": weight}
    out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b, z_loss=z_loss, softcap=softcap, **kw)
    _assert_values_and_grads(out, _linear_reference(h, w, b, target, EPS, z_loss, softcap, **kw), [h, w, b])


@pytest.mark.parametrize("kind", ["vector", "matrix"])
def test_linear_priors(chunks, kernel, kind):
    h, w, b, target = _linear_data((9,))
    gen = torch.Generator().manual_seed(3)
    prior = torch.softmax(torch.randn((V, V) if kind == "matrix" else (V,), generator=gen, dtype=torch.float64), -1)
    out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b, prior=prior, z_loss=Z, softcap=2.5)
    _assert_values_and_grads(out, _linear_reference(h, w, b, target, EPS, Z, 2.5, prior=prior), [h, w, b])


@pytest.mark.parametrize("far", [False, True])
@pytest.mark.parametrize("prior", [False, True])
def test_linear_loss_only_cpu_pass_with_z_loss(chunks, kernel, far, prior):
    """The CPU training pass (the loss alone, in place; many-class kernel) takes lse from the label's probability;
    in float32 a label logit 200 below the top makes that underflow, and its block falls back to the full pass."""
    h, w, b, target = _linear_data((9,))
    h, w, b = (t.detach().float().requires_grad_() for t in (h, w, b))
    if far:
        with torch.no_grad():
            h[4] = 0.0
            h[4, 0] = 1.0
            w[:, 0] = 0.0
            w[target[4], 0] = -100.0
            w[(target[4] + 1) % V, 0] = 100.0
    u = torch.softmax(torch.randn(V, generator=torch.Generator().manual_seed(3)), 0) if prior else None
    out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b, prior=u, z_loss=1e-3)
    hr, wr, br = (t.detach().double().requires_grad_() for t in (h, w, b))
    ref = _linear_reference(hr, wr, br, target, EPS, 1e-3, None, prior=None if u is None else u.double())
    torch.testing.assert_close(out.loss.double(), ref[0], rtol=1e-5, atol=1e-5)
    expected = torch.autograd.grad(ref[0], (hr, wr, br))
    for got, e in zip(torch.autograd.grad(out.loss, (h, w, b)), expected, strict=True):
        torch.testing.assert_close(got.double(), e, rtol=1e-4, atol=1e-5)


def test_linear_stats_and_no_gradient(chunks, kernel):
    h, w, b, target = _linear_data((9,))
    with torch.no_grad():
        out, stats = linear_label_smoothed_cross_entropy_with_stats(
            h, w, target, EPS, linear_bias=b, z_loss=Z, softcap=2.5
        )
    ref = _linear_reference(h.detach(), w.detach(), b.detach(), target, EPS, Z, 2.5)
    torch.testing.assert_close(out.loss, ref[0], rtol=1e-10, atol=1e-10)
    c = _cap(F.linear(h, w, b).detach(), 2.5)
    q = torch.softmax(c, 1)
    keep = target != -100
    onehot = F.one_hot(torch.where(keep, target, 0), V).double()
    torch.testing.assert_close(stats.confidence, q.max(1).values.float())
    assert torch.equal(stats.correct, q.argmax(1) == target)
    torch.testing.assert_close(stats.brier, ((q - onehot) ** 2).sum(1).float())
    torch.testing.assert_close(stats.z_loss, (Z * torch.logsumexp(c, 1) ** 2 * keep).float())


def test_linear_retain_graph_second_backward(chunks):
    h, w, b, target = _linear_data((9,))
    out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b, z_loss=Z, softcap=2.5)
    first = torch.autograd.grad(out.loss, (h, w, b), retain_graph=True)
    second = torch.autograd.grad(out.loss, (h, w, b))
    expected = torch.autograd.grad(_linear_reference(h, w, b, target, EPS, Z, 2.5)[0], (h, w, b))
    for a, c, e in zip(first, second, expected, strict=True):
        torch.testing.assert_close(a, e)
        torch.testing.assert_close(c, e)


class _LargestTensor(TorchFunctionMode):
    """The most elements that the memory of any tensor a torch function returns while active can hold (views count
    as the storage they see, so the expanded stand-in of the logits that the argument check uses counts as 1). The
    losses' kernels, backward included, are Python calls of torch functions, which this mode sees."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


@pytest.mark.parametrize(("z_loss", "softcap"), [(0.0, None), *SETTINGS], ids=["plain", *SETTING_IDS])
def test_linear_builds_no_logits_sized_tensor(monkeypatch, z_loss, softcap):
    """Forward and backward with 4-row chunks of 64 rows: no tensor larger than a chunk of logits (or the inputs)."""
    monkeypatch.setattr(_linear, "LINEAR_CHUNK_ELEMENTS", 4 * 50)
    monkeypatch.setattr(_linear, "MIN_CHUNK_ROWS", 1)
    h = torch.randn(64, 3, requires_grad=True)
    w = torch.randn(50, 3, requires_grad=True)
    target = torch.randint(0, 50, (64,))
    with _LargestTensor() as probe:
        out = linear_label_smoothed_cross_entropy(h, w, target, EPS, z_loss=z_loss, softcap=softcap)
        out.loss.backward()
    assert probe.largest <= 4 * 50  # the logits would be 64 × 50


# ------------------------------------------------------------------------------------------- module and arguments


def test_module_passes_z_loss_and_softcap():
    x, target = logits_and_target((10, C))
    criterion = LabelSmoothedCrossEntropy(EPS, reduction="sum", z_loss=Z, softcap=2.5)
    _assert_values_and_grads(criterion(x, target), _reference(x, target, EPS, Z, 2.5, "sum"), [x])
    assert "z_loss=0.05" in repr(criterion) and "softcap=2.5" in repr(criterion)


def _bad_calls():
    x, target = logits_and_target((4, C))
    h, w, _, t = _linear_data((4,))
    calls = []
    for name, value in (
        ("z_loss", -0.1),
        ("z_loss", float("nan")),
        ("z_loss", float("inf")),
        ("z_loss", True),
        ("z_loss", "0.1"),
        ("z_loss", None),
        ("softcap", 0.0),
        ("softcap", -1.0),
        ("softcap", float("inf")),
        ("softcap", False),
        ("softcap", "30"),
    ):
        kw = {name: value}
        calls += [
            (name, value, lambda kw=kw: label_smoothed_cross_entropy(x, target, **kw)),
            (name, value, lambda kw=kw: linear_label_smoothed_cross_entropy(h, w, t, **kw)),
            (name, value, lambda kw=kw: LabelSmoothedCrossEntropy(**kw)),
        ]
    return calls


@pytest.mark.parametrize("case", range(33))
def test_bad_arguments_name_the_argument_and_the_value(case):
    name, value, call = _bad_calls()[case]
    with pytest.raises(ValueError, match=f"`{name}`.*{value!r}".replace("(", r"\(").replace(")", r"\)")):
        call()


# ------------------------------------------------------------------------------------------------------------ mixin
