import json

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
    buf = EpisodeReplayBuffer(capacity=10, max_len=8, batch_size=2)
    assert buf.extend(padded([3, 1, 5])) == 3 and len(buf) == 3
    data = buf.buffer[:]
    assert data.shape == (3, 9)  # max_len + 1: the slot after an episode holds its last next
    assert data["collector", "mask"].sum(-1).tolist() == [3, 1, 5]
    assert ("agents", "rnn_hidden") not in data.keys(True)  # recomputed by the loss
    torch.manual_seed(0)
    lengths = torch.tensor([3, 1, 5])
    widths = []
    for _ in range(20):
        sample = buf.sample()
        index = sample["index"][:, 0]
        width = int(lengths[index].max())  # the longest of the two sampled episodes
        assert sample.shape == (2, width), (index.tolist(), sample.shape)
        assert sample["collector", "mask"].sum(-1).tolist() == lengths[index].tolist()
        assert torch.equal(sample["x"], padded([3, 1, 5], max_t=8)["x"][index, :width])
        widths.append(width)
    assert min(widths) < 5 == max(widths), widths  # narrower when no 5-step one is drawn


def test_capacity_is_counted_in_episodes_and_oldest_go_first():
    """Batches of 2 episodes into room for 3: each batch overwrites the oldest stored ones,
    so the buffer holds exactly the 3 newest episodes."""
    buf = EpisodeReplayBuffer(capacity=3, max_len=4, batch_size=2)
    # episode j of batch b: x = 100 b + 10 j + t at its real steps
    batches = [padded(lengths, max_t=4) for lengths in ([1, 2], [3, 1], [2, 4])]
    for b, batch in enumerate(batches):
        batch["x"] = batch["x"] + 100 * b * batch["collector", "mask"]
    stored_after = []
    for batch in batches:
        buf.extend(batch)
        stored = buf.episodes(torch.arange(len(buf)))
        stored_after.append(sorted(stored["x"][:, 0].tolist()))
        for episode in stored:  # stored whole: the episode of batch b, row j, as given
            b, j = divmod(int(episode["x"][0]), 100)
            assert torch.equal(episode["x"], batches[b]["x"][j // 10])
    assert len(buf) == 3 and buf.episodes_added == 6
    assert stored_after == [[0, 10], [10, 100, 110], [110, 200, 210]]


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
    with pytest.raises(ValueError, match="capacity must be a whole number, got 10.5"):
        EpisodeReplayBuffer(capacity=10.5)


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
    stored = b.episodes(list(range(6)))
    assert torch.equal(stored["obs"], torch.cat([episodes(0)["obs"], episodes(1)["obs"]]))
    with pytest.raises(FileNotFoundError, match="no replay buffer"):
        b.loads(tmp_path / "missing")
    # a buffer of another max_len cut every episode short in silence; another capacity or
    # sampling failed deep inside tensordict or torchrl
    for other, message in (
        (dict(capacity=8, max_len=3), "capacity=8 episodes of max_len=4 steps; this buffer"),
        (dict(capacity=6, max_len=4), "has capacity=6, max_len=4: build it with the dump's"),
        (dict(capacity=8, max_len=4, prioritized=True), "written by a uniform buffer"),
    ):
        with pytest.raises(ValueError, match=message):
            EpisodeReplayBuffer(**other, batch_size=2).loads(tmp_path / "replay")


def test_extend_takes_whole_episodes_and_sample_a_positive_size():
    """Rows whose real steps are not a prefix, or that do not end with ``done``, are not
    whole episodes (a collector without ``trajs_per_batch``): stored once, they made the
    next batch fail with a message blaming the env. ``sample(0)`` took the default size."""
    buf = EpisodeReplayBuffer(capacity=4, max_len=4, batch_size=2)
    gap = padded([3, 2])
    gap["collector", "mask"][0, 1] = False
    with pytest.raises(ValueError, match="non-empty prefix"):
        buf.extend(gap)
    with pytest.raises(ValueError, match="non-empty prefix"):
        buf.extend(padded([2, 0]))
    cut = padded([3, 2])
    cut["next", "done"] = torch.zeros(2, 3, 1, dtype=torch.bool)
    cut["next", "done"][0, 2] = True  # the first ends, the second is cut short
    with pytest.raises(ValueError, match="1 of 2 rows do not end with"):
        buf.extend(cut)
    cut["next", "done"][1, 1] = True
    assert buf.extend(cut) == 2
    for size in (0, -1):
        with pytest.raises(ValueError, match=f"batch_size must be >= 1, got {size}"):
            buf.sample(size)


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


def test_prioritized_replay_samples_by_the_largest_real_td_error():
    """An episode's priority is its largest absolute TD error over its real steps (not the
    mean; padding never counts); episodes are drawn with ``P(i) = p_i^alpha / sum p^alpha``
    and carry the importance weight ``(N P(i))^-beta / max_j (N P(j))^-beta``."""
    torch.manual_seed(0)
    buffer = EpisodeReplayBuffer(
        capacity=8, max_len=4, batch_size=64, prioritized=True, alpha=0.5, beta=0.5
    )
    lengths = torch.tensor([4, 3, 1, 2])
    mask = torch.arange(4).expand(4, 4) < lengths.unsqueeze(-1)
    episodes = TensorDict(
        {"x": torch.arange(4.0).reshape(4, 1).expand(4, 4).clone(), ("collector", "mask"): mask},
        batch_size=[4, 4],
    )
    buffer.extend(episodes)
    sampler = buffer.buffer._sampler
    assert sampler._priority[:4].tolist() == [1.0] * 4  # new episodes: the largest seen (1)
    stored = buffer.episodes(torch.arange(4))  # every stored episode once, in order
    stored["index"] = torch.arange(4).unsqueeze(-1).expand(4, 4)
    error = torch.tensor(
        [
            [9.0, 0.0, 0.0, 0.0],  # max 9, mean 2.25
            [4.0, 4.0, 4.0, 50.0],  # max 4, mean 4 (the 50 is padding)
            [1.0, 100.0, 100.0, 100.0],  # one real step: 1
            [0.0, 1.0, 100.0, 100.0],  # max 1, mean 0.5
        ]
    )
    stored["td_error"] = error.unsqueeze(-1)
    buffer.update_priority(stored)
    eps = sampler.eps
    torch.testing.assert_close(
        sampler._priority[:4], torch.tensor([9.0, 4.0, 1.0, 1.0]) + eps, rtol=0, atol=1e-6
    )
    # alpha = 1/2: p^alpha = (3, 2, 1, 1), P = (3, 2, 1, 1) / 7, N = 4;
    # w_i = (N P(i))^-1/2 / (N min P)^-1/2 = sqrt(min P / P(i)) = (1/sqrt 3, 1/sqrt 2, 1, 1)
    expected_weight = torch.tensor([3.0**-0.5, 2.0**-0.5, 1.0, 1.0])
    draws = [buffer.sample() for _ in range(20)]
    for sample in draws:
        weight = sample["_weight"]
        assert weight.shape == sample.shape  # one weight per episode, along its steps
        torch.testing.assert_close(weight, expected_weight[sample["index"]], rtol=1e-4, atol=0)
    index = torch.cat([d.get("index")[:, 0] for d in draws])
    counts = torch.bincount(index, minlength=4)  # 1280 draws: expected (549, 366, 183, 183)
    assert counts[0] > counts[1] > counts[2:].max() and counts[2:].min() > 100, counts.tolist()
    # an episode added now gets the largest priority given so far
    buffer.extend(episodes[:1])
    torch.testing.assert_close(sampler._priority[4], torch.tensor(9.0 + eps), rtol=0, atol=1e-6)


def test_uniform_buffer_ignores_priority_updates():
    buffer = EpisodeReplayBuffer(capacity=4, max_len=2, batch_size=2)
    episodes = TensorDict(
        {"x": torch.zeros(2, 2), ("collector", "mask"): torch.ones(2, 2, dtype=torch.bool)},
        batch_size=[2, 2],
    )
    episodes["x"] = torch.arange(4.0).reshape(2, 2)
    buffer.extend(episodes)
    torch.manual_seed(0)
    draws = [buffer.sample()["x"][:, 0].tolist() for _ in range(20)]
    sample = buffer.sample()
    assert "_weight" not in sample.keys()
    buffer.update_priority(sample)  # no TD error needed: nothing happens
    sample.set("td_error", torch.tensor([[1e6, 1e6], [0.0, 0.0]]))
    buffer.update_priority(sample)  # a huge error changes nothing either
    torch.manual_seed(0)
    assert [buffer.sample()["x"][:, 0].tolist() for _ in range(20)] == draws
    assert {x for draw in draws for x in draw} == {0.0, 2.0}  # both episodes, uniformly


def test_losses_weight_their_means_by_the_importance_weights(make_table_qnet, make_transition):
    """With ``"_weight"`` in the batch every mean over samples is ``sum w x / sum w``."""
    from resq_torchrl.modules import VDNMixer
    from resq_torchrl.objectives import QMIXLoss

    loss = QMIXLoss(make_table_qnet([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]), VDNMixer(2, device=None))
    td = make_transition([[0, 2], [1, 1], [2, 0]], [1.0, -3.0, 5.0], [1, 1, 1])
    plain = td.clone()
    out_plain = loss(plain)
    err2 = plain["td_error"].squeeze(-1).pow(2)
    torch.testing.assert_close(out_plain["loss_td"], err2.mean())
    weighted = td.clone()
    w = torch.tensor([1.0, 0.0, 3.0])
    weighted["_weight"] = w
    out = loss(weighted)
    torch.testing.assert_close(out["loss_td"], (err2 * w).sum() / w.sum())


def collected_episodes(n_batches=3, max_steps=12, episodes_per_batch=4):
    """Episodes the way train.py collects them: the small predator-prey game, GRU agents
    with their primer (hidden state, last action), masked epsilon-greedy policy."""
    from resq_torchrl.training.builders import env_dims, make_env, make_loss
    from resq_torchrl.training.collectors import make_collector
    from resq_torchrl.training.trainer import add_agent_transforms, make_policies

    torch.manual_seed(0)
    env_cfg = {
        "name": "predator_prey",
        "grid_size": 5,
        "n_predators": 2,
        "n_prey": 1,
        "episode_limit": max_steps,
        "max_steps": max_steps,
    }
    env = make_env(env_cfg, 3, "cpu", seed=0)
    algo = {"name": "qmix", "mixing_embed_dim": 8, "hypernet_embed": 16, "hypernet_layers": 2}
    agent = {"type": "gru", "hidden_dim": 8, "last_action": True, "agent_id": True}
    loss = make_loss(algo, agent, env_dims(env), "cpu")
    add_agent_transforms(env, loss)
    policy, _ = make_policies(loss, env, {"eps_init": 0.5, "eps_end": 0.5, "anneal_frames": 1})
    cfg = {"n_envs": 3, "rollout_steps": 5, "episodes_per_batch": episodes_per_batch}
    cfg["env"] = env_cfg
    collector = make_collector(cfg, env, policy, torch.device("cpu"))
    batches = []
    for batch in collector:
        batches.append(batch)
        if len(batches) == n_batches:
            break
    collector.shutdown()
    return batches


def storage_bytes(buf):
    data = buf.buffer.storage._storage  # torchrl's LazyTensorStorage keeps it here
    return sum(v.numel() * v.element_size() for v in data.values(True, True))


@pytest.mark.parametrize("prioritized", [False, True])
def test_shifted_next_layout_samples_exactly_what_the_plain_one_does(prioritized):
    """Storing each step once and rebuilding the ``next`` entries by shifting gives the
    same samples, key for key and bit for bit, as storing both, in about half the bytes."""
    batches = collected_episodes()
    shifted = EpisodeReplayBuffer(capacity=32, max_len=12, batch_size=5, prioritized=prioritized)
    plain = EpisodeReplayBuffer(
        capacity=32, max_len=12, batch_size=5, prioritized=prioritized, shift_next=False
    )
    for b in batches:
        shifted.extend(b.clone())
        plain.extend(b.clone())
    assert ("agents", "observation") in shifted.shifted and ("state",) in shifted.shifted
    assert ("agents", "action_mask") in shifted.shifted
    for _ in range(3):
        torch.manual_seed(1)
        a = shifted.sample()
        torch.manual_seed(1)
        b = plain.sample()
        assert set(a.keys(True, True)) == set(b.keys(True, True))
        assert (a == b).all(), "the rebuilt next entries differ from the stored ones"
        assert a.get(("next", "agents")).batch_size == b.get(("next", "agents")).batch_size
    index = torch.arange(len(plain))
    assert (shifted.episodes(index) == plain.buffer.storage.get(index)).all()
    assert storage_bytes(shifted) < 0.6 * storage_bytes(plain)


@pytest.mark.parametrize("source_shift", [False, True])
def test_loads_converts_a_copy_of_the_other_layout(tmp_path, source_shift):
    """A replay dumped in one layout (or before layouts were recorded) loads into the other
    with the same episodes at the same indices, the same writer cursor and priorities."""
    batches = collected_episodes(n_batches=4)
    a = EpisodeReplayBuffer(
        capacity=10, max_len=12, batch_size=4, prioritized=True, shift_next=source_shift
    )
    for b in batches:  # 16 episodes into 10 slots: the cursor wrapped
        a.extend(b)
    a.update_priority(
        a.sample().set("td_error", torch.rand(4, a.sample().shape[1], 1)),
    )
    a.dumps(tmp_path / "replay", tag=5)
    if not source_shift:  # as written before layouts were recorded
        meta = json.loads((tmp_path / "replay" / "episodes.json").read_text())
        del meta["layout"], meta["shifted"]
        (tmp_path / "replay" / "episodes.json").write_text(json.dumps(meta))
    c = EpisodeReplayBuffer(
        capacity=10, max_len=12, batch_size=4, prioritized=True, shift_next=not source_shift
    )
    c.loads(tmp_path / "replay")
    index = torch.arange(10)
    assert len(c) == 10 and c.episodes_added == 16
    assert (c.episodes(index) == a.episodes(index)).all()
    assert c.buffer._writer._cursor == a.buffer._writer._cursor
    torch.manual_seed(3)
    x = a.sample()
    torch.manual_seed(3)
    y = c.sample()
    assert (x == y).all()  # same priorities, same draws, same content
    c.extend(batches[0])  # and it keeps storing
    assert len(c) == 10 and c.episodes_added == 20


def test_a_next_entry_that_stops_matching_the_following_step_is_refused():
    buf = EpisodeReplayBuffer(capacity=8, max_len=4, batch_size=2)
    x = torch.arange(8.0).reshape(2, 4)
    mask = torch.ones(2, 4, dtype=torch.bool)
    ok = TensorDict({"x": x, ("next", "x"): x + 1, ("collector", "mask"): mask}, [2, 4])
    buf.extend(ok)
    assert buf.shifted == (("x",),)
    bad = ok.clone()
    bad["next", "x"][0, 1] = -1.0
    with pytest.raises(RuntimeError, match="shift_next=False"):
        buf.extend(bad)


def test_episodes_of_another_layout_are_refused():
    """Another env's episodes, or a batch without a key the stored ones have: one line
    naming the keys (a broadcast error inside the storage, or a NoneType error, before)."""
    buf = EpisodeReplayBuffer(capacity=8, max_len=4, batch_size=2)
    buf.extend(padded([3, 2]))
    other = padded([2, 2])
    other["x"] = torch.zeros(2, 2, 3)  # another per-step shape
    with pytest.raises(ValueError, match=r"other per-step shapes or dtypes \['x'\]"):
        buf.extend(other)
    with pytest.raises(ValueError, match="missing keys \\['x'\\]"):
        buf.extend(padded([2, 2]).exclude("x"))
    assert len(buf) == 2
    assert buf.extend(padded([1, 4])) == 2  # the same layout still goes in
