#!/usr/bin/env bash
# Regenerates the tables and figures of docs/which-regulariser.md ("Which regulariser calibrates my model?"; copy the
# new tables into it): the sweep `ls-train experiment=relatives` (7 variants × 3 seeds × 2 regimes, 42 jobs, about
# 10 minutes on 2 cores with one thread per job) into multirun/relatives/<date>_<time>, its report (ls-report) kept
# as docs/report_relatives.md, and the report's figures, one pair per regime, copied to
# docs/report_relatives_<regime>.png and docs/penultimate_relatives_<regime>.png.
#
#   bash docs/relatives.sh
set -euo pipefail
cd "$(dirname "$0")/.."
sweep="multirun/relatives/$(date +%Y-%m-%d_%H-%M-%S)"
OMP_NUM_THREADS=1 ls-train experiment=relatives hydra.sweep.dir="$sweep"
ls-report "$sweep" | tee docs/report_relatives.md
for regime in digits noisy_labels; do
  cp "$sweep/report_$regime.png" "docs/report_relatives_$regime.png"
  cp "$sweep/penultimate_$regime.png" "docs/penultimate_relatives_$regime.png"
done
