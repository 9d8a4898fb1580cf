#!/usr/bin/env bash
# Learning runs of several algorithms on one env: one queue per algorithm, the queues in
# parallel (one core each), the seeds of a queue one after another. Resumable: rerun the same
# command and unfinished runs continue from their checkpoints; finished runs (final.json
# reaching FRAMES) are skipped. A run another process is training (its <run>.lock held) is
# skipped too; a run that fails is reported and its queue goes on; the exit status is 1 if
# any failed.
#   bash benchmarks/learning_runs.sh ENV FRAMES OUT [ALGORITHMS...]   (default: resq qmix)
#   (a relative OUT is taken from the repository's root, wherever the command is given)
#   SEEDS="0 1 2"     the seeds of each queue
#   PAD=0             frames asked beyond FRAMES (a run ends at or past its total_frames)
#   EXTRA="..."       further Hydra overrides for every run (quoted as one string)
#   ARCHIVE_REPLAY=1  once a run is finished, pack its checkpointed replay buffer (replay/,
#                     e.g. 2.6 GB for predator-prey) into replay.tar.zst (about 1-5% of it:
#                     the stored observations are mostly zeros); a later run of this script
#                     with more FRAMES unpacks it before resuming. 0 keeps replay/ as it is.
# Then: python scripts/plot.py runs='[OUT/*_seed*]' out=docs/<name>   # <name>.png .md .json
# (The body is one function, read whole before it runs: bash reads a script as it goes, so
# editing this file while a queue waits would otherwise run a fragment of the new text.)
main() {
    set -euo pipefail
    local usage="usage: bash benchmarks/learning_runs.sh ENV FRAMES OUT [ALGORITHMS...]"
    if [ $# -lt 3 ]; then
        echo "error: ENV, FRAMES and OUT are needed; $usage" >&2
        return 2
    fi
    ENV=$1
    FRAMES=$2
    OUT=$3
    shift 3
    if ! [[ "$FRAMES" =~ ^[0-9]+$ && "${PAD:-0}" =~ ^[0-9]+$ ]]; then
        echo "error: FRAMES and PAD must be whole numbers of frames, got FRAMES=$FRAMES" \
            "PAD=${PAD:-0}; $usage" >&2
        return 2
    fi
    cd "$(dirname "$0")/.."  # a relative OUT is under the repository, as in the wrappers
    if [ $# -gt 0 ]; then ALGORITHMS=("$@"); else ALGORITHMS=(resq qmix); fi
    read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
    mkdir -p "$OUT"
    local pids=() status=0 algorithm pid
    for algorithm in "${ALGORITHMS[@]}"; do
        queue "$algorithm" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    return $status
}

# Packing and unpacking go through whole-directory renames, so a kill at any point leaves
# either a complete replay/ or a complete replay.tar.zst (never a partial replay/).
archive_replay() {  # dir: pack a finished run's replay buffer (needs zstd; else left as is)
    rm -rf "$1/replay.deleting"
    [ "${ARCHIVE_REPLAY:-1}" = 1 ] && [ -d "$1/replay" ] && command -v zstd > /dev/null || return 0
    tar -C "$1" -I zstd -cf "$1/replay.tar.zst.tmp" replay
    mv "$1/replay.tar.zst.tmp" "$1/replay.tar.zst"
    mv "$1/replay" "$1/replay.deleting"
    rm -rf "$1/replay.deleting"
}

unpack_replay() {  # dir: restore a packed replay buffer before a run resumes from it
    rm -rf "$1/replay.deleting" "$1/replay.unpack"
    [ -f "$1/replay.tar.zst" ] || return 0
    if [ ! -d "$1/replay" ]; then
        mkdir "$1/replay.unpack"
        tar -C "$1/replay.unpack" -I zstd -xf "$1/replay.tar.zst"
        mv "$1/replay.unpack/replay" "$1/replay"
        rmdir "$1/replay.unpack"
    fi
    rm "$1/replay.tar.zst"  # replay/ is complete: the run goes on from it
}

finished() {  # dir
    [ -f "$1/final.json" ] && python -c "import json,sys; sys.exit(json.load(open('$1/final.json'))['frames'] < $FRAMES)"
}

queue() {  # algorithm; returns 1 if one of its runs failed
    local seed dir lock failed=0
    for seed in ${SEEDS:-0 1 2}; do
        dir="$OUT/$1_seed$seed"
        exec {lock}> "$dir.lock"
        if ! flock -n "$lock"; then
            echo "skipped $dir: another process is training it ($dir.lock)" >&2
            exec {lock}>&-
            continue
        fi
        if finished "$dir"; then
            archive_replay "$dir"
        else
            unpack_replay "$dir"
            # auto: continue from its checkpoint, else start from zero (clearing the files
            # of an attempt that never reached a checkpoint: train.py refuses to write over
            # a run otherwise)
            local resume=auto
            if OMP_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false" \
                python scripts/train.py algorithm="$1" env="$ENV" seed="$seed" \
                total_frames=$((FRAMES + ${PAD:-0})) output_dir="$dir" resume=$resume \
                progress=false "${EXTRA_ARGS[@]}" > "$dir.log" 2>&1; then
                finished "$dir" && archive_replay "$dir"
            else
                echo "FAILED: $1 seed $seed (exit $?), see $dir.log" >&2
                failed=1
            fi
        fi
        exec {lock}>&-
    done
    return $failed
}

main "$@"
exit $?
