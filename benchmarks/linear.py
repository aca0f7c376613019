"""Speed and memory of the fused linear + label-smoothed loss against materialising the logits, eager and compiled.

    python benchmarks/linear.py              # 4096×512→32000 and 1024×512→128000 (several minutes on 2 cores)
    python benchmarks/linear.py --small      # a quick check of the script itself
    python benchmarks/linear.py --chunk N --min-rows R   # the fused loss's chunk (default: the library's)

Forward + backward in float32 (gradients of the hidden states and the weight), ε = 0.1: ours, the materialised
``F.cross_entropy(F.linear(h, W), y, label_smoothing=ε)`` eager and compiled and, where installed, the peers of
``peers.py`` beside them. cut-cross-entropy has no label smoothing: it runs at ε = 0, next to ours at ε = 0, and
the output says so. Times are medians of interleaved runs in one process. Memory is measured in a fresh process per
variant: after one warm-up call (which compiles where needed), the peak resident set is reset
(``/proc/self/clear_refs``), one call is made, and its peak (VmHWM) above the resident set before it, less the bytes
of the gradients of the hidden states and the weight (which any implementation must return), is reported as a
multiple of the logits' float32 size.
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

from ls_lightning.losses import linear_label_smoothed_cross_entropy
from ls_lightning.losses.ops import linear as _linear

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # beside this script

EPS = 0.1
SHAPES = [(4096, 512, 32000), (1024, 512, 128000)]  # tokens × hidden → classes
SMALL_SHAPES = [(256, 64, 8000)]  # --small: one shape, a check of the script itself
VARIANTS = ("ours", "eager", "compiled")
# Peers without label smoothing run at ε = 0 beside this variant of ours.
PEER_VARIANTS = ("ours ε=0", "cut-cross-entropy")


def ours(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return linear_label_smoothed_cross_entropy(h, w, y, EPS).loss


def ours_no_smoothing(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return linear_label_smoothed_cross_entropy(h, w, y, 0.0).loss


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
    if variant == "ours ε=0":
        return ours_no_smoothing
    if variant == "cut-cross-entropy":
        loss, note = peers.cut_cross_entropy(torch.device("cpu"))
        if loss is None:
            raise RuntimeError(note)
        return loss
    return torch.compile(lambda h, w, y: F.cross_entropy(F.linear(h, w), y, label_smoothing=EPS))


def inputs(n: int, d: int, v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    h = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) / d**0.5).requires_grad_()
    return h, w, torch.randint(0, v, (n,))


def step(fn: Callable[..., torch.Tensor], h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> None:
    fn(h, w, y).backward()
    h.grad = w.grad = None


def times(n: int, d: int, v: int, repeats: int, variants: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """(median, min) ms of forward + backward per variant, interleaved so that drifts in machine speed hit all."""
    h, w, y = inputs(n, d, v)
    fns = {name: make(name) for name in variants}
    for fn in fns.values():  # warm-up (and compilation)
        step(fn, h, w, y)
    samples: dict[str, list[float]] = {name: [] for name in variants}
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
        _linear.LINEAR_CHUNK_ELEMENTS = args.chunk
    if args.min_rows:
        _linear.MIN_CHUNK_ROWS = args.min_rows
    if args.memory_of:
        variant, n, d, v = json.loads(args.memory_of)
        print(measure_memory(variant, n, d, v))
        return
    shapes, repeats = (SMALL_SHAPES, 3) if args.small else (SHAPES, args.repeats)
    chunk = f"chunk={_linear.LINEAR_CHUNK_ELEMENTS} logits, ≥ {_linear.MIN_CHUNK_ROWS} rows"
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}  {chunk}  float32, fwd+bwd")
    print(f"median of {repeats} interleaved runs; load average {os.getloadavg()[0]:.2f}")
    variants = VARIANTS
    peer, note = peers.cut_cross_entropy(torch.device("cpu"))
    print(f"peer: {note}")
    if peer is not None:
        variants += PEER_VARIANTS
    print(f"peer: {peers.liger(torch.device('cpu'), EPS)[1]} (benchmarks/gpu.py runs it on a GPU)")
    print(
        f"{'tokens×hidden→classes':>22} {'variant':<18} {'ε':>4} {'ms':>9} {'/ours':>6} {'/eager':>7}"
        f" {'/compiled':>9} {'peak extra memory / logits':>27}"
    )
    for n, d, v in shapes:
        t = times(n, d, v, repeats, variants)
        for name in variants:
            ms = t[name][0]
            mine = t["ours ε=0" if name in PEER_VARIANTS else "ours"][0]
            mem = "" if args.no_memory else f"{memory(name, n, d, v, args.chunk, args.min_rows):.2f}"
            eps = 0.0 if name in PEER_VARIANTS else EPS
            print(
                f"{f'{n}×{d}→{v}':>22} {name:<18} {eps:4.1f} {ms:9.1f} {ms / mine:6.2f} {ms / t['eager'][0]:7.2f}"
                f" {ms / t['compiled'][0]:9.2f} {mem:>27}",
                flush=True,
            )
    print("/ours: against ours at the same ε (0.1, or 0 for the peers without label smoothing)")


if __name__ == "__main__":
    main()
