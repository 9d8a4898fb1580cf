import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.envs import InitTracker, StepCounter, TransformedEnv

from resq_torchrl.data import EpisodeReplayBuffer
from resq_torchrl.envs import MatrixGameEnv


def padded(lengths, max_t=None):
    """Padded episodes: episode i has ``lengths[i]`` steps with x = 10 i + t."""
    max_t = max_t or max(lengths)
    t = torch.arange(max_t)
    mask = t < torch.tensor(lengths).unsqueeze(-1)
    x = (10 * torch.arange(len(lengths)).unsqueeze(-1) + t) * mask
    return TensorDict(
        {
            "x": x.float(),
            ("collector", "mask"): mask,
            ("agents", "rnn_hidden"): torch.ones(len(lengths), max_t, 2, 4),
        },
        [len(lengths), max_t],
    )


def test_episodes_are_padded_to_max_len_and_sampled_trimmed():
    buf = EpisodeReplayBuffer(capacity=10, max_len=8, batch_size=16)
    assert buf.extend(padded([3, 1, 5])) == 3 and len(buf) == 3
    data = buf.buffer[:]
    assert data.shape == (3, 8)
    assert data["collector", "mask"].sum(-1).tolist() == [3, 1, 5]
    assert ("agents", "rnn_hidden") not in data.keys(True)  # recomputed by the loss
    sample = buf.sample()
    assert sample.shape == (16, 5)  # trimmed to the longest sampled episode
    assert (sample["x"][~sample["collector", "mask"]] == 0).all()


def test_capacity_is_counted_in_episodes_and_oldest_go_first():
    buf = EpisodeReplayBuffer(capacity=3, max_len=4, batch_size=2)
    for _ in range(2):
        buf.extend(padded([1, 2, 3]))
    assert len(buf) == 3 and buf.episodes_added == 6


def test_bad_input_is_reported():
    buf = EpisodeReplayBuffer(capacity=4, max_len=2)
    with pytest.raises(RuntimeError, match="no complete episode"):
        buf.sample()
    with pytest.raises(ValueError, match="longer than max_len=2"):
        buf.extend(padded([3]))
    with pytest.raises(ValueError, match="padded episodes"):
        buf.extend(TensorDict({"x": torch.zeros(2, 3)}, [2, 3]))
    with pytest.raises(ValueError, match="capacity"):
        EpisodeReplayBuffer(capacity=0)


def test_collector_episodes_flow_into_the_buffer():
    """A torchrl Collector with trajs_per_batch yields whole episodes the buffer stores."""
    env = TransformedEnv(MatrixGameEnv(batch_size=[3]), InitTracker())
    env.append_transform(StepCounter())
    collector = Collector(
        env, None, frames_per_batch=6, total_frames=24, trajs_per_batch=4, traj_format="padded"
    )
    buf = EpisodeReplayBuffer(capacity=100, max_len=1, batch_size=5)
    for episodes in collector:
        buf.extend(episodes)
    collector.shutdown()
    assert len(buf) >= 20 and buf.sample().shape == (5, 1)
    assert buf.sample()["is_init"].all()


def test_dumps_and_loads_round_trip(tmp_path):
    def episodes(seed):
        g = torch.Generator().manual_seed(seed)
        return TensorDict(
            {
                "obs": torch.randn(3, 4, 2, generator=g),
                ("collector", "mask"): torch.ones(3, 4).bool(),
            },
            [3, 4],
        )

    a = EpisodeReplayBuffer(capacity=8, max_len=4, batch_size=2)
    a.extend(episodes(0))
    a.dumps(tmp_path / "replay")
    a.extend(episodes(1))
    a.dumps(tmp_path / "replay")  # overwrites the first copy atomically
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replay"]
    b = EpisodeReplayBuffer(capacity=8, max_len=4, batch_size=2)
    b.loads(tmp_path / "replay")
    assert len(b) == 6 and b.episodes_added == 6
    stored = b.buffer.storage.get(list(range(6)))
    assert torch.equal(stored["obs"], torch.cat([episodes(0)["obs"], episodes(1)["obs"]]))
    with pytest.raises(FileNotFoundError, match="no replay buffer"):
        b.loads(tmp_path / "missing")


def test_dumps_survives_a_crash_mid_swap(tmp_path):
    """A crash can leave ``replay.old`` (not yet deleted) or only ``replay.old`` (between the
    two renames): the next dumps still works and loads finds the complete copy."""
    a = EpisodeReplayBuffer(capacity=8, max_len=4, batch_size=2)
    a.extend(
        TensorDict({"x": torch.ones(2, 4), ("collector", "mask"): torch.ones(2, 4).bool()}, [2, 4])
    )
    a.dumps(tmp_path / "replay", tag=7)
    (tmp_path / "replay").rename(tmp_path / "replay.old")  # died between the renames
    assert EpisodeReplayBuffer.tag_at(tmp_path / "replay") == 7
    b = EpisodeReplayBuffer(capacity=8, max_len=4, batch_size=2)
    b.loads(tmp_path / "replay")
    assert len(b) == 2
    a.dumps(tmp_path / "replay", tag=8)  # a leftover replay.old does not block the next save
    a.dumps(tmp_path / "replay", tag=9)
    assert EpisodeReplayBuffer.tag_at(tmp_path / "replay") == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replay"]
