"""Speed and memory of the label-smoothed loss against ``F.cross_entropy(label_smoothing=0.1)``, eager and compiled.

Run ``python benchmarks/loss.py`` (a few minutes on 2 cores, most of it compiling) or ``--quick``; ``--no-compile``
leaves out the compiled columns. It first prints the machine (CPU model, cache sizes, PyTorch's CPU capability,
threads), since the figures depend on it. Times are medians of interleaved runs in one process with the default
number of threads, forward + backward; each function runs once before timing, so compilation is not timed. Compiled
means ``torch.compile(fn, fullgraph=True)`` of ``label_smoothed_cross_entropy`` and of ``F.cross_entropy``
(Inductor). The floor is the memory traffic any loss and gradient must pay: one ``exp`` pass over the logits into a
logits-sized buffer, then a row sum (``torch.exp(x, out=buf).sum(1)``), timed in the same interleaved runs; and the
fresh floor, the same into a new buffer each call (``torch.exp(x).sum(1)``), as a loss that returns a new gradient
must allocate one: with glibc's default allocator a large tensor is a fresh ``mmap`` whose pages are zeroed on first
touch (set ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` to keep freed memory and compare).
Memory is the peak resident set (VmHWM) of a fresh subprocess above its baseline after the logits exist; for the
compiled functions the subprocess compiles and runs once, then resets the peak (``/proc/self/clear_refs``), so the
figure is the loss's, not the compiler's.
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

from ls_lightning.losses import label_smoothed_cross_entropy, label_smoothed_cross_entropy_with_stats
from ls_lightning.losses.ops import fused as _fused
from ls_lightning.metrics import BinnedCalibrationError

# The four shapes, and the digits model's step (64×10), which takes the short path for small inputs.
SHAPES = [(1024, 32000), (256, 128000), (4096, 1000), (4096, 10), (64, 10)]
# Small shapes are timed over this many calls per sample, so that one sample is well above the timer's resolution.
_CALLS_PER_SAMPLE_ELEMENTS = 1 << 20
EPS = 0.1


def _loss_ours(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return label_smoothed_cross_entropy(x, y, EPS).loss


def _loss_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(x, y, label_smoothing=EPS)


def _fwd_bwd(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> None:
    loss(x, y).backward()
    x.grad = None


def _repeat(fn: Callable[[torch.Tensor, torch.Tensor], None], x: torch.Tensor, y: torch.Tensor, calls: int) -> None:
    for _ in range(calls):
        fn(x, y)


def _interleaved(fns: list[Callable[[], None]], repeats: int) -> list[tuple[float, float]]:
    """(median, min) milliseconds of each function, run in turn so that drifts in machine speed hit all alike.

    The min is printed beside the median because on a shared 2-core machine another process's OpenMP threads can
    stall every parallel region of ours for a time slice; the min shows the cost without such stalls. Each repeat
    runs the functions in a new (seeded) random order: what runs just after eager PyTorch ops can pay for them
    (measured at 64×10: whichever compiled function came right after the eager ones ran about 1.4× slower).
    """
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:  # warm-up
        fn()
    order = list(range(len(fns)))
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for i in order:
            start = time.perf_counter()
            fns[i]()
            times[i].append((time.perf_counter() - start) * 1e3)
    return [(statistics.median(t), min(t)) for t in times]


def _floor(x: torch.Tensor, buf: torch.Tensor) -> None:
    """The floor: one exp pass over the logits into a logits-sized buffer plus a row sum."""
    torch.exp(x, out=buf).sum(1)


def _fresh_floor(x: torch.Tensor, _buf: torch.Tensor) -> None:
    """The floor into a new buffer, as a loss that returns a new gradient tensor allocates one each call."""
    torch.exp(x).sum(1)


def _cache_sizes() -> str:
    """ "L1d 48K, L2 2048K, L3 307200K" from sysfs (cpu0), or "unknown" where it is not readable."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    sizes = []
    try:
        for index in sorted(os.listdir(root)):
            if not index.startswith("index"):
                continue
            with (
                open(f"{root}/{index}/level") as f,
                open(f"{root}/{index}/type") as g,
                open(f"{root}/{index}/size") as h,
            ):
                level, kind, size = f.read().strip(), g.read().strip(), h.read().strip()
            if kind != "Instruction":
                sizes.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    except OSError:
        return "unknown"
    return ", ".join(sizes) or "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "unknown"


def machine() -> str:
    """One line naming what the figures depend on: CPU, caches, cores, PyTorch, its vector ISA, threads."""
    return (
        f"{_cpu_model()}; {os.cpu_count()} logical CPUs; caches (per cpu0 sysfs): {_cache_sizes()}; "
        f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"
    )


def _metrics_ours(x: torch.Tensor, y: torch.Tensor, ece: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
    out, stats = label_smoothed_cross_entropy_with_stats(x, y, EPS)
    out.loss.backward()
    x.grad = None
    acc = (stats.correct & stats.valid).sum() / stats.weight_sum
    ece(stats.confidence, stats.correct)
    torch.stack([out.loss.detach(), out.h_pq.detach(), out.h_uq.detach(), acc])


def _metrics_torch(x: torch.Tensor, y: torch.Tensor, metric: object) -> None:
    """The brief's reference: PyTorch's loss (fwd+bwd), a separate H(u,q), and torchmetrics' ECE update."""
    loss = F.cross_entropy(x, y, label_smoothing=EPS)
    loss.backward()
    x.grad = None
    with torch.no_grad():
        h_uq = -torch.log_softmax(x, 1).mean(1).mean()
        metric.update(x, y)  # type: ignore[attr-defined]
    torch.stack([loss.detach(), h_uq])


def _memory(kind: str, n: int, c: int) -> float:
    """Peak extra resident memory of fwd+bwd / logits size, in a fresh process (kind: ours, torch, + _compiled)."""
    code = f"""
import torch, torch.nn.functional as F
from ls_lightning.losses import label_smoothed_cross_entropy
def hwm():
    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) * 1024
def ours(x, y):
    return label_smoothed_cross_entropy(x, y, {EPS}).loss
def reference(x, y):
    return F.cross_entropy(x, y, label_smoothing={EPS})
kind = {kind!r}
loss = ours if kind.startswith('ours') else reference
x = torch.randn({n}, {c}, requires_grad=True); y = torch.randint(0, {c}, ({n},))
if kind.endswith('_compiled'):
    loss = torch.compile(loss, fullgraph=True)
    loss(x, y).backward()
    x.grad = None
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current resident set: the compiler's own peak is not the loss's
base = hwm()
loss(x, y).backward()
print((hwm() - base) / (x.numel() * 4))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, skip the 256×128000 shape")
    parser.add_argument("--chunk", type=int, default=None, help="elements per chunk (default: the library's)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile columns")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved runs per function (15; --quick 5)")
    parser.add_argument("--shapes", default=None, help="N×C,N×C,... instead of the default shapes (e.g. 4096x10)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory and metrics measurements")
    args = parser.parse_args()
    if args.chunk:
        _fused.CACHE_CHUNK_ELEMENTS = args.chunk
    repeats = args.repeats or (5 if args.quick else 15)
    shapes = [s for s in SHAPES if not (args.quick and s == (256, 128000))]
    if args.shapes:
        shapes = [tuple(int(v) for v in s.replace("×", "x").split("x")) for s in args.shapes.split(",")]  # type: ignore[misc]
    print(f"machine: {machine()}")
    print(f"chunk={_fused.CACHE_CHUNK_ELEMENTS} elements  ε={EPS}")
    print(f"float32, fwd+bwd, median of {repeats} interleaved runs; load average {os.getloadavg()[0]:.2f}")
    _time_table(shapes, repeats, compiled=not args.no_compile)
    if args.no_memory:
        return
    print("peak extra memory / logits at 1024×32000:")
    kinds = ["ours", "torch"] + ([] if args.no_compile else ["ours_compiled", "torch_compiled"])
    print("  " + "  ".join(f"{kind} {_memory(kind, 1024, 32000):.2f}" for kind in kinds))
    _compare_metrics(repeats)


def _time_table(shapes: list[tuple[int, int]], repeats: int, compiled: bool) -> None:
    """Per shape: ms of ours, PyTorch and the floor; ours / PyTorch (medians, and minima), ours / floor; with
    ``compiled``, compiled ours / compiled PyTorch (and eager ours against compiled PyTorch)."""
    head = f"{'shape':>12} {'ours ms':>8} {'torch ms':>8} {'floor ms':>8} {'ours/torch':>10} {'(min)':>6} {'×floor':>6}"
    head += f" {'×fresh floor':>12}"
    if compiled:
        head += f" {'c.ours ms':>9} {'c.torch ms':>10} {'c.ours/c.torch':>14} {'(min)':>6} {'ours/c.torch':>12}"
    print(head)
    for n, c in shapes:
        torch.manual_seed(0)
        x = torch.randn(n, c, requires_grad=True)
        y = torch.randint(0, c, (n,))
        buf = torch.empty(n, c)
        calls = max(1, _CALLS_PER_SAMPLE_ELEMENTS // (n * c))
        losses = [_loss_ours, _loss_torch]
        if compiled:
            torch._dynamo.reset()  # a fresh compile per shape, as a user with one shape gets
            losses += [torch.compile(_loss_ours, fullgraph=True), torch.compile(_loss_torch, fullgraph=True)]
        fns = [functools.partial(_repeat, functools.partial(_fwd_bwd, loss), x, y, calls) for loss in losses]
        floor = functools.partial(_repeat, _floor, x.detach(), buf, calls)
        fresh = functools.partial(_repeat, _fresh_floor, x.detach(), buf, calls)
        times = [(t / calls, m / calls) for t, m in _interleaved([floor, fresh, *fns], repeats)]
        (fl, _), (fresh_fl, _), (ours, ours_min), (ref, ref_min) = times[:4]
        line = f"{f'{n}×{c}':>12} {ours:8.3f} {ref:8.3f} {fl:8.3f} {ours / ref:10.3f} {ours_min / ref_min:6.3f}"
        line += f" {ours / fl:6.2f} {ours / fresh_fl:12.2f}"
        if compiled:
            (c_ours, c_ours_min), (c_ref, c_ref_min) = times[4:]
            line += f" {c_ours:9.3f} {c_ref:10.3f} {c_ours / c_ref:14.3f} {c_ours_min / c_ref_min:6.3f}"
            line += f" {ours / c_ref:12.3f}"
        print(line, flush=True)


def _compare_metrics(repeats: int) -> None:
    from torchmetrics.classification import MulticlassCalibrationError

    n, c = 1024, 32000
    x = torch.randn(n, c, requires_grad=True)
    y = torch.randint(0, c, (n,))
    calibration = BinnedCalibrationError(n_bins=15)
    name = "BinnedCalibrationError"

    def ece(conf: torch.Tensor, correct: torch.Tensor) -> None:
        calibration.update(conf, correct)

    metric = MulticlassCalibrationError(num_classes=c, n_bins=15)
    (ours, ours_min), (ref, ref_min) = _interleaved(
        [lambda: _metrics_ours(x, y, ece), lambda: _metrics_torch(x, y, metric)], repeats
    )
    print(f"training-step loss and metrics at {n}×{c}, fwd+bwd of the loss included:")
    print(f"  ours : loss, h_pq, h_uq, accuracy, ECE update ({name} on the stats) {ours:8.1f} ms")
    print(f"  torch: F.cross_entropy, H(u,q) by log_softmax, MulticlassCalibrationError.update {ref:8.1f} ms")
    print(f"  ratio {ours / ref:.3f} (of medians), {ours_min / ref_min:.3f} (of minima)")


if __name__ == "__main__":
    main()
