"""``EpisodeAssembler`` (training/assembler.py): the episodes it assembles from flat rollouts
are torchrl's ``trajs_per_batch`` episodes, bit for bit; its state round-trips; the state
of torchrl's own assembly (checkpoints written before it) is taken over; overlong episodes
are refused in one line."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector

from resq_torchrl.errors import ConfigError
from resq_torchrl.training.assembler import EpisodeAssembler
from resq_torchrl.training.builders import env_dims, make_env, make_loss
from resq_torchrl.training.trainer import add_agent_transforms, make_policies

N_ENVS, MAX_STEPS, ROLLOUT = 3, 12, 4
ENV = {
    "name": "predator_prey",
    "grid_size": 2,
    "n_predators": 2,
    "n_prey": 1,
    "episode_limit": MAX_STEPS,
    "max_steps": MAX_STEPS,
}


def collector(trajs: bool) -> Collector:
    """The trainer's collection side on a tiny predator-prey whose episodes end at random
    times (captures) or at the limit; the same seeds for both kinds."""
    torch.manual_seed(0)
    env = make_env(ENV, N_ENVS, "cpu", seed=0)
    algo = {"name": "qmix", "mixing_embed_dim": 8, "hypernet_embed": 16, "hypernet_layers": 2}
    agent = {"type": "gru", "hidden_dim": 8, "last_action": True, "agent_id": True}
    loss = make_loss(algo, agent, env_dims(env), "cpu")
    add_agent_transforms(env, loss)
    policy, _ = make_policies(loss, env, {"eps_init": 0.5, "eps_end": 0.5, "anneal_frames": 1})
    extra = {"trajs_per_batch": 2, "traj_format": "padded"} if trajs else {}
    return Collector(
        env,
        policy,
        frames_per_batch=N_ENVS * ROLLOUT,
        total_frames=-1,
        use_buffers=False,
        **extra,
    )


def by_trajectory(batches) -> dict:
    """Every episode of padded batches, keyed by its trajectory id: ``[length]``."""
    out = {}
    for batch in batches:
        for row in batch.unbind(0):
            real = row[row.get(("collector", "mask"))]
            out[int(real.get(("collector", "traj_ids"))[0])] = real
    return out


def take(iterable, n):
    it = iter(iterable)
    return [next(it) for _ in range(n)]


def test_episodes_equal_torchrl_trajs_per_batch_bit_for_bit():
    """Property: the episodes are torchrl's (same steps, keys, values, padding with zeros),
    only their order within a rollout may differ; each batch holds 2 episodes, L their
    longest length."""
    torch.manual_seed(1)
    theirs = by_trajectory(take(collector(trajs=True), 12))
    torch.manual_seed(1)
    assembled = take(EpisodeAssembler(collector(trajs=False), 2, MAX_STEPS), 12)
    ours = by_trajectory(assembled)
    common = set(theirs) & set(ours)
    assert len(common) >= 20, "too few common episodes to compare"
    lengths = set()
    for tid in common:
        a, b = theirs[tid], ours[tid]
        lengths.add(a.batch_size[0])
        assert a.batch_size == b.batch_size
        assert set(a.keys(True, True)) == set(b.keys(True, True))
        for key in a.keys(True, True):
            assert torch.equal(a.get(key), b.get(key)), (tid, key)
    assert len(lengths) > 1, "the episodes should end at different times"
    for batch in assembled:
        mask = batch.get(("collector", "mask"))
        assert batch.batch_size[0] == 2 and batch.batch_size[1] == int(mask.sum(-1).max())
        pad = ~mask
        for key, value in batch.items(True, True):
            if key != ("collector", "mask"):
                assert not value[pad].any(), f"padding of {key} is not zero"


def test_state_round_trip_continues_identically():
    """Property: a new assembler given another's ``state_dict`` (episodes in flight and
    waiting) hands out the same next batches from the same rollouts."""
    rollouts = take(collector(trajs=False), 9)
    a = EpisodeAssembler(iter([]), 2, MAX_STEPS)
    for r in rollouts[:5]:
        a.add(r)
    state = a.state_dict()
    assert bool((state["length"] > 0).any()) and state["ready"].batch_size[0] == a.ready()
    b = EpisodeAssembler(iter([]), 2, MAX_STEPS)
    b.load_state_dict({k: v.clone() for k, v in state.items()})
    for r in rollouts[5:]:
        a.add(r)
        b.add(r)
    assert a.ready() == b.ready() >= 2
    while a.ready() >= 2:
        assert (a.pop() == b.pop()).all()
    # only the steps written so far are saved; a run with a shorter max_len refuses them
    state = a.state_dict()
    longest = int(torch.cat([state["length"], state["ready_length"]]).max())
    assert state["inflight"].batch_size[1] == max(1, longest) <= MAX_STEPS
    if longest > 1:
        short = EpisodeAssembler(iter([]), 2, max_len=longest - 1)
        with pytest.raises(ConfigError, match=f"episodes of {longest} steps, more than max_len"):
            short.load_state_dict(state)


def test_takes_over_torchrl_trajectories_from_an_older_checkpoint():
    """Property: torchrl's assembly state (partial trajectories per id, complete ones) given
    to ``load_trajectories`` continues into the same episodes torchrl would have made."""
    torch.manual_seed(2)
    source = collector(trajs=True)
    it = iter(source)
    for _ in range(10):  # a batch after which a trajectory is in flight
        next(it)
        if source._traj_assembly[0] and source._traj_assembly[1]:
            break
    partial, complete = source._traj_assembly
    assert partial and complete, "a trajectory should be in flight and one waiting"
    partial = {t: torch.cat(c, 0).clone() for t, c in partial.items()}
    complete = [c.clone() for c in complete]
    carrier = source._carrier.clone()
    consumed = source._frames // (N_ENVS * ROLLOUT)  # rollouts torchrl has used
    later = by_trajectory([next(it) for _ in range(6)])

    torch.manual_seed(2)  # the same rollouts, flat
    rollouts = iter(collector(trajs=False))
    for _ in range(consumed):
        next(rollouts)
    resumed = EpisodeAssembler(iter([]), 2, MAX_STEPS)
    resumed.load_trajectories(partial, complete, carrier)
    for _ in range(12):
        resumed.add(next(rollouts))
    ours = by_trajectory([resumed.pop() for _ in range(resumed.ready() // 2)])
    assert set(partial) | {int(c.get(("collector", "traj_ids"))[0]) for c in complete} <= set(
        ours
    ), "the trajectories taken over were not handed out"
    common = set(later) & set(ours)
    assert len(common) >= 8
    for tid in common:
        assert later[tid].batch_size == ours[tid].batch_size
        assert (later[tid] == ours[tid]).all(), tid


def test_an_episode_longer_than_max_len_is_refused_in_one_line():
    rollout = take(collector(trajs=False), 1)[0]
    rollout.set(("next", "done"), torch.zeros_like(rollout.get(("next", "done"))))
    assembler = EpisodeAssembler(iter([]), 2, max_len=ROLLOUT + 1)
    assembler.add(rollout)
    with pytest.raises(ConfigError, match="ran past max_len=5 steps") as err:
        assembler.add(rollout)
    assert "\n" not in str(err.value)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="episodes_per_batch and max_len must be >= 1"):
        EpisodeAssembler(iter([]), 0, MAX_STEPS)
    with pytest.raises(ValueError, match=r"needs rollouts \[n_envs, T\]"):
        EpisodeAssembler(iter([]), 1, MAX_STEPS).add(TensorDict({}, [3]))
