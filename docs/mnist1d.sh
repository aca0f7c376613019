#!/usr/bin/env bash
# Regenerates the tables and the figure of docs/mnist1d.md (copy the new tables into it):
#   mnist1d_paper: the paper's four models with plain cross-entropy, 3 seeds each; its ls-report is kept as
#                  docs/report_mnist1d_paper.md, and the reproduction table (ours against the paper, with the wall
#                  time of a job) as docs/report_mnist1d_reproduction.md;
#   mnist1d:       the CNN with the five label_smoothing variants, 3 seeds each; its ls-report as
#                  docs/report_mnist1d.md and its figure as docs/report_mnist1d.png.
# Each sweep goes into multirun/<experiment>/<date>_<time>; jobs run one after another, one thread each (set
# OMP_NUM_THREADS to change it). Needs the `data` extra (the mnist1d package) and the `plot` extra.
#
#   bash docs/mnist1d.sh                       # both, about 30 minutes on 2 cores
#   bash docs/mnist1d.sh mnist1d               # one of them
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
experiments=("$@")
[ ${#experiments[@]} -gt 0 ] || experiments=(mnist1d_paper mnist1d)
for experiment in "${experiments[@]}"; do
  sweep="multirun/$experiment/$(date +%Y-%m-%d_%H-%M-%S)"
  ls-train experiment="$experiment" hydra.sweep.dir="$sweep" callbacks.progress_bar=null trainer.enable_progress_bar=false
  ls-report "$sweep" | tee "docs/report_$experiment.md"
  if [ "$experiment" = mnist1d_paper ]; then
    python - "$sweep" <<'EOF' | tee docs/report_mnist1d_reproduction.md
"""The reproduction table: each model's test accuracy (mean ± sample std over seeds) against the paper's."""
import csv
import statistics
import sys
from pathlib import Path

sweep = Path(sys.argv[1])
# Greydanus (2020), Table 1 / the README of greydanus/mnist1d; then the final (step 6000) test accuracy printed by
# the authors' own runs of their code: quickstart.ipynb at 08ff47fc (2020), notebooks/mnist1d-classification.ipynb
# at d53784556 (2024)
paper = {"mnist1d_linear": 32, "mnist1d_mlp": 68, "mnist1d_cnn": 94, "mnist1d_gru": 91}
authors = {"mnist1d_linear": "31.7, 31.5", "mnist1d_mlp": "64.6, 65.1", "mnist1d_cnn": "92.5, 92.3",
           "mnist1d_gru": "91.1, 89.1"}
rows: dict[str, list[tuple[float, float]]] = {}
with open(sweep / "report.csv", newline="") as file:
    for row in csv.DictReader(file):
        if row["status"] != "ok":
            continue
        model = row["setting"].split("model=", 1)[1].split()[0]
        job = sweep / row["job"]
        # a job's wall time: from Hydra's config of the job to its last metrics line
        seconds = (job / "metrics.csv").stat().st_mtime - (job / ".hydra" / "config.yaml").stat().st_mtime
        rows.setdefault(model, []).append((100 * float(row["test/acc"]), seconds))
print("| model | paper test acc (%) | authors' runs, step 6000 (%) | ours: test acc (%) | seeds | wall time per job (s) |")
print("|---|---|---|---|---|---|")
for model, values in rows.items():
    acc = [a for a, _ in values]
    spread = statistics.stdev(acc) if len(acc) > 1 else float("nan")
    wall = statistics.mean(s for _, s in values)
    print(f"| {model} | {paper.get(model, '')} | {authors.get(model, '')} | {statistics.mean(acc):.2f} ± {spread:.2f}"
          f" | {len(acc)} | {wall:.0f} |")
EOF
  else
    cp "$sweep/report.png" "docs/report_$experiment.png"
  fi
done
