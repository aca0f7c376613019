"""``ls-report`` on a sweep that varies ``regime`` (experiment=relatives): one comparison per regime, each with its own
table, ranks written out by hand, report figure and the settings' penultimate pictures side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

from ls_lightning.cli.report import report

HEADER = "epoch,step,test/acc,test/ece,test/h_pq,test/overconfidence,val/acc,val/ece,val/h_pq,val/overconfidence"
# (regime, variant) -> test ECE of seeds 0 and 1; every other value the same, so that only the ECE ranks differ
ECE = {
    ("digits", "none"): (0.02, 0.04),
    ("digits", "focal"): (0.05, 0.07),
    ("noisy_labels", "none"): (0.10, 0.12),
    ("noisy_labels", "focal"): (0.03, 0.05),
}


def _sweep(root: Path, with_pictures: bool) -> None:
    number = 0
    for (regime, variant), eces in ECE.items():
        for seed, ece in enumerate(eces):
            job = root / str(number)
            (job / ".hydra").mkdir(parents=True)
            overrides = [f"regime={regime}", f"label_smoothing/variant={variant}", f"seed={seed}"]
            (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
            rows = [HEADER, "1,9,,,,,0.9,0.05,0.3,0.01", f"2,10,0.9,{ece},0.3,0.01,,,,"]
            (job / "metrics.csv").write_text("\n".join(rows) + "\n")
            if with_pictures:
                pytest.importorskip("matplotlib")
                from matplotlib.figure import Figure

                picture = Figure(figsize=(2, 1))
                picture.subplots().text(0.5, 0.5, variant)
                picture.savefig(job / "penultimate_projection.png")
            number += 1


def test_each_regime_is_a_comparison_of_its_own(tmp_path: Path) -> None:
    _sweep(tmp_path, with_pictures=True)
    result = report(tmp_path, loggers=False)
    written = sorted(p.name for p in result.written)
    figures = ["report_digits.png", "report_noisy_labels.png", "penultimate_digits.png", "penultimate_noisy_labels.png"]
    assert written == sorted(["report.md", "report.csv", *figures])
    text = (tmp_path / "report.md").read_text()
    digits, noisy = text.split("## regime=digits")[1].split("## regime=noisy_labels")
    noisy = noisy.split("## Jobs")[0]
    # test ECE per setting, mean of the two seeds: digits none 3.00 < focal 6.00; noisy_labels focal 4.00 < none 11.00
    assert "| variant=none | 2 |" in digits and "| variant=focal | 2 |" in digits and "noisy" not in digits
    assert "3.00 ± 1.41" in digits and "6.00 ± 1.41" in digits and "11.00 ± 1.41" in noisy and "4.00 ± 1.41" in noisy
    ranks = {
        section: {
            line.split("|")[1].strip(): line.split("|")[7].strip()  # the rank of the test ECE column
            for line in part.split("Rank of each setting")[1].splitlines()
            if line.startswith("| variant=")
        }
        for section, part in (("digits", digits), ("noisy_labels", noisy))
    }
    assert ranks == {
        "digits": {"variant=none": "1", "variant=focal": "2"},
        "noisy_labels": {"variant=none": "2", "variant=focal": "1"},
    }
    assert "![" in digits and "(penultimate_digits.png)" in digits and "(report_digits.png)" in digits
    assert result.table.startswith("regime=digits\n| setting |")


def test_a_sweep_without_regimes_keeps_one_report(tmp_path: Path) -> None:
    _sweep(tmp_path, with_pictures=False)
    for path in tmp_path.glob("*/.hydra/overrides.yaml"):  # the same sweep with the regime common to all jobs
        path.write_text(path.read_text().replace("regime=noisy_labels", "regime=digits"))
    result = report(tmp_path, loggers=False, figure=False)
    assert [p.name for p in result.written] == ["report.md", "report.csv"]
    assert "## regime=" not in (tmp_path / "report.md").read_text()
