#!/usr/bin/env bash
# Learning runs of several algorithms on one env: one queue per algorithm, the queues in
# parallel (one core each), the seeds of a queue one after another. Resumable: rerun the same
# command and unfinished runs continue from their checkpoints; finished runs (final.json
# reaching FRAMES) are skipped.
#   bash benchmarks/learning_runs.sh ENV FRAMES OUT [ALGORITHMS...]   (default: resq qmix)
#   SEEDS="0 1 2"     the seeds of each queue
#   PAD=0             frames asked beyond FRAMES (a run ends at or past its total_frames)
#   EXTRA="..."       further Hydra overrides for every run (quoted as one string)
#   ARCHIVE_REPLAY=1  once a run is finished, pack its checkpointed replay buffer (replay/,
#                     e.g. 2.6 GB for predator-prey) into replay.tar.zst (about 1-5% of it:
#                     the stored observations are mostly zeros); a later run of this script
#                     with more FRAMES unpacks it before resuming. 0 keeps replay/ as it is.
# Then: python scripts/plot.py runs='[OUT/*_seed*]' out=docs/<name>   # <name>.png .md .json
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=$1
FRAMES=$2
OUT=$3
shift 3
if [ $# -gt 0 ]; then ALGORITHMS=("$@"); else ALGORITHMS=(resq qmix); fi
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"

archive_replay() {  # dir: pack a finished run's replay buffer (needs zstd; else left as is)
    [ "${ARCHIVE_REPLAY:-1}" = 1 ] && [ -d "$1/replay" ] && command -v zstd > /dev/null || return 0
    tar -C "$1" -I zstd -cf "$1/replay.tar.zst.tmp" replay \
        && mv "$1/replay.tar.zst.tmp" "$1/replay.tar.zst" && rm -rf "$1/replay"
}

unpack_replay() {  # dir: restore a packed replay buffer before a run resumes from it
    [ -f "$1/replay.tar.zst" ] && [ ! -d "$1/replay" ] || return 0
    tar -C "$1" -I zstd -xf "$1/replay.tar.zst" && rm "$1/replay.tar.zst"
}

finished() {  # dir
    [ -f "$1/final.json" ] && python -c "import json,sys; sys.exit(json.load(open('$1/final.json'))['frames'] < $FRAMES)"
}

queue() {  # algorithm
    for seed in ${SEEDS:-0 1 2}; do
        local dir="$OUT/$1_seed$seed"
        if finished "$dir"; then archive_replay "$dir"; continue; fi
        unpack_replay "$dir"
        local resume=false
        [ -f "$dir/checkpoint.pt" ] && resume=true
        OMP_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false" \
            python scripts/train.py algorithm="$1" env="$ENV" seed="$seed" \
            total_frames=$((FRAMES + ${PAD:-0})) output_dir="$dir" resume=$resume \
            progress=false "${EXTRA_ARGS[@]}" > "$dir.log" 2>&1
        finished "$dir" && archive_replay "$dir"
    done
}

mkdir -p "$OUT"
for algorithm in "${ALGORITHMS[@]}"; do
    queue "$algorithm" &
done
wait
