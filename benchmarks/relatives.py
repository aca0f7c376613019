"""Speed and memory of the relatives of label smoothing against their plain PyTorch formulations, eager and compiled.

Run ``python benchmarks/relatives.py`` (about ten minutes on 2 cores, most of it compiling), ``--no-compile`` for the
eager columns only, ``--kinds penalty,margin`` or ``--shapes 4096x1000`` for fewer. Each relative (confidence penalty
β = 0.1, focal γ = 2, FLSD-53, MbLS λ = 0.1, m = 10) is timed forward + backward against the plain formulation below,
in the same process: medians (and minima) of interleaved runs, as ``benchmarks/loss.py`` measures, and the ratio of
the medians of the process's CPU time (the steadier figure on a shared machine with ``OMP_NUM_THREADS=1``). Compiled
means ``torch.compile(fn, fullgraph=True)`` (Inductor) of ours and of the plain formulation, a fresh compile per
shape. Memory is the peak resident set (VmHWM) above the baseline of a fresh process once the logits
exist, after one call (and compilation) and a reset of the peak, over the logits' size; the gradient alone is 1.00.

The plain formulations are the most economical compositions of PyTorch ops we know (one log_softmax, reused):

- confidence penalty: ``F.nll_loss(logp, y) − β·(−(logp.exp()·logp).sum(1)).mean()``, ``logp = F.log_softmax(x, 1)``;
- focal: ``ℓ = −logp.gather(1, y)``, ``((1 − exp(−ℓ))^γ·ℓ).mean()`` (FLSD-53: γ from ``exp(−ℓ).detach() < 0.2``);
- MbLS: ``F.cross_entropy(x, y) + λ·F.relu((x.max(1, keepdim=True).values − x) − m).mean()`` (by-liu/MbLS's own
  code, without its ``repeat`` of the row maxima).
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from loss import _CALLS_PER_SAMPLE_ELEMENTS, machine  # benchmarks/loss.py: the project's helpers

from ls_lightning.losses.relatives import (
    confidence_penalty_cross_entropy,
    focal_cross_entropy,
    margin_smoothed_cross_entropy,
)

SHAPES = [(1024, 32000), (4096, 1000)]
BETA, GAMMA, LAMBDA, MARGIN = 0.1, 2.0, 0.1, 10.0


def ours_penalty(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return confidence_penalty_cross_entropy(x, y, BETA).loss


def plain_penalty(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(x, 1)
    return F.nll_loss(logp, y) - BETA * (-(logp.exp() * logp).sum(1)).mean()


def ours_focal(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return focal_cross_entropy(x, y, GAMMA).loss


def plain_focal(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    nll = -F.log_softmax(x, 1).gather(1, y.unsqueeze(1)).squeeze(1)
    return ((1 - torch.exp(-nll)) ** GAMMA * nll).mean()


def ours_flsd53(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return focal_cross_entropy(x, y, "flsd53").loss


def plain_flsd53(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    nll = -F.log_softmax(x, 1).gather(1, y.unsqueeze(1)).squeeze(1)
    p = torch.exp(-nll)
    gamma = torch.where(p.detach() < 0.2, 5.0, 3.0)
    return ((1 - p) ** gamma * nll).mean()


def ours_margin(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return margin_smoothed_cross_entropy(x, y, LAMBDA, margin=MARGIN).loss


def plain_margin(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(x, y) + LAMBDA * F.relu((x.max(1, keepdim=True).values - x) - MARGIN).mean()


KINDS: dict[str, tuple[Callable, Callable]] = {
    "penalty": (ours_penalty, plain_penalty),
    "focal": (ours_focal, plain_focal),
    "flsd53": (ours_flsd53, plain_flsd53),
    "margin": (ours_margin, plain_margin),
}


def _fwd_bwd(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> None:
    loss(x, y).backward()
    x.grad = None


def _repeat(fn: Callable[[], None], calls: int) -> None:
    for _ in range(calls):
        fn()


def _logits(n: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits spread like a trained model's (N(0, 5²): some gaps above MbLS's margin of 10) and labels."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(n, c, generator=gen) * 5).requires_grad_()
    return x, torch.randint(0, c, (n,), generator=gen)


def _interleaved(fns: list[Callable[[], None]], repeats: int) -> list[tuple[float, float, float]]:
    """(median, min) wall-clock and median CPU milliseconds of each function, run in turn in a new (seeded) random
    order each repeat, as ``benchmarks/loss.py`` does. The CPU time of the process leaves out the time slices that
    other processes take from it on a shared machine: with one thread it is the steadier figure."""
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for fn in fns:  # warm-up (and compilation)
        fn()
    order = list(range(len(fns)))
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for i in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[i]()
            wall[i].append((time.perf_counter() - start) * 1e3)
            cpu[i].append((time.process_time() - start_cpu) * 1e3)
    return [(statistics.median(w), min(w), statistics.median(c)) for w, c in zip(wall, cpu, strict=True)]


def _time_row(kind: str, n: int, c: int, repeats: int, compiled: bool) -> str:
    """ms of ours and of the plain formulation and their ratios: of the wall-clock medians, of the minima, of the
    CPU-time medians; with ``compiled``, the same for both compiled."""
    x, y = _logits(n, c)
    calls = max(1, _CALLS_PER_SAMPLE_ELEMENTS // (n * c))
    losses = list(KINDS[kind])
    if compiled:
        torch._dynamo.reset()  # a fresh compile per shape, as a user with one shape gets
        losses += [torch.compile(fn, fullgraph=True) for fn in KINDS[kind]]
    fns = [functools.partial(_repeat, functools.partial(_fwd_bwd, loss, x, y), calls) for loss in losses]
    times = [tuple(t / calls for t in row) for row in _interleaved(fns, repeats)]
    line = f"{kind:>8} {f'{n}×{c}':>11}"
    for (ours, ours_min, ours_cpu), (ref, ref_min, ref_cpu) in (times[:2], times[2:]) if compiled else (times[:2],):
        line += f" {ours:8.2f} {ref:8.2f} {ours / ref:6.3f} {ours_min / ref_min:6.3f} {ours_cpu / ref_cpu:6.3f}"
    return line


_MEMORY = """
import sys, torch
sys.path.insert(0, {here!r})
import relatives as bench
def hwm():
    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) * 1024
loss = bench.KINDS[{kind!r}][{which}]
x, y = bench._logits({n}, {c})
if {compiled}:
    loss = torch.compile(loss, fullgraph=True)
loss(x, y).backward()  # once before measuring: lazy initialisation (and compilation) is not the loss's memory
x.grad = None
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # reset VmHWM to the current resident set (making the logits had a temporary of their size)
base = hwm()
loss(x, y).backward()
print((hwm() - base) / (x.numel() * 4))
"""


def _memory(kind: str, which: int, n: int, c: int, compiled: bool) -> float:
    """Peak extra resident memory of fwd+bwd over the logits' size, in a fresh process (which: 0 ours, 1 plain)."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = _MEMORY.format(here=here, kind=kind, which=which, n=n, c=c, compiled=compiled)
    # A fixed mmap threshold turns off glibc's dynamic one, which after the first free of a large block serves blocks
    # of up to 32 MiB from the heap, where the previous call's freed memory is still resident and uncounted.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 17)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile columns")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    parser.add_argument("--repeats", type=int, default=11, help="interleaved runs per function (11)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {','.join(KINDS)}")
    parser.add_argument("--shapes", default=None, help="N×C,N×C,... instead of 1024x32000,4096x1000")
    args = parser.parse_args()
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.replace("×", "x").split("x")) for s in args.shapes.split(",")]  # type: ignore[misc]
    kinds = args.kinds.split(",")
    compiled = not args.no_compile
    print(f"machine: {machine()}")
    print(f"float32, fwd+bwd, median of {args.repeats} interleaved runs; load average {os.getloadavg()[0]:.2f}")
    head = f"{'kind':>8} {'shape':>11} {'ours ms':>8} {'plain ms':>8} {'ratio':>6} {'(min)':>6} {'(cpu)':>6}"
    if compiled:
        head += f" {'c.ours':>8} {'c.plain':>8} {'ratio':>6} {'(min)':>6} {'(cpu)':>6}"
    print(head)
    for n, c in shapes:
        for kind in kinds:
            print(_time_row(kind, n, c, args.repeats, compiled), flush=True)
    if args.no_memory:
        return
    print("peak extra memory / logits (fwd+bwd; the gradient alone is 1.00):")
    for n, c in shapes:
        for kind in kinds:
            cells = [f"ours {_memory(kind, 0, n, c, False):.2f}", f"plain {_memory(kind, 1, n, c, False):.2f}"]
            if compiled:
                cells += [f"c.ours {_memory(kind, 0, n, c, True):.2f}", f"c.plain {_memory(kind, 1, n, c, True):.2f}"]
            print(f"  {kind:>8} {f'{n}×{c}':>11}  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
