#!/usr/bin/env bash
# Full-size predator-prey benchmark of the "Recurrent training pipeline" issue:
# ResQ and QMIX, punishment -2, seeds 0..2, FRAMES env steps each, two runs at a time.
# Resumable: rerun the same command and unfinished runs continue from their checkpoints.
#   bash benchmarks/predator_prey.sh [FRAMES] [OUT]        (defaults 300000 runs/predator_prey)
# Then: python scripts/plot_curves.py OUT/*_seed* --out docs/predator_prey.png
set -euo pipefail
cd "$(dirname "$0")/.."
FRAMES=${1:-300000}
OUT=${2:-runs/predator_prey}
run() {  # algorithm seed
    local dir="$OUT/$1_seed$2"
    local resume=false
    [ -f "$dir/checkpoint.pt" ] && resume=true
    [ -f "$dir/final.json" ] && [ "$(python -c "import json;print(json.load(open('$dir/final.json'))['frames']>=$FRAMES)")" = True ] && return 0
    OMP_NUM_THREADS=1 python scripts/train.py algorithm="$1" env=predator_prey seed="$2" \
        total_frames="$FRAMES" output_dir="$dir" resume=$resume progress=false \
        checkpoint_interval=20000 > "$dir.log" 2>&1
}
mkdir -p "$OUT"
for seed in 0 1 2; do
    run resq "$seed" &
    run qmix "$seed" &
    wait
done
