"""Reading a run's ``eval.jsonl`` without torch: tools that only read logs
(``benchmarks/collect_runs.py``, ``resq_torchrl.analysis``) import this module alone, and so
start in a fraction of a second rather than after torch, torchrl and the envs."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_eval_rows(path: Path, note: bool = False) -> list[dict]:
    """The evaluations of a run's ``eval.jsonl`` (one JSON object per line, written by the
    trainer), in order. A line cut short (a run killed, or a disk full, while writing it)
    is skipped, with a note on stderr when ``note``."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if note:
                    print(f"note: skipped a line cut short in {path}", file=sys.stderr)
    return rows


__all__ = ["read_eval_rows"]
