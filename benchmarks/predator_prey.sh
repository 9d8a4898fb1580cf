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
if [ $# -gt 0 ]; then ALGORITHMS=("$@"); else ALGORITHMS=(resq qmix); fi

finished() {  # dir
    [ -f "$1/final.json" ] && python -c "import json,sys; sys.exit(json.load(open('$1/final.json'))['frames'] < $FRAMES)"
}

queue() {  # algorithm
    for seed in ${SEEDS:-0 1 2}; do
        local dir="$OUT/$1_seed$seed"
        finished "$dir" && continue
        local resume=false
        [ -f "$dir/checkpoint.pt" ] && resume=true
        # the collector stops at a whole number of 8-episode batches (1600 frames) below its
        # budget: ask for one batch more so that a run reaches FRAMES
        OMP_NUM_THREADS=1 python scripts/train.py algorithm="$1" env=predator_prey seed="$seed" \
            total_frames=$((FRAMES + 1600)) output_dir="$dir" resume=$resume progress=false \
            checkpoint_interval=20000 > "$dir.log" 2>&1
    done
}

mkdir -p "$OUT"
for algorithm in "${ALGORITHMS[@]}"; do
    queue "$algorithm" &
done
wait
