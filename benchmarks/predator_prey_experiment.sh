#!/usr/bin/env bash
# The whole predator-prey experiment of docs/results.md ("Predator-prey as the papers ran it")
# in one resumable command: every run below to FRAMES env steps, WORKERS runs at a time (one
# core each), each worker taking the next run not yet finished, in this order:
#   1. epsilon over 100k steps (ResQ's reference schedule): resq, cw_qmix, seeds 0 1 2
#   2. epsilon over 1M steps (Weighted QMIX's robustness setting): resq, qmix, cw_qmix, 0 1 2
#   3. the remedy algorithm.tot_weighting=cw for resq, epsilon over 100k, seeds 0 1 2
# Each run is one call of benchmarks/predator_prey.sh (checkpoints with the replay buffer every
# 20k steps), so a run cut short by the end of a session continues from its last checkpoint
# when this command is given again; finished runs are skipped.
#   bash benchmarks/predator_prey_experiment.sh            # FRAMES=1000000 WORKERS=2
#   ONLY=required bash benchmarks/predator_prey_experiment.sh   # parts 1 and 2 only
#   DRY_RUN=1 ...     print each run's command instead of running it
#   RUNS=runs         the folder of the run sets
# Outputs: $RUNS/predator_prey_eps100000/, $RUNS/predator_prey_eps1000000/,
# $RUNS/predator_prey_eps100000_totcw/ (one <algorithm>_seed<k>/ and .log per run); this
# script's own lines go to stdout. Then the commands of docs/results.md copy the logs and
# draw the figures.
# (The body is one function, read whole before it runs: bash reads a script as it goes, so
# editing this file during a run would otherwise make it run a fragment of the new text.)
main() {
    set -euo pipefail
    cd "$(dirname "$0")/.."
    FRAMES=${FRAMES:-1000000}
    WORKERS=${WORKERS:-2}
    ONLY=${ONLY:-all}
    RUNS=${RUNS:-runs}
    case "$ONLY" in all | required) ;; *)
        echo "ONLY=$ONLY: expected all (every run) or required (parts 1 and 2)" >&2
        exit 2
        ;;
    esac
    [[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || { echo "WORKERS=$WORKERS: expected a positive integer" >&2; exit 2; }

    # anneal frames, algorithm, seed, run set suffix, extra overrides
    JOBS=()
    for seed in 0 1 2; do JOBS+=("100000 resq $seed" "100000 cw_qmix $seed"); done
    for algorithm in resq qmix cw_qmix; do
        for seed in 0 1 2; do JOBS+=("1000000 $algorithm $seed"); done
    done
    if [ "$ONLY" = all ]; then
        for seed in 0 1 2; do JOBS+=("100000 resq $seed _totcw algorithm.tot_weighting=cw"); done
    fi

    mkdir -p "$RUNS"
    exec 9> "$RUNS/.predator_prey_experiment.lock"
    flock -n 9 || {
        echo "another predator_prey_experiment.sh is running on $RUNS ($RUNS/.predator_prey_experiment.lock)" >&2
        exit 1
    }
    CLAIMS=$(mktemp -d "$RUNS/.predator_prey_claims.XXXXXX")
    trap 'rm -rf "$CLAIMS"' EXIT

    pids=()
    for w in $(seq 1 "$WORKERS"); do
        worker "$w" &
        pids+=($!)
    done
    status=0
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    if [ "$status" != 0 ]; then
        echo "some runs failed (lines above); the others are done or resumable" >&2
        exit 1
    fi
    [ "${DRY_RUN:-0}" = 1 ] || echo "done: every run reached $FRAMES env steps ($(date '+%F %T'))"
}

worker() {  # number; returns 1 if a run failed (the others still run)
    local i anneal algorithm seed suffix extra failed=0
    for i in "${!JOBS[@]}"; do
        mkdir "$CLAIMS/$i" 2> /dev/null || continue  # another worker has it
        read -r anneal algorithm seed suffix extra <<< "${JOBS[$i]}"
        local out="$RUNS/predator_prey_eps${anneal}${suffix:-}"
        local cmd=(bash benchmarks/predator_prey.sh "$FRAMES" "$out" "$algorithm")
        local vars="ANNEAL=$anneal SEEDS=$seed EXTRA=\"${extra:-}\""
        if [ "${DRY_RUN:-0}" = 1 ]; then
            echo "$vars ${cmd[*]}"
            continue
        fi
        echo "worker $1: $vars ${cmd[*]} ($(date '+%F %T'))"
        if ! ANNEAL=$anneal SEEDS=$seed EXTRA="${extra:-}" "${cmd[@]}"; then
            echo "worker $1: FAILED: $vars ${cmd[*]} (see $out/${algorithm}_seed$seed.log)" >&2
            failed=1
        fi
    done
    return $failed
}

main "$@"
exit $?
