"""Checkpoints load with ``torch.load(weights_only=True)``: a file carrying a pickled object
whose loading would run code is refused, with one line, by ``resume``, by ``load_checkpoint``
and by ``scripts/evaluate.py`` (which reads checkpoints with it), and the code never runs."""

import os
import shlex
from pathlib import Path

import pytest
import torch
from conftest import TINY_PREDATOR_PREY, compose_config
from script_runner import run_in_process

from resq_torchrl.errors import CheckpointNotFoundError, UnsafeCheckpointError
from resq_torchrl.training.checkpoint import CHECKPOINT, load_checkpoint
from resq_torchrl.training.trainer import evaluate_checkpoint, train


class _WritesAFile:
    """Unpickling this calls ``os.system("touch <marker>")``: it would run code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _config(out: Path, *extra: str) -> dict:
    return compose_config(
        "train",
        "algorithm=qmix",
        "env=predator_prey",
        *TINY_PREDATOR_PREY,
        "agent.hidden_dim=16",
        "progress=false",
        "batch_episodes=4",
        "eval_episodes=2",
        "eval_interval=40",
        "checkpoint_interval=40",
        "total_frames=60",
        f"output_dir={out}",
        *extra,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(_config(out))
    return out


def test_a_checkpoint_holds_plain_data_only(trained):
    state = load_checkpoint(trained / CHECKPOINT)

    def plain(x) -> bool:
        if isinstance(x, dict):
            return all(isinstance(k, (str, int)) and plain(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, (torch.Tensor, int, float, str, bool))

    assert plain(state)
    assert state["config"]["algorithm"]["name"] == "qmix" and state["format"] == 2


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(trained, tmp_path):
    marker = tmp_path / "code_ran"
    state = load_checkpoint(trained / CHECKPOINT)
    state["config"]["env"]["payload"] = _WritesAFile(marker)
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save(state, bad / CHECKPOINT)
    assert not marker.exists()

    for load in (
        lambda: load_checkpoint(bad / CHECKPOINT),  # scripts/evaluate.py's loader
        lambda: evaluate_checkpoint(bad, episodes=2),
        lambda: train(_config(bad, "resume=true", "total_frames=120")),
        lambda: train(_config(tmp_path / "other", f"resume={bad / CHECKPOINT}")),
    ):
        with pytest.raises(UnsafeCheckpointError) as err:
            load()
        message = str(err.value)
        assert "\n" not in message and ".system" in message and "was not run" in message
        assert not marker.exists()
    # the script, as a user runs it on someone else's run directory: one line, exit code 2
    proc = run_in_process(["scripts/evaluate.py", f"output_dir={bad}", "episodes=2"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: refusing to load") and ".system" in line
    assert not marker.exists()
    # the same object hidden in a checkpoint of the earlier format (OmegaConf config) too
    from omegaconf import OmegaConf

    legacy = {"loss": state["loss"], "config": dict(OmegaConf.create({"env": {"a": 1}}))}
    assert type(legacy["config"]["env"]).__name__ == "DictConfig"  # allowed for old files
    legacy["config"]["b"] = _WritesAFile(marker)
    torch.save(legacy, bad / CHECKPOINT)
    with pytest.raises(UnsafeCheckpointError, match="was not run"):
        load_checkpoint(bad / CHECKPOINT)
    assert not marker.exists()


def test_a_file_that_is_not_a_checkpoint_gets_one_line(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"not a zip file at all")
    with pytest.raises(UnsafeCheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / CHECKPOINT)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UnsafeCheckpointError, match="no 'loss' entry"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_replay_dump_that_would_run_code_is_refused_on_resume(tmp_path):
    """torchrl's ``ReplayBuffer.loads`` unpickles ``prefetch.pkl``: resume checks the replay
    directory first (pickletools, nothing unpickled) and refuses one that would run code."""
    import pickle

    marker = tmp_path / "code_ran"
    out = tmp_path / "run"
    train(_config(out, "checkpoint_buffer=true"))
    (out / "replay" / "prefetch.pkl").write_bytes(pickle.dumps(_WritesAFile(marker)))
    with pytest.raises(UnsafeCheckpointError, match="prefetch.pkl is a pickle that imports"):
        train(_config(out, "resume=true", "checkpoint_buffer=true", "total_frames=120"))
    assert not marker.exists()
    (out / "replay" / "prefetch.pkl").unlink()
    (out / "replay" / "extra.bin").write_bytes(b"")
    with pytest.raises(UnsafeCheckpointError, match="extra.bin is not a file"):
        train(_config(out, "resume=true", "checkpoint_buffer=true", "total_frames=120"))
