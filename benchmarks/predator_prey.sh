#!/usr/bin/env bash
# Predator-prey with punishment -2 (the reference env of the Weighted QMIX / ResQ papers),
# 1M env steps, greedy evaluation every 20k steps (16 episodes), seeds 0..2: the experiment
# of the issue "Predator-prey as the papers ran it". Two exploration schedules:
#   ANNEAL=100000  epsilon 1 -> 0.05 over 100k steps (ResQ's reference schedule)
#   ANNEAL=1000000 epsilon 1 -> 0.05 over 1M steps (Weighted QMIX's robustness setting)
# One queue per algorithm, the queues in parallel (one core each: run at most two at once on
# a 2-core machine), the seeds of a queue one after another. Resumable: rerun the same
# command and unfinished runs continue from their checkpoints and replay buffers.
#   ANNEAL=100000 SEEDS="0 1 2" bash benchmarks/predator_prey.sh [FRAMES] [OUT] [ALGORITHMS...]
#   (defaults: 1000000 runs/predator_prey_eps<ANNEAL> resq cw_qmix)
# Then: python scripts/plot.py runs='[OUT/*_seed*]' out=docs/predator_prey   # .png .md .json
set -euo pipefail
cd "$(dirname "$0")/.."
ANNEAL=${ANNEAL:-100000}
FRAMES=${1:-1000000}
OUT=${2:-runs/predator_prey_eps${ANNEAL}}
shift $(( $# > 2 ? 2 : $# ))
if [ $# -eq 0 ]; then set -- resq cw_qmix; fi
export PAD=${PAD:-0} EXTRA="exploration.anneal_frames=$ANNEAL eval_interval=20000 eval_episodes=16 checkpoint_interval=20000 checkpoint_buffer=true ${EXTRA:-}"
exec bash benchmarks/learning_runs.sh predator_prey "$FRAMES" "$OUT" "$@"
