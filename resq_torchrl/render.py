"""Videos of greedy episodes: one GIF (or MP4) per episode, one frame per env state.

:func:`render_run` (``scripts/evaluate.py render=true``) plays ``episodes`` greedy episodes of
a run's checkpoint, one per env of a batched env, and writes ``episode_<i>.gif`` for each.
A :class:`Recorder` per env family turns the env's state after the reset and after every
step into RGB frames ``[H, W, 3]`` uint8, so an episode of ``T`` steps has ``T + 1`` frames:

- ``predator_prey``: the grid drawn with matplotlib (Agg, no display): active predators as
  numbered blue discs (an orange ring: it chose catch this step), alive prey as red
  triangles, frozen predators and captured prey as faint crosses where they ended;
  the title gives the step, the step's reward and the return so far.
- ``matrix_game``: the payoff matrix (rows: agent 1, columns: agent 2; with more agents,
  the slice at the other agents' chosen actions), then the same with the greedy joint
  action's cell outlined and its reward.
- ``vmas``: VMAS's own renderer (``render(mode="rgb_array")``, pyglet, headless through EGL
  where VMAS finds it, else on the X display; a server without either needs a virtual one:
  ``xvfb-run``), with the step and return written on the frame.

GIFs are written with Pillow (it comes with matplotlib); MP4 by piping the frames to
``ffmpeg`` when it is on the ``PATH`` (matplotlib's ``animation.ffmpeg_path``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

from resq_torchrl.errors import ConfigError
from resq_torchrl.training.builders import env_family

#: the env families :func:`render_run` draws
RENDERABLE = ("predator_prey", "matrix_game", "vmas")
FORMATS = ("gif", "mp4")


class RenderUnavailableError(ConfigError):
    """Rendering needs something this machine lacks (ffmpeg, an OpenGL display)."""


def check_render(family: str, fmt: str) -> None:
    """Raise a :class:`ConfigError` for an env family that cannot be drawn or an unknown
    format, and a :class:`RenderUnavailableError` for MP4 without ffmpeg."""
    if family not in RENDERABLE:
        raise ConfigError(
            f"render=true draws the {', '.join(RENDERABLE)} envs, not {family!r}: "
            "evaluate this run without render=true"
        )
    if fmt not in FORMATS:
        raise ConfigError(f"unknown render_format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "mp4":
        require_ffmpeg()


def require_ffmpeg() -> str:
    """The ffmpeg executable matplotlib would use (``animation.ffmpeg_path``), or a
    :class:`RenderUnavailableError` naming the fix when it is not on the ``PATH``."""
    import matplotlib

    found = shutil.which(matplotlib.rcParams["animation.ffmpeg_path"])
    if found is None:
        raise RenderUnavailableError(
            "render_format=mp4 needs ffmpeg, which is not on the PATH: install it "
            "(apt-get install ffmpeg, or conda install ffmpeg), or use render_format=gif"
        )
    return found


# ------------------------------------------------------------------------------ recorders


class Recorder:
    """Collects what a frame shows, per env of a batched env of ``B`` copies, and draws it.

    :meth:`record` is called after the reset (``step=0``, ``td=None``) and after every step
    (``td``: the step's output, action at the root and the result under ``"next"``) with
    ``playing`` ``[B]`` bool (the envs whose first episode is not over: only those get a
    frame) and ``returns`` ``[B]`` (the return so far); :meth:`frames` draws env ``b``'s."""

    def __init__(self, env: EnvBase, env_cfg: Mapping) -> None:
        self.env = env
        self.env_cfg = env_cfg
        self.records: list[list[dict]] = [[] for _ in range(env.batch_size[0])]

    def record(
        self, step: int, td: TensorDictBase | None, playing: torch.Tensor, returns: torch.Tensor
    ) -> None:
        reward = None if td is None else td.get(("next", "reward")).reshape(-1).cpu()
        for b in playing.nonzero().flatten().tolist():
            entry = {
                "step": step,
                "reward": None if reward is None else float(reward[b]),
                "return": float(returns[b]),
            }
            entry.update(self.snapshot(b, td))
            self.records[b].append(entry)

    def snapshot(self, b: int, td: TensorDictBase | None) -> dict:
        """What env ``b``'s frame needs beyond step, reward and return."""
        return {}

    def frames(self, b: int) -> list[np.ndarray]:
        raise NotImplementedError


def _figure(width: float, height: float, dpi: int = 80):
    """A matplotlib figure on the Agg canvas (no display, whatever pyplot's backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _pixels(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _title(entry: Mapping) -> str:
    reward = "" if entry["reward"] is None else f"reward {entry['reward']:+.4g}   "
    return f"step {entry['step']}   {reward}return {entry['return']:+.4g}"


class PredatorPreyRecorder(Recorder):
    """Frames of :class:`~resq_torchrl.envs.PredatorPreyEnv` from its state tensors
    (``predator_pos`` ``[B, N, 2]``, ``prey_pos`` ``[B, M, 2]``, ``predator_active``,
    ``prey_alive``) and the predators' actions."""

    def snapshot(self, b: int, td: TensorDictBase | None) -> dict:
        from resq_torchrl.envs.predator_prey import CATCH

        base = self.env.base_env
        catching = (
            [False] * base.n_predators
            if td is None
            else (td.get(("agents", "action"))[b] == CATCH).tolist()
        )
        return {
            "predators": base.predator_pos[b].tolist(),
            "prey": base.prey_pos[b].tolist(),
            "active": base.predator_active[b].tolist(),
            "alive": base.prey_alive[b].tolist(),
            "catching": catching,
        }

    def frames(self, b: int) -> list[np.ndarray]:
        g = self.env.base_env.grid_size
        fig = _figure(4.2, 4.7)
        ax = fig.add_axes((0.04, 0.07, 0.92, 0.83))
        fig.text(
            0.5,
            0.02,
            "blue: predators (orange ring: catch)   red: prey   x: frozen / captured",
            ha="center",
            fontsize=7,
        )
        ax.set_xlim(-0.5, g - 0.5)
        ax.set_ylim(g - 0.5, -0.5)  # row 0 at the top
        ax.set_aspect("equal")
        ax.set_xticks(np.arange(-0.5, g, 1.0))
        ax.set_yticks(np.arange(-0.5, g, 1.0))
        ax.tick_params(length=0, labelbottom=False, labelleft=False)
        ax.grid(color="0.85", linewidth=0.8)
        # one artist per kind of mark, moved from frame to frame (cells as (col, row))
        style = {"linestyle": "none"}
        prey = ax.plot([], [], "^", color="tab:red", markersize=14, zorder=2, **style)[0]
        caught = ax.plot([], [], "x", color="tab:red", alpha=0.3, markersize=10, **style)[0]
        frozen = ax.plot([], [], "x", color="0.5", alpha=0.5, markersize=10, **style)[0]
        disc = {"color": "tab:blue", "markersize": 17, "zorder": 3, **style}
        moving = ax.plot([], [], "o", markeredgecolor="navy", markeredgewidth=1, **disc)[0]
        catching = ax.plot([], [], "o", markeredgecolor="tab:orange", markeredgewidth=3, **disc)
        catching = catching[0]
        labels = [
            ax.text(0, 0, str(i), color="white", ha="center", va="center", fontsize=8, zorder=4)
            for i in range(self.env.base_env.n_predators)
        ]
        title = ax.set_title("", fontsize=10)

        out = []
        for e in self.records[b]:
            predators, prey_cells = np.array(e["predators"]), np.array(e["prey"])
            active, catch, alive = (
                np.array(e[k], dtype=bool) for k in ("active", "catching", "alive")
            )
            for artist, cells, keep in (
                (prey, prey_cells, alive),
                (caught, prey_cells, ~alive),
                (frozen, predators, ~active),
                (moving, predators, active & ~catch),
                (catching, predators, active & catch),
            ):
                artist.set_data(cells[keep, 1], cells[keep, 0])
            for label, (r, c), a in zip(labels, e["predators"], active, strict=True):
                label.set_position((c, r))
                label.set_visible(bool(a))
            title.set_text(_title(e))
            out.append(_pixels(fig))
        return out


class MatrixGameRecorder(Recorder):
    """Frames of :class:`~resq_torchrl.envs.MatrixGameEnv`: its ``payoff`` ``[A] * n`` as a
    table, then the greedy joint action's cell."""

    def snapshot(self, b: int, td: TensorDictBase | None) -> dict:
        return {"action": None if td is None else td.get(("agents", "action"))[b].tolist()}

    def frames(self, b: int) -> list[np.ndarray]:
        payoff = self.env.base_env.payoff.detach().cpu().numpy()
        n_agents, n_actions = payoff.ndim, payoff.shape[0]
        actions = next((e["action"] for e in self.records[b] if e["action"] is not None), None)
        others = tuple(actions[2:]) if actions is not None else (0,) * (n_agents - 2)
        table = payoff[(slice(None), slice(None), *others)]
        names = [chr(ord("A") + k) if n_actions <= 26 else str(k) for k in range(n_actions)]
        size = 1.2 + 0.9 * n_actions
        fig = _figure(size, size + 0.4)
        out = []
        for entry in self.records[b]:
            fig.clear()
            ax = fig.add_axes((0.2, 0.08, 0.75, 0.72))
            ax.imshow(table, cmap="RdYlGn", vmin=payoff.min(), vmax=payoff.max())
            span = max(float(payoff.max() - payoff.min()), 1e-9)
            for r in range(n_actions):
                for c in range(n_actions):
                    level = (table[r, c] - payoff.min()) / span  # dark at both ends of the map
                    color = "white" if level < 0.2 or level > 0.8 else "black"
                    ax.text(c, r, f"{table[r, c]:g}", ha="center", va="center", color=color)
            ax.set_xticks(range(n_actions), names)
            ax.set_yticks(range(n_actions), names)
            ax.set_xlabel("agent 2")
            ax.set_ylabel("agent 1")
            ax.xaxis.set_label_position("top")
            ax.xaxis.tick_top()
            if entry["action"] is None:
                title = "payoff" + (
                    f" (agents 3..{n_agents} at {[names[a] for a in others]})" if others else ""
                )
            else:
                r, c = entry["action"][:2]
                ax.add_patch(_cell(r, c))
                joint = ", ".join(names[a] for a in entry["action"])
                title = f"greedy joint action ({joint}): reward {entry['reward']:+.4g}"
            fig.suptitle(title, fontsize=9)
            out.append(_pixels(fig))
        return out


def _cell(r: int, c: int):
    from matplotlib.patches import Rectangle

    return Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=4)


class VmasRecorder(Recorder):
    """Frames from VMAS's own renderer (``Environment.render(mode="rgb_array")``), drawn at
    once (the simulator's state is not kept), with the step and return written on them."""

    def snapshot(self, b: int, td: TensorDictBase | None) -> dict:
        simulator = self.env.base_env._env  # the vmas Environment under torchrl's VmasEnv
        try:
            frame = simulator.render(mode="rgb_array", env_index=b)
        except Exception as err:  # no OpenGL/display: pyglet's errors vary by platform
            raise RenderUnavailableError(
                f"VMAS could not render ({type(err).__name__}: {err}); it needs OpenGL: "
                "headless EGL or an X display. On a server without one, run under a virtual "
                "display: xvfb-run -a -s '-screen 0 1400x900x24' python scripts/evaluate.py "
                "... (apt-get install xvfb)"
            ) from err
        return {"frame": np.asarray(frame, dtype=np.uint8)}

    def frames(self, b: int) -> list[np.ndarray]:
        from PIL import Image, ImageDraw

        out = []
        for entry in self.records[b]:
            image = Image.fromarray(entry["frame"])
            ImageDraw.Draw(image).text((8, 8), _title(entry), fill=(0, 0, 0))
            out.append(np.asarray(image))
        return out


RECORDERS: dict[str, type[Recorder]] = {
    "predator_prey": PredatorPreyRecorder,
    "matrix_game": MatrixGameRecorder,
    "vmas": VmasRecorder,
}


@torch.no_grad()
def record_episodes(env: EnvBase, policy, max_steps: int, recorder: Recorder) -> list[int]:
    """Play the first episode of every env of ``env`` greedily (at most ``max_steps`` steps),
    handing ``recorder`` the state after the reset and after every step. Returns the
    episode lengths ``[B]`` (steps)."""
    n = env.batch_size[0]
    playing = torch.ones(n, dtype=torch.bool)
    returns = torch.zeros(n)
    lengths = [0] * n
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        td = env.reset()
        recorder.record(0, None, playing, returns)
        for step in range(1, max_steps + 1):
            td = env.step(policy(td))
            returns += td.get(("next", "reward")).reshape(n).cpu() * playing
            recorder.record(step, td, playing, returns)
            for b in playing.nonzero().flatten().tolist():
                lengths[b] = step
            playing &= ~td.get(("next", "done")).reshape(n).cpu()
            if not playing.any():
                break
            td = env.step_mdp(td)
    return lengths


# ---------------------------------------------------------------------------------- files


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: float = 4.0) -> Path:
    """Write ``frames`` (each ``[H, W, 3]`` uint8, one size) as a GIF (looping) or an MP4,
    by ``path``'s suffix."""
    path = Path(path)
    if not frames:
        raise ValueError("no frames to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp4":
        return _write_mp4(frames, path, fps)
    from PIL import Image

    # one palette for the episode, from up to 16 frames spread over it: quantizing to a
    # given palette is several times faster than Pillow's adaptive palette per frame
    sample = np.concatenate(list(frames[:: max(1, len(frames) // 16)]), axis=0)
    palette = Image.fromarray(sample.astype(np.uint8)).quantize(256, Image.Quantize.MEDIANCUT)
    images = [
        Image.fromarray(np.asarray(f, dtype=np.uint8)).quantize(
            palette=palette, dither=Image.Dither.NONE
        )
        for f in frames
    ]
    tmp = path.with_name(path.name + ".tmp")
    images[0].save(
        tmp,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000 / fps)),
        loop=0,
    )
    tmp.replace(path)
    return path


def _write_mp4(frames: Sequence[np.ndarray], path: Path, fps: float) -> Path:
    ffmpeg = require_ffmpeg()
    h, w = frames[0].shape[:2]
    command = [
        ffmpeg,
        "-y",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{w}x{h}",
        "-r",
        f"{fps:g}",
        "-i",
        "-",
        "-vf",
        "pad=ceil(iw/2)*2:ceil(ih/2)*2",  # yuv420p needs even sides
        "-pix_fmt",
        "yuv420p",
        str(path),
    ]
    data = b"".join(np.ascontiguousarray(f, dtype=np.uint8).tobytes() for f in frames)
    proc = subprocess.run(command, input=data, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return path


def render_run(
    output_dir: str | Path,
    episodes: int = 1,
    fmt: str = "gif",
    fps: float = 4.0,
    device: str | None = None,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    out_dir: str | Path | None = None,
    loaded: tuple[Path, dict] | None = None,
) -> list[Path]:
    """Write ``episodes`` greedy episodes of the run in ``output_dir`` (its checkpoint, or
    ``checkpoint``; ``loaded``: what ``evaluation.load_run`` returned for it) as
    ``out_dir/episode_<i>.<fmt>`` (``out_dir``: ``output_dir/render`` by default), one per
    env of a batched env seeded with ``seed``. Returns the paths written."""
    from resq_torchrl.training.builders import check_device
    from resq_torchrl.training.evaluation import build_policy, load_run

    episodes = int(episodes)
    if episodes < 1:
        raise ConfigError(f"render_episodes must be >= 1, got {episodes}")
    if fps <= 0:
        raise ConfigError(f"render_fps must be > 0, got {fps}")
    _, state = loaded or load_run(output_dir, checkpoint)
    env_cfg = state["config"]["env"]
    family = env_family(env_cfg)
    check_render(family, fmt)
    device = check_device(device or state["config"]["device"])
    env, policy, _ = build_policy(state, episodes, device, seed)
    recorder = RECORDERS[family](env, env_cfg)
    record_episodes(env, policy, int(env_cfg["max_steps"]), recorder)
    env.close()
    out_dir = Path(output_dir) / "render" if out_dir is None else Path(out_dir)
    return [
        write_video(recorder.frames(b), out_dir / f"episode_{b}.{fmt}", fps)
        for b in range(episodes)
    ]


__all__ = [
    "RENDERABLE",
    "FORMATS",
    "RenderUnavailableError",
    "Recorder",
    "PredatorPreyRecorder",
    "MatrixGameRecorder",
    "VmasRecorder",
    "RECORDERS",
    "check_render",
    "require_ffmpeg",
    "record_episodes",
    "write_video",
    "render_run",
]
