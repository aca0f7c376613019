"""The inputs that PyTorch and Liger-Kernel test their own cross-entropy with, for tests/losses/test_peer_inputs.py.

PyTorch's come from the functions of its installed test package (``torch.testing._internal``), called in a
subprocess (``python tests/peer_cases.py OUT``): importing that package disables ``torch.backends``' global flags for
the whole process (``torch.backends.disable_global_flags()``), after which ``L.Trainer`` cannot set
``torch.backends.cudnn.benchmark``, so it must not run in a pytest worker. It needs ``expecttest`` (the ``dev``
extra). The inputs of ``test/test_nn.py`` (not installed) and of Liger-Kernel's tests are restated here as data:
the same shapes, value ranges, options and reductions, drawn from our own seeded generator.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# ------------------------------------------------------------------------------------------------ PyTorch's own

# Written against the torch 2.13.0 CPU wheel (torch.version.git_version cf30153c4c131c8164ee7798e5022d810682e2cb):
# torch/testing/_internal/common_methods_invocations.py (sample_inputs_cross_entropy,
# sample_inputs_binary_cross_entropy_with_logits) and common_modules.py (module_inputs_torch_nn_CrossEntropyLoss,
# module_inputs_torch_nn_BCEWithLogitsLoss). test/test_nn.py is not in the wheel: read in pytorch/pytorch at commit
# 74f2fa66feec00335f72813782f4802e80bff4cb (class TestNNDeviceType).
DTYPES = (torch.float32, torch.float64)


def _generate(path: str) -> None:
    """Call PyTorch's input generators (CPU, float32 and float64, no gradient) and ``torch.save`` what they give:
    ``{source/dtype: [(name, input, target, kwargs)]}``. Runs in a subprocess (see the module's docstring)."""
    import random

    from torch.testing._internal.common_methods_invocations import (
        sample_inputs_binary_cross_entropy_with_logits,
        sample_inputs_cross_entropy,
    )
    from torch.testing._internal.common_modules import (
        module_inputs_torch_nn_BCEWithLogitsLoss,
        module_inputs_torch_nn_CrossEntropyLoss,
    )

    out: dict[str, Any] = {"git_version": torch.version.git_version}
    opinfo = {"cross_entropy": sample_inputs_cross_entropy, "bce": sample_inputs_binary_cross_entropy_with_logits}
    modules = {
        "cross_entropy": module_inputs_torch_nn_CrossEntropyLoss,
        "bce": module_inputs_torch_nn_BCEWithLogitsLoss,
    }
    for dtype in DTYPES:
        name = str(dtype).removeprefix("torch.")
        for loss, sample_inputs in opinfo.items():
            torch.manual_seed(0)
            random.seed(0)
            samples = sample_inputs(None, "cpu", dtype, False)
            out[f"opinfo_{loss}/{name}"] = [
                (f"sample {i}", s.input, s.args[0], dict(s.kwargs or {})) for i, s in enumerate(samples)
            ]
        for loss, module_inputs in modules.items():
            torch.manual_seed(0)
            random.seed(0)
            out[f"module_{loss}/{name}"] = [
                (m.desc, *m.forward_input.args, dict(m.constructor_input.kwargs))
                for m in module_inputs(None, "cpu", dtype, False, True)
            ]
    torch.save(out, f"{path}.part")
    os.replace(f"{path}.part", path)  # whole or not at all: a run cut short leaves no half-written file


def pytorch_inputs(folder: Path) -> dict[str, Any]:
    """PyTorch's generated inputs, made once into ``folder`` (a folder the pytest-xdist workers share) and loaded."""
    from filelock import FileLock

    path = folder / f"pytorch_inputs_{torch.version.git_version}.pt"
    with FileLock(f"{path}.lock"):
        if not path.exists():
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            done = subprocess.run([sys.executable, __file__, str(path)], capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"PyTorch's input generators failed (is `expecttest` installed?):\n{done.stderr}")
    return torch.load(path, weights_only=True)


# ------------------------------------------------------------------------------------ a loss call and its cases


class Case(NamedTuple):
    """One call of the multi-class loss: ``loss(input, target, eps, **kwargs, z_loss=..., softcap=...)``."""

    name: str
    input: Tensor
    target: Tensor
    eps: float = 0.0
    kwargs: dict[str, Any] = {}  # noqa: RUF012 (a NamedTuple's default: never mutated, each case passes its own)
    z_loss: float = 0.0
    softcap: float | None = None
    grad_scale: float = 1.0  # the output is multiplied by this before backward (Liger's "not last layer": 3)
    random_grad: bool = False  # backward with a random grad_output (Liger's rand_like), else ones


def pytorch_cross_entropy_cases(inputs: dict[str, Any], dtype: torch.dtype) -> list[Case]:
    """The OpInfo samples of ``nn.functional.cross_entropy``, each at ε = 0 (as given) and 0.15, and the module
    inputs of ``nn.CrossEntropyLoss`` with their own ε (0.15 in the ``label_smoothing`` cases)."""
    name = str(dtype).removeprefix("torch.")
    cases = []
    for label, x, target, kwargs in inputs[f"opinfo_cross_entropy/{name}"]:
        for eps in (0.0, 0.15):
            cases.append(Case(f"OpInfo {label} {_describe(kwargs)} ε={eps}", x, target, eps, kwargs))
    for desc, x, target, kwargs in inputs[f"module_cross_entropy/{name}"]:
        kw = dict(kwargs)
        eps = kw.pop("label_smoothing", 0.0)
        cases.append(Case(f"module {desc}", x, target, eps, kw))
    return cases


def _describe(kwargs: dict[str, Any]) -> str:
    return str({k: (f"{tuple(v.shape)} tensor" if isinstance(v, Tensor) else v) for k, v in kwargs.items()})


def nn_label_smoothing_cases(dtype: torch.dtype) -> list[Case]:
    """The inputs of test_nn.py's label-smoothing tests (TestNNDeviceType, at the commit above):

    - ``test_cross_entropy_label_smoothing_consistent_index_target_and_probs``: N, C = 10, 4 with k = 0..4 extra
      dimensions of sizes in [2, 5), every reduction, ε in (0.05, 0.15); the class indices, and the smoothed one-hot
      probabilities that test feeds PyTorch with ε = 0 (it asserts both give the same loss).
    - ``test_cross_entropy_label_smoothing_with_probs``: the same shapes, target ``log_softmax(randn)`` (negative
      "probabilities").
    - ``test_cross_entropy_label_smoothing_weight_ignore_indices``: its tensors verbatim, weight (0.3, 0.6) or none,
      ignore_index -100, -2 and 2 (= C), every reduction, and the input without its ignored row.
    """
    gen = torch.Generator().manual_seed(0)
    cases = []
    for k in range(5):
        dims = [int(torch.randint(2, 5, (1,), generator=gen)) for _ in range(k)]
        x = torch.randn(10, 4, *dims, generator=gen, dtype=torch.float64).to(dtype)
        index = torch.randint(0, 4, (10, *dims), generator=gen)
        log_probs = torch.randn(10, 4, *dims, generator=gen, dtype=torch.float64).log_softmax(1).to(dtype)
        for reduction in ("none", "mean", "sum"):
            for eps in (0.05, 0.15):
                kw = {"reduction": reduction}
                smoothed = F.one_hot(index, 4).movedim(-1, 1).to(dtype) * (1 - eps) + eps / 4
                cases.append(Case(f"consistent index k={k} {reduction} ε={eps}", x, index, eps, kw))
                cases.append(Case(f"consistent probs k={k} {reduction} ε={eps}", x, smoothed, 0.0, kw))
                cases.append(Case(f"with_probs k={k} {reduction} ε={eps}", x, log_probs, eps, kw))
    weight = torch.tensor([0.3, 0.6], dtype=dtype)
    inp1 = torch.tensor([[0.3, 0.4], [1, 2]], dtype=dtype)
    inp2 = torch.tensor([[0.3, 0.6], [1, 2]], dtype=dtype)
    for ignore_index, first in ((-100, -100), (-2, -2), (2, 2)):
        target = torch.tensor([first, 1])
        for reduction in ("none", "sum", "mean"):
            for eps in (0.05, 0.15):
                for w in (None, weight):
                    kw = {"reduction": reduction, "ignore_index": ignore_index, "weight": w}
                    label = f"weight_ignore_indices ignore={ignore_index} {reduction} ε={eps} w={w is not None}"
                    cases.append(Case(f"{label} inp1", inp1, target, eps, kw))
                    cases.append(Case(f"{label} inp2", inp2, target, eps, kw))
                    cases.append(Case(f"{label} inp2[1:]", inp2[1:], target[1:], eps, kw))
    return cases


# --------------------------------------------------------------------------------------------- Liger-Kernel's

# linkedin/Liger-Kernel at commit ead96b618e5c67bddc6a6e9bcb99bfe6b5ab661c: test/transformers/test_cross_entropy.py
# and test/transformers/test_fused_linear_cross_entropy.py.
# Their (B, T, V) are (2, 4096, 32000) ("llama") and (3, 423, 32000) ("weird shapes"; (2, 1024, 32000) in the
# not-last-layer tests): the vocabulary is kept, T is cut to 2 (the CPU pays per row; their choice of 1 to B·T/2 − 1
# ignored positions needs B·T ≥ 4).
LIGER_SHAPES = ((2, 2, 32000), (3, 2, 32000))
REDUCTIONS = ("sum", "mean", "none")
# (ignore_index, z_loss, ε, softcap) of their "with other params" tests
LIGER_OTHER = ((-100, 1e-4, 0.1, 30.0), (42, 1e-5, 0.2, 40.0))


def liger_cross_entropy_cases(dtype: torch.dtype) -> list[Case]:
    """The parametrisations of Liger's test_cross_entropy.py in float32/float64 (bfloat16 is left out): logits
    ``randn(B·T, V)·scalar`` with scalar 1.0, targets ``randint(0, V)``, and where the test ignores positions, a
    random 1 to B·T/2 − 1 of them set to ignore_index; class weights ``rand(V)``."""
    gen = torch.Generator().manual_seed(42)

    def case(test: str, shape: tuple[int, int, int], ignore: int | None = None, **options: Any) -> Case:
        b, t, v = shape
        x = torch.randn(b * t, v, generator=gen, dtype=dtype)
        target = torch.randint(0, v, (b * t,), generator=gen)
        if ignore is not None:
            count = int(torch.randint(1, b * t // 2, (1,), generator=gen))
            target[torch.randperm(b * t, generator=gen)[:count]] = ignore
            options.setdefault("kwargs", {})["ignore_index"] = ignore
        if options.pop("weighted", False):
            options.setdefault("kwargs", {})["weight"] = torch.rand(v, generator=gen, dtype=torch.float64).to(dtype)
        label = f"{test} {shape} " + " ".join(f"{k}={v}" for k, v in options.items() if k != "kwargs")
        kwargs = options.pop("kwargs", {})
        return Case(f"{label} {_describe(kwargs)}", x, target, kwargs=kwargs, **options)

    cases = []
    for shape in LIGER_SHAPES:
        for reduction in REDUCTIONS:
            kw = {"reduction": reduction}
            cases.append(case("test_correctness", shape, kwargs=dict(kw)))
            cases.append(case("with_ignore_index", shape, 2 if shape[0] == 2 else -123, kwargs=dict(kw)))
            cases.append(case("with_softcap", shape, kwargs=dict(kw), softcap=30.0))
            cases.append(case("with_weight", shape, kwargs=dict(kw), weighted=True))
            for ignore, z, eps, cap in LIGER_OTHER:
                opts = dict(kwargs=dict(kw), z_loss=z, eps=eps, softcap=cap, weighted=True)
                cases.append(case("with_weight_with_other_params", shape, ignore, **opts))
        cases.append(case("with_label_smoothing", shape, eps=0.1))
        ignore, eps = (1, 0.1) if shape[0] == 2 else (-300, 0.2)
        cases.append(case("with_label_smoothing_with_ignore_index", shape, ignore, eps=eps))
        for z in (1e-4, 1e-5):  # PaLM, Chameleon
            cases.append(case("with_z_loss", shape, z_loss=z))
            for eps, ignore, reduction in ((0.1, 42, "mean"), (0.2, -42, "sum")):
                opts = dict(kwargs={"reduction": reduction}, z_loss=z, eps=eps)
                cases.append(case("with_z_loss_with_other_params", shape, ignore, **opts))
        for reduction in ("sum", "mean"):
            kw = {"reduction": reduction}
            cases.append(case("not_last_layer", shape, kwargs=dict(kw), grad_scale=3.0, random_grad=True))
            for ignore, z, eps, cap in LIGER_OTHER:
                opts = dict(kwargs=dict(kw), z_loss=z, eps=eps, softcap=cap, grad_scale=3.0, random_grad=True)
                cases.append(case("not_last_layer_with_other_params", shape, ignore, **opts))
    for shape in ((2, 2, 8), (9, 7, 41)):  # test_correctness_functional, shapes verbatim
        opts = dict(kwargs={"reduction": "mean"}, z_loss=1e-4, eps=0.1, softcap=30.0, random_grad=True)
        cases.append(case("correctness_functional", shape, 0, **opts))
    return cases


class LinearCase(NamedTuple):
    """One call of the fused linear loss on hidden states ``h`` (M, H), weight ``w`` (V, H) and bias ``b``."""

    name: str
    h: Tensor
    w: Tensor
    b: Tensor | None
    target: Tensor
    eps: float
    kwargs: dict[str, Any]
    z_loss: float
    softcap: float | None
    random_grad: bool


# Their (B, T, H, V): (8, 128, 1024, 4096), cut to 8 rows (H and V kept: with rand(V, H) weights the logits have a
# spread of about √(H/3) ≈ 18), and (4, 47, 31, 123) verbatim.
LIGER_LINEAR_SHAPES = ((1, 8, 1024, 4096), (4, 47, 31, 123))


def liger_linear_cases(dtype: torch.dtype) -> list[LinearCase]:
    """test_fused_linear_cross_entropy.py's ``test_correctness`` (and ``_with_forward_only``: the same inputs) and
    ``test_correctness_functional``, in float32/float64.

    test_correctness: weight ``rand(V, H)``, bias ``rand(V)``, hidden ``randn(B·T, H)``, a random 1 to B·T/2 − 1
    positions set to ignore_index; mean and sum, with and without bias (the (V, H) = (4096, 1024) shape with bias
    only: each of its cases costs 0.1 s of W-sized passes), and the options (ce_weight, ε, ignore_index,
    z_loss, softcap) = (none, 0, −100, 0, none) or (``rand(V)``, 0.1, 42, 1e-4, 30.0). Their ε = 0 and z-loss 0 are
    the integers 0, kept as such. test_correctness_functional: (2, 2, 8, 8) and (9, 7, 41, 41), weight, bias and
    ce_weight from ``randn`` (negative class weights), ignore_index −100, z-loss 1e-4, ε 0.1, mean, softcap 30, a
    ``randn`` grad_output.
    """
    gen = torch.Generator().manual_seed(0)

    def rand(*size: int, normal: bool = False) -> Tensor:
        values = torch.randn(size, generator=gen, dtype=torch.float64) if normal else torch.rand(size, generator=gen)
        return values.to(dtype)

    cases = []
    options: tuple[tuple[bool, float, int, float, float | None], ...] = (
        (False, 0, -100, 0, None),
        (True, 0.1, 42, 1e-4, 30.0),
    )
    for b, t, hidden, v in LIGER_LINEAR_SHAPES:
        for reduction in ("mean", "sum"):
            for bias in (True, False) if hidden < 1024 else (True,):  # the large W: with a bias only (time)
                for weighted, eps, ignore, z, cap in options:
                    h, w = rand(b * t, hidden, normal=True), rand(v, hidden)
                    target = torch.randint(0, v, (b * t,), generator=gen)
                    count = int(torch.randint(1, b * t // 2, (1,), generator=gen))
                    target[torch.randperm(b * t, generator=gen)[:count]] = ignore
                    kw = {"reduction": reduction, "ignore_index": ignore, "weight": rand(v) if weighted else None}
                    label = f"test_correctness {(b, t, hidden, v)} {reduction} bias={bias} ε={eps} z={z} cap={cap}"
                    cases.append(LinearCase(label, h, w, rand(v) if bias else None, target, eps, kw, z, cap, False))
    for b, t, hidden, v in ((2, 2, 8, 8), (9, 7, 41, 41)):
        for bias in (True, False):
            for weighted in (True, False):
                h, w = rand(b * t, hidden, normal=True), rand(v, hidden, normal=True)
                bias_v = rand(v, normal=True) if bias else None
                target = torch.randint(0, v, (b * t,), generator=gen)
                kw = {"reduction": "mean", "ignore_index": -100, "weight": rand(v, normal=True) if weighted else None}
                label = f"correctness_functional {(b, t, hidden, v)} bias={bias} ce_weight={weighted}"
                cases.append(LinearCase(label, h, w, bias_v, target, 0.1, kw, 1e-4, 30.0, True))
    return cases


def liger_reference(
    logits: Tensor, target: Tensor, eps: float, kwargs: dict[str, Any], z_loss: float, softcap: float | None
) -> tuple[Tensor, Tensor]:
    """Liger-Kernel's reference loss and z-loss term (test_cross_entropy.py ``CrossEntropyWithZLoss`` on the
    soft-capped logits, as ``TorchLMHeadCE`` of test_fused_linear_cross_entropy.py feeds it), in the logits' dtype
    (theirs casts to float32): ``F.cross_entropy(c, ...)`` with ``c = softcap·tanh(z/softcap)``, plus
    ``z_loss·logsumexp(c)²`` at the counted positions, summed, or divided by their number for ``mean``."""
    c = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    ce = F.cross_entropy(c, target, label_smoothing=eps, **kwargs)
    counted = target != kwargs.get("ignore_index", -100)
    z = torch.where(counted, z_loss * torch.logsumexp(c, -1) ** 2, 0.0)
    reduction = kwargs.get("reduction", "mean")
    if reduction == "mean":
        z = z.sum() / counted.sum()
    elif reduction == "sum":
        z = z.sum()
    return ce + z, z


# ------------------------------------------------------------------------------------------- binary (BCE) cases


class BinaryCase(NamedTuple):
    name: str
    input: Tensor
    target: Tensor
    kwargs: dict[str, Any]


def pytorch_bce_cases(inputs: dict[str, Any], dtype: torch.dtype) -> list[BinaryCase]:
    """The OpInfo samples of ``nn.functional.binary_cross_entropy_with_logits`` (0-d to 3-d inputs, weights of
    shape (1,), (1, S), (S,), (S, S), pos_weight (S,)) and the module inputs of ``nn.BCEWithLogitsLoss`` (a (15, 10)
    input, a (10,) and a 0-d weight), targets as given (probabilities in [0, 1), or 0/1)."""
    name = str(dtype).removeprefix("torch.")
    cases = [
        BinaryCase(f"OpInfo {label} {tuple(x.shape)} {_describe(kw)}", x, target, kw)
        for label, x, target, kw in inputs[f"opinfo_bce/{name}"]
    ]
    cases += [
        BinaryCase(f"module {desc or 'default'}", x, target, kw) for desc, x, target, kw in inputs[f"module_bce/{name}"]
    ]
    return cases


if __name__ == "__main__":
    _generate(sys.argv[1])
