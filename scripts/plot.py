"""Learning curves and final performance of train.py runs, aggregated over seeds.

    python scripts/plot.py runs='[runs/resq_predator_prey_seed*,runs/qmix_predator_prey_seed*]'
    python scripts/plot.py runs='[docs/smax/2s3z]' metric=eval/win_rate out=docs/smax_2s3z_iqm

Runs are grouped into methods by their directory name before ``_seed``. Per method: the
interquartile mean (IQM) over seeds at each evaluation with a 95% percentile-bootstrap
interval, the same for the training return (binned), a final-performance table (IQM with
interval, mean, seeds, frames reached, of each run's last and best evaluation) and the
probability of improvement between methods. Writes ``<out>.png``, ``<out>.md`` and
``<out>.json`` (``resq_torchrl/analysis/aggregate.py`` says how runs are aligned).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from resq_torchrl import cli
from resq_torchrl.analysis import aggregate
from resq_torchrl.errors import check_writable


def _command() -> str:
    """This command line as typed in a shell (values quoted: runs='[a/*_seed*,b]')."""
    args = []
    for arg in sys.argv[1:]:
        key, sep, value = arg.partition("=")
        args.append(f"{key}={shlex.quote(value)}" if sep else shlex.quote(arg))
    return " ".join(["python scripts/plot.py", *args])


@cli.main("plot", auto_threads={"cpu": 1, "cuda": 1})
def main(cfg: DictConfig) -> None:
    out = Path(str(cfg.out))
    if out.suffix in (".png", ".md", ".json"):
        out = out.with_suffix("")
    check_writable("out", f"{out}.png")  # before the bootstrap, whose result would be lost
    runs = cfg.runs
    patterns = list(runs) if isinstance(runs, ListConfig) else [runs]
    methods = aggregate.load_runs(
        aggregate.find_runs([str(p) for p in patterns]), str(cfg.metric), cfg.train_metric
    )
    compare = cfg.compare
    if isinstance(compare, ListConfig):
        compare = OmegaConf.to_container(compare)
    summary = aggregate.summarize(
        methods,
        str(cfg.metric),
        cfg.train_metric,
        compare=compare,
        reps=int(cfg.reps),
        confidence=float(cfg.confidence),
        grid_step=cfg.grid_step,
        train_bin=cfg.train_bin,
        seed=int(cfg.seed),
    )
    figure, table, numbers = (Path(f"{out}{ext}") for ext in (".png", ".md", ".json"))
    aggregate.plot(summary, figure, cfg.title)
    command = _command()
    text = aggregate.markdown(summary, command)
    table.write_text(text)
    numbers.write_text(json.dumps({"command": command, **summary.as_dict()}, indent=1) + "\n")
    print(aggregate.markdown(summary))
    print(f"wrote {figure}, {table}, {numbers}")


if __name__ == "__main__":
    main()
