#!/usr/bin/env bash
# SMAX learning runs of the env-adapters issue: ResQ vs QMIX on 3m then 2s3z, seeds 0..2,
# FRAMES env steps each (default 300000), 32 envs, one update per 4 episodes; the replay
# buffer is checkpointed with the networks, so a rerun with more FRAMES continues with the
# same episodes (episodes in progress at the checkpoint and the JAX key are not restored).
#   bash benchmarks/smax.sh [FRAMES] [OUT]          (resumable: rerun to continue)
#   MAPS="2s3z" bash benchmarks/smax.sh 700000      (only some maps)
# Then: python scripts/plot.py runs='[OUT/3m/*_seed*]' metric=eval/win_rate out=docs/smax_3m
set -euo pipefail
cd "$(dirname "$0")/.."
FRAMES=${1:-300000}
OUT=${2:-runs/smax}
export EXTRA="n_envs=32 episodes_per_batch=32 updates_per_episode=0.25 eval_interval=10000 eval_episodes=32 checkpoint_interval=100000 checkpoint_buffer=true"
for map in ${MAPS:-3m 2s3z}; do
    bash benchmarks/learning_runs.sh "smax/$map" "$FRAMES" "$OUT/$map" resq qmix
done
