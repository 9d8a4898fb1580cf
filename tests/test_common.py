import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resq_torchrl.objectives import (
    gather_chosen,
    is_greedy_joint_action,
    masked_greedy,
    masked_mean,
)


def test_gather_chosen_hand_values():
    av = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    out = gather_chosen(av, torch.tensor([[2, 0]]))
    assert out.tolist() == [[[3.0], [4.0]]]
    assert gather_chosen(av, torch.tensor([[[1], [1]]])).tolist() == [[[2.0], [5.0]]]


def test_gather_chosen_rejects_bad_actions():
    av = torch.zeros(4, 2, 3)
    with pytest.raises(ValueError, match="does not match"):
        gather_chosen(av, torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        gather_chosen(av, torch.full((4, 2), 3))
    # one-hot actions: the message named two equal shapes; fractional actions were truncated
    with pytest.raises(ValueError, match="one-hot actions"):
        gather_chosen(av, torch.nn.functional.one_hot(torch.zeros(4, 2, dtype=torch.long), 3))
    with pytest.raises(ValueError, match="whole action indices"):
        gather_chosen(av, torch.full((4, 2), 1.7))
    assert gather_chosen(av, torch.full((4, 2), 2.0)).shape == (4, 2, 1)  # whole floats pass


def test_masked_greedy_hand_values():
    av = torch.tensor([[[5.0, 1.0, 2.0], [0.0, 9.0, 3.0]]])
    mask = torch.tensor([[[False, True, True], [True, False, True]]])
    assert masked_greedy(av, mask).tolist() == [[2, 2]]
    assert masked_greedy(av).tolist() == [[0, 1]]


def test_masked_greedy_with_very_negative_values_still_respects_mask():
    av = torch.tensor([[[-1e30, -3e38]]])
    mask = torch.tensor([[[False, True]]])
    assert masked_greedy(av, mask).tolist() == [[1]]


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    b=st.integers(1, 5),
    n=st.integers(1, 4),
    a=st.integers(1, 6),
)
def test_masked_greedy_never_picks_an_unavailable_action(data, b, n, a):
    seed = data.draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(b, n, a, generator=g) * 100
    mask = torch.rand(b, n, a, generator=g) < 0.5
    forced = torch.randint(a, (b, n, 1), generator=g)
    mask.scatter_(-1, forced, True)  # every agent keeps one available action
    greedy = masked_greedy(values, mask)
    assert mask.gather(-1, greedy.unsqueeze(-1)).all()
    best = values.masked_fill(~mask, float("-inf")).max(-1).values
    torch.testing.assert_close(values.gather(-1, greedy.unsqueeze(-1)).squeeze(-1), best)


def test_masked_greedy_rejects_an_agent_without_available_action():
    av = torch.zeros(3, 2, 4)
    mask = torch.ones(3, 2, 4, dtype=torch.bool)
    mask[1, 1] = False
    with pytest.raises(ValueError, match=r"no available action.*batch index \[1\], agent 1"):
        masked_greedy(av, mask)
    ignore = torch.tensor([False, True, False])
    assert masked_greedy(av, mask, ignore=ignore).shape == (3, 2)


def test_masked_greedy_rejects_mask_of_wrong_shape():
    with pytest.raises(ValueError, match="action_mask of shape"):
        masked_greedy(torch.zeros(2, 2, 3), torch.ones(2, 3, 3, dtype=torch.bool))


def test_is_greedy_joint_action_and_masked_mean():
    greedy = torch.tensor([[0, 2], [0, 2], [1, 1]])
    action = torch.tensor([[0, 2], [0, 1], [1, 1]])
    assert is_greedy_joint_action(action, greedy).squeeze(-1).tolist() == [True, False, True]
    x = torch.tensor([[1.0], [3.0], [100.0]])
    assert masked_mean(x).item() == pytest.approx(104 / 3)
    assert masked_mean(x, torch.tensor([True, True, False])).item() == pytest.approx(2.0)
