"""``benchmarks/learning_runs.sh`` (the queue behind ``benchmarks/predator_prey.sh``): a
finished run's replay buffer is packed into ``replay.tar.zst``; a later call with more
frames unpacks it and resumes from the checkpoint with the buffer it saved, then packs it
again; ``ARCHIVE_REPLAY=0`` leaves ``replay/`` alone."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import TINY_CHECKPOINTED_RUN

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("zstd") is None or shutil.which("bash") is None, reason="needs bash and zstd"
)

#: a tiny predator-prey run with its replay buffer in every checkpoint
EXTRA = " ".join([*TINY_CHECKPOINTED_RUN, "logger=csv"])


def _queue(out: Path, frames: int, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "benchmarks/learning_runs.sh", "predator_prey", str(frames), str(out), "vdn"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "SEEDS": "0", "EXTRA": EXTRA, "RL_WARNINGS": "False", **env},
    )


def _frames(run: Path) -> int:
    return json.loads((run / "final.json").read_text())["frames"]


def test_a_finished_runs_replay_is_packed_and_unpacked_to_extend_it(tmp_path):
    out = tmp_path / "runs"
    run = out / "vdn_seed0"
    first = _queue(out, 60)
    assert first.returncode == 0, first.stderr[-2000:] + (out / "vdn_seed0.log").read_text()[-2000:]
    assert _frames(run) >= 60
    assert (run / "replay.tar.zst").is_file() and not (run / "replay").exists()

    again = _queue(out, 60)  # finished: nothing runs, nothing is unpacked
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run / "replay.tar.zst").is_file() and not (run / "replay").exists()

    # what a kill mid-unpack or mid-delete leaves: never read, cleared
    (run / "replay.unpack" / "replay").mkdir(parents=True)
    (run / "replay.unpack" / "replay" / "episodes.json").write_text("{partial")
    (run / "replay.deleting").mkdir()
    longer = _queue(out, 120)  # more frames: unpacked, resumed with the saved buffer
    log = (out / "vdn_seed0.log").read_text()
    assert longer.returncode == 0, longer.stderr[-2000:] + log[-2000:]
    resumed = re.search(r"resumed from .* \((\d+) episodes, (\d+) in the replay buffer\)", log)
    assert resumed, log[-2000:]
    assert int(resumed[1]) == int(resumed[2]) > 0  # every collected episode came back
    assert "no replay buffer saved" not in log
    assert _frames(run) >= 120
    assert (run / "replay.tar.zst").is_file() and not (run / "replay").exists()
    assert not (run / "replay.unpack").exists() and not (run / "replay.deleting").exists()


def test_archive_replay_0_keeps_the_replay_directory(tmp_path):
    out = tmp_path / "runs"
    done = _queue(out, 40, ARCHIVE_REPLAY="0")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "vdn_seed0" / "replay").is_dir()
    assert not (out / "vdn_seed0" / "replay.tar.zst").exists()


def test_a_failed_run_is_reported_and_its_queue_goes_on(tmp_path):
    out = tmp_path / "runs"
    # seed 0 fails at start (an unknown algorithm key); seed 1 of the same queue still runs
    (out / "vdn_seed0").mkdir(parents=True)
    (out / "vdn_seed0" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    done = _queue(out, 40, SEEDS="0 1", ARCHIVE_REPLAY="0")
    assert done.returncode == 1
    assert f"FAILED: vdn seed 0 (exit 2), see {out}/vdn_seed0.log" in done.stderr
    assert _frames(out / "vdn_seed1") >= 40 and not (out / "vdn_seed0" / "final.json").exists()


def test_a_run_another_process_trains_is_skipped(tmp_path):
    import fcntl

    out = tmp_path / "runs"
    out.mkdir()
    with open(out / "vdn_seed0.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running queue holds it
        done = _queue(out, 40)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == (
        f"skipped {out}/vdn_seed0: another process is training it ({out}/vdn_seed0.lock)"
    )
    assert not (out / "vdn_seed0").exists()


def _script(name: str, **env: str) -> subprocess.CompletedProcess:
    """``bash benchmarks/<name>`` from the repository root with ``env`` added."""
    return subprocess.run(
        ["bash", f"benchmarks/{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )


def _experiment(runs: Path, **env: str) -> subprocess.CompletedProcess:
    env.setdefault("REF", str(runs / "no_committed_logs"))
    return _script("predator_prey_experiment.sh", RUNS=str(runs), DRY_RUN="1", **env)


def _committed(
    ref: Path, run: str, frames: int, seconds: float, logs: tuple[int, ...] = (), **timing
) -> None:
    """A committed log of a run (``<set>/<name>/final.json``, with ``train_from_<k>.log``
    for each of ``logs``) as the report copies it."""
    (ref / run).mkdir(parents=True)
    final = {"frames": frames, "seconds": seconds, **timing}
    (ref / run / "final.json").write_text(json.dumps(final))
    for start in logs:
        (ref / run / f"train_from_{start}.log").write_text("")


def test_the_experiment_skips_runs_whose_committed_log_is_finished(tmp_path):
    ref = tmp_path / "ref"
    _committed(ref, "eps100000/cw_qmix_seed0", 1_000_000, 9000.0)
    _committed(ref, "eps100000_totcw/resq_totcw_seed1", 1_000_000, 9000.0)
    _committed(ref, "eps1000000/qmix_seed2", 700_000, 5000.0)  # cut short: not finished
    done = _experiment(tmp_path / "runs", REF=str(ref), WORKERS="1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    skipped = [line for line in lines if "skipped" in line]
    assert len(lines) == 18 and len(skipped) == 2
    assert "skipped eps100000 cw_qmix_seed0: finished in an earlier session" in skipped[0]
    assert "skipped eps100000_totcw resq_totcw_seed1: finished" in skipped[1]
    qmix = [line for line in lines if line.endswith("predator_prey_eps1000000 qmix")]
    assert any("SEEDS=2" in line for line in qmix)
    # a longer budget than the committed run reached: it is not finished any more
    longer = _experiment(tmp_path / "runs", REF=str(ref), FRAMES="2000000")
    assert longer.returncode == 0, longer.stderr
    assert len(longer.stdout.splitlines()) == 18 and "skipped" not in longer.stdout


@pytest.mark.parametrize(
    ("seconds", "timing"),
    [
        (10_000.0, {}),  # one process from 0
        (5_000.0, {"resumed_from_frames": 500_000}),  # its last process trained half of it
        (5_000.0, {"logs": (0, 500_000)}),  # the same, told by the logs kept beside it
        (5_000.0, {"resumed_from_frames": 500_000, "seconds_total": 10_000.0}),
    ],
)
def test_the_until_estimate_takes_a_resumed_runs_pace_from_the_part_it_timed(
    tmp_path, seconds, timing
):
    """Every case is 0.01 s per env step: a run of 1M steps takes 10,000 s, so none starts
    with 2 hours left. (A resumed run's "seconds" cover its last process only; read over
    all 1M steps it would look twice as fast and start runs that cannot end in time.)"""
    ref = tmp_path / "ref"
    _committed(ref, "eps100000/cw_qmix_seed0", 1_000_000, seconds, **timing)
    soon = _experiment(tmp_path / "runs", REF=str(ref), UNTIL="+2 hours", WORKERS="1")
    assert soon.returncode == 0, soon.stderr
    late = [line for line in soon.stdout.splitlines() if "expected to end after" in line]
    assert len(late) == 5 and all("cw_qmix" in line for line in late)
    roomy = _experiment(tmp_path / "runs", REF=str(ref), UNTIL="+3 hours", WORKERS="1")
    assert roomy.returncode == 0, roomy.stderr
    assert roomy.stdout.strip() and "expected to end after" not in roomy.stdout


def test_the_experiment_starts_a_partly_done_run_by_the_frames_it_has_left(tmp_path):
    """(How the pace is read: the test above, whose cases also show that at 0.01 s per frame
    the 5 cw_qmix runs left, at epsilon over 100k (seeds 1 and 2) and over 1M (any set's
    estimate), are skipped with 2 hours left, resq and qmix, with no estimate, started.)"""
    ref = tmp_path / "ref"
    _committed(ref, "eps100000/cw_qmix_seed0", 1_000_000, 10_000.0)  # 0.01 s per frame
    # a run killed mid-line at 900k: its last complete evaluation counts, 100k left (1000 s)
    partial = tmp_path / "runs" / "predator_prey_eps100000" / "cw_qmix_seed1"
    partial.mkdir(parents=True)
    (partial / "eval.jsonl").write_text('{"frames": 900000}\n{"frames": 92')
    resumed = _experiment(tmp_path / "runs", REF=str(ref), UNTIL="+30 minutes", WORKERS="1")
    assert resumed.returncode == 0, resumed.stderr
    assert "skipped eps100000 cw_qmix_seed1" not in resumed.stdout
    assert "skipped eps100000 cw_qmix_seed2: expected to end after" in resumed.stdout
    bad = _experiment(tmp_path / "runs", REF=str(ref), UNTIL="teatime-ish")
    assert bad.returncode == 2 and not bad.stdout
    assert bad.stderr.strip().startswith("UNTIL=teatime-ish: expected a time date -d reads")


@pytest.mark.parametrize(
    ("own_pace", "left", "starts"),
    [
        (0.001, 500_000, True),  # 500 s by its own pace; 5,000 s by the committed run's
        (0.02, 100_000, False),  # 2,000 s by its own pace; 1,000 s by the committed run's
    ],
)
def test_the_until_estimate_prefers_a_partly_done_runs_own_logged_pace(
    tmp_path, own_pace, left, starts
):
    """A run that logged ``train/seconds`` is estimated from its own last 100k frames (this
    machine, this code), not from the committed runs (here 0.01 s per frame); with 30
    minutes left it starts exactly when its own pace says it ends in time. Earlier, slower
    frames (0.05 s each) more than 100k back do not count."""
    ref = tmp_path / "ref"
    _committed(ref, "eps100000/cw_qmix_seed0", 1_000_000, 10_000.0)  # 0.01 s per frame
    run = tmp_path / "runs" / "predator_prey_eps100000" / "cw_qmix_seed1"
    at = 1_000_000 - left
    (run / "cw_qmix_predator_prey_seed1" / "scalars" / "train").mkdir(parents=True)
    (run / "eval.jsonl").write_text(json.dumps({"frames": at}) + "\n")
    steps = range(0, at + 1, 10_000)
    seconds = [0.05 * min(f, at - 100_000) + own_pace * max(f - (at - 100_000), 0) for f in steps]
    lines = [f"{f},{s}" for f, s in zip(steps, seconds, strict=True)]
    (run / "cw_qmix_predator_prey_seed1" / "scalars" / "train" / "seconds.csv").write_text(
        "step,value\n" + "\n".join(lines) + f"\n{at + 10_000},1"  # a header; a line cut
    )  # short by a kill (no newline, and its value would end the run in no time): not read
    out = _experiment(tmp_path / "runs", REF=str(ref), UNTIL="+30 minutes", WORKERS="1")
    assert out.returncode == 0, out.stderr
    skipped = "skipped eps100000 cw_qmix_seed1: expected to end after" in out.stdout
    assert skipped is not starts, out.stdout


def test_the_experiment_hands_every_run_to_exactly_one_worker(tmp_path):
    done = _experiment(tmp_path, WORKERS="3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(set(lines)) == 18  # 6 + 9 runs of the issue, 3 of the remedy
    eps100k = [line for line in lines if "ANNEAL=100000 " in line and '=""' in line]
    eps1m = [line for line in lines if "ANNEAL=1000000 " in line]
    remedy = [line for line in lines if "tot_weighting=cw" in line]
    assert len(eps100k) == 6 and len(eps1m) == 9 and len(remedy) == 3
    assert all(line.endswith(f"{tmp_path}/predator_prey_eps100000_totcw resq") for line in remedy)
    for algorithm in ("resq", "qmix", "cw_qmix"):
        assert sum(line.endswith(f"eps1000000 {algorithm}") for line in eps1m) == 3
    required = _experiment(tmp_path, ONLY="required")
    assert required.returncode == 0 and len(required.stdout.splitlines()) == 15
    assert not list(tmp_path.glob(".predator_prey_claims.*"))  # removed on exit


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ONLY": "some"}, "ONLY=some: expected all (every run) or required (parts 1 and 2)"),
        ({"WORKERS": "two"}, "WORKERS=two: expected a positive integer"),
    ],
)
def test_the_experiment_refuses_bad_settings_in_one_line(tmp_path, env, message):
    done = _experiment(tmp_path, **env)
    assert done.returncode == 2 and done.stderr.strip() == message and not done.stdout


def test_a_second_experiment_on_the_same_runs_is_refused(tmp_path):
    import fcntl

    with open(tmp_path / ".predator_prey_experiment.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running experiment holds it
        done = _experiment(tmp_path)
    assert done.returncode == 1 and not done.stdout
    assert done.stderr.strip().startswith("another predator_prey_experiment.sh is running")


def _report(runs: Path, docs: Path) -> subprocess.CompletedProcess:
    return _script("predator_prey_report.sh", RUNS=str(runs), DOCS=str(docs), EPISODES="2")


@pytest.mark.slow  # about 60 s of CPU: one training run, five plots, two evaluations
def test_the_report_collects_plots_and_counts_the_greedy_events_of_a_run_set(tmp_path):
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    made = _queue(runs / "predator_prey_eps100000", 40, ARCHIVE_REPLAY="0")
    assert made.returncode == 0, made.stderr[-2000:]
    docs.mkdir()
    (docs / "results.md").write_text(
        "before\n<!-- runs-table -->\nold\n<!-- /runs-table -->\nafter\n"
    )
    report = _report(runs, docs)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (docs / "predator_prey_ref" / "eps100000" / "vdn_seed0" / "eval.jsonl").is_file()
    results = (docs / "results.md").read_text()
    assert "| eps100000 | vdn_seed0 |" in results and "old" not in results
    assert results.startswith("before\n") and results.endswith("after\n")
    assert (docs / "predator_prey.png").stat().st_size > 0
    # no capture in so short a run, so no catch gap to draw
    assert (
        "eval/catch_gap" not in (runs / "predator_prey_eps100000/vdn_seed0/eval.jsonl").read_text()
    )
    assert not (docs / "predator_prey_catch_gap.png").exists()
    events_json = docs / "predator_prey_greedy_events" / "eps100000_vdn_seed0.json"
    events = json.loads(events_json.read_text())
    assert events["episodes"] == 2 and events["checkpoint_frames"] >= 40
    assert {"captures", "lone_catches", "return"} <= events.keys()
    written = events_json.stat().st_mtime_ns
    again = _report(runs, docs)  # the events JSON is newer than final.json: kept
    assert again.returncode == 0, again.stderr[-2000:]
    assert events_json.stat().st_mtime_ns == written
    # the same run as the epsilon-over-1M set: its figures, lone catches among them
    shutil.copytree(runs / "predator_prey_eps100000", runs / "predator_prey_eps1000000")
    assert (
        '"eval/lone_catches"'
        in (runs / "predator_prey_eps1000000/vdn_seed0/eval.jsonl").read_text()
    )
    eps1m = _report(runs, docs)
    assert eps1m.returncode == 0, eps1m.stderr[-2000:]
    for figure in ("predator_prey_eps1M", "predator_prey_eps1M_lone_catches"):
        assert (docs / f"{figure}.png").stat().st_size > 0
        assert (docs / f"{figure}.md").is_file()
    assert "eval/lone_catches" in (docs / "predator_prey_eps1M_lone_catches.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "ENV, FRAMES and OUT are needed"),
        (["predator_prey", "abc", "/tmp/unused_out"], "FRAMES and PAD must be whole numbers"),
    ],
)
def test_bad_arguments_are_one_line_and_status_2(args, message):
    """Missing arguments were bash's '$1: unbound variable'; FRAMES=abc killed every queue
    without a FAILED line."""
    proc = subprocess.run(
        ["bash", "benchmarks/learning_runs.sh", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
