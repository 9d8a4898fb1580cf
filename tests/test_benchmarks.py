"""``benchmarks/throughput.py`` on a tiny configuration: it runs end to end (update workers,
matrix game, collection, replay memory; ``against=`` through a git worktree) and writes the
JSON and markdown it promises. No timing is checked: only structure."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from script_runner import run_in_process

from resq_torchrl import cli

ROOT = Path(__file__).resolve().parent.parent

TINY = [
    "rounds=1",
    "updates.episodes=2",
    "updates.steps=6",
    "updates.warmup=0",
    "matrix.n_updates=5",
    "matrix.rounds=1",
    "matrix.vectorized_seeds=2",
    "reference.env=null",  # needs vmas and its slow import; the GPU/CPU runs cover it
    "thread_counts.algorithms=[]",
]


def _run(tmp_path: Path, *overrides: str) -> tuple[dict, str]:
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    args = [*TINY, *overrides, f"out={out}", f"markdown={md}"]
    result = run_in_process(["benchmarks/throughput.py", *args])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out} and {md}" in result.stdout
    return json.loads(out.read_text()), md.read_text()


def _worktrees() -> set[str]:
    listing = subprocess.run(
        ["git", "worktree", "list", "--porcelain"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    return {line.split(" ", 1)[1] for line in listing.splitlines() if line.startswith("worktree ")}


def test_throughput_benchmark_writes_its_tables(tmp_path):
    data, md = _run(
        tmp_path,
        "updates.algorithms=[qmix,vdn]",
        "short_updates.algorithms=[qmix]",
        "short_updates.early_lengths=[2,4]",
        "matrix.algorithms=[qmix]",
        "collection.rounds=1",
        "collection.warmup_steps=1",
        "collection.env_steps=5",
        "collection.cases=[{env: predator_prey_small, n_envs: [2]}]",
        "memory.env=predator_prey_small",
        "memory.n_envs=2",
        "memory.batches=1",
        "thread_counts.algorithms=[qmix]",
    )
    assert {"command", "machine", "config", "wall_seconds", "updates", "matrix"} <= set(data)
    assert data["machine"]["torch_threads"] == 1
    assert {"cpu", "cores", "torch", "torchrl"} <= set(data["machine"])
    rows = {r["algorithm"]: r for r in data["updates"]["rows"]}
    assert set(rows) == {"qmix", "vdn"}
    assert rows["qmix"]["now"]["ratio_to_qmix"] == pytest.approx(1.0)
    for row in rows.values():
        assert len(row["now"]["rounds"]) == 1 and row["now"]["median"] > 0
        assert "ratio_now_vs_against" not in row
    assert data["updates"]["batch"]["n_agents"] == 8
    (short,) = data["short_updates"]["rows"]
    assert short["algorithm"] == "qmix" and short["now"]["median"] > 0
    assert data["short_updates"]["batch"]["early_lengths"] == [2, 4]
    (mrow,) = data["matrix"]["rows"]
    assert mrow["now"]["median"] > 0 and mrow["now x2"]["median"] > 0
    assert mrow["ratio_vectorized_vs_single"] > 0

    (case,) = data["collection"]["rows"]
    assert case["env"] == "predator_prey_small" and case["n_envs"] == 2
    assert case["env_only_steps_per_s"]["median"] > 0
    assert case["ratio"] > 0

    mem = data["memory"]
    assert mem["episodes"] == 2 and mem["n_agents"] == 2
    assert mem["bytes_per_stored_agent_step"] > 0 and mem["raw_bytes_per_agent_step"] > 0
    assert mem["ratio"] == pytest.approx(mem["storage_bytes"] / mem["unique_bytes"])
    assert mem["ratio"] <= 1.2  # each step's content stored once (next entries rebuilt)
    kinds = {k["key"]: k["kind"] for k in mem["keys"]}
    assert "next/agents/observation" not in kinds and kinds["agents/observation"] == "data"
    assert kinds["next/reward"] == "data"
    assert "reference" not in data
    if cli.usable_cores() > 1:  # 1 thread against every usable core, wall time
        threads = data["thread_counts"]
        (trow,) = threads["rows"]
        one, many = threads["labels"]
        assert threads["threads"] == [1, cli.usable_cores()] and threads["clock"] == "wall"
        assert trow["algorithm"] == "qmix" and trow[one]["median"] > 0 and trow[many]["median"] > 0
        assert trow["ratio_many_vs_one"] > 0
        assert "## Threads: one worker per thread count" in md and f"| ms, {many} |" in md
    else:
        assert "thread_counts" not in data

    for heading in (
        "## ms per update, predator-prey reference batch",
        "## ms per update, short episodes",
        "## ms per update, matrix game",
        "## Collection versus env-only",
        "## Replay memory",
        "python benchmarks/throughput.py",
        "torch threads: 1",
    ):
        assert heading in md
    assert "| qmix | " in md and "| vdn | " in md
    assert "ms per seed, 2 vectorised" in md
    # the update workers run with the checkout's own allocator policy, and say so
    if sys.platform.startswith("linux"):
        assert data["allocators"] == {"now": "freed memory kept for reuse"}
        assert "- allocator of the update workers" in md and "`now`: freed memory kept" in md


def test_throughput_benchmark_reads_cpu_time_with_clock_cpu(tmp_path):
    only_updates = [
        "updates.algorithms=[qmix,vdn]",
        "short_updates.algorithms=[]",
        "matrix.algorithms=[]",
        "collection.cases=[]",
        "memory.env=null",
    ]
    data, md = _run(tmp_path, "clock=cpu", *only_updates)
    assert data["updates"]["clock"] == "cpu"
    for row in data["updates"]["rows"]:
        assert row["now"]["median"] > 0
    assert "process CPU time (`clock=cpu`)" in md
    bad = run_in_process(["benchmarks/throughput.py", *TINY, *only_updates, "clock=sundial"])
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: clock must be one of ['cpu', 'wall'], got 'sundial'"
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_throughput_benchmark_against_a_worktree(tmp_path):
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    before = _worktrees()
    data, md = _run(
        tmp_path,
        "against=HEAD",
        "updates.algorithms=[qmix]",
        "short_updates.algorithms=[]",
        "matrix.algorithms=[]",
        "collection.cases=[]",
        "memory.env=null",
    )
    assert data["against"]["rev"] == "HEAD" and len(data["against"]["sha"]) == 40
    (row,) = data["updates"]["rows"]
    assert row["HEAD"]["median"] > 0 and row["now"]["median"] > 0
    assert row["ratio_now_vs_against"] > 0
    assert "| method | ms now | ms at HEAD | now / HEAD |" in md
    assert _worktrees() == before  # the worktree is gone


def test_update_worker_uses_only_the_checkouts_own_allocator_policy(tmp_path):
    """A revision without ``resq_torchrl/cli.py`` (such as f4b0b87) runs with the system
    default, even though the editable install of the working tree would serve its cli."""
    (tmp_path / "resq_torchrl").mkdir()
    (tmp_path / "resq_torchrl" / "__init__.py").write_text("")
    answers = {}
    for label, root in (("old", tmp_path), ("now", ROOT)):
        env = dict(
            os.environ, PYTHONPATH=str(root), BENCH_CHECKOUT=str(root), BENCH_REUSE_FREED_MEMORY="1"
        )
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "update_worker.py")],
            input='{"cmd": "info"}\n{"cmd": "quit"}\n',
            capture_output=True,
            text=True,
            cwd=root,
            env=env,
            check=True,
        )
        answers[label] = json.loads(result.stdout.splitlines()[0])
    assert answers["old"]["library"] == str((tmp_path / "resq_torchrl").resolve())
    assert answers["old"]["allocator"] == "system default (this revision has no reuse_freed_memory)"
    if sys.platform.startswith("linux"):
        assert answers["now"]["allocator"] == "freed memory kept for reuse"


def test_collect_runs_keeps_a_longer_committed_log_until_a_restarted_run_passes_it(tmp_path):
    """A run restarted from zero (checkpoint lost) leaves a longer committed log in place,
    whether its evaluations so far equal that log's start (same machine) or not (another
    CPU); once it goes further or finishes, it is copied."""
    script = ROOT / "benchmarks" / "collect_runs.py"
    rows = [{"frames": f, "updates": f // 10, "eval/return": float(f)} for f in (100, 200, 300)]
    committed = tmp_path / "docs" / "resq_seed0"
    committed.mkdir(parents=True)
    (committed / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "runs" / "resq_seed0"
    run.mkdir(parents=True)

    def collect(restart_rows):
        (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in restart_rows))
        args = [sys.executable, str(script), str(run.parent), str(committed.parent)]
        proc = subprocess.run(args, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return len((committed / "eval.jsonl").read_text().splitlines()), proc.stdout

    kept, out = collect(rows[:2])
    assert kept == 3 and out.startswith(f"kept {committed}")
    # a run killed while writing its next evaluation leaves that line cut short
    (run / "eval.jsonl").write_text((run / "eval.jsonl").read_text() + '{"frames": 3')
    proc = subprocess.run(
        [sys.executable, str(script), str(run.parent), str(committed.parent)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stdout.startswith(f"kept {committed}"), proc.stderr
    other = [rows[0], {**rows[1], "eval/return": -1.0}]  # another trajectory: kept too
    kept, out = collect(other)
    assert kept == 3 and "follows another trajectory" in out
    further = [*other, rows[2], {"frames": 400, "updates": 40, "eval/return": 4.0}]
    assert collect(further)[0] == 4  # past the committed log: copied
    (committed / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # a final.json cut short does not make the run finished, nor replace a whole one
    (committed / "final.json").write_text(json.dumps({"frames": 300}))
    (run / "final.json").write_text('{"fra')
    assert collect(other)[0] == 3
    assert json.loads((committed / "final.json").read_text()) == {"frames": 300}
    # nothing readable (a single line cut short) never replaces a committed log
    assert collect([])[0] == 3
    (run / "eval.jsonl").write_text('{"eval/return": 1.0, "fr')
    proc = subprocess.run(
        [sys.executable, str(script), str(run.parent), str(committed.parent)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "has no readable evaluation" in proc.stdout, proc.stderr
    assert len((committed / "eval.jsonl").read_text().splitlines()) == 3
    (run / "final.json").write_text(json.dumps({"frames": 200}))
    assert collect(other)[0] == 2  # finished (a shorter run asked for): copied


def test_collect_runs_copies_logs_and_rebuilds_the_table(tmp_path):
    """benchmarks/collect_runs.py: a resumed run's redone evaluations replace the ones past
    its checkpoint, the session log is kept by the frames it resumed from, and the table
    between the markers is rebuilt (the text around it kept)."""
    run = tmp_path / "runs" / "resq_seed0"
    (run / "resq_pp_seed0" / "scalars" / "train").mkdir(parents=True)
    (run / "resq_pp_seed0" / "scalars" / "train" / "capture_steps.csv").write_text("100,3\n200,7\n")
    evals = [(100, 0.0, -4.0), (200, 1.0, -3.0), (200, 2.0, -2.0), (300, 5.0, 1.0)]
    (run / "eval.jsonl").write_text(
        "".join(
            json.dumps({"frames": f, "updates": f // 10, "eval/return": r, "eval/catch_gap": g})
            + "\n"
            for f, r, g in evals
        )
    )
    (tmp_path / "runs" / "resq_seed0.log").write_text("resumed from x/checkpoint.pt at 200 frames")
    docs = tmp_path / "docs"
    # logs of an earlier attempt, lost with its checkpoint past 100 frames and retraced
    (docs / "set" / "resq_x_seed0").mkdir(parents=True)
    for start in (0, 100, 300):
        (docs / "set" / "resq_x_seed0" / f"train_from_{start}.log").write_text("earlier")
    script = ROOT / "benchmarks" / "collect_runs.py"
    for args in (
        [tmp_path / "runs", docs / "set", "--rename", "resq_seed=resq_x_seed"],
        ["--table", docs, tmp_path / "results.md"],
    ):
        if args[0] == "--table":
            (tmp_path / "results.md").write_text(
                "before\n<!-- runs-table -->\nold\n<!-- /runs-table -->\nafter\n"
            )
        proc = subprocess.run(
            [sys.executable, str(script), *map(str, args)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
    out = docs / "set" / "resq_x_seed0"
    assert (out / "train_from_200.log").exists() and (out / "eval.jsonl").exists()
    # sessions before the resume point are kept, those past it (the lost attempt) removed
    assert sorted(p.name for p in out.glob("train_from_*.log")) == [
        "train_from_0.log",
        "train_from_100.log",
        "train_from_200.log",
    ]
    assert (out / "resq_pp_seed0" / "scalars" / "train" / "capture_steps.csv").exists()
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    row = next(line for line in text.splitlines() if "resq_x_seed0" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:7] == ["set", "resq_x_seed0", "300", "30", "5", "5", "7"]
    assert cells[7] == "0, 2, 5" and cells[8] == "-4.0, -2.0, 1.0"


def test_lone_catch_values_reads_a_runs_checkpoint_and_replay(tmp_path, capsys):
    """benchmarks/lone_catch_values.py on a tiny ResQ run: every real step of the sampled
    episodes falls in one kind, and ``Q_tot - Q_jt = -w_r Q_r >= 0`` (ResQ's residual is
    never positive); a missing replay is a one-line error with exit code 2."""
    from conftest import TINY_CHECKPOINTED_RUN, compose_config

    from resq_torchrl.training.trainer import train

    run = tmp_path / "run"
    cfg = compose_config(
        "train",
        "algorithm=resq",
        "env=predator_prey",
        *TINY_CHECKPOINTED_RUN,
        "total_frames=80",
        "progress=false",
        f"output_dir={run}",
    )
    train(cfg)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import lone_catch_values as probe
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = probe.lone_catch_values(run, run / "replay", episodes=4)
    n = out["episodes_in_replay"]
    assert out["algorithm"] == "resq" and n >= 4
    from resq_torchrl.data.episodes import EpisodeReplayBuffer

    buffer = EpisodeReplayBuffer(cfg["buffer_episodes"], cfg["env"]["max_steps"], 1)
    buffer.loads(run / "replay")
    newest_steps = int(buffer.episodes(list(range(n - 4, n)))["collector", "mask"].sum())
    assert sum(out["newest"][k]["steps"] for k in probe.KINDS) == newest_steps
    for sample in ("newest", "uniform"):
        kinds = out[sample]
        assert 0 < sum(kinds[k]["steps"] for k in probe.KINDS) <= 4 * 10  # 10-step episodes
        for k in probe.KINDS:
            if kinds[k]["steps"]:
                assert kinds[k]["q_tot_minus_q_jt"] >= -1e-5
                assert 0.0 <= kinds[k]["non_greedy_share"] <= 1.0
    with pytest.raises(SystemExit) as err:  # argparse's one-line error, exit code 2
        probe.main([str(run), "--episodes", "0"])
    assert err.value.code == 2
    # a run on another env has no lone catches: refused, not answered with meaningless rows
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    cfg_env = state["config"]["env"]
    state["config"]["env"] = {"name": "matrix_game", "max_steps": 1}
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(SystemExit) as err:
        probe.main([str(run)])
    assert err.value.code == 2
    # a replay dump of another shape (its episodes.json cut to nothing) and a file that is
    # not a checkpoint of train.py: one line each, exit code 2, not a KeyError
    state["config"]["env"] = cfg_env
    torch.save(state, run / "checkpoint.pt")
    (run / "replay" / "episodes.json").write_text("{}")
    assert probe.main([str(run)]) == 2
    assert "is not a readable replay dump of" in capsys.readouterr().err
    torch.save({"frames": 1}, run / "checkpoint.pt")
    assert probe.main([str(run)]) == 2
    assert "is not a checkpoint of scripts/train.py" in capsys.readouterr().err
    shutil.rmtree(run / "replay")
    assert probe.main([str(run)]) == 2


def test_packed_unroll_benchmark_runs(tmp_path):
    """``benchmarks/packed_unroll.py`` on tiny batches: one round per batch, a ratio each."""
    result = subprocess.run(
        [sys.executable, "benchmarks/packed_unroll.py", "--algorithms", "qmix", "--rounds", "1"]
        + ["--episodes", "3", "--steps", "8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("qmix: packed / unpacked, median") == 3
    assert "real steps" in result.stdout


def test_update_profile_benchmark_runs_and_rejects_an_unknown_method(tmp_path):
    """``benchmarks/update_profile.py`` on a tiny batch: one line per update (the phases and
    the rusage deltas), then the summary; an unknown method is one line naming the choices."""
    result = subprocess.run(
        [sys.executable, "benchmarks/update_profile.py", "--algorithm", "resq"]
        + ["--updates", "3", "--warmup", "1", "--episodes", "3", "--steps", "8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("resq update ")]
    assert len(lines) == 3 and all("minor faults" in line for line in lines)
    assert "resq: median " in result.stdout and "over 3;" in result.stdout
    bad = subprocess.run(
        [sys.executable, "benchmarks/update_profile.py", "--algorithm", "resqq"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    assert "unknown --algorithm 'resqq'; choose one of [" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_gpu_check_reports_versions_then_stops_without_cuda(tmp_path):
    """``benchmarks/gpu_check.sh`` (the prepared device-machine command): it writes the
    versions and what imports, and without a CUDA device stops with one line before any
    benchmark runs; ``gpu_wheels.sh`` at least parses."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the whole check instead")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    env["WHEELS"] = str(tmp_path / "no_wheels")  # cp312 wheels of a .whl/ would not install
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().endswith(f"(see {tmp_path / 'out'}/versions.txt)")
    versions = (tmp_path / "out" / "versions.txt").read_text()
    assert "available False" in versions and "resq_torchrl" in versions
    assert "FAILED" not in versions
    assert not (tmp_path / "out" / "throughput.log").exists()
    syntax = subprocess.run(["bash", "-n", "benchmarks/gpu_wheels.sh"], cwd=ROOT, timeout=60)
    assert syntax.returncode == 0


def test_collect_runs_refuses_a_root_without_runs_and_leaves_the_table(tmp_path):
    """A mistyped docs root once rewrote the results page's runs table as an empty one."""
    page = tmp_path / "results.md"
    page.write_text("intro\n<!-- runs-table -->\n| old | table |\n<!-- /runs-table -->\nend\n")
    text = page.read_text()
    script = str(ROOT / "benchmarks" / "collect_runs.py")
    for root in (tmp_path / "typo", tmp_path):  # missing, then without any run
        done = subprocess.run(
            [sys.executable, script, "--table", str(root), str(page)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("collect_runs.py: error: ")
        assert page.read_text() == text
    # a run whose rows lack the greedy return (another tool's log) is left out, said so,
    # and with no other run the table is refused as above: no KeyError
    (tmp_path / "set" / "x_seed0").mkdir(parents=True)
    (tmp_path / "set" / "x_seed0" / "eval.jsonl").write_text('{"frames": 10, "updates": 1}\n')
    done = subprocess.run(
        [sys.executable, script, "--table", str(tmp_path), str(page)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "left out" in done.stdout and "x_seed0" in done.stdout
    assert page.read_text() == text
    shutil.rmtree(tmp_path / "set")
    bad = subprocess.run(
        [sys.executable, script, str(tmp_path), str(tmp_path / "d"), "--rename", "vdn"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--rename takes OLD=NEW, got 'vdn'" in bad.stderr


def test_a_quick_throughput_run_never_replaces_the_committed_figures(tmp_path):
    """``quick=true`` writes runs/benchmarks_quick.{json,md} (docs/benchmarks.* are the
    committed full run); an explicit out=/markdown= still wins."""
    off = ["'updates.algorithms=[]'", "'short_updates.algorithms=[]'", "'matrix.algorithms=[]'"]
    off += ["'collection.cases=[]'", "reference.env=null", "memory.env=null"]
    off += ["'thread_counts.algorithms=[]'"]  # measured by the other benchmark tests
    result = run_in_process(f"benchmarks/throughput.py quick=true {' '.join(off)}", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "runs" / "benchmarks_quick.json").is_file()
    assert (tmp_path / "runs" / "benchmarks_quick.md").is_file()
    assert not (tmp_path / "docs").exists()
    chosen = f"{' '.join(off)} out={tmp_path}/q.json markdown={tmp_path}/q.md"
    result = run_in_process(f"benchmarks/throughput.py quick=true {chosen}", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "q.json").is_file() and (tmp_path / "q.md").is_file()
