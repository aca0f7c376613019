"""The accelerator checks of the fused loss, as one script for a session that has a GPU.

1. Correctness against PyTorch on the device, float32 and bfloat16 logits (float64 reference on the same device):
   loss, both terms and the gradient, with ignore_index, class weights, a prior and (N, C, d) input.
2. No host synchronisation in a training step's loss + stats + calibration update (CUDA's sync debug mode).
3. Forward + backward time and peak extra memory against ``F.cross_entropy(label_smoothing=0.1)`` at 8192×32000
   and 4096×128000, float32 and bfloat16; CUDA events, median of interleaved runs.
4. The fused linear + loss (``linear_label_smoothed_cross_entropy``): correctness against a float64 materialising
   reference, then time and peak extra memory at 8192 × 4096 → 128000 in bfloat16 against materialising the logits
   (``F.cross_entropy(F.linear(h, W), y, label_smoothing=0.1)``) and, where installed, the peers of ``peers.py``:
   Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` with the same ε, and cut-cross-entropy (its ``cce`` Triton
   kernels and its ``torch_compile`` implementation), which has no label smoothing, beside ours at ε = 0.

    python benchmarks/gpu.py                 # on a CUDA machine; exits 1 if a correctness check fails
    python benchmarks/gpu.py --device cpu --small   # the same code path checked on the CPU, with small shapes
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ls_lightning.losses import (
    label_smoothed_cross_entropy,
    label_smoothed_cross_entropy_with_stats,
    linear_label_smoothed_cross_entropy,
)
from ls_lightning.metrics import BinnedCalibrationError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # beside this script

EPS = 0.1
# Tolerances against a float64 reference: float32 accumulates in float32, bfloat16 inputs are exact in float32.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-4, torch.float16: 1e-4}


def _check(name: str, got: torch.Tensor, expected: torch.Tensor, tol: float, failures: list[str]) -> None:
    err = ((got.double() - expected.double()).abs().max() / expected.double().abs().max().clamp(min=1.0)).item()
    status = "ok" if err <= tol else "FAIL"
    print(f"  {name:<46} max rel err {err:9.2e}  {status}")
    if err > tol:
        failures.append(name)


def correctness(device: torch.device) -> list[str]:
    failures: list[str] = []
    gen = torch.Generator().manual_seed(0)
    cases = [((512, 1000), {}), ((64, 300, 5), {}), ((512, 1000), {"weight": True}), ((512, 1000), {"prior": True})]
    for dtype in (torch.float32, torch.bfloat16):
        for shape, extra in cases:
            c = shape[1]
            x64 = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
            target = torch.randint(0, c, (shape[0], *shape[2:]), generator=gen)
            target.view(-1)[::7] = -100
            weight = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5 if extra.get("weight") else None
            prior = torch.softmax(torch.randn(c, generator=gen, dtype=torch.float64), 0) if extra.get("prior") else None
            x = x64.to(device=device, dtype=dtype).requires_grad_()
            xr = x.detach().double().requires_grad_()  # the reference sees exactly the rounded inputs
            t, w = target.to(device), None if weight is None else weight.to(device)
            p = None if prior is None else prior.to(device)
            out = label_smoothed_cross_entropy(x, t, EPS, weight=None if w is None else w.to(torch.float32), prior=p)
            if p is None:
                ref = F.cross_entropy(xr, t, weight=w, label_smoothing=EPS)
                ref_pq = F.cross_entropy(xr, t, weight=w)
            else:  # soft-target oracle for the prior: (1 − ε)·onehot + ε·u over the non-ignored positions
                keep = t != -100
                soft = (1 - EPS) * F.one_hot(t.clamp(min=0), c).double() + EPS * p
                rows = xr.log_softmax(1)
                ref = -(soft * rows).sum(1)[keep].mean()
                ref_pq = F.cross_entropy(xr, t)
            label = f"{str(dtype).split('.')[-1]} {shape} {'+'.join(extra) or 'plain'}"
            tol = TOLERANCE[dtype]
            _check(f"{label} loss", out.loss, ref, tol, failures)
            _check(f"{label} h_pq", out.h_pq, ref_pq, tol, failures)
            (g,) = torch.autograd.grad(out.loss, x)
            (g_ref,) = torch.autograd.grad(ref, xr)
            _check(f"{label} grad", g.float(), g_ref, tol * 10 if dtype != torch.float32 else tol, failures)
            assert out.loss.dtype == torch.float32, out.loss.dtype
    return failures


def no_sync(device: torch.device) -> list[str]:
    if device.type != "cuda":
        print("  (sync debug mode needs CUDA: skipped)")
        return []
    x = torch.randn(4096, 32000, device=device, requires_grad=True)
    target = torch.randint(0, 32000, (4096,), device=device)
    metric = BinnedCalibrationError().to(device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, stats = label_smoothed_cross_entropy_with_stats(x, target, EPS)
        out.loss.backward()
        metric.update(stats.confidence, stats.correct, weight=stats.valid)
    except RuntimeError as err:
        return [f"host sync in the training step: {err}"]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    print("  loss + stats + backward + calibration update: no host sync  ok")
    return []


def _ours(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return label_smoothed_cross_entropy(x, target, EPS).loss


def _theirs(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(x, target, label_smoothing=EPS)


def _fwd_bwd(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, target: torch.Tensor) -> None:
    loss(x, target).backward()
    x.grad = None


def _time_ms(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    begin = time.perf_counter()
    fn()
    return (time.perf_counter() - begin) * 1e3


def _peak_extra(fn: Callable[[], None], device: torch.device, logits_bytes: int) -> float:
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / logits_bytes


def speed(device: torch.device, shapes: list[tuple[int, int]], repeats: int) -> None:
    print(f"  {'shape':>12} {'dtype':>8} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} {'ours mem':>9} {'torch mem':>9}")
    for n, c in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(n, c, device=device, dtype=dtype, requires_grad=True)
            target = torch.randint(0, c, (n,), device=device)

            ours = functools.partial(_fwd_bwd, _ours, x, target)
            theirs = functools.partial(_fwd_bwd, _theirs, x, target)
            ours(), theirs()  # warm-up (and the caching allocator's pools)
            times: dict[str, list[float]] = {"ours": [], "torch": []}
            for _ in range(repeats):
                times["ours"].append(_time_ms(ours, device))
                times["torch"].append(_time_ms(theirs, device))
            t_ours, t_ref = statistics.median(times["ours"]), statistics.median(times["torch"])
            logits_bytes = x.numel() * x.element_size()
            m_ours, m_ref = _peak_extra(ours, device, logits_bytes), _peak_extra(theirs, device, logits_bytes)
            label = str(dtype).split(".")[-1]
            print(
                f"  {f'{n}×{c}':>12} {label:>8} {t_ours:9.3f} {t_ref:9.3f} {t_ours / t_ref:6.2f}"
                f" {m_ours:8.2f}× {m_ref:8.2f}×"
            )


def linear_correctness(device: torch.device) -> list[str]:
    """The fused linear loss against F.cross_entropy of the materialised logits, in float64 on the device."""
    failures: list[str] = []
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        h64 = torch.randn(4, 300, 64, generator=gen, dtype=torch.float64)
        w64 = torch.randn(5000, 64, generator=gen, dtype=torch.float64) / 8
        b64 = torch.randn(5000, generator=gen, dtype=torch.float64)
        target = torch.randint(0, 5000, (4, 300), generator=gen)
        target[:, ::9] = -100
        h, w, b = (t.to(device=device, dtype=dtype).requires_grad_() for t in (h64, w64, b64))
        hr, wr, br = (t.detach().double().requires_grad_() for t in (h, w, b))  # exactly the rounded inputs
        t = target.to(device)
        out = linear_label_smoothed_cross_entropy(h, w, t, EPS, linear_bias=b)
        ref = F.cross_entropy(F.linear(hr, wr, br).reshape(-1, 5000), t.reshape(-1), label_smoothing=EPS)
        label = f"linear {str(dtype).split('.')[-1]} (4, 300, 64)→5000"
        tol = 1e-4 if dtype == torch.float32 else 2e-2  # bfloat16: the logits are rounded to bfloat16
        _check(f"{label} loss", out.loss, ref, tol, failures)
        for name, got, expected in zip(
            ("dh", "dW", "db"),
            torch.autograd.grad(out.loss, (h, w, b)),
            torch.autograd.grad(ref, (hr, wr, br)),
            strict=True,
        ):
            _check(f"{label} {name}", got.float(), expected, tol * 10, failures)
    return failures


def linear_speed(device: torch.device, shape: tuple[int, int, int], dtype: torch.dtype, repeats: int) -> None:
    """Forward + backward (gradients of h and W) of the fused linear loss, materialising, and Liger if installed."""
    n, d, v = shape
    h = torch.randn(n, d, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(v, d, device=device, dtype=dtype) / d**0.5).requires_grad_()
    y = torch.randint(0, v, (n,), device=device)
    variants: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "ours": lambda h, w, y: linear_label_smoothed_cross_entropy(h, w, y, EPS).loss,
        "materialising": lambda h, w, y: F.cross_entropy(F.linear(h, w), y, label_smoothing=EPS),
    }
    liger, note = peers.liger(device, EPS)
    print(f"  {note}")
    if liger is not None:
        variants["liger"] = liger
    for impl in ("cce", "torch_compile"):  # no label smoothing: beside ours at ε = 0
        cce, note = peers.cut_cross_entropy(device, impl)
        print(f"  {note}")
        if cce is not None:
            variants["ours ε=0"] = lambda h, w, y: linear_label_smoothed_cross_entropy(h, w, y, 0.0).loss
            variants[f"cce {impl} ε=0"] = cce

    def step(loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        loss(h, w, y).backward()
        h.grad = w.grad = None

    fns = {name: functools.partial(step, loss) for name, loss in variants.items()}
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_time_ms(fn, device))
    logits_bytes = n * v * h.element_size()
    grads_bytes = (h.numel() + w.numel()) * h.element_size()  # dh and dW: returned by any implementation
    label = f"{n}×{d}→{v} {str(dtype).split('.')[-1]}"
    ref = statistics.median(times["materialising"])
    for name, fn in fns.items():
        t = statistics.median(times[name])
        mem = _peak_extra(fn, device, logits_bytes) - grads_bytes / logits_bytes
        print(f"  {label:<28} {name:<22} {t:9.2f} ms  {t / ref:5.2f}× materialising  peak extra {mem:6.2f}× logits")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="small shapes (a check of the script itself)")
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}")
    print("1. correctness against PyTorch (float64 reference on the same device)")
    failures = correctness(device)
    print("2. host synchronisation")
    failures += no_sync(device)
    print("3. forward + backward time and peak extra memory (× the logits' size)")
    shapes = [(256, 4000), (128, 16000)] if args.small else [(8192, 32000), (4096, 128000)]
    speed(device, shapes, 3 if args.small else args.repeats)
    print("4. fused linear + loss: correctness, then forward + backward time and peak extra memory (less dh, dW)")
    failures += linear_correctness(device)
    linear_shape = (256, 64, 4000) if args.small else (8192, 4096, 128000)
    linear_speed(device, linear_shape, torch.bfloat16, 3 if args.small else args.repeats)
    if failures:
        print(f"FAILED: {failures}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
