"""What every script shares (resq_torchrl/cli.py): one-line errors for user mistakes (exit
code 2, no traceback), the thread policy, and training budgets that mean what they say."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_PREDATOR_PREY, compose_config
from script_runner import run_in_process

from resq_torchrl import cli
from resq_torchrl.errors import ConfigError
from resq_torchrl.training.trainer import train

# a tiny predator-prey run: batches of 2 episodes of 10 steps (20 frames)
TINY_PP = [
    "env=predator_prey",
    *TINY_PREDATOR_PREY,
    "batch_episodes=4",
    "eval_episodes=2",
    "progress=false",
]


def one_error_line(result) -> str:
    """The single ``error:`` line of a script that stopped on a user mistake."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    said = ("threads: ", "allocator: ")  # the policy lines every script prints first
    lines = [line for line in result.stderr.splitlines() if not line.startswith(said)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "command, fragments",
    [
        # an unknown task lists the tasks of its family, an unknown family lists the families
        (
            "scripts/train.py env=vmas/nonexistent output_dir={out}",
            ["unknown env 'vmas/nonexistent'", "balance", "navigation", "transport"],
        ),
        (
            "scripts/train.py env=nonexistent output_dir={out}",
            ["unknown env", "predator_prey", "vmas/<task>"],
        ),
        ("scripts/train.py env=smax output_dir={out}", ["env=smax needs a task", "3m", "2s3z"]),
        (
            "scripts/train.py algorithm=nope output_dir={out}",
            ["unknown algorithm 'nope'", "resq", "qmix"],
        ),
        ("scripts/matrix_game.py -m algorithm=resq,nope", ["unknown algorithm 'nope'"]),
        ("scripts/matrix_game_sweep.py algorithms=[vdn,nope]", ["unknown algorithm 'nope'"]),
        # a sweep that could only write an empty table stops before writing anything
        ("scripts/matrix_game_sweep.py n_seeds=0 out_dir={out}", ["n_seeds must be >= 1"]),
        ("scripts/matrix_game_sweep.py algorithms=[] out_dir={out}", ["algorithms is empty"]),
        ("scripts/matrix_game_sweep.py algorithm=qmix", ["not algorithm=", "algorithms=[resq"]),
        ("scripts/matrix_game_sweep.py algorithms=vdn", ["must be a list like [resq,qmix]"]),
        ("scripts/matrix_game_sweep.py workers=0 out_dir={out}", ["workers must be >= 1"]),
        ("scripts/matrix_game.py payoff=[[1,2],[3]]", ["payoff", "ragged"]),
        ("scripts/matrix_game.py payoff=[1,2,3]", ["payoff", "at least 2 agents"]),
        ("scripts/evaluate.py", ["output_dir is required"]),
        (
            "scripts/train.py total_frames=100 output_dir={out}",
            ["total_frames=100 is less than one batch", "1600"],
        ),
        ("scripts/train.py threads=0 output_dir={out}", ["threads must be a whole number"]),
        # settings out of range: one line naming the key, not an IndexError deep inside
        ("scripts/train.py n_envs=0 output_dir={out}", ["n_envs must be >= 1, got 0"]),
        ("scripts/train.py eval_interval=0 output_dir={out}", ["eval_interval must be >= 1"]),
        ("scripts/train.py lr=0 output_dir={out}", ["lr must be > 0, got 0"]),
        (
            "scripts/train.py exploration.eps_end=2 output_dir={out}",
            ["0 <= eps_end <= eps_init <= 1", "eps_end=2"],
        ),
        ("scripts/train.py priority_beta=1.5 output_dir={out}", ["priority_beta must lie in"]),
        (
            "scripts/train.py checkpoint_buffer=foo output_dir={out}",
            ["checkpoint_buffer must be true, false or auto, got 'foo'"],
        ),
        # network sizes: a layer of 0 units trained in silence, a negative one was a traceback
        ("scripts/matrix_game.py agent.hidden=[0]", ["agent.hidden[0] must be a whole number"]),
        ("scripts/matrix_game.py agent.hidden=[64,-4]", ["agent.hidden[1]", "got -4"]),
        ("scripts/matrix_game.py agent.hidden=64", ["agent.hidden must be a list", "[64]"]),
        (
            "scripts/matrix_game.py algorithm.mixing_embed_dim=0",
            ["algorithm.mixing_embed_dim must be a whole number >= 1, got 0"],
        ),
        (
            "scripts/train.py algorithm=ddn algorithm.n_quantiles=0 output_dir={out}",
            ["algorithm.n_quantiles must be a whole number >= 1"],
        ),
        (
            "scripts/train.py algorithm.td_lambda=1.5 output_dir={out}",
            ["algorithm.td_lambda must lie in [0, 1], got 1.5"],
        ),
        ("scripts/train.py agent.hidden_dim=0 output_dir={out}", ["agent.hidden_dim", "got 0"]),
        ("scripts/matrix_game.py n_updates=0", ["n_updates must be >= 1, got 0"]),
        ("scripts/matrix_game.py lr=0", ["lr must be > 0, got 0"]),
        ("scripts/matrix_game.py n_updates=3 json_out=.", ["json_out=. is a directory"]),
        ("scripts/diagnose_ro.py log_every=0 out_dir={out}", ["log_every must be >= 1"]),
        ("scripts/diagnose_ro.py device=cuda:7 out_dir={out}", ["device=cuda"]),
        # negative seeds failed in the envs' seeding ("expected non-negative integer")
        ("scripts/train.py seed=-1 output_dir={out}", ["seed must be >= 0, got -1"]),
        ("scripts/diagnose_ro.py seed=-1 out_dir={out}", ["seed must be >= 0, got -1"]),
        # a group of settings given a value: an AttributeError on int.get
        ("scripts/train.py exploration=3 output_dir={out}", ["exploration is a group of"]),
        ("scripts/train.py agent=3 output_dir={out}", ["agent is a group of settings"]),
        ("scripts/train.py env.max_steps=0 output_dir={out}", ["env.max_steps must be >= 1"]),
        # the thread policy read a key's first value, Hydra the last
        ("scripts/matrix_game.py n_updates=1 threads=1 threads=abc", ["threads", "'abc'"]),
        # meta passed the check and failed inside torch (Tensor.item() on meta tensors)
        ("scripts/train.py device=meta output_dir={out}", ["device=meta holds no data"]),
        ("scripts/matrix_game.py device=meta n_updates=1", ["device=meta holds no data"]),
        (
            "scripts/diagnose_ro.py capture_threshold=abc out_dir={out}",
            ["capture_threshold must be a number", "got 'abc'"],
        ),
        (
            "benchmarks/throughput.py against=no_such_rev_x out={out}/b.json markdown={out}/b.md",
            ["against=no_such_rev_x is not a commit of this repository"],
        ),
        (
            "benchmarks/throughput.py rounds=0 out={out}/b.json markdown={out}/b.md",
            ["rounds must be >= 1, got 0"],
        ),
        (
            "benchmarks/throughput.py updates.algorithms=[foo] out={out}/b.json",
            ["unknown algorithm 'foo'", "resq"],
        ),
        (
            "benchmarks/scaling.py only=[single,nope] run_dir={out} out={out}/s.json",
            ["only= lists the candidates to run", "'nope'", "multi_sync_2"],
        ),
        (
            "benchmarks/scaling.py rounds=0 run_dir={out} out={out}/s.json markdown={out}/s.md",
            ["rounds must be >= 1, got 0"],
        ),
        (
            "scripts/train.py logger=nope output_dir={out}",
            ["unknown logger 'nope'", "tensorboard"],
        ),
        # overrides Hydra refuses: one line instead of Hydra's several
        (
            "scripts/train.py agent.hiden_dim=32 output_dir={out}",
            ["unknown config key 'agent.hiden_dim'", "+agent.hiden_dim=32", "train.yaml"],
        ),
        ("scripts/matrix_game.py lr", ["Error parsing override 'lr'"]),
        ("scripts/matrix_game.py +lr=0.1", ["An item is already at 'lr'", "++lr=0.1"]),
    ],
)
def test_a_mistake_gets_one_line_and_exit_code_2(command, fragments, tmp_path):
    out = tmp_path / "run"
    line = one_error_line(run_in_process(command.format(out=out), tmp_path))
    for fragment in fragments:
        assert fragment in line
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_resume_without_a_checkpoint(tmp_path):
    line = one_error_line(
        run_in_process(f"scripts/train.py resume=true output_dir={tmp_path / 'empty'}", tmp_path)
    )
    assert f"resume=true but there is no checkpoint at {tmp_path / 'empty'}" in line


def test_evaluate_without_a_checkpoint(tmp_path):
    line = one_error_line(run_in_process(f"scripts/evaluate.py output_dir={tmp_path}", tmp_path))
    assert f"no checkpoint at {tmp_path / 'checkpoint.pt'}" in line


def test_a_missing_logger_package_names_its_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    line = one_error_line(
        run_in_process(f"scripts/train.py logger=tensorboard output_dir={tmp_path}", tmp_path)
    )
    assert "logger=tensorboard needs the 'tensorboard' package" in line
    assert "pip install -e '.[tensorboard]'" in line


def test_a_missing_env_package_names_its_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vmas", None)
    line = one_error_line(
        run_in_process(f"scripts/train.py env=vmas/balance output_dir={tmp_path}", tmp_path)
    )
    assert "pip install -e '.[vmas]'" in line


@pytest.mark.parametrize(
    "command", ["scripts/train.py output_dir={out}", "scripts/matrix_game.py n_updates=1"]
)
def test_cuda_asked_for_but_absent(command, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    command = command.format(out=tmp_path / "run")
    line = one_error_line(run_in_process(f"{command} device=cuda", tmp_path))
    assert "device=cuda was asked for" in line and "device=cpu" in line


def test_ctrl_c_is_one_line_and_status_130(tmp_path, monkeypatch):
    """Ctrl-C printed a 50-line KeyboardInterrupt traceback (status 1)."""
    import resq_torchrl.training as training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_matrix_game", interrupted)
    proc = run_in_process("scripts/matrix_game.py n_updates=1", tmp_path)
    assert proc.returncode == 130
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("interrupted (Ctrl-C)")


def test_debug_keeps_the_traceback(tmp_path):
    with pytest.raises(ConfigError, match="unknown env"):
        run_in_process("scripts/train.py env=vmas/nonexistent --debug", tmp_path)


def test_a_real_process_prints_one_line_and_exits_2(run_script):
    proc = run_script("train.py", "env=vmas/nonexistent")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown env 'vmas/nonexistent': the vmas tasks are balance, football, "
        "give_way, navigation, transport, wheel (configs/env/vmas/)"
    ]


def test_an_error_in_third_party_code_keeps_its_traceback():
    """A ValueError that is not one of our checks is a bug to report, not a mistake."""

    def deep():
        import json

        json.loads("{")  # raises json.JSONDecodeError (a ValueError) inside the stdlib

    with pytest.raises(ValueError) as info:
        deep()
    assert cli.user_error_message(info.value) is None
    assert cli.user_error_message(ConfigError("x")) == "x"


# ------------------------------------------------------------------------------------ threads


@pytest.mark.parametrize(
    "omp, args, expected",
    [
        (None, "", "threads: 1 (the config's threads)"),
        ("2", "", "threads: 2 (OMP_NUM_THREADS)"),
        ("2", "threads=1", "threads: 1 (threads= on the command line)"),
        (None, "threads=2", "threads: 2 (threads= on the command line)"),
    ],
)
def test_thread_precedence(omp, args, expected, tmp_path, monkeypatch):
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    result = run_in_process(f"scripts/matrix_game.py n_updates=1 progress=false {args}", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.splitlines()[0] == expected
    if sys.platform.startswith("linux"):  # the allocator line follows (glibc)
        assert result.stderr.splitlines()[1] == (
            "allocator: freed memory kept for reuse (reuse_freed_memory=true)"
        )


def test_train_threads_auto_takes_every_usable_core(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine
    result = run_in_process(
        f"scripts/train.py {' '.join(TINY_PP)} total_frames=20 output_dir={tmp_path}", tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    n = cli.usable_cores()
    assert (
        result.stderr.splitlines()[0] == f"threads: {n} (threads=auto on cpu: the {n} usable cores)"
    )


def test_threads_auto_per_device_and_env(monkeypatch):
    """evaluate.py: one thread; train.py: every usable core on the CPU, one for the matrix
    game (tiny networks) and on CUDA."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cli.resolve_threads({"threads": "auto"}, {"cpu": 1, "cuda": 1}) == (
        1,
        "threads=auto on cpu",
    )
    spec = importlib.util.spec_from_file_location("train_script", cli.REPO / "scripts" / "train.py")
    train_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_script)
    train_auto = {"cpu": train_script.auto_cpu_threads, "cuda": 1}
    n = cli.usable_cores()
    assert cli.resolve_threads(
        {"threads": "auto", "env": {"name": "predator_prey"}}, train_auto
    ) == (
        n,
        f"threads=auto on cpu: the {n} usable cores",
    )
    matrix = {"threads": "auto", "env": {"name": "matrix_game"}}
    assert cli.resolve_threads(matrix, train_auto) == (
        1,
        "threads=auto on cpu: 1 for the matrix game's tiny networks",
    )
    workers = {
        "threads": "auto",
        "env": {"name": "predator_prey"},
        "collector": {"type": "multi_sync"},
    }
    assert cli.resolve_threads(workers, train_auto) == (
        1,
        "threads=auto on cpu: 1 beside collector=multi_sync's worker processes",
    )
    on_cuda = {"threads": "auto", "device": "cuda:0", "env": {"name": "predator_prey"}}
    assert cli.resolve_threads(on_cuda, train_auto) == (1, "threads=auto on cuda")


@pytest.mark.parametrize(
    "load, cores, n, free",
    [
        (0.0, 2, 2, None),  # idle: every core is free
        (0.4, 2, 2, None),  # under half a core of other work
        (1.0, 2, 2, 1),  # one core's worth of other work, two threads
        (4.5, 2, 2, 1),
        (6.0, 8, 2, None),  # two of eight cores are still free
        (7.0, 8, 2, 1),
        (1.2, 64, 64, 63),  # one background job on a large machine: leave it its core
        (9.0, 2, 1, None),  # one thread is never oversubscribed by this process
    ],
)
def test_busy_cores_note(load, cores, n, free, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(cli, "usable_cores", lambda: cores)
    note = cli.busy_cores_note(n)
    if free is None:
        assert note == ""
    else:
        assert f"of the {cores} cores busy (load average {load:.1f})" in note
        assert f"threads={free} leaves them to it" in note


@pytest.mark.parametrize(
    "text, cpus",
    [("max 100000\n", None), ("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1)],
)
def test_a_cgroup_cpu_quota_caps_the_usable_cores(text, cpus, tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text(text)
    assert cli._cgroup_cpu_limit(quota) == cpus
    assert cli._cgroup_cpu_limit(tmp_path / "absent") is None
    (tmp_path / "bad").write_text("garbage")
    assert cli._cgroup_cpu_limit(tmp_path / "bad") is None


def test_a_sequential_multirun_resolves_auto_afresh_for_every_job(monkeypatch):
    """use_threads exports OMP_NUM_THREADS for child processes; the next job of the same
    process (hydra -m without a launcher) must not take that export for the user's setting."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cli, "_exported", None)
    threads = torch.get_num_threads()
    try:
        assert cli.use_threads({"threads": "auto"}, {"cpu": lambda cfg: (2, "two")}) == 2
        assert os.environ["OMP_NUM_THREADS"] == "2"
        assert cli.resolve_threads({"threads": "auto"}, {"cpu": 1})[1] == "OMP_NUM_THREADS"
        assert cli.use_threads({"threads": "auto"}, {"cpu": 1}) == 1  # not the export's 2
        # a value the user sets between jobs is theirs
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert cli.use_threads({"threads": "auto"}, {"cpu": 1}) == 3
    finally:
        torch.set_num_threads(threads)


def test_busy_cores_note_only_for_auto(tmp_path, monkeypatch):
    """A count the user chose is taken without comment, even on busy cores."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 50.0, 50.0))
    chosen = run_in_process("scripts/matrix_game.py n_updates=1 progress=false threads=2", tmp_path)
    assert chosen.stderr.splitlines()[0] == "threads: 2 (threads= on the command line)"
    auto = run_in_process(
        f"scripts/train.py {' '.join(TINY_PP)} total_frames=20 output_dir={tmp_path}/run", tmp_path
    )
    assert auto.returncode == 0, auto.stderr[-3000:]
    first = auto.stderr.splitlines()[0]
    if cli.usable_cores() > 1:
        assert "busy (load average 50.0)" in first, first


# ---------------------------------------------------------------------------------- allocator

#: counts glibc's mmapped chunks while a 40 MB tensor is alive, before and after
#: ``reuse_freed_memory()`` (in a fresh process: the setting is process-wide)
MMAP_PROBE = r"""
import ctypes, torch
from resq_torchrl import cli

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mapped_for_one_tensor():
    before = libc.mallinfo2().hblks
    tensor = torch.ones(10_000_000)  # 40 MB
    return libc.mallinfo2().hblks - before

print(mapped_for_one_tensor(), cli.reuse_freed_memory(), mapped_for_one_tensor())
"""


def test_reuse_freed_memory_serves_large_tensors_from_the_heap():
    """By default glibc maps a 40 MB tensor's memory anew (one mmapped chunk while it lives);
    after ``reuse_freed_memory()`` it comes from the heap, reusable without page faults."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    import ctypes

    if not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"):
        pytest.skip("glibc < 2.33 has no mallinfo2")
    result = subprocess.run(
        [sys.executable, "-c", MMAP_PROBE], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["1", "True", "0"]


@pytest.mark.parametrize(
    "args, line",
    [
        ("reuse_freed_memory=false", "allocator: system default (reuse_freed_memory=false)"),
        ("reuse_freed_memory=sometimes", "error: reuse_freed_memory must be true or false, got"),
    ],
)
def test_scripts_say_which_allocator_they_use(args, line, tmp_path):
    """(The default's line is checked with the threads' above.)"""
    result = run_in_process(f"scripts/matrix_game.py n_updates=1 progress=false {args}", tmp_path)
    assert result.returncode == (2 if "error" in line else 0), result.stderr[-3000:]
    # a value of the wrong type stops before the policy lines: its error is the only line
    assert result.stderr.splitlines()[-1 if "error" in line else 1].startswith(line)


# ------------------------------------------------------------------------------------ budgets


@pytest.mark.parametrize("total", [20, 210, 200])
def test_total_frames_is_reached_and_exceeded_by_less_than_one_batch(total, tmp_path):
    """The collector's own budget counted the steps of episodes still running and stopped up
    to a batch short (predator-prey: 1600 of 3000 frames); now the run reaches the budget."""
    final = train(
        compose_config("train", *TINY_PP, f"total_frames={total}", f"output_dir={tmp_path}")
    )
    assert total <= final["frames"] < total + 2 * 10


def test_vmas_budget_is_reached(tmp_path):
    pytest.importorskip("vmas")
    cfg = compose_config(
        "train",
        "env=vmas/balance",
        "env.max_steps=10",
        "n_envs=4",
        "rollout_steps=5",
        "episodes_per_batch=4",
        "batch_episodes=4",
        "eval_episodes=2",
        "progress=false",
        "total_frames=130",
        f"output_dir={tmp_path}",
    )
    final = train(cfg)
    assert 130 <= final["frames"] < 130 + 4 * 10  # episodes may end early (package dropped)


def test_a_run_without_updates_says_so_at_start(tmp_path, capsys):
    final = train(
        compose_config(
            "train", *TINY_PP, "batch_episodes=8", "total_frames=40", f"output_dir={tmp_path}"
        )
    )
    out = capsys.readouterr().out
    assert "warning: this run ends with no update" in out
    assert "total_frames >= 80 guarantees one" in out
    assert final["updates"] == 0
    train(
        compose_config(
            "train", *TINY_PP, "batch_episodes=4", "total_frames=80", f"output_dir={tmp_path}/b"
        )
    )
    assert "no update" not in capsys.readouterr().out


def test_train_script_ends_with_outputs_and_a_done_line(tmp_path):
    result = run_in_process(
        f"scripts/train.py {' '.join(TINY_PP)} total_frames=90 output_dir={tmp_path}", tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    *_, outputs, done = result.stdout.strip().splitlines()
    assert outputs.startswith(f"outputs in {tmp_path}/: checkpoint.pt, eval.jsonl, final.json")
    assert done.startswith("done: ") and "(total_frames=90)" in done and " updates in " in done


def test_no_hydra_log_file_is_written(tmp_path):
    """Hydra's job log went to <script>.log in the working directory (the repository root,
    where two were committed); now its lines go to the console only."""
    result = run_in_process("scripts/matrix_game.py n_updates=1 progress=false", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name",
    sorted(
        p.stem
        for p in (Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")
        if "hydra" in p.read_text()
    ),
)
def test_every_script_config_keeps_multirun_files_under_runs(name):
    """``-m`` writes hydra's ``multirun.yaml`` under the ignored ``runs/multirun/``, never a
    ``multirun/`` folder in the working directory (hydra's default)."""
    from hydra import compose, initialize_config_dir

    configs = Path(__file__).resolve().parent.parent / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        config = compose(name, return_hydra_config=True)
    assert str(config.hydra.sweep.dir).startswith("runs/multirun/"), config.hydra.sweep.dir


def test_the_small_predator_prey_game_has_its_own_run_directory():
    """``env=predator_prey_small`` must not default to the full game's output_dir: a run (or
    ``resume=auto``) would write into a full-size run of the same algorithm and seed."""
    small = compose_config("train", "env=predator_prey_small")
    full = compose_config("train", "env=predator_prey")
    assert small["output_dir"] == "runs/resq_predator_prey_small_seed0"
    assert full["output_dir"] == "runs/resq_predator_prey_seed0"
    assert small["env"]["family"] == "predator_prey" and small["env"]["n_predators"] == 2


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("seed=1.5", "seed must be a whole number, got '1.5'"),
        ("n_envs=abc", "n_envs must be a whole number, got 'abc'"),
        ("prioritized_replay=maybe", "prioritized_replay must be true or false, got 'maybe'"),
        ("lr=abc", "lr must be a number, got 'abc'"),
        ("exploration.eps_end=x", "exploration.eps_end must be a number, got 'x'"),
        ("env.grid_size=2.5", "env.grid_size must be a whole number, got '2.5'"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_naming_the_key(arg, message):
    """Hydra takes any value: ``seed=1.5`` would be truncated, ``prioritized_replay=maybe``
    read as true, ``n_envs=abc`` fail deep inside with int()'s message."""
    with pytest.raises(ConfigError) as err:
        cli.check_overrides("train", [arg])
    assert str(err.value) == message


def test_a_key_given_twice_is_checked_by_its_last_value():
    """Hydra takes a key's last value: the message names that one (it named the first, a
    valid number, for ``lr=0.1 lr=abc``), and a bad first value that the second replaces
    is no error."""
    with pytest.raises(ConfigError) as err:
        cli.check_overrides("train", ["lr=0.1", "lr=abc"])
    assert str(err.value) == "lr must be a number, got 'abc'"
    cli.check_overrides("train", ["seed=1.5", "seed=2"])


@pytest.mark.parametrize(
    "arg", ["total_frames=1e4", "lr=1", "seed=3", "resume=auto", "threads=auto", "+extra=x"]
)
def test_values_of_the_right_type_pass(arg):
    cli.check_overrides("train", [arg])  # 1e4 is a whole number; resume/threads take words


def test_whole_numbers_of_integer_settings_become_integers():
    """``seed=2.0`` reached the run as the float 2.0: its config said so, and its name (and
    default output_dir) was ``..._seed2.0``, not seed 2's; a float setting keeps its value."""
    args = ["seed=2.0", "total_frames=1e4", "lr=1", "n_envs=4", "progress=false"]
    assert cli.check_overrides("train", args) == [
        "seed=2",
        "total_frames=10000",
        "lr=1",
        "n_envs=4",
        "progress=false",
    ]
    sweep = ["-m", "seed=0,2.0,3", "algorithm=resq,qmix"]
    assert cli.check_overrides("train", sweep) == ["-m", "seed=0,2,3", "algorithm=resq,qmix"]


def test_hydras_flags_and_their_values_are_not_read_as_overrides(tmp_path):
    """``--info plugins`` and ``--cfg job`` (space-separated, as Hydra's help writes them)
    failed with "Error parsing override 'plugins'": the flag's value was parsed as an
    override. The overrides around them are still checked and rewritten."""
    assert cli.override_args(["--info", "plugins", "seed=1"]) == ["seed=1"]
    assert cli.override_args(["-c", "job", "-p", "collector", "lr=1"]) == ["lr=1"]
    assert cli.override_args(["--info", "seed=1"]) == ["seed=1"]  # not one of --info's
    assert cli.override_args(["--cfg=job", "-m", "seed=0,1"]) == ["seed=0,1"]
    args = ["--cfg", "job", "seed=2.0"]
    assert cli.check_overrides("train", args) == ["--cfg", "job", "seed=2"]
    with pytest.raises(ConfigError, match="unknown config key 'sed'"):
        cli.check_overrides("train", ["--cfg", "job", "sed=2"])
    # another config (-cn, -cp, -cd): its keys are Hydra's to check
    assert cli.check_overrides("train", ["-cn", "mine", "sed=2"]) == ["-cn", "mine", "sed=2"]
    shown = run_in_process(["scripts/train.py", "--cfg", "job", "-p", "collector"], tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "type: single" in shown.stdout


def test_every_value_of_a_sweep_is_checked_before_the_first_job():
    """``-m seed=0,abc`` trained job 0, then failed job 1 with int()'s message, naming no key;
    ``lr=0.1,abc`` likewise."""
    with pytest.raises(ConfigError, match="seed must be a whole number, got 'abc'"):
        cli.check_overrides("train", ["-m", "seed=0,abc"])
    with pytest.raises(ConfigError, match="lr must be a number, got 'abc'"):
        cli.check_overrides("train", ["--multirun", "algorithm=resq,qmix", "lr=0.1,abc"])
    with pytest.raises(ConfigError, match="unknown config key 'sed'"):
        cli.check_overrides("train", ["-m", "sed=0,1"])
    cli.check_overrides("train", ["-m", "seed=range(0,3)", "lr=0.1,0.2"])  # Hydra's own
    # values Hydra reads, not a comma split: a mapping with commas, interpolations, sweeps
    # that are no list (interval(), for sweeper plugins)
    mapping = "exploration={eps_init:1.0,eps_end:0.1,anneal_frames:1000}"
    assert cli.check_overrides("train", ["-m", "seed=0,1", mapping])[-1] == mapping
    cli.check_overrides("train", ["eval_interval=${checkpoint_interval}", "lr=${optim_eps}"])
    cli.check_overrides("train", ["-m", "lr=0.1,${optim_eps}", "seed=2,3"])
    cli.check_overrides("train", ["-m", "lr=interval(0.1,0.2)"])


def test_what_counts_as_an_earlier_run(tmp_path):
    """A run's outputs are its files, its replay and kept checkpoints and its loggers'
    directories (the csv logger's texts/hparams0.txt, this run's experiment name); a user's
    own folders beside them are not (overwrite=true would have deleted them)."""
    from resq_torchrl.training.trainer import check_fresh_output_dir, earlier_run_outputs

    (tmp_path / "paper" / "texts").mkdir(parents=True)
    (tmp_path / "paper" / "texts" / "draft.tex").write_text("x")
    (tmp_path / "other_tool").mkdir()
    (tmp_path / "other_tool" / "events.out.tfevents.1.host").write_text("x")
    assert earlier_run_outputs(tmp_path, "resq_pp_seed0") == []
    (tmp_path / "old_seed1" / "texts").mkdir(parents=True)
    (tmp_path / "old_seed1" / "texts" / "hparams0.txt").write_text("x")
    (tmp_path / "resq_pp_seed0").mkdir()  # a tensorboard logger's directory of this run
    (tmp_path / "replay").mkdir()
    assert earlier_run_outputs(tmp_path, "resq_pp_seed0") == [
        "replay",
        "old_seed1",
        "resq_pp_seed0",
    ]
    # resume=auto without checkpoint.pt but with kept checkpoints: the run did reach some
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "frames_40.pt").write_text("x")
    with pytest.raises(ConfigError, match="keeps 1 checkpoint.*resume=<its path>"):
        check_fresh_output_dir(tmp_path, overwrite=False, auto=True)


def test_a_new_run_never_writes_over_another_run(tmp_path):
    """A second run into the same output_dir without resume= stops before touching it;
    overwrite=true starts over there (no evaluation of the old run is left in eval.jsonl);
    resume=auto without a checkpoint clears an attempt that never reached one."""
    args = ["scripts/train.py", "env=matrix_game", "algorithm=vdn", "total_frames=200"]
    args += ["n_envs=2", "rollout_steps=5", "episodes_per_batch=2", "batch_episodes=2"]
    args += ["eval_episodes=1", "eval_interval=100", "progress=false", f"output_dir={tmp_path}"]
    first = run_in_process(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    evaluations = len((tmp_path / "eval.jsonl").read_text().splitlines())
    again = run_in_process([*args, "seed=1"], tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"error: output_dir={tmp_path} already holds a run (checkpoint.pt, final.json, "
        "eval.jsonl, replay, vdn_matrix_game_seed0): continue it with resume=true (or "
        "resume=auto), start over there with overwrite=true, or choose another output_dir"
    )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    # a setting that cannot build the networks is refused before overwrite=true clears anything
    bad = run_in_process([*args, "seed=1", "overwrite=true", "algorithm.td_lambda=2"], tmp_path)
    assert bad.returncode == 2 and "algorithm.td_lambda must lie in" in bad.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    # so is one the env refuses when it is built (it removed the earlier run's files first,
    # and a new output_dir was left behind empty)
    ragged = ["seed=1", "env.payoff=[[1,2],[3]]"]
    bad = run_in_process([*args, *ragged, "overwrite=true"], tmp_path)
    assert bad.returncode == 2 and "payoff must be a rectangular" in bad.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    fresh = tmp_path / "fresh"
    bad = run_in_process([*args[:-1], *ragged, f"output_dir={fresh}"], tmp_path)
    assert bad.returncode == 2 and not fresh.exists()
    scalars = tmp_path / "vdn_matrix_game_seed0" / "scalars"
    logged = {p.relative_to(scalars): p.read_text() for p in scalars.rglob("*.csv")}
    over = run_in_process([*args, "overwrite=true"], tmp_path)
    assert over.returncode == 0, over.stderr[-2000:]
    assert "overwrite=true: removed the earlier" in over.stdout
    assert len((tmp_path / "eval.jsonl").read_text().splitlines()) == evaluations
    # the csv logs start over too (the new run's lines were appended to the earlier run's)
    assert (
        logged
        and {p.relative_to(scalars): p.read_text() for p in scalars.rglob("*.csv")}.keys()
        == logged.keys()
    )
    for name, text in logged.items():
        assert len((scalars / name).read_text().splitlines()) == len(text.splitlines()), name
    # another seed's run there: the earlier run's logger directory goes with the rest
    over = run_in_process([*args, "seed=1", "overwrite=true"], tmp_path)
    assert over.returncode == 0, over.stderr[-2000:]
    assert not (tmp_path / "vdn_matrix_game_seed0").exists()
    assert (tmp_path / "vdn_matrix_game_seed1" / "scalars").is_dir()
    assert json.loads((tmp_path / "final.json").read_text())["frames"] >= 200
    (tmp_path / "checkpoint.pt").unlink()  # an attempt that never reached a checkpoint
    (tmp_path / "final.json").unlink()
    # a new run there is told the way that works (resume=true would find no checkpoint)
    line = one_error_line(run_in_process(args, tmp_path))
    assert "reached no checkpoint" in line and "resume=auto or overwrite=true" in line
    auto = run_in_process([*args, "resume=auto"], tmp_path)
    assert auto.returncode == 0, auto.stderr[-2000:]
    assert "resume=auto without a checkpoint: removed the earlier eval.jsonl" in auto.stdout
    assert "vdn_matrix_game_seed1" in auto.stdout  # that attempt's logs with it
    assert len((tmp_path / "eval.jsonl").read_text().splitlines()) == evaluations


def test_resuming_another_methods_checkpoint_is_one_line(tmp_path):
    """``resume=true`` on a checkpoint of another method: one line saying what each was
    trained with, not torch's state-dict mismatch of a hundred lines; the run is untouched."""
    args = ["scripts/train.py", "env=matrix_game", "total_frames=200", "n_envs=2"]
    args += ["rollout_steps=5", "episodes_per_batch=2", "batch_episodes=2", "eval_episodes=1"]
    args += ["progress=false", f"output_dir={tmp_path}"]
    first = run_in_process([*args, "algorithm=vdn"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    other = run_in_process([*args, "algorithm=qmix", "resume=true", "total_frames=400"], tmp_path)
    line = one_error_line(other)
    assert "checkpoint.pt holds other networks than this run builds" in line
    assert "trained with algorithm=vdn env=matrix_game" in line
    assert "this run asks for algorithm=qmix" in line
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved
    # any other training setting: the run went on with the checkpoint's lr (its optimizer
    # state) and wrote the new one in its config; a new seed continued seed 0's streams
    logs = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for change, was in [
        (["lr=0.5"], "lr=0.001"),
        (["exploration.eps_end=0.5"], "exploration.eps_end=0.05"),
        (["seed=5"], "seed=0"),
    ]:
        line = one_error_line(
            run_in_process([*args, "algorithm=vdn", "resume=true", *change], tmp_path)
        )
        assert "checkpoint.pt was trained with" in line and was in line, line
        assert "this run asks for" in line and change[0] in line, line
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == logs
    # how long it runs, how it evaluates and saves may change
    longer = run_in_process(
        [*args, "algorithm=vdn", "resume=true", "total_frames=300", "eval_interval=50"], tmp_path
    )
    assert longer.returncode == 0, longer.stderr[-2000:]
    # evaluate.py refuses a json_out it could not write before evaluating, not after
    line = one_error_line(
        run_in_process(["scripts/evaluate.py", f"output_dir={tmp_path}", "json_out=."], tmp_path)
    )
    assert line == "error: json_out=. is a directory: give a file path, e.g. ./eval.json"


def test_check_network_sizes_for_library_callers():
    """make_loss's size check: whole floats pass (as cli.check_type lets 1e2 through for an
    int), everything else that cannot build a network is one ConfigError naming the key."""
    from resq_torchrl.training.builders import check_network_sizes

    check_network_sizes({"mixing_embed_dim": 32.0, "td_lambda": 0.6}, {"hidden": [64.0, 32]})
    check_network_sizes({"hypernet_layers": 1}, {"hidden_dim": 1e2})
    bad = [
        ({"td_lambda": "abc"}, {}, "algorithm.td_lambda must lie in [0, 1], got 'abc'"),
        ({"td_lambda": True}, {}, "algorithm.td_lambda"),
        ({"hypernet_layers": 3}, {}, "algorithm.hypernet_layers must be 1 or 2, got 3"),
        ({"adv_hypernet_layers": 0}, {}, "algorithm.adv_hypernet_layers must be a whole"),
        ({"n_cos": 2.5}, {}, "algorithm.n_cos must be a whole number >= 1, got 2.5"),
        ({}, {"hidden_dim": True}, "agent.hidden_dim"),
        ({}, {"hidden": "64"}, "agent.hidden must be a list"),
    ]
    for algo, agent, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_network_sizes(algo, agent)


@pytest.mark.parametrize(
    "command, key",
    [
        ("scripts/matrix_game.py n_updates=3 json_out={blocked}/a.json", "json_out"),
        ("scripts/matrix_game.py n_updates=3 plot={blocked}/a.png", "plot"),
        ("scripts/matrix_game_sweep.py n_seeds=1 algorithms=[vdn] out_dir={blocked}/s", "out_dir"),
        ("scripts/diagnose_ro.py episodes=2 updates=1 out_dir={blocked}/ro", "out_dir"),
        ("scripts/train.py output_dir={blocked}/run", "output_dir"),
        ("scripts/plot.py runs=[{tmp}] out={blocked}/iqm", "out"),
        ("benchmarks/scaling.py rounds=1 run_dir={tmp}/r out={blocked}/s.json", "out"),
    ],
)
def test_an_unwritable_output_is_refused_before_any_work(command, key, tmp_path):
    """An output path under a file (or, on Linux, under /proc) ends the script with one line
    before it trains or bootstraps anything whose result would then be lost."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = one_error_line(run_in_process(command.format(blocked=blocker, tmp=tmp_path), tmp_path))
    assert line.startswith(f"error: {key}={blocker}") and "is a file, so" in line
    if sys.platform.startswith("linux"):
        line = one_error_line(
            run_in_process(command.format(blocked="/proc/x", tmp=tmp_path), tmp_path)
        )
        assert f"{key}=/proc/x" in line and "cannot write under /proc" in line


def test_check_writable():
    from resq_torchrl.errors import check_writable

    check_writable("out", None)
    with pytest.raises(ConfigError, match="is a directory"):
        check_writable("json_out", cli.REPO)
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check_writable("out_dir", cli.REPO / "README.md", kind="dir")
    check_writable("out_dir", cli.REPO / "runs" / "not" / "yet" / "there", kind="dir")
    assert not (cli.REPO / "runs" / "not").exists()  # probed, nothing created
    # a file where a directory of the path should be: the message names the path asked for
    inside = cli.REPO / "README.md" / "x.json"
    with pytest.raises(ConfigError) as err:
        check_writable("json_out", inside)
    assert str(err.value) == (
        f"json_out={inside}: {cli.REPO / 'README.md'} is a file, so {inside} cannot be "
        "created: choose another path"
    )


def test_evaluate_never_writes_over_the_runs_own_files(tmp_path):
    args = ["scripts/train.py", "env=matrix_game", "algorithm=vdn", "total_frames=40"]
    args += ["n_envs=2", "rollout_steps=5", "episodes_per_batch=2", "batch_episodes=2"]
    args += ["eval_episodes=1", "progress=false", f"output_dir={tmp_path}"]
    assert run_in_process(args, tmp_path).returncode == 0
    before = (tmp_path / "checkpoint.pt").read_bytes()
    for name in ("checkpoint.pt", "final.json", "eval.jsonl"):
        line = one_error_line(
            run_in_process(
                f"scripts/evaluate.py output_dir={tmp_path} json_out={tmp_path / name}", tmp_path
            )
        )
        assert "is one of the run's own files" in line
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_from_another_directory_never_writes_over_a_third_run(tmp_path):
    base = ["scripts/train.py", "env=matrix_game", "algorithm=vdn", "n_envs=2"]
    base += ["rollout_steps=5", "episodes_per_batch=2", "batch_episodes=2", "eval_episodes=1"]
    base += ["eval_interval=20", "progress=false"]
    for name, seed in (("a", 0), ("b", 1)):
        done = run_in_process(
            [*base, "total_frames=40", f"seed={seed}", f"output_dir={tmp_path / name}"], tmp_path
        )
        assert done.returncode == 0, done.stderr[-2000:]
    b_files = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir() if p.is_file()}
    resume = [*base, "total_frames=80", f"resume={tmp_path / 'a' / 'checkpoint.pt'}"]
    line = one_error_line(run_in_process([*resume, f"output_dir={tmp_path / 'b'}"], tmp_path))
    assert (
        f"output_dir={tmp_path / 'b'} already holds another run" in line
        and "overwrite=true" in line
    )
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir() if p.is_file()} == b_files
    fresh = run_in_process([*resume, f"output_dir={tmp_path / 'c'}"], tmp_path)  # an empty one
    assert fresh.returncode == 0 and "resumed from" in fresh.stdout, fresh.stderr[-2000:]
