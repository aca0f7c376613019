"""BinnedCalibrationError against torchmetrics' MulticlassCalibrationError: update/compute time and state memory.

Run: ``python benchmarks/calibration.py [--n 1000000] [--classes 10] [--repeats 9]``. Times are medians of
interleaved runs in one process (ours, then the reference, alternating which goes first); ratios < 1 favour ours.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassCalibrationError

from ls_lightning.metrics import BinnedCalibrationError


def _state_bytes(metric: Metric) -> int:
    total = 0
    for name in metric._defaults:
        value = getattr(metric, name)
        tensors = value if isinstance(value, list) else [value]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _interleaved(ours: Callable[[], object], reference: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of each, measured in alternating order after one warm-up call of each."""
    ours(), reference()
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats):
        if i % 2:
            times[1].append(_timed(reference))
            times[0].append(_timed(ours))
        else:
            times[0].append(_timed(ours))
            times[1].append(_timed(reference))
    return statistics.median(times[0]), statistics.median(times[1])


def _update_rows(probs: torch.Tensor, target: torch.Tensor, repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    confidence, correct = probs.max(dim=1)[0], probs.argmax(dim=1) == target
    for validate in (True, False):
        ours = BinnedCalibrationError(validate_args=validate)
        reference = MulticlassCalibrationError(probs.shape[1], validate_args=validate)

        def run_ours(m: Metric = ours) -> None:
            m.reset()
            m.update(probs, target)

        def run_reference(m: Metric = reference) -> None:
            m.reset()
            m.update(probs, target)

        rows.append((f"update (N, C) probs, validate_args={validate}", *_interleaved(run_ours, run_reference, repeats)))
    top_label = BinnedCalibrationError()

    def run_top_label() -> None:
        top_label.reset()
        top_label.update(confidence, correct)

    reference = MulticlassCalibrationError(probs.shape[1], validate_args=False)

    def run_reference_nv() -> None:
        reference.reset()
        reference.update(probs, target)

    name = "update top-label (M,) vs ref (N, C), no validation"
    rows.append((name, *_interleaved(run_top_label, run_reference_nv, repeats)))
    return rows


def _compute_row(probs: torch.Tensor, target: torch.Tensor, repeats: int) -> tuple[str, float, float]:
    ours, reference = BinnedCalibrationError(), MulticlassCalibrationError(probs.shape[1])
    ours.update(probs, target)
    reference.update(probs, target)

    def fresh(m: Metric) -> Callable[[], object]:
        def run() -> object:
            m._computed = None  # drop the cached value so that compute() really recomputes
            return m.compute()

        return run

    ece, ref_ece = float(ours.compute()), float(reference.compute())
    assert abs(ece - ref_ece) < 1e-5, (ece, ref_ece)
    return ("compute after one update", *_interleaved(fresh(ours), fresh(reference), repeats))


def _epoch_row(probs: torch.Tensor, target: torch.Tensor, repeats: int) -> tuple[str, float, float]:
    """reset + update + compute: what one logged epoch value costs."""
    ours, reference = BinnedCalibrationError(), MulticlassCalibrationError(probs.shape[1])

    def epoch(m: Metric) -> Callable[[], object]:
        def run() -> object:
            m.reset()
            m.update(probs, target)
            return m.compute()

        return run

    return ("reset + update + compute (N, C) probs", *_interleaved(epoch(ours), epoch(reference), repeats))


def _memory_rows(probs: torch.Tensor, target: torch.Tensor, updates: int) -> list[tuple[int, int, int]]:
    ours, reference = BinnedCalibrationError(), MulticlassCalibrationError(probs.shape[1], validate_args=False)
    rows = []
    for k in range(1, updates + 1):
        ours.update(probs, target)
        reference.update(probs, target)
        if k & (k - 1) == 0:  # powers of two
            rows.append((k * probs.shape[0], _state_bytes(ours), _state_bytes(reference)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--memory-updates", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(args.n, args.classes, generator=g) * 2).softmax(dim=1)
    target = torch.randint(0, args.classes, (args.n,), generator=g)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; N={args.n:,}, C={args.classes}, CPU")
    print(f"\n{'operation':58s} {'ours ms':>9s} {'torchmetrics ms':>16s} {'ratio':>7s}")
    for name, ours, ref in [
        *_update_rows(probs, target, args.repeats),
        _compute_row(probs, target, args.repeats),
        _epoch_row(probs, target, args.repeats),
    ]:
        print(f"{name:58s} {ours * 1e3:9.2f} {ref * 1e3:16.2f} {ours / ref:7.3f}")
    print(f"\n{'samples seen':>14s} {'ours state bytes':>17s} {'torchmetrics state bytes':>25s}")
    for seen, ours_bytes, ref_bytes in _memory_rows(probs, target, args.memory_updates):
        print(f"{seen:14,d} {ours_bytes:17,d} {ref_bytes:25,d}")


if __name__ == "__main__":
    main()
