"""Relative-overgeneralisation diagnostic: train a method offline on a fixed replay of
random-play episodes and follow its values at the replay's joint-capture states.

    python scripts/diagnose_ro.py algorithm=cw_qmix
    python scripts/diagnose_ro.py algorithm=resq enrich=20
    python scripts/diagnose_ro.py algorithm=qmix episodes=200 updates=500 out_dir=/tmp/ro

Reports, every ``log_every`` updates: ``Q*`` of the taken capture action (methods with a central
value), ``Q_tot``, ``Q_jt``, the catch gap ``Q_i(catch) - max other`` of the catching agents
and the share of those agents (and of joint captures) whose greedy action is catch. Writes
``out_dir/diagnose_<algorithm>.json`` and ``.png``.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from resq_torchrl import cli
from resq_torchrl.analysis.ro import format_log_table, run_diagnostic


@cli.main("diagnose_ro")
def main(cfg: DictConfig) -> None:
    result = run_diagnostic(OmegaConf.to_container(cfg, resolve=True))
    d = result["data"]
    print(
        f"{result['algorithm']} (seed {result['seed']}): {d['capture_steps']} capture steps in "
        f"{d['episodes']} random-play episodes ({100 * d['capture_step_share']:.3f}% of "
        f"{d['steps']} steps); replay of {d['replay_episodes']} episodes, "
        f"{100 * d['replay_capture_step_share']:.3f}% capture steps; {d['lone_catch_steps']} "
        f"lone-catch steps (measured in {d['lone_catch_episodes_measured']} episodes)"
    )
    log = result["log"]
    rows = sorted({0, *range(0, len(log), max(1, len(log) // 10)), len(log) - 1})
    print(format_log_table([log[i] for i in rows]))
    print(f"wrote {result['json_path']} and {result['png_path']} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
