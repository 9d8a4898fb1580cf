"""Repeat one method's update on the predator-prey reference batch, for a sampling profiler
to attach to, and say where each update's time went (docs/speed.md).

    python benchmarks/update_profile.py                          # resq, 30 updates
    python benchmarks/update_profile.py --algorithm qmix --updates 200 &
    perf record -g -p <the printed pid> -- sleep 15              # or: py-spy record --native

Per update: the CPU milliseconds of the loss forward, the backward and the optimizer step,
then the process's user and system time and its minor page faults over the update
(``getrusage``). An update whose tensors outgrow the heap pages in new memory: its system
time is the kernel zeroing those pages, and it shows as a fault count in the thousands. The
summary gives the median over all updates and over those without faults, the steady state
a long training run reaches once its heap has grown to its peak. One torch thread
(``OMP_NUM_THREADS`` too), the training's allocator policy
(``resq_torchrl.cli.reuse_freed_memory``), the batch of ``update_worker.reference_batch``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RL_WARNINGS", "False")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from update_worker import algorithm_names, reference_batch, reference_loss  # noqa: E402

from resq_torchrl.cli import reuse_freed_memory  # noqa: E402
from resq_torchrl.training.builders import total_loss  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: minor page faults from which an update counts as having paged in new memory
FAULTS_PAGED_IN = 100


def one_update(loss, optimizer, batch) -> dict:
    """Forward, backward and optimizer CPU ms of one update, with its rusage deltas."""
    data = batch.clone()  # the loss writes into its input
    torch.manual_seed(0)  # the distributional losses draw quantile fractions
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.process_time()
    out = loss(data)
    t1 = time.process_time()
    optimizer.zero_grad()
    total_loss(out).backward()
    t2 = time.process_time()
    optimizer.step()
    t3 = time.process_time()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "forward": 1e3 * (t1 - t0),
        "backward": 1e3 * (t2 - t1),
        "optimizer": 1e3 * (t3 - t2),
        "user": 1e3 * (after.ru_utime - before.ru_utime),
        "system": 1e3 * (after.ru_stime - before.ru_stime),
        "faults": after.ru_minflt - before.ru_minflt,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithm", default="resq")
    parser.add_argument("--updates", type=int, default=30, help="timed updates")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    parser.add_argument("--episodes", type=int, default=32, help="episodes per batch")
    parser.add_argument("--steps", type=int, default=200, help="the batch's length")
    args = parser.parse_args(argv)
    known = algorithm_names(ROOT)
    if args.algorithm not in known:
        parser.error(f"unknown --algorithm {args.algorithm!r}; choose one of {known}")
    if args.updates < 1 or args.warmup < 0:
        parser.error(f"--updates must be >= 1 and --warmup >= 0, got {args.updates}, {args.warmup}")
    if args.episodes < 1 or args.steps < 1:
        parser.error(f"--episodes and --steps must be >= 1, got {args.episodes}, {args.steps}")
    torch.set_num_threads(1)
    reused = reuse_freed_memory()
    print(f"pid {os.getpid()}; torch threads 1; freed memory kept for reuse: {reused}", flush=True)
    loss, optimizer = reference_loss(args.algorithm, ROOT)
    batch = reference_batch(episodes=args.episodes, steps=args.steps)
    for _ in range(args.warmup):
        one_update(loss, optimizer, batch)
    rows = []
    for i in range(args.updates):
        row = one_update(loss, optimizer, batch)
        rows.append(row)
        print(
            f"{args.algorithm} update {i + 1}: forward {row['forward']:.0f} ms, backward "
            f"{row['backward']:.0f}, optimizer {row['optimizer']:.0f}; user {row['user']:.0f}, "
            f"system {row['system']:.0f}, minor faults {row['faults']}",
            flush=True,
        )
    total = [r["user"] + r["system"] for r in rows]
    quiet = [r["user"] + r["system"] for r in rows if r["faults"] < FAULTS_PAGED_IN]
    steady = f"{statistics.median(quiet):.0f} ms" if quiet else "none"
    print(
        f"{args.algorithm}: median {statistics.median(total):.0f} ms of CPU per update over "
        f"{len(rows)}; {len(rows) - len(quiet)} paged in new memory "
        f"(>= {FAULTS_PAGED_IN} minor faults); median of the others {steady}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
