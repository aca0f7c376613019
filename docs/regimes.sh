#!/usr/bin/env bash
# Regenerates the tables and figures of docs/does-it-help.md ("Does label smoothing help my model?"; copy the new
# tables into it): each experiment's sweep (ls-train experiment=NAME) into multirun/NAME/<date>_<time>, its report
# (ls-report) there, printed and kept as
# docs/report_NAME.md, and its figure copied to docs/report_NAME.png. The digits sweep also gives
# docs/reliability_diagram_constant.png (constant ε, seed 0).
#
#   bash docs/regimes.sh                                   # compare_schedules noisy_labels compare_schedules_lm
#   bash docs/regimes.sh noisy_labels                      # one of them
set -euo pipefail
cd "$(dirname "$0")/.."
experiments=("$@")
[ ${#experiments[@]} -gt 0 ] || experiments=(compare_schedules noisy_labels compare_schedules_lm)
for experiment in "${experiments[@]}"; do
  sweep="multirun/$experiment/$(date +%Y-%m-%d_%H-%M-%S)"
  ls-train experiment="$experiment" hydra.sweep.dir="$sweep"
  ls-report "$sweep" | tee "docs/report_$experiment.md"
  cp "$sweep/report.png" "docs/report_$experiment.png"
  if [ "$experiment" = compare_schedules ]; then
    # jobs 0-2 are variant none (seeds 0, 1, 2), job 3 the first constant one
    cp "$sweep/3/reliability_diagram.png" docs/reliability_diagram_constant.png
  fi
done
