#!/usr/bin/env bash
# ResQ on VMAS balance (return curve) for the env-adapters issue: FRAMES env steps
# (default 400000), 32 vectorized envs, one update per 4 episodes, seeds $SEEDS (default 0).
#   bash benchmarks/vmas_balance.sh [FRAMES] [OUT]          (resumable: rerun to continue)
# Then: python scripts/plot.py runs='[OUT/*_seed*]' out=docs/vmas_balance
set -euo pipefail
cd "$(dirname "$0")/.."
export SEEDS=${SEEDS:-0}
export EXTRA="n_envs=32 episodes_per_batch=32 updates_per_episode=0.25 eval_interval=20000 eval_episodes=32 checkpoint_interval=100000 checkpoint_buffer=true"
exec bash benchmarks/learning_runs.sh vmas/balance "${1:-400000}" "${2:-runs/vmas_balance}" resq
