"""Packed unrolls (only the real steps of padded episodes) against unpacked ones, in one
process, the two alternating update by update on the same loss and batch (docs/speed.md).

    python benchmarks/packed_unroll.py                      # qmix, cw_qmix, resq; 3 rounds
    python benchmarks/packed_unroll.py --algorithms qmix --rounds 5

For each batch of :func:`update_worker.reference_batch` below (the share of real steps
printed with it) and each method, one update = loss forward + backward + rmsprop step with
``loss.pack_padding`` True, then False; prints the milliseconds of each round and the median
of the per-round ratios packed / unpacked. One torch thread (``OMP_NUM_THREADS`` too), the
training's allocator policy (``resq_torchrl.cli.reuse_freed_memory``). Packing applies only
at most ``rnn.PACK_MAX_FILL`` real steps, so mostly-full batches measure two unpacked paths.
"""

from __future__ import annotations

import argparse
import os
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
BATCHES = {  # name: arguments of reference_batch (32 episodes x 200 steps x 8 agents)
    "short (31 episodes of 20-60 steps, one of 200)": {
        "early_end_fraction": 1.0,
        "early_lengths": (20, 60),
    },
    "mid (episodes of 100-200 steps)": {"early_end_fraction": 1.0, "early_lengths": (100, 200)},
    "reference (a quarter ending at 100-200 steps)": {},
}


def timed(loss, optimizer, batch, pack: bool) -> float:
    """Seconds of one update with ``loss.pack_padding = pack``."""
    loss.pack_padding = pack
    data = batch.clone()
    torch.manual_seed(0)  # the distributional losses draw quantile fractions
    start = time.perf_counter()
    out = loss(data)
    optimizer.zero_grad()
    total_loss(out).backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", default="qmix,cw_qmix,resq")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=32, help="episodes per batch")
    parser.add_argument("--steps", type=int, default=200, help="the batch's (longest) length")
    args = parser.parse_args()
    known = algorithm_names(ROOT)
    unknown = [a for a in args.algorithms.split(",") if a not in known]
    if unknown:
        parser.error(f"unknown algorithm {unknown[0]!r} in --algorithms; choose from {known}")
    if min(args.rounds, args.episodes, args.steps) < 1:
        parser.error(
            f"--rounds, --episodes and --steps must be >= 1, got {args.rounds}, "
            f"{args.episodes}, {args.steps}"
        )
    torch.set_num_threads(1)
    reused = reuse_freed_memory()
    print(f"freed memory kept for reuse: {reused}; torch threads: 1", flush=True)
    for name, spec in BATCHES.items():
        batch = reference_batch(episodes=args.episodes, steps=args.steps, **spec)
        share = float(batch.get(("collector", "mask")).float().mean())
        print(f"\n{name}: {share:.0%} real steps", flush=True)
        for algo in args.algorithms.split(","):
            loss, optimizer = reference_loss(algo, ROOT)

            timed(loss, optimizer, batch, True), timed(loss, optimizer, batch, False)  # untimed
            ratios = []
            for r in range(args.rounds):
                packed = timed(loss, optimizer, batch, True)
                unpacked = timed(loss, optimizer, batch, False)
                ratios.append(packed / unpacked)
                print(
                    f"  {algo} round {r + 1}: packed {1e3 * packed:.0f} ms, "
                    f"unpacked {1e3 * unpacked:.0f} ms, ratio {packed / unpacked:.2f}",
                    flush=True,
                )
            print(
                f"  {algo}: packed / unpacked, median {statistics.median(ratios):.2f}", flush=True
            )


if __name__ == "__main__":
    main()
