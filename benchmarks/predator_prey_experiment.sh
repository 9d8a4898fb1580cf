#!/usr/bin/env bash
# The whole predator-prey experiment of docs/results.md ("Predator-prey as the papers ran it")
# in one resumable command: every run below to FRAMES env steps, WORKERS runs at a time (one
# core each), each worker taking the next run not yet finished, in this order:
#   1. epsilon over 100k steps (ResQ's reference schedule): resq, cw_qmix, seeds 0 1 2
#   2. epsilon over 1M steps (Weighted QMIX's robustness setting): resq, qmix, cw_qmix, 0 1 2
#   3. the remedy algorithm.tot_weighting=cw for resq, epsilon over 100k, seeds 0 1 2
# Each run is one call of benchmarks/predator_prey.sh (checkpoints with the replay buffer every
# 20k steps), so a run cut short by the end of a session continues from its last checkpoint
# when this command is given again; finished runs are skipped, and so are runs whose
# committed log (REF/<set>/<run>/final.json) reached FRAMES: runs/ is git-ignored, and a
# fresh checkout holds only the committed logs. (A run cut short in a checkout that is then
# lost restarts from zero: training is deterministic per seed on one machine, so there it
# retraces the same numbers, while another CPU takes another trajectory (docs/results.md);
# the report keeps the longer committed log until the restart goes past it.)
#   bash benchmarks/predator_prey_experiment.sh            # FRAMES=1000000 WORKERS=2
#   ONLY=required bash benchmarks/predator_prey_experiment.sh   # parts 1 and 2 only
#   DRY_RUN=1 ...     print each run's command instead of running it
#   RUNS=runs         the folder of the run sets
#   REF=docs/predator_prey_ref   the committed logs (benchmarks/predator_prey_report.sh)
#   UNTIL="03:10"     (any `date -d` time) start a run only if it is expected to finish by
#                     then: expected = the slowest committed finished run of the same set
#                     and algorithm (seconds per env step from its final.json:
#                     "seconds_total", else "seconds" over the frames its last process
#                     trained, read from "resumed_from_frames" or its newest kept
#                     train_from_<frames>.log), else of the algorithm in any set, times the
#                     frames still to train (an overestimate for runs timed before the
#                     packed unrolls of docs/speed.md, when short-episode runs such as
#                     CW-QMIX's took up to twice as long); a run with no estimate starts.
#                     A partly done run that logged its own pace (`train/seconds`, CSV
#                     logger; the trainer logs it since 2026-12-02) is estimated from its
#                     last 100k frames instead.
#                     For a session that ends at a known time, so that no worker spends it
#                     on a run that cannot finish and would be lost with runs/.
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
    REF=${REF:-docs/predator_prey_ref}
    DEADLINE=
    if [ -n "${UNTIL:-}" ]; then
        DEADLINE=$(date -d "$UNTIL" +%s 2> /dev/null) || {
            echo "UNTIL=$UNTIL: expected a time date -d reads, e.g. 03:10 or '2026-12-02 03:10'" >&2
            exit 2
        }
    fi
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
        local set="eps${anneal}${suffix:-}"
        local out="$RUNS/predator_prey_$set"
        local name="${algorithm}_seed$seed"
        [ "$set" = eps100000_totcw ] && name="resq_totcw_seed$seed"
        if [ ! -f "$out/${algorithm}_seed$seed/final.json" ] \
            && reached "$REF/$set/$name/final.json"; then
            echo "worker $1: skipped $set $name: finished in an earlier session ($REF/$set/$name)"
            continue
        fi
        if [ -n "$DEADLINE" ] && ! fits "$set" "$algorithm" "$out/${algorithm}_seed$seed"; then
            echo "worker $1: skipped $set $name: expected to end after UNTIL=$UNTIL"
            continue
        fi
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

reached() {  # final.json: did that run reach FRAMES?
    [ -f "$1" ] && python -c "import json,sys; sys.exit(json.load(open('$1'))['frames'] < $FRAMES)"
}

fits() {  # set, algorithm, run dir: is the run expected to end before DEADLINE?
    python - "$REF" "$1" "$2" "$3" "$FRAMES" "$DEADLINE" << 'PY'
import json, sys, time
from pathlib import Path
ref, run_set, algorithm, run, frames, deadline = sys.argv[1:]
def pace(path):
    """Seconds per env step of a finished run: its whole time when every part was timed
    (seconds_total), else its last process's time over the frames that process trained:
    from resumed_from_frames, or in files written before that key from the newest
    train_from_<frames>.log kept beside it (benchmarks/collect_runs.py), else from 0 (which
    understates the pace of a run resumed across sessions)."""
    final = json.loads(path.read_text())
    if final["frames"] < int(frames):
        return None
    if final.get("seconds_total"):
        return final["seconds_total"] / final["frames"]
    starts = (log.stem.removeprefix("train_from_") for log in path.parent.glob("train_from_*.log"))
    newest = max((int(x) for x in starts if x.isdigit()), default=0)
    trained = final["frames"] - final.get("resumed_from_frames", newest)
    return final["seconds"] / trained if final.get("seconds") and trained > 0 else None
def finished(pattern):
    return [x for x in map(pace, Path(ref).glob(pattern)) if x]
def own(run, span=100_000, least=20_000):
    """Seconds per env step of the run itself over its last `span` frames, from the
    `train/seconds` its trainer logs (CSV logger: <run>/<name>/scalars/train/seconds.csv,
    lines "frames,seconds"), when they cover at least `least` frames: this machine, this
    code, this stage of the run (a run's pace changes as its episodes shorten)."""
    rows = []
    for path in Path(run).glob("*/scalars/train/seconds.csv"):
        lines = path.read_text().split("\n")[:-1]  # a last line with no newline: cut short
        for line in lines:
            try:
                frames_at, seconds = map(float, line.split(","))
            except ValueError:  # a header
                continue
            rows.append((frames_at, seconds))
    if not rows:
        return None
    rows.sort()
    last = rows[-1]
    first = next(r for r in rows if r[0] >= last[0] - span)
    if last[0] - first[0] < least or last[1] <= first[1]:
        return None
    return (last[1] - first[1]) / (last[0] - first[0])
mine = own(run)
per_frame = [mine] if mine else finished(f"{run_set}/{algorithm}_seed*/final.json") or finished(
    f"*/{algorithm}_seed*/final.json")
if not per_frame:
    sys.exit(0)  # no estimate: start it
done = 0  # frames already trained, read from the run's last evaluation
log = Path(run) / "eval.jsonl"
# the last complete line (a run killed at a session's end may leave one cut short), as
# resq_torchrl.training.loggers.read_eval_rows reads it; not imported: the package's import
# costs seconds of torch per run considered
for line in reversed(log.read_text().splitlines() if log.exists() else []):
    try:
        done = json.loads(line).get("frames", 0)
        break
    except json.JSONDecodeError:
        continue
left = max(int(frames) - done, 0) * max(per_frame)
sys.exit(time.time() + left > int(deadline))
PY
}

main "$@"
exit $?
