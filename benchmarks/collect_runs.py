"""Copy the logs of long learning runs into docs/ (they live in the git-ignored runs/) and
rebuild the runs table of docs/results.md between ``<!-- runs-table -->`` markers.

    python benchmarks/collect_runs.py runs/predator_prey_eps100000 docs/predator_prey_ref/eps100000
    python benchmarks/collect_runs.py runs/predator_prey_eps100000_totcw \\
        docs/predator_prey_ref/eps100000_totcw --rename resq_seed=resq_totcw_seed
    python benchmarks/collect_runs.py --table docs/predator_prey_ref docs/results.md

Per run it copies ``eval.jsonl``, ``final.json``, the csv logger's ``scalars/`` and the run's
log (``<run>.log`` beside the run directory, overwritten by each resumed session, so it is
kept as ``train_from_<frames>.log``, named by the frames the session resumed from; logs from
past that point, left by an attempt whose checkpoint was lost and which this run retraced,
are removed). A run that restarted from zero and so far retraces, evaluation for evaluation, a
longer committed log (deterministic training on one machine, checkpoint lost) leaves that log
in place until it goes further; so does an unfinished restart on another machine, which
follows another trajectory (its CPU rounds differently) and replaces the committed log once
it goes further. Nothing else: checkpoints and replay dumps stay in runs/.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

# the project's one reader of eval.jsonl: it skips a line cut short by a run killed while
# writing it, the usual state of a run at the end of a session
from resq_torchrl.training.evallog import read_eval_rows

MARK, END = "<!-- runs-table -->", "<!-- /runs-table -->"


def collect(src: Path, dst: Path, renames: list[tuple[str, str]]) -> list[Path]:
    copied = []
    for run in sorted(p for p in src.iterdir() if p.is_dir() and (p / "eval.jsonl").exists()):
        name = run.name
        for old, new in renames:
            name = name.replace(old, new)
        out = dst / name
        if not read_eval_rows(run / "eval.jsonl") and (out / "eval.jsonl").exists():
            print(f"kept {out}: {run / 'eval.jsonl'} has no readable evaluation")
            continue
        finished = _readable_json(run / "final.json")
        if _shorter(run / "eval.jsonl", out / "eval.jsonl") and not finished:
            how = (
                "retraces it so far"
                if _retraces(run / "eval.jsonl", out / "eval.jsonl")
                else "follows another trajectory (another machine's CPU: see docs/results.md)"
            )
            print(f"kept {out}: its committed log goes further, and {run} {how}")
            continue
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run / "eval.jsonl", out / "eval.jsonl")
        if finished:  # never a final.json cut short over a whole one
            shutil.copy2(run / "final.json", out / "final.json")
        for scalars in run.glob("*/scalars"):
            shutil.copytree(scalars, out / scalars.parent.name / "scalars", dirs_exist_ok=True)
        log = run.with_name(run.name + ".log")
        if log.exists():
            text = log.read_text(errors="replace")
            resumed = re.search(r"resumed from \S+ at (\d+) frames", text)
            start = int(resumed.group(1)) if resumed else 0
            # the logs of sessions that went past this one's start belong to an attempt
            # that was lost with its checkpoint (a fresh checkout): this run retraced them
            for stale in out.glob("train_from_*.log"):
                frames = stale.stem.removeprefix("train_from_")
                if frames.isdigit() and int(frames) > start:
                    stale.unlink()
            shutil.copy2(log, out / f"train_from_{start}.log")
        copied.append(out)
    return copied


def _readable_json(path: Path) -> bool:
    """Whether ``path`` holds a whole JSON document (a run's ``final.json``: one cut short by
    a run killed while writing it does not make the run finished)."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def _shorter(new: Path, committed: Path) -> bool:
    """Has the run at ``new`` made fewer evaluations than the log committed at
    ``committed``? An unfinished restart (its checkpoint lost with a fresh checkout) then
    leaves the committed log in place until it goes further, whether it retraces it (same
    machine) or not (another CPU rounds differently): its shorter log would only hide the
    committed numbers."""
    return committed.exists() and 0 < len(read_eval_rows(new)) < len(read_eval_rows(committed))


def _retraces(new: Path, committed: Path) -> bool:
    """Is the run at ``new`` a restart (its checkpoint lost with a fresh checkout) that has
    so far reproduced, evaluation for evaluation, a longer log committed at ``committed``?
    Training is deterministic per seed, so such a run retraces the committed numbers; its
    shorter log would only hide the ones it has not reached yet."""
    if not committed.exists():
        return False
    ours, theirs = read_eval_rows(new), read_eval_rows(committed)
    return 0 < len(ours) < len(theirs) and theirs[: len(ours)] == ours


def _complete(row: dict) -> bool:
    """Does an eval.jsonl row carry what the runs table shows?"""
    return all(isinstance(row.get(k), int | float) for k in ("frames", "updates", "eval/return"))


def _last_csv_value(path: Path) -> str:
    if not path.exists():
        return "-"
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return str(int(float(lines[-1].split(",")[-1]))) if lines else "-"


def _num(x: float) -> str:
    return f"{x:g}"


def table(root: Path) -> str:
    rows = [
        "| run set | run | env steps reached | updates | last greedy return | best | capture "
        "steps collected | greedy return every 20k | catch gap every 20k |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in sorted(root.glob("*/*_seed*")):
        if not (run / "eval.jsonl").is_file():  # a logger's folder, not a run
            continue
        # rows without a greedy return (a log of another tool, or a run that never
        # evaluated) cannot fill the table's columns: such a run is left out, and said so
        lines = [row for row in read_eval_rows(run / "eval.jsonl") if _complete(row)]
        if not lines:
            print(f"left out {run}: no evaluation with frames, updates and eval/return")
            continue
        by_frames: dict[int, dict] = {}
        for line in lines:  # a resumed run redoes evaluations past its checkpoint: last wins
            by_frames = {f: v for f, v in by_frames.items() if f < line["frames"]}
            by_frames[line["frames"]] = line
        evals = [by_frames[f] for f in sorted(by_frames)]
        returns = [e["eval/return"] for e in evals]
        gaps = [e.get("eval/catch_gap") for e in evals]
        capture = _last_csv_value(
            next(iter(run.glob("*/scalars/train/capture_steps.csv")), Path("-"))
        )
        last = evals[-1]
        rows.append(
            f"| {run.parent.name} | {run.name} | {last['frames']:,} | {last['updates']} | "
            f"{_num(returns[-1])} | {_num(max(returns))} | {capture} | "
            f"{', '.join(_num(r) for r in returns)} | "
            f"{', '.join('-' if g is None else f'{g:.1f}' for g in gaps)} |"
        )
    return "\n".join(rows)


def write_table(root: Path, markdown: Path, parser: argparse.ArgumentParser) -> None:
    """Replace the table between the markers of ``markdown``; a root without a run (a
    mistyped path) is refused rather than written as an empty table."""
    if not markdown.is_file():
        parser.error(f"{markdown} is not a file (the results page whose runs table to rebuild)")
    if not root.is_dir():
        parser.error(f"{root} is not a directory (the docs root of <set>/<run>_seed<k>/ runs)")
    rows = table(root)
    if len(rows.splitlines()) <= 2:
        parser.error(f"no <set>/<run>_seed<k>/eval.jsonl under {root}: nothing to tabulate")
    text = markdown.read_text()
    if MARK not in text or END not in text:
        parser.error(f"{markdown} has no {MARK} ... {END} markers")
    head, rest = text.split(MARK, 1)
    _, tail = rest.split(END, 1)
    markdown.write_text(f"{head}{MARK}\n{rows}\n{END}{tail}")
    print(f"wrote the runs table of {root} into {markdown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="runs directory (or, with --table, docs root)")
    parser.add_argument("dst", type=Path, help="docs directory (or, with --table, results.md)")
    parser.add_argument("--rename", action="append", default=[], help="OLD=NEW in run names")
    parser.add_argument("--table", action="store_true", help="rebuild the runs table instead")
    args = parser.parse_args()
    if args.table:
        write_table(args.src, args.dst, parser)
        return
    if not args.src.is_dir():
        parser.error(f"{args.src} is not a directory of runs")
    bad = [r for r in args.rename if "=" not in r or r.startswith("=")]
    if bad:
        parser.error(f"--rename takes OLD=NEW, got {bad[0]!r}")
    renames = [tuple(r.split("=", 1)) for r in args.rename]
    for out in collect(args.src, args.dst, renames):
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
