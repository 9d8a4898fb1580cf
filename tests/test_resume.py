"""Exact resume: a run killed with SIGKILL right after a checkpoint and resumed ends bit for
bit where an uninterrupted run of the same length ends (parameters, optimizer, replay
contents, eval.jsonl); resume=true/auto/PATH, keep_checkpoints, checkpoints of the earlier
format, and the guard rails (non-finite loss, a run without updates)."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_PREDATOR_PREY, compose_config
from script_runner import run_in_process

from resq_torchrl.data import EpisodeReplayBuffer
from resq_torchrl.errors import CheckpointNotFoundError, ConfigError, TrainingDivergedError
from resq_torchrl.training import trainer
from resq_torchrl.training.checkpoint import CHECKPOINT, KEPT, REPLAY, load_checkpoint
from resq_torchrl.training.trainer import train

ROOT = Path(__file__).resolve().parent.parent

#: tiny predator-prey, 4-step polls of 10-step episodes: checkpoints fall mid-episode
PREDATOR_PREY = [
    "algorithm=resq",
    "env=predator_prey",
    *TINY_PREDATOR_PREY,
    "rollout_steps=4",
    "agent.hidden_dim=16",
    "batch_episodes=4",
    "eval_episodes=2",
    "eval_interval=40",
    "checkpoint_interval=60",
    "total_frames=200",
]


def _args(out: Path, *extra: str) -> list[str]:
    return [
        "seed=3",
        "progress=false",
        "checkpoint_buffer=true",
        "target_update_episodes=4",
        f"output_dir={out}",
        *extra,
    ]


def _killed_run(args: list[str]) -> subprocess.CompletedProcess:
    """``scripts/train.py`` in a new process, killed right after its first checkpoint."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args, "kill_after_checkpoint=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RL_WARNINGS": "False", "OMP_NUM_THREADS": "1"},
    )


def _assert_same_tensors(a, b, where: str) -> None:
    """Bitwise equality of two nested containers of tensors and numbers."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, f"{where}: {a} != {b}"


def _replay(path: Path, max_len: int = 10) -> EpisodeReplayBuffer:
    buffer = EpisodeReplayBuffer(capacity=5000, max_len=max_len)
    buffer.loads(path)
    return buffer


def _untimed(final: dict) -> dict:
    """``final.json`` without its timings (they differ between identical runs)."""
    return {k: v for k, v in final.items() if k not in TIMINGS}


#: final.json's timing keys: this process's seconds, the frames it started from, the run's
TIMINGS = ("seconds", "resumed_from_frames", "seconds_total")


def _check_kill_and_resume(tmp_path: Path, settings: list[str], min_frames: int) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = run_in_process(["scripts/train.py", *settings, *_args(whole)])
    assert done.returncode == 0, done.stderr[-3000:]

    proc = _killed_run([*settings, *_args(killed)])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (killed / "final.json").exists()
    saved = load_checkpoint(killed / CHECKPOINT)
    assert saved["frames"] >= min_frames and saved["updates"] > 0
    resumed = run_in_process(["scripts/train.py", *settings, *_args(killed, "resume=true")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed / CHECKPOINT} at {saved['frames']} frames" in resumed.stdout

    a, b = load_checkpoint(whole / CHECKPOINT), load_checkpoint(killed / CHECKPOINT)
    for key in ("loss", "optimizer", "egreedy", "rng", "env", "eval_env", "collector"):
        _assert_same_tensors(a[key], b[key], key)
    for key in ("frames", "episodes", "updates", "last_target", "credit"):
        assert a[key] == b[key], key
    # the replay's episode length is the run's (12 steps for the VMAS and SMAX runs)
    max_len = int(a["config"]["env"]["max_steps"])
    ra, rb = _replay(whole / REPLAY, max_len), _replay(killed / REPLAY, max_len)
    assert len(ra) == len(rb) == a["episodes"]
    stored_a, stored_b = ra.buffer.storage[: len(ra)], rb.buffer.storage[: len(rb)]
    assert set(stored_a.keys(True, True)) == set(stored_b.keys(True, True))
    for key in stored_a.keys(True, True):
        assert torch.equal(stored_a[key], stored_b[key]), key
    assert (whole / "eval.jsonl").read_text() == (killed / "eval.jsonl").read_text()
    final_a = json.loads((whole / "final.json").read_text())
    final_b = json.loads((killed / "final.json").read_text())
    assert final_a["resumed_from_frames"] == 0 and final_b["resumed_from_frames"] == saved["frames"]
    # the resumed run's total covers both processes: at least its own part and the first's
    # part up to the checkpoint it resumed from
    assert final_b["seconds_total"] >= final_b["seconds"] + saved["seconds"] - 1e-6
    assert saved["seconds"] > 0 and final_a["seconds_total"] >= final_a["seconds"]
    assert _untimed(final_a) == _untimed(final_b)
    return saved


def test_sigkill_after_a_checkpoint_then_resume_is_bitwise_exact_on_predator_prey(tmp_path):
    saved = _check_kill_and_resume(tmp_path, PREDATOR_PREY, min_frames=60)
    # the checkpoint was taken mid-episode: steps in flight were carried over, not dropped
    in_flight = saved["collector"]["episodes"]["length"]
    assert bool((in_flight > 0).any()), "no episode was in flight at the checkpoint"


#: a qmix run of 12-step episodes small enough to kill and resume in seconds (any env)
SMALL_RECURRENT = [
    "algorithm=qmix",
    "env.max_steps=12",
    "n_envs=2",
    "rollout_steps=5",
    "episodes_per_batch=2",
    "agent.hidden_dim=16",
    "batch_episodes=4",
    "eval_episodes=2",
    "eval_interval=48",
    "checkpoint_interval=60",
]


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_exact_on_the_matrix_game(tmp_path):
    settings = [
        "algorithm=qmix",
        "env=matrix_game",
        "n_envs=4",
        "rollout_steps=1",
        "episodes_per_batch=4",
        "agent.type=mlp",
        "batch_episodes=8",
        "eval_episodes=2",
        "eval_interval=40",
        "checkpoint_interval=60",
        "total_frames=200",
    ]
    _check_kill_and_resume(tmp_path, settings, min_frames=60)


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_exact_on_vmas(tmp_path):
    pytest.importorskip("vmas")
    settings = ["env=vmas/balance", *SMALL_RECURRENT, "total_frames=200"]
    _check_kill_and_resume(tmp_path, settings, min_frames=60)


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_exact_on_smax(tmp_path):
    pytest.importorskip("jaxmarl")
    settings = ["env=smax/3m", *SMALL_RECURRENT, "total_frames=160"]
    _check_kill_and_resume(tmp_path, settings, min_frames=60)


@pytest.mark.slow
def test_pettingzoo_resumes_but_says_it_is_not_exact(tmp_path):
    pytest.importorskip("mpe2")
    settings = [
        "algorithm=qmix",
        "env=pettingzoo/simple_spread",
        "env.max_steps=10",
        "n_envs=2",
        "rollout_steps=4",
        "episodes_per_batch=2",
        "agent.hidden_dim=16",
        "batch_episodes=4",
        "eval_episodes=2",
        "eval_interval=40",
        "checkpoint_interval=40",
    ]
    out = tmp_path / "run"
    first = run_in_process(["scripts/train.py", *settings, *_args(out), "total_frames=60"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert load_checkpoint(out / CHECKPOINT)["collector"] is None
    again = run_in_process(
        ["scripts/train.py", *settings, *_args(out, "resume=true"), "total_frames=100"]
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "simulator's state cannot be saved" in again.stdout and "not exact" in again.stdout


def _config(out: Path, *extra: str) -> dict:
    return compose_config("train", *PREDATOR_PREY, *_args(out), *extra)


def test_resume_true_auto_and_path(tmp_path, capsys, monkeypatch):
    with pytest.raises(CheckpointNotFoundError, match="resume=true but there is no checkpoint"):
        train(_config(tmp_path / "none", "resume=true"))
    with pytest.raises(CheckpointNotFoundError, match="resume=.*nope.pt: no checkpoint file"):
        train(_config(tmp_path / "none", f"resume={tmp_path / 'nope.pt'}"))
    # auto without a checkpoint starts a new run, keeping the newest 2 numbered checkpoints
    import resq_torchrl.training.checkpoint as checkpoint

    saved = []  # the frames of every numbered checkpoint written, in order
    real_save = checkpoint.save

    def recording_save(out_dir, run, cfg, keep=0):
        if keep:
            saved.append(run.progress.frames)
        return real_save(out_dir, run, cfg, keep)

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save", recording_save)
        first = train(_config(tmp_path / "a", "resume=auto", "keep_checkpoints=2"))
    assert "resume=auto: no checkpoint" in capsys.readouterr().out
    kept = sorted(p.name for p in (tmp_path / "a" / KEPT).iterdir())
    assert all(name.startswith("frames_") and name.endswith(".pt") for name in kept), kept
    # periodic checkpoints at 60, 120, 180 frames (+ the final one): the newest two remain,
    # newest by frames, not by file name ("frames_60.pt" sorts after "frames_194.pt")
    frames = sorted(int(name[len("frames_") : -len(".pt")]) for name in kept)
    assert len(saved) == 4 and saved == sorted(saved) and saved[-1] == first["frames"]
    assert saved[0] < 100 <= saved[1]  # the first name has fewer digits: last by name order
    assert frames == saved[-2:]
    assert not list((tmp_path / "a").glob("*.tmp"))
    # auto with a checkpoint continues it
    second = train(_config(tmp_path / "a", "resume=auto", "total_frames=260"))
    assert f"resumed from {tmp_path / 'a' / CHECKPOINT} at {first['frames']}" in (
        capsys.readouterr().out
    )
    assert second["updates"] > first["updates"]
    # PATH: continue an older numbered checkpoint, writing into another output_dir
    older = tmp_path / "a" / KEPT / f"frames_{frames[0]}.pt"
    third = train(_config(tmp_path / "b", f"resume={older}", "checkpoint_buffer=false"))
    assert f"resumed from {older} at {frames[0]} frames" in capsys.readouterr().out
    assert third["frames"] == first["frames"] and (tmp_path / "b" / CHECKPOINT).exists()
    # auto on a finished run (a sweep launched again): nothing to do, its final result,
    # decided before anything is built (no env, no replay read, no worker, no log written)
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "b").rglob("*"))
    with monkeypatch.context() as m:
        m.setattr(trainer, "make_env", _must_not_be_called)
        m.setattr(trainer, "make_logger", _must_not_be_called)
        again = train(_config(tmp_path / "b", "resume=auto", "checkpoint_buffer=false"))
        assert again == third and "is done" in capsys.readouterr().out
        with pytest.raises(ConfigError, match=f"nothing to do: {third['frames']} frames"):
            train(_config(tmp_path / "b", "resume=true", "checkpoint_buffer=false"))
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "b").rglob("*")) == files


def _must_not_be_called(*args, **kwargs):
    raise AssertionError("a finished run was rebuilt to be told it is done")


def test_a_damaged_replay_dump_is_one_line_and_can_be_left_behind(tmp_path):
    """The replay saved with the checkpoint lost its storage (a FileNotFoundError deep in
    torchrl): one line naming the way on, and the run continues without it when told."""
    import shutil

    first = train(_config(tmp_path, "total_frames=120"))
    shutil.rmtree(tmp_path / REPLAY / "storage")
    with pytest.raises(ConfigError, match="cannot be read .*checkpoint_buffer=false"):
        train(_config(tmp_path, "total_frames=200", "resume=true"))
    again = train(_config(tmp_path, "total_frames=200", "resume=true", "checkpoint_buffer=false"))
    assert again["frames"] > first["frames"]


def test_a_crash_between_the_replay_and_the_checkpoint_keeps_the_replay(
    tmp_path, capsys, monkeypatch
):
    """A checkpoint writes the replay first, then the checkpoint file. A crash between the two
    leaves the previous checkpoint as the latest; the replay copy it refers to is kept (as
    ``replay.prev``) until the new checkpoint is in place, so the resume loads it instead of
    starting with an empty buffer."""
    import resq_torchrl.training.checkpoint as checkpoint

    out = tmp_path / "run"
    real, calls, crash_at = checkpoint.env_state, [], [3]

    def crash_on_second_checkpoint(env):  # called after the replay dump, before torch.save
        calls.append(1)
        if len(calls) == crash_at[0]:  # 2 calls (train env, eval env) per checkpoint
            raise KeyboardInterrupt("crash between the replay and the checkpoint")
        return real(env)

    monkeypatch.setattr(checkpoint, "env_state", crash_on_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(_config(out))
    monkeypatch.setattr(checkpoint, "env_state", real)
    saved = load_checkpoint(out / CHECKPOINT)["frames"]
    assert EpisodeReplayBuffer.tag_at(out / REPLAY) > saved  # the newer replay, swapped in
    assert EpisodeReplayBuffer.stored_at(out / REPLAY, tag=saved) == out / "replay.prev"
    # resumed, it crashes again at its first checkpoint, between the replay and the
    # checkpoint file: the checkpoint's copy must survive this second crash too (it became
    # replay/ again at the resume, so the new save keeps it as replay.prev)
    capsys.readouterr()
    calls.clear()
    crash_at[0] = 1
    monkeypatch.setattr(checkpoint, "env_state", crash_on_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(_config(out, "resume=true"))
    monkeypatch.setattr(checkpoint, "env_state", real)
    saved = load_checkpoint(out / CHECKPOINT)["frames"]
    assert EpisodeReplayBuffer.stored_at(out / REPLAY, tag=saved) is not None
    capsys.readouterr()
    train(_config(out, "resume=true"))
    log = capsys.readouterr().out
    assert "starting with an empty buffer" not in log
    assert f"at {saved} frames" in log and " 0 in the replay buffer" not in log
    assert not (out / "replay.prev").exists(), "the kept copy outlived the next checkpoint"
    # what the interrupted run logged past the checkpoint was dropped, then logged again
    logged = list(out.glob("*/scalars/train/*.csv"))
    assert logged
    for path in logged:
        steps = [int(line.split(",")[0]) for line in path.read_text().splitlines()]
        assert steps == sorted(set(steps)), f"{path.name} logs a step twice: {steps}"
    # the run's training time goes on across the resumes (the experiment's estimates read it)
    (seconds,) = [path for path in logged if path.name == "seconds.csv"]
    times = [float(line.split(",")[1]) for line in seconds.read_text().splitlines()]
    assert len(times) > 2 and times == sorted(times) and times[0] > 0


def test_resuming_an_earlier_kept_checkpoint_sets_the_later_ones_aside(tmp_path):
    """keep_checkpoints after resume=checkpoints/frames_<N>.pt in the same output_dir: the
    checkpoints past N belong to a future that did not happen; they are moved to
    checkpoints/superseded/ (not deleted) and never displace N or the new run's own."""
    out = tmp_path / "a"
    train(_config(out, "keep_checkpoints=3", "checkpoint_buffer=false"))
    kept = sorted((out / KEPT).glob("frames_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    assert len(kept) == 3
    start = int(kept[0].stem.split("_")[1])
    later = {p.name for p in kept[1:]}
    train(_config(out, f"resume={kept[0]}", "keep_checkpoints=3", "checkpoint_buffer=false"))
    # the first save past N sets them all aside; the resumed run (exact: same frame counts)
    # then writes its own checkpoints at the frames it reaches
    aside = {p.name for p in (out / KEPT / "superseded").iterdir()}
    assert aside and aside <= later
    now = [int(p.stem.split("_")[1]) for p in (out / KEPT).glob("frames_*.pt")]
    assert start in now and len(now) == 3
    # a set-aside checkpoint is still the run's own: resuming it clears nothing (with
    # overwrite=true the run's checkpoints/ was deleted, the resumed file with it)
    superseded = sorted((out / KEPT / "superseded").iterdir())[0]
    args = [f"resume={superseded}", "overwrite=true", "checkpoint_buffer=false"]
    train(_config(out, *args, "total_frames=300"))
    assert superseded.is_file() and (out / KEPT).is_dir()


def test_a_checkpoint_of_the_earlier_format_resumes_with_a_warning(tmp_path, capsys):
    """The earlier trainer saved plain dicts, ``dict(cfg)`` of an OmegaConf ``DictConfig``
    and no env or collector state, with ``torch.save``: such a file still resumes."""
    from omegaconf import OmegaConf

    first = train(_config(tmp_path, "total_frames=120", "checkpoint_buffer=false"))
    new = load_checkpoint(tmp_path / CHECKPOINT)
    cfg = OmegaConf.create(_config(tmp_path))
    old = {  # the keys of the earlier trainer's save()
        "loss": new["loss"],
        "optimizer": new["optimizer"],
        "egreedy": new["egreedy"],
        "frames": new["frames"],
        "episodes": new["episodes"],
        "last_target": new["last_target"],
        "updates": new["updates"],
        "rng": new["rng"]["torch"],
        "env_rng": new["env"]["simulator"]["rng"],
        "credit": new["credit"],
        "capture": new["capture"],
        "config": dict(cfg),
    }
    assert type(old["config"]["env"]).__name__ == "DictConfig"
    torch.save(old, tmp_path / CHECKPOINT)
    loaded = load_checkpoint(tmp_path / CHECKPOINT)
    assert loaded["config"]["env"]["name"] == "predator_prey"
    assert type(loaded["config"]["env"]) is dict
    capsys.readouterr()
    second = train(_config(tmp_path, "total_frames=200", "resume=true", "checkpoint_buffer=false"))
    out = capsys.readouterr().out
    assert "checkpoint of the earlier format" in out and "not exactly" in out
    assert second["frames"] >= 200 and second["updates"] > first["updates"]
    # the earlier checkpoint did not time the run: its total is unknown, not understated
    assert second["seconds_total"] is None and second["resumed_from_frames"] == first["frames"]
    assert math.isnan(load_checkpoint(tmp_path / CHECKPOINT)["seconds"])


def test_a_non_finite_loss_stops_the_run_after_checkpointing_the_last_good_state(tmp_path):
    cfg = _config(tmp_path, "checkpoint_buffer=false")
    calls = {"n": 0}
    from resq_torchrl.objectives import ResQLoss

    forward = ResQLoss.forward

    def poisoned(self, tensordict):
        out = forward(self, tensordict)
        calls["n"] += 1
        if calls["n"] == 5:  # the 5th update's central loss
            out.set("loss_central", torch.tensor(float("nan")))
        return out

    ResQLoss.forward = poisoned
    try:
        with pytest.raises(TrainingDivergedError) as err:
            train(cfg)
    finally:
        ResQLoss.forward = forward
    message = str(err.value)
    assert message.startswith("update 5: loss_central not finite")
    assert "collecting frames" in message and "\n" not in message
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["updates"] == 4  # the bad update was not applied
    params = [v for k, v in state["loss"].items() if v.is_floating_point()]
    assert all(bool(v.isfinite().all()) for v in params)
    first, last = message.split("collecting frames ")[1].split(";")[0].split("-")
    assert int(last) == state["frames"] and int(first) < int(last)


def test_a_run_without_updates_says_so(tmp_path, capsys):
    final = train(_config(tmp_path, "batch_episodes=100", "buffer_episodes=100"))
    assert final["updates"] == 0 and final["trained"] is False
    assert "no update was made" in final["note"]
    assert "warning: no update was made" in capsys.readouterr().out
    assert json.loads((tmp_path / "final.json").read_text())["trained"] is False


def test_the_guard_stops_a_non_finite_gradient_before_the_optimizer_step():
    from resq_torchrl.training.trainer import NonFiniteGuard, _NonFinite

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            return {"loss_a": (self.w * x).sum(), "diagnostic": torch.tensor(float("nan"))}

    toy = Toy()
    optimizer = torch.optim.SGD(toy.parameters(), lr=0.5)
    guard = NonFiniteGuard(toy, optimizer)
    with guard:  # finite: the step is taken (w - 0.5 * x); diagnostics are not checked
        toy(torch.tensor([1.0, 2.0, 4.0]))["loss_a"].backward()
        optimizer.step()
    assert toy.w.tolist() == [0.5, 0.0, -1.0]
    optimizer.zero_grad()
    toy.w.register_hook(lambda g: g * torch.tensor([1.0, float("inf"), 1.0]))
    with pytest.raises(_NonFinite, match="gradient is not finite"), guard:
        toy(torch.tensor([1.0, 1.0, 1.0]))["loss_a"].backward()
        optimizer.step()
    assert toy.w.tolist() == [0.5, 0.0, -1.0]  # not stepped
    with pytest.raises(_NonFinite, match="loss_a not finite"), guard:
        toy(torch.tensor([1.0, float("nan"), 1.0]))
    optimizer.zero_grad()
    toy(torch.tensor([1.0, float("nan"), 1.0]))["loss_a"].backward()  # outside: not checked


def test_a_run_stopped_after_its_last_checkpoint_is_finished_on_resume(
    tmp_path, capsys, monkeypatch
):
    """The last checkpoint of a run is written before ``final.json``. A run killed between
    the two resumes into its final evaluation only (not "nothing to do" forever), with the
    result an uninterrupted run wrote; a cut-short last line of ``eval.jsonl`` (a write
    stopped by the kill) is dropped. The final checkpoint is not written twice at the same
    frames (a periodic one at the last batch already holds it)."""
    import resq_torchrl.training.checkpoint as checkpoint

    out = tmp_path / "run"
    saved = []  # the frames of every checkpoint written
    real_save = checkpoint.save

    def counting_save(out_dir, run, *args, **kwargs):
        saved.append(run.progress.frames)
        return real_save(out_dir, run, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", counting_save)
    first = train(_config(out, "total_frames=180", "eval_interval=60"))
    end = first["frames"]
    # 60-frame checkpoints: the last batch crossed one, and that one is not written twice
    assert saved[-1] == end and len(saved) == len(set(saved)) == 3
    assert load_checkpoint(out / CHECKPOINT)["frames"] == end
    evaluated = (out / "eval.jsonl").read_text()
    assert json.loads(evaluated.splitlines()[-1])["frames"] == end
    capsys.readouterr()

    (out / "final.json").unlink()
    with (out / "eval.jsonl").open("a") as f:
        f.write('{"eval/return": 1.5, "fram')  # killed mid-write
    again = train(_config(out, "total_frames=180", "eval_interval=60", "resume=true"))
    assert "only the final evaluation is made" in capsys.readouterr().out
    assert len(saved) == 3  # nothing saved again
    assert again["resumed_from_frames"] == end and first["resumed_from_frames"] == 0
    # its total: the first process's up to the checkpoint, plus this one's
    timed = load_checkpoint(out / CHECKPOINT)["seconds"]
    assert 0 < timed <= first["seconds_total"]
    assert again["seconds_total"] >= timed + again["seconds"] - 1e-6
    assert _untimed(again) == _untimed(first)
    assert json.loads((out / "final.json").read_text())["frames"] == end
    assert (out / "eval.jsonl").read_text() == evaluated

    # without the evaluation at the end either, it is made again, the same
    (out / "final.json").unlink()
    (out / "eval.jsonl").write_text("".join(evaluated.splitlines(keepends=True)[:-1]))
    third = train(_config(out, "total_frames=180", "eval_interval=60", "resume=true"))
    assert _untimed(third) == _untimed(first) and (out / "eval.jsonl").read_text() == evaluated

    # finished now: resuming it again has nothing to do, as before
    with pytest.raises(ConfigError, match=f"nothing to do: {end} frames done"):
        train(_config(out, "total_frames=180", "eval_interval=60", "resume=true"))


def test_resuming_on_another_thread_count_says_it_is_not_exact(tmp_path, capsys):
    """The checkpoint records torch's thread count: a resume on another one continues with a
    warning (split reductions round differently), on the same one without."""
    threads = torch.get_num_threads()
    first = train(_config(tmp_path, "total_frames=120", "checkpoint_buffer=false"))
    assert load_checkpoint(tmp_path / CHECKPOINT)["threads"] == threads
    capsys.readouterr()
    try:
        torch.set_num_threads(threads + 1)
        second = train(
            _config(tmp_path, "total_frames=200", "resume=true", "checkpoint_buffer=false")
        )
        out = capsys.readouterr().out
        unit = "thread" if threads == 1 else "threads"
        assert f"written with {threads} torch {unit} and the run continues with {threads + 1}" in (
            out
        )
        assert f"threads={threads} resumes exactly" in out
        assert second["updates"] > first["updates"]
        assert load_checkpoint(tmp_path / CHECKPOINT)["threads"] == threads + 1
        train(_config(tmp_path, "total_frames=280", "resume=true", "checkpoint_buffer=false"))
        assert "torch threads" not in capsys.readouterr().out  # the same count: no warning
    finally:
        torch.set_num_threads(threads)


def test_resuming_on_another_env_is_one_line_naming_the_settings(tmp_path):
    """A resume with other env settings than the checkpoint's (another grid, another episode
    length) is refused before anything is loaded (it was a shape error deep inside)."""
    train(_config(tmp_path, "total_frames=120", "checkpoint_buffer=false"))
    before = (tmp_path / CHECKPOINT).read_bytes()
    with pytest.raises(ConfigError) as info:
        train(_config(tmp_path, "total_frames=200", "resume=true", "env.grid_size=6"))
    message = str(info.value)
    assert "was trained on env=predator_prey with grid_size=5" in message
    assert "this run asks for grid_size=6" in message and "start a new run" in message
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    # a setting the checkpoint's config does not name (added to the configs since) passes
    state = load_checkpoint(tmp_path / CHECKPOINT)
    del state["config"]["env"]["obs_radius"]
    torch.save(state, tmp_path / CHECKPOINT)
    resumed = train(_config(tmp_path, "total_frames=200", "resume=true"))
    assert resumed["frames"] >= 200
