import pytest
import torch
from tensordict import TensorDict

from resq_torchrl.data import EpisodeReplayBuffer


def collector_batch(x, done):
    x = torch.as_tensor(x, dtype=torch.float32)
    done = torch.as_tensor(done).bool().unsqueeze(-1)
    n, t = x.shape
    return TensorDict(
        {"x": x, ("next", "done"): done, ("agents", "rnn_hidden"): torch.zeros(n, t, 2, 4)},
        [n, t],
    )


def stored(buf):
    data = buf.buffer[:]
    mask = data["collector", "mask"]
    return sorted(data["x"][i][mask[i]].tolist() for i in range(len(data)))


def test_episodes_are_assembled_across_collector_batches():
    """Episodes cut by the collector's batch boundary are stored whole, in order, padded
    with zeros and masked; unfinished episodes wait; the recurrent state is not stored."""
    buf = EpisodeReplayBuffer(capacity=10, max_len=8, batch_size=4)
    first = collector_batch(
        [[0, 1, 2, 3, 4], [10, 11, 12, 13, 14], [20, 21, 22, 23, 24]],
        [[0, 1, 0, 0, 1], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]],
    )
    assert buf.extend(first) == 4 and len(buf) == 4
    assert stored(buf) == [[0, 1], [2, 3, 4], [20], [21]]
    second = collector_batch([[5, 6], [15, 16], [25, 26]], [[1, 0], [0, 1], [0, 1]])
    assert buf.extend(second) == 3 and len(buf) == 7
    assert stored(buf) == [
        [0, 1],
        [2, 3, 4],
        [5],
        [10, 11, 12, 13, 14, 15, 16],
        [20],
        [21],
        [22, 23, 24, 25, 26],
    ]
    data = buf.buffer[:]
    assert ("agents", "rnn_hidden") not in data.keys(True)
    assert (data["x"][~data["collector", "mask"]] == 0).all()


def test_capacity_is_counted_in_episodes_and_oldest_go_first():
    buf = EpisodeReplayBuffer(capacity=3, max_len=4, batch_size=2)
    for k in range(5):
        buf.extend(collector_batch([[k, k]], [[0, 1]]))
    assert len(buf) == 3 and buf.episodes_added == 5
    assert stored(buf) == [[2, 2], [3, 3], [4, 4]]


def test_sample_is_trimmed_to_the_longest_sampled_episode():
    buf = EpisodeReplayBuffer(capacity=8, max_len=10, batch_size=5)
    buf.extend(collector_batch([[1, 2, 3]], [[0, 0, 1]]))
    buf.extend(collector_batch([[4]], [[1]]))
    sample = buf.sample()
    assert sample.shape[0] == 5 and sample.shape[1] in (1, 3)
    assert sample.shape[1] == int(sample["collector", "mask"].sum(-1).max())


def test_too_long_episode_and_empty_buffer_are_reported():
    buf = EpisodeReplayBuffer(capacity=4, max_len=2)
    with pytest.raises(RuntimeError, match="no complete episode"):
        buf.sample()
    with pytest.raises(ValueError, match="longer than max_len=2"):
        buf.extend(collector_batch([[1, 2, 3]], [[0, 0, 1]]))
    with pytest.raises(ValueError, match="capacity"):
        EpisodeReplayBuffer(capacity=0)
