"""The benchmark scripts run (their timings are theirs to print; here only that they run and what they measure)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_benchmark_script_runs():
    """``benchmarks/linear.py --small`` (timings only) runs, and its memory probe returns a number: small, with and
    without z-loss and soft-capping."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "benchmarks" / "linear.py"
    done = subprocess.run(
        [sys.executable, str(script), "--small", "--no-memory"], capture_output=True, text=True, check=True
    )
    assert "256×64→8000" in done.stdout
    probe = subprocess.run(
        [sys.executable, str(script), "--memory-of", '["ours", 64, 16, 1000]'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(probe.stdout.strip()) < 10
    # With a z-loss and soft-capping too, small chunks of 8 MiB of logits: the loss holds chunks, not the logits
    # (materialising them measures 2-5 here).
    for variant in ("ours", "ours-capped"):
        probe_of = ["--memory-of", f'["{variant}", 2048, 16, 1000]', "--chunk", "16000", "--min-rows", "1"]
        probe = subprocess.run(
            [sys.executable, str(script), *probe_of],
            capture_output=True,
            text=True,
            check=True,
        )
        assert float(probe.stdout.strip()) < 0.25, variant
