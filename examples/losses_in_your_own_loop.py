"""ResQ's loss in a training loop of your own: what the README's snippet shows, run by
tests/test_readme.py. Replace ``random_batch`` with your collector or replay buffer.

    python examples/losses_in_your_own_loop.py
"""

import torch
from tensordict import TensorDict
from torchrl.objectives import HardUpdate

from resq_torchrl.modules import FeedForwardMixer, QMixer, make_agent_qnet
from resq_torchrl.objectives import ResQLoss

n_agents, n_actions, obs_dim, state_dim = 3, 5, 16, 48


def random_batch(b: int) -> TensorDict:
    """``b`` transitions in the library's vocabulary (random numbers standing in for data)."""
    step = {
        ("agents", "observation"): torch.randn(b, n_agents, obs_dim),
        ("agents", "action_mask"): torch.ones(b, n_agents, n_actions, dtype=torch.bool),
        "state": torch.randn(b, state_dim),
    }
    done = torch.rand(b, 1) < 0.1
    return TensorDict(
        {
            **step,
            ("agents", "action"): torch.randint(n_actions, (b, n_agents)),
            "next": {
                **{k: torch.randn_like(v) if v.is_floating_point() else v for k, v in step.items()},
                "reward": torch.randn(b, 1),
                "terminated": done,
                "truncated": torch.zeros_like(done),
                "done": done.clone(),
            },
        },
        batch_size=[b],
    )


loss = ResQLoss(
    make_agent_qnet(obs_dim, n_actions, n_agents),  # ("agents","observation") -> action_value
    QMixer(n_agents, state_dim),  # monotonic Q_tot
    residual_mixer=FeedForwardMixer(n_agents, state_dim),  # R, used as Q_r = -|R|
    central_mixer=FeedForwardMixer(n_agents, state_dim),  # central Q* for the targets
)
optimizer = torch.optim.Adam(loss.parameters(), lr=1e-3)
# the target parameters: a copy of the online ones that updater.step() refreshes
updater = HardUpdate(loss, value_network_update_interval=200)

for step in range(1, 401):
    batch = random_batch(32)  # your collector / replay buffer here
    out = loss(batch)  # loss_td, loss_central, td_error, w_r_mean, q_r_mean, ...
    optimizer.zero_grad()
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    optimizer.step()
    updater.step()  # copies online -> target on every 201st call (counts 0..200)
    if step % 100 == 0:
        print(f"update {step}: loss_td {out['loss_td'].item():.3f}")
