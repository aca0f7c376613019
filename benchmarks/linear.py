"""Speed and memory of the fused linear + label-smoothed loss against materialising the logits, eager and compiled.

    python benchmarks/linear.py              # 4096×512→32000 and 1024×512→128000 (several minutes on 2 cores)
    python benchmarks/linear.py --small      # a quick check of the script itself
    python benchmarks/linear.py --chunk N --min-rows R   # the fused loss's chunk (default: the library's)

Forward + backward in float32 (gradients of the hidden states and the weight), ε = 0.1. Times are medians of
interleaved runs in one process. Memory is measured in a fresh process per variant: after one warm-up call (which
compiles where needed), the peak resident set is reset (``/proc/self/clear_refs``), one call is made, and its peak
(VmHWM) above the resident set before it, less the bytes of the gradients of the hidden states and the weight (which
any implementation must return), is reported as a multiple of the logits' float32 size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ls_lightning.functional import linear_label_smoothed_cross_entropy
from ls_lightning.losses import linear as _linear

EPS = 0.1
SHAPES = [(4096, 512, 32000), (1024, 512, 128000)]  # tokens × hidden → classes
SMALL_SHAPES = [(512, 64, 4000), (128, 64, 16000)]
VARIANTS = ("ours", "eager", "compiled")


def ours(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return linear_label_smoothed_cross_entropy(h, w, y, EPS).loss


def ours_capped(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """With a z-loss and soft-capping (Gemma 2's cap): memory probe only (``--memory-of '["ours-capped", ...]'``)."""
    return linear_label_smoothed_cross_entropy(h, w, y, EPS, z_loss=1e-4, softcap=30.0).loss


def materialising(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(h, w), y, label_smoothing=EPS)


def make(variant: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    if variant == "ours":
        return ours
    if variant == "ours-capped":
        return ours_capped
    if variant == "eager":
        return materialising
    return torch.compile(lambda h, w, y: F.cross_entropy(F.linear(h, w), y, label_smoothing=EPS))


def inputs(n: int, d: int, v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    h = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) / d**0.5).requires_grad_()
    return h, w, torch.randint(0, v, (n,))


def step(fn: Callable[..., torch.Tensor], h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> None:
    fn(h, w, y).backward()
    h.grad = w.grad = None


def times(n: int, d: int, v: int, repeats: int) -> dict[str, tuple[float, float]]:
    """(median, min) ms of forward + backward per variant, interleaved so that drifts in machine speed hit all."""
    h, w, y = inputs(n, d, v)
    fns = {name: make(name) for name in VARIANTS}
    for fn in fns.values():  # warm-up (and compilation)
        step(fn, h, w, y)
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            step(fn, h, w, y)
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: (statistics.median(t), min(t)) for name, t in samples.items()}


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def measure_memory(variant: str, n: int, d: int, v: int) -> float:
    """In this process: peak extra bytes of one forward + backward, less the gradients' bytes, / logits' bytes."""
    h, w, y = inputs(n, d, v)
    fn = make(variant)
    step(fn, h, w, y)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    base = _status("VmRSS")
    fn(h, w, y).backward()
    peak = _status("VmHWM") - base
    grads = sum(t.numel() * t.element_size() for t in (h.grad, w.grad) if t is not None)
    return (peak - grads) / (n * v * 4)


def memory(variant: str, n: int, d: int, v: int, chunk: int | None, min_rows: int | None) -> float:
    """:func:`measure_memory` in a fresh process."""
    args = [sys.executable, __file__, "--memory-of", json.dumps([variant, n, d, v])]
    if chunk:
        args += ["--chunk", str(chunk)]
    if min_rows:
        args += ["--min-rows", str(min_rows)]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="small shapes and few repeats (a check of the script)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=None, help="logits per chunk of the fused loss (CPU)")
    parser.add_argument("--min-rows", type=int, default=None, help="least rows per chunk of the fused loss")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # the subprocess of :func:`memory`
    args = parser.parse_args()
    if args.chunk:
        _linear.CHUNK_ELEMENTS = args.chunk
    if args.min_rows:
        _linear.MIN_CHUNK_ROWS = args.min_rows
    if args.memory_of:
        variant, n, d, v = json.loads(args.memory_of)
        print(measure_memory(variant, n, d, v))
        return
    shapes, repeats = (SMALL_SHAPES, 3) if args.small else (SHAPES, args.repeats)
    chunk = f"chunk={_linear.CHUNK_ELEMENTS} logits, ≥ {_linear.MIN_CHUNK_ROWS} rows"
    print(f"threads={torch.get_num_threads()}  {chunk}  ε={EPS}  float32, fwd+bwd")
    print(f"median of {repeats} interleaved runs; load average {os.getloadavg()[0]:.2f}")
    header = f"{'tokens×hidden→classes':>22} {'ours ms':>9} {'eager ms':>9} {'compiled ms':>11}"
    print(f"{header} {'/eager':>7} {'/compiled':>9}   peak extra memory / logits: ours, eager, compiled")
    for n, d, v in shapes:
        t = times(n, d, v, repeats)
        ours_ms, eager_ms, compiled_ms = t["ours"][0], t["eager"][0], t["compiled"][0]
        mem = (
            ""
            if args.no_memory
            else "  ".join(f"{memory(x, n, d, v, args.chunk, args.min_rows):.2f}" for x in VARIANTS)
        )
        print(
            f"{f'{n}×{d}→{v}':>22} {ours_ms:9.1f} {eager_ms:9.1f} {compiled_ms:11.1f} "
            f"{ours_ms / eager_ms:7.2f} {ours_ms / compiled_ms:9.2f}   {mem}"
        )


if __name__ == "__main__":
    main()
