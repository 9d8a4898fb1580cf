"""resq_torchrl/render.py: frames of predator-prey and the matrix game drawn from hand-set
states, GIFs of greedy episodes of tiny trained runs read back with PIL, VMAS's renderer,
and the one-line errors (env families it cannot draw, MP4 without ffmpeg)."""

from __future__ import annotations

import importlib.util
import json
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from script_runner import run_in_process
from tensordict import TensorDict
from test_evaluate import trained_run

from resq_torchrl.envs import MatrixGameEnv, PredatorPreyEnv
from resq_torchrl.envs.predator_prey import CATCH, STAY
from resq_torchrl.errors import ConfigError
from resq_torchrl.render import (
    MatrixGameRecorder,
    PredatorPreyRecorder,
    RenderUnavailableError,
    VmasRecorder,
    check_render,
    record_episodes,
    render_run,
    write_video,
)
from resq_torchrl.training.builders import make_env
from resq_torchrl.training.evaluation import build_policy, greedy_episodes, load_run

#: matplotlib's default colours, as the frames draw them (face of a marker: exact pixels)
BLUE, RED, ORANGE = (31, 119, 180), (214, 39, 40), (255, 127, 14)


def count(frame: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int((frame == np.array(rgb, dtype=np.uint8)).all(-1).sum())


def gif_frames(path) -> int:
    with Image.open(path) as image:
        assert image.format == "GIF"
        return image.n_frames


class Wrapped:
    """The ``env.base_env`` a recorder reads, for a bare env."""

    def __init__(self, env):
        self.base_env = env
        self.batch_size = env.batch_size


def step_with(env, actions) -> TensorDict:
    td = TensorDict({("agents", "action"): torch.tensor(actions)}, batch_size=env.batch_size)
    return env.step(td)


def test_predator_prey_frames_follow_the_state():
    """Frame 0: two predators and a prey. Step 1, both catch: the prey is captured (+10),
    both freeze: no predator nor prey is drawn any more. A lone catch (step 1 of the second
    game) leaves the catcher active and draws its orange ring."""
    env = PredatorPreyEnv(grid_size=5, n_predators=2, n_prey=1, batch_size=[2])
    env.set_state(
        torch.tensor([[[1, 2], [2, 1]], [[1, 2], [4, 4]]]), torch.tensor([[[2, 2]], [[2, 2]]])
    )
    env.prey_move_prob = 0.0  # the lone-catch game's prey stays next to its catcher
    recorder = PredatorPreyRecorder(Wrapped(env), {})
    playing = torch.ones(2, dtype=torch.bool)
    recorder.record(0, None, playing, torch.zeros(2))
    td = step_with(env, [[CATCH, CATCH], [CATCH, STAY]])
    assert td["next", "reward"].flatten().tolist() == [10.0, -2.0]
    recorder.record(1, td, playing, td["next", "reward"].flatten())
    capture, lone = recorder.frames(0), recorder.frames(1)
    assert len(capture) == len(lone) == 2
    assert count(capture[0], BLUE) > 100 and count(capture[0], RED) > 50
    assert count(capture[0], ORANGE) == 0  # no action yet
    assert count(capture[1], BLUE) == 0 and count(capture[1], RED) == 0
    assert count(lone[1], ORANGE) > 20 and count(lone[1], BLUE) > 100
    assert count(lone[1], RED) > 50
    assert capture[0].shape == capture[1].shape == lone[0].shape


def test_matrix_game_frames_outline_the_joint_action():
    env = MatrixGameEnv(batch_size=[1])
    recorder = MatrixGameRecorder(Wrapped(env), {})
    playing = torch.ones(1, dtype=torch.bool)
    recorder.record(0, None, playing, torch.zeros(1))
    td = step_with(env, [[2, 2]])
    recorder.record(1, td, playing, td["next", "reward"].flatten())
    before, after = recorder.frames(0)
    assert recorder.records[0][1]["reward"] == pytest.approx(7.9)
    black = (0, 0, 0)
    # the outline: a 4-point black square around one cell, absent before the step
    assert count(after, black) > count(before, black) + 300


def test_a_three_agent_matrix_game_is_drawn_at_the_others_actions():
    env = MatrixGameEnv([[[1, 0], [0, 0]], [[0, 0], [0, 5]]], batch_size=[1])
    recorder = MatrixGameRecorder(Wrapped(env), {})
    playing = torch.ones(1, dtype=torch.bool)
    recorder.record(0, None, playing, torch.zeros(1))
    recorder.record(1, step_with(env, [[1, 1, 1]]), playing, torch.full((1,), 5.0))
    frames = recorder.frames(0)
    assert len(frames) == 2 and frames[0].shape == frames[1].shape


@pytest.fixture(scope="module")
def pp_run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("pp"), "predator_prey")


def test_predator_prey_gifs_have_one_frame_per_state(pp_run, tmp_path):
    """Greedy episodes of a trained checkpoint: episode_<i>.gif holds length + 1 frames
    (the reset and every step), the lengths those of the same greedy episodes played by
    the evaluation."""
    paths = render_run(pp_run, episodes=2, seed=4, out_dir=tmp_path / "render")
    assert [p.name for p in paths] == ["episode_0.gif", "episode_1.gif"]
    env, policy, cfg = build_policy(load_run(pp_run)[1], 2, "cpu", seed=4)
    lengths = greedy_episodes(env, policy, int(cfg["env"]["max_steps"]))["lengths"].tolist()
    assert [gif_frames(p) for p in paths] == [n + 1 for n in lengths]


def test_matrix_game_gif_from_the_script(tmp_path):
    run = trained_run(tmp_path / "mg", "matrix_game", total_frames=8)
    proc = run_in_process(
        f"scripts/evaluate.py output_dir={run} episodes=2 render=true render_episodes=1", tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    gif = run / "render" / "episode_0.gif"
    assert gif_frames(gif) == 2  # the payoff, then the greedy joint action
    assert f"wrote 1 video(s) to {run / 'render'}/: episode_0.gif" in proc.stderr
    assert json.loads(proc.stdout)["eval/episodes"] == 2


def test_vmas_frames_from_its_own_renderer(tmp_path):
    if importlib.util.find_spec("vmas") is None:
        pytest.skip("vmas is not installed (pip install -e '.[vmas]')")
    env_cfg = {
        "family": "vmas",
        "name": "vmas_balance",
        "scenario": "balance",
        "max_steps": 3,
        "scenario_kwargs": {"n_agents": 2},
    }
    env = make_env(env_cfg, 1, "cpu", seed=0)
    recorder = VmasRecorder(env, env_cfg)
    try:
        lengths = record_episodes(env, env.rand_action, 3, recorder)
    except RenderUnavailableError as err:
        pytest.skip(f"VMAS cannot render on this machine: {err}")
    frames = recorder.frames(0)
    assert lengths == [3] and len(frames) == 4  # the reset and 3 steps (the time limit)
    assert frames[0].ndim == 3 and frames[0].shape[-1] == 3 and frames[0].dtype == np.uint8
    assert not np.array_equal(frames[0], frames[-1])
    assert gif_frames(write_video(frames, tmp_path / "vmas.gif")) == 4


def test_only_the_drawable_envs_and_formats():
    with pytest.raises(ConfigError, match="draws the predator_prey, matrix_game, vmas envs"):
        check_render("smax", "gif")
    with pytest.raises(ConfigError, match="unknown render_format 'avi'; choose one of: gif"):
        check_render("vmas", "avi")


def test_mp4_without_ffmpeg_names_the_fix(monkeypatch):
    import matplotlib

    monkeypatch.setitem(matplotlib.rcParams, "animation.ffmpeg_path", "no-such-ffmpeg")
    with pytest.raises(RenderUnavailableError, match="needs ffmpeg.*render_format=gif"):
        check_render("predator_prey", "mp4")


def test_mp4_frames_go_to_ffmpeg(monkeypatch, tmp_path):
    """A stand-in ffmpeg that stores what it is given: every frame's bytes, once, in order."""
    import matplotlib

    fake = tmp_path / "ffmpeg"
    fake.write_text('#!/bin/sh\nfor last; do :; done\ncat > "$last"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setitem(matplotlib.rcParams, "animation.ffmpeg_path", str(fake))
    frames = [np.full((6, 4, 3), k, dtype=np.uint8) for k in range(3)]
    path = write_video(frames, tmp_path / "out" / "episode_0.mp4", fps=2)
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8).reshape(3, 6, 4, 3)
    assert [int(d.max()) for d in data] == [0, 1, 2]
