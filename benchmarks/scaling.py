"""Training frames/s of ``scripts/train.py`` with each collector (issue 14): one process
collecting in the training process (``collector=single``), collector processes
(``multi_sync`` / ``multi_async`` with ``collector.num_workers``) and Ray actors
(``collector=ray``, a local Ray instance).

    python benchmarks/scaling.py                      # configs/scaling.yaml: simple_spread
    python benchmarks/scaling.py rounds=2 total_frames=2000

Every run is a fresh ``python scripts/train.py`` process with ``OMP_NUM_THREADS=threads``; in
each round every candidate runs once, in the order of ``candidates`` (reversed every other
round), so a load that drifts over the benchmark weighs on all of them alike. Per run:

- **loop frames/s**: ``frames / seconds`` of the run's ``final.json``: the training loop
  (collection, updates, the final save and greedy evaluation), after the collector is built;
- **process s**: the wall time of the whole process (imports, the env, starting the
  collector's workers or Ray, the loop, shutting them down).

Ratios to ``baseline`` are paired: candidate / baseline within the same round, then the
median over rounds. Writes ``out`` (JSON) and ``markdown`` and prints both paths.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from resq_torchrl import cli
from resq_torchrl.errors import ConfigError, at_least, check_writable

REPO = Path(__file__).resolve().parent.parent


def run_once(name: str, overrides: list[str], out_dir: Path, threads: int) -> dict:
    """One ``scripts/train.py`` process; its frames, loop seconds and process seconds."""
    args = [*overrides, f"output_dir={out_dir}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), RL_WARNINGS="False")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        if proc.returncode == 2 and errors:  # a one-line user error of train.py: pass it on
            raise ConfigError(f"{name}: scripts/train.py {errors[-1]}")
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{name}: scripts/train.py failed ({proc.returncode}):\n{tail}")
    final = json.loads((out_dir / "final.json").read_text())
    return {
        "frames": final["frames"],
        "updates": final["updates"],
        "loop_seconds": final["seconds"],
        "loop_fps": final["frames"] / final["seconds"],
        "process_seconds": wall,
        "load_average": os.getloadavg()[0],
    }


def paired(runs: dict, name: str, baseline: str, key: str) -> dict:
    ratios = [a[key] / b[key] for a, b in zip(runs[name], runs[baseline], strict=True)]
    return {"median": statistics.median(ratios), "rounds": ratios}


def measure(cfg: DictConfig) -> dict:
    candidates = {k: list(v) for k, v in cfg.candidates.items()}
    only = cfg.get("only")
    if only is not None:  # candidates={...} on the command line merges into the defaults
        unknown = [name for name in only if name not in candidates]
        if unknown or not only:
            raise ConfigError(
                f"only= lists the candidates to run, got {list(only)}; choose from: "
                f"{', '.join(candidates)}"
            )
        candidates = {name: candidates[name] for name in only}
    if cfg.baseline not in candidates:
        raise ConfigError(
            f"baseline={cfg.baseline!r} is not a candidate; choose one of: {', '.join(candidates)}"
        )
    common = [*cfg.train, *cfg.extra, f"total_frames={int(cfg.total_frames)}"]
    runs: dict[str, list[dict]] = {name: [] for name in candidates}
    started = time.time()
    for r in range(int(cfg.rounds)):
        order = list(candidates) if r % 2 == 0 else list(reversed(candidates))
        for name in order:
            out_dir = Path(cfg.run_dir) / f"{name}_r{r}"
            if out_dir.exists():  # this benchmark's own run of an earlier invocation
                shutil.rmtree(out_dir)
            result = run_once(name, [*common, *candidates[name]], out_dir, int(cfg.threads))
            runs[name].append(result)
            print(
                f"round {r} {name}: {result['loop_fps']:.0f} frames/s in the loop, "
                f"{result['process_seconds']:.1f} s process, load {result['load_average']:.1f}",
                flush=True,
            )
    summary = {}
    for name in candidates:
        fps = [x["loop_fps"] for x in runs[name]]
        wall = [x["process_seconds"] for x in runs[name]]
        summary[name] = {
            "overrides": candidates[name],
            "loop_fps_median": statistics.median(fps),
            "process_seconds_median": statistics.median(wall),
            "fps_ratio": paired(runs, name, cfg.baseline, "loop_fps"),
            "process_seconds_ratio": paired(runs, name, cfg.baseline, "process_seconds"),
        }
    return {
        "command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "threads": int(cfg.threads),
        },
        "config": OmegaConf.to_container(cfg, resolve=True),
        "baseline": cfg.baseline,
        "summary": summary,
        "runs": runs,
        "wall_seconds": time.time() - started,
    }


def write_markdown(result: dict, path: Path) -> None:
    base = result["baseline"]
    lines = [
        f"`{result['command'].strip()}` ({result['date']}, {result['machine']['cores']} cores, "
        f"{result['config']['rounds']} rounds, total_frames={result['config']['total_frames']}, "
        f"every run: {' '.join(result['config']['train'] + result['config']['extra'])})",
        "",
        f"| collector | loop frames/s (median) | ratio to {base} (per round) | process s (median) "
        f"| ratio to {base} (per round) |",
        "|---|---|---|---|---|",
    ]
    for name, s in result["summary"].items():
        fps = ", ".join(f"{x:.2f}" for x in s["fps_ratio"]["rounds"])
        wall = ", ".join(f"{x:.2f}" for x in s["process_seconds_ratio"]["rounds"])
        lines.append(
            f"| `{name}` ({' '.join(s['overrides'])}) | {s['loop_fps_median']:.0f} "
            f"| **{s['fps_ratio']['median']:.2f}** ({fps}) | {s['process_seconds_median']:.1f} "
            f"| **{s['process_seconds_ratio']['median']:.2f}** ({wall}) |"
        )
    loads = [x["load_average"] for runs in result["runs"].values() for x in runs]
    lines += ["", f"Load average after the runs: {min(loads):.1f} to {max(loads):.1f}."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def check_settings(cfg: DictConfig) -> None:
    """Before any run: ranges, and the outputs writable (the runs take minutes)."""
    at_least("rounds", cfg.rounds, 1)
    at_least("total_frames", cfg.total_frames, 1)
    check_writable("out", cfg.out)
    check_writable("markdown", cfg.markdown)
    check_writable("run_dir", cfg.run_dir, kind="dir")


@cli.main("scaling", auto_threads={"cpu": 1})
def main(cfg: DictConfig) -> None:
    check_settings(cfg)
    result = measure(cfg)
    out, md = Path(cfg.out), Path(cfg.markdown)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    write_markdown(result, md)
    print(md.read_text())
    print(f"wall time {result['wall_seconds']:.0f} s; wrote {out} and {md}", flush=True)


if __name__ == "__main__":
    main()
