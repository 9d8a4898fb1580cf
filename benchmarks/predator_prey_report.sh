#!/usr/bin/env bash
# Rebuild the predator-prey figures and tables of docs/results.md from the runs of
# benchmarks/predator_prey_experiment.sh, however far they are:
#   1. copy each run set's logs into docs/predator_prey_ref/<set>/ (benchmarks/collect_runs.py)
#      and rebuild the runs table of docs/results.md;
#   2. draw the curves (greedy return, and the catch gap beside the collected capture steps):
#      docs/predator_prey{,_catch_gap}.png (epsilon over 100k, with the remedy) and
#      docs/predator_prey_eps1M{,_catch_gap,_lone_catches}.png (epsilon over 1M; the last:
#      greedy lone catches beside ResQ's train/w_r_mean), each with its .md/.json;
#   3. count what each finished run's greedy policy does (32 episodes: captures, lone
#      catches, return) into docs/predator_prey_greedy_events/<set>_<run>.json, for runs whose
#      JSON is missing or older than the run's final.json.
#   bash benchmarks/predator_prey_report.sh          # RUNS=runs DOCS=docs EPISODES=32
# The text of docs/results.md that reads these numbers is written by hand.
# (The body is one function, read whole before it runs: bash reads a script as it goes, so
# editing this file during a run would otherwise make it run a fragment of the new text.)
main() {
    set -euo pipefail
    cd "$(dirname "$0")/.."
    RUNS=${RUNS:-runs}
    EPISODES=${EPISODES:-32}
    DOCS=${DOCS:-docs}
    REF=$DOCS/predator_prey_ref
    EVENTS=$DOCS/predator_prey_greedy_events

    for set in eps100000 eps1000000 eps100000_totcw; do
        src="$RUNS/predator_prey_$set"
        [ -d "$src" ] || continue
        rename=()
        [ "$set" = eps100000_totcw ] && rename=(--rename resq_seed=resq_totcw_seed)
        python benchmarks/collect_runs.py "$src" "$REF/$set" "${rename[@]}"
    done
    python benchmarks/collect_runs.py --table "$REF" "$DOCS/results.md"

    plot "$DOCS/predator_prey" eps100000 eps100000_totcw
    plot "$DOCS/predator_prey_eps1M" eps1000000
    # the greedy policies' lone catches beside ResQ's share of non-greedy joint actions in
    # its batches (train/w_r_mean; methods without a residual have none): docs/results.md's
    # reading of why ResQ catches alone so long at epsilon over 1M
    if grep -qs '"eval/lone_catches"' "$REF"/eps1000000/*_seed*/eval.jsonl; then
        python scripts/plot.py runs="[$REF/eps1000000/*_seed*]" metric=eval/lone_catches \
            train_metric=train/w_r_mean compare=null out="$DOCS/predator_prey_eps1M_lone_catches"
    fi

    mkdir -p "$EVENTS"
    for run in "$RUNS"/predator_prey_eps*/*_seed*/; do
        run=${run%/}
        [ -f "$run/final.json" ] && [ -f "$run/checkpoint.pt" ] || continue
        set=${run%/*}
        set=${set##*/predator_prey_}
        name=${run##*/}
        [ "$set" = eps100000_totcw ] && name=${name/resq_seed/resq_totcw_seed}
        json="$EVENTS/${set%_totcw}_$name.json"
        [ -f "$json" ] && [ "$json" -nt "$run/final.json" ] && continue
        python scripts/evaluate.py output_dir="$run" episodes="$EPISODES" json_out="$json"
    done
    echo "wrote $REF/, $DOCS/results.md (runs table), $DOCS/predator_prey*.png/.md/.json, $EVENTS/"
}

plot() {  # out, run sets: both figures of the sets that hold runs (none: nothing drawn)
    local out=$1 set runs=()
    shift
    for set in "$@"; do
        compgen -G "$REF/$set/*_seed*" > /dev/null && runs+=("$REF/$set/*_seed*")
    done
    [ ${#runs[@]} -gt 0 ] || return 0
    local list
    list="[$(IFS=,; echo "${runs[*]}")]"
    python scripts/plot.py runs="$list" out="$out"
    # the catch gap is logged once a run's replay holds a capture
    for set in "$@"; do
        if grep -qs '"eval/catch_gap"' "$REF/$set"/*_seed*/eval.jsonl; then
            python scripts/plot.py runs="$list" out="${out}_catch_gap" metric=eval/catch_gap \
                train_metric=train/capture_steps
            return 0
        fi
    done
}

main "$@"
exit $?
