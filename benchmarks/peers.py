"""Other fused linear + cross-entropy losses, loaded where installed, for the benchmarks to run beside ours.

Each loader returns ``(loss, note)``: ``loss(h, w, y)`` is the peer's forward (hidden states, output weight,
targets) or None when it cannot run here, and ``note`` says which implementation runs, at what ε, or why not.

- cut-cross-entropy (``pip install --no-deps cut-cross-entropy``): its ``torch_compile`` implementation on any
  device, its Triton ``cce`` kernels on CUDA. It has no label smoothing: it is compared at ε = 0. Its package
  ``__init__`` imports the Triton kernels, so without Triton (a CPU-only machine) the ``torch_compile`` module,
  which needs torch only, is loaded without that ``__init__``.
- Liger-Kernel (``LigerFusedLinearCrossEntropyLoss``, CUDA only): with ``label_smoothing``, the same ε as ours.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable

import torch

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _cce_torch_compile() -> Callable[..., torch.Tensor]:
    """``cut_cross_entropy.torch_compile.torch_compile_linear_cross_entropy``, with or without Triton installed."""
    try:
        return importlib.import_module("cut_cross_entropy").linear_cross_entropy
    except ImportError as err:
        if "triton" not in str(err):
            raise
    spec = importlib.util.find_spec("cut_cross_entropy")  # locates the package without running its __init__
    assert spec is not None and spec.submodule_search_locations is not None
    stub = types.ModuleType("cut_cross_entropy")
    stub.__path__ = list(spec.submodule_search_locations)
    saved = sys.modules.get("cut_cross_entropy")
    sys.modules["cut_cross_entropy"] = stub
    try:
        module = importlib.import_module("cut_cross_entropy.torch_compile")
    finally:
        if saved is None:
            del sys.modules["cut_cross_entropy"]
        else:
            sys.modules["cut_cross_entropy"] = saved
    compiled = module.torch_compile_linear_cross_entropy

    def call(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor, impl: str = "torch_compile") -> torch.Tensor:
        return compiled(e, c, targets)

    return call


def cut_cross_entropy(device: torch.device, impl: str = "torch_compile") -> tuple[Loss | None, str]:
    """cut-cross-entropy's ``linear_cross_entropy`` with ``impl`` ("torch_compile", or "cce" on CUDA), at ε = 0."""
    if importlib.util.find_spec("cut_cross_entropy") is None:
        return None, "cut-cross-entropy: not installed (pip install --no-deps cut-cross-entropy), skipped"
    if impl == "cce" and device.type != "cuda":
        return None, "cut-cross-entropy cce: Triton kernels need CUDA, skipped"
    try:
        linear_cross_entropy = _cce_torch_compile() if impl == "torch_compile" else _cce_triton()
    except Exception as err:  # an incompatible version: say why and go on with the other variants
        return None, f"cut-cross-entropy {impl}: cannot be loaded ({type(err).__name__}: {err}), skipped"

    def loss(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(h, w, y, impl=impl)

    return loss, f"cut-cross-entropy {impl}: no label smoothing, so compared at ε = 0 (with ours at ε = 0)"


def _cce_triton() -> Callable[..., torch.Tensor]:
    return importlib.import_module("cut_cross_entropy").linear_cross_entropy


def liger(device: torch.device, eps: float) -> tuple[Loss | None, str]:
    """Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss(label_smoothing=eps)``: the same ε as ours; CUDA only."""
    if device.type != "cuda":
        return None, "Liger-Kernel: Triton kernels for CUDA only, skipped"
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # type: ignore[import-not-found]
    except ImportError:
        return None, "Liger-Kernel: not installed (pip install liger-kernel), skipped"
    loss_fn = LigerFusedLinearCrossEntropyLoss(label_smoothing=eps)

    def loss(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = loss_fn(w, h, y)  # Liger takes the weight first
        return out[0] if isinstance(out, tuple) else out

    return loss, f"Liger-Kernel LigerFusedLinearCrossEntropyLoss: label_smoothing={eps}, the same ε as ours"
