#!/usr/bin/env bash
# Full-size predator-prey benchmark of the "Recurrent training pipeline" issue:
# punishment -2, seeds 0..2, FRAMES env steps each; one queue per algorithm, the queues in
# parallel (one core each). Resumable: rerun the same command and unfinished runs continue
# from their checkpoints; finished runs (final.json reaching FRAMES) are skipped.
#   bash benchmarks/predator_prey.sh [FRAMES] [OUT] [ALGORITHMS...]
#   (defaults: 300000 runs/predator_prey resq qmix; SEEDS="0 1 2" selects the seeds, e.g. to
#   split one algorithm's seeds over two invocations running side by side)
# Then: python scripts/plot_curves.py OUT/*_seed* --out docs/predator_prey.png
set -euo pipefail
cd "$(dirname "$0")/.."
FRAMES=${1:-300000}
OUT=${2:-runs/predator_prey}
shift $(( $# > 2 ? 2 : $# ))
# the collector stops at a whole number of 8-episode batches (1600 frames) below its budget
export PAD=1600 EXTRA="checkpoint_interval=20000"
bash benchmarks/learning_runs.sh predator_prey "$FRAMES" "$OUT" "$@"
