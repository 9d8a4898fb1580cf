"""``igm_consistent(q_jt, greedy_action)`` on tables checked by hand.

The contract (``resq_torchrl.analysis.matrix``): ``q_jt`` is a joint action-value table of
shape ``[A] * n`` (a tensor or nested lists), ``greedy_action`` the agents' greedy joint
action (one index per agent, the argmax of each agent's utilities); the result says whether
that tuple is an argmax of ``q_jt``, i.e. whether the decentralised greedy choice is also the
joint table's best cell (IGM). Ties count: any argmax cell is consistent."""

import pytest
import torch

from resq_torchrl.analysis import igm_consistent

#: the paper's payoff, written out (rows: agent 1's action, columns: agent 2's)
PAPER = [[8.0, -12.0, -12.0], [-12.0, 0.0, 0.0], [-12.0, 0.0, 7.9]]


@pytest.mark.parametrize(
    "greedy, consistent",
    [
        ([0, 0], True),  # (A, A) = 8, the optimum
        ([2, 2], False),  # the trap (C, C) = 7.9 < 8
        ([1, 1], False),  # 0 < 8
        ([0, 1], False),  # -12, the row of the optimum is not enough
        ((0, 0), True),  # a tuple as well as a list
    ],
)
def test_the_paper_payoff_as_q_jt_is_consistent_only_at_its_optimum(greedy, consistent):
    assert igm_consistent(torch.tensor(PAPER), greedy) is consistent
    assert igm_consistent(PAPER, greedy) is consistent  # nested lists as read from JSON


def test_a_tie_for_the_maximum_is_consistent_at_every_tied_cell_and_nowhere_else():
    """(A, A) and (C, C) both 8: either greedy tuple is an argmax; (B, B) = 0 is not."""
    tied = [[8.0, -12.0, -12.0], [-12.0, 0.0, 0.0], [-12.0, 0.0, 8.0]]
    assert igm_consistent(torch.tensor(tied), [0, 0]) is True
    assert igm_consistent(torch.tensor(tied), [2, 2]) is True
    assert igm_consistent(torch.tensor(tied), [1, 1]) is False


def test_a_monotonic_q_jt_that_misses_the_payoff_optimum_is_still_igm_consistent():
    """IGM is about ``q_jt``, not the payoff: a QMIX-like table ``q_1[i] + q_2[j]`` with
    utilities (-5, 0, 4) peaks at (C, C) = 8, so the greedy (C, C) is consistent though the
    game's optimum is (A, A); the greedy (A, A) would not be (-10 < 8)."""
    q = torch.tensor([-5.0, 0.0, 4.0])
    q_jt = q.unsqueeze(1) + q.unsqueeze(0)
    assert igm_consistent(q_jt, [2, 2]) is True
    assert igm_consistent(q_jt, [0, 0]) is False


def test_a_cell_just_below_the_maximum_is_not_consistent_and_three_agents_index_all_axes():
    """No tolerance: 8 - 1e-4 against 8 is inconsistent. A 3-agent ``[2, 2, 2]`` table is
    indexed by all three actions: the maximum 5 sits at (1, 1, 1), and (1, 1, 0) = 0 is not
    it."""
    near = torch.tensor([[8.0 - 1e-4, 0.0], [0.0, 8.0]])
    assert igm_consistent(near, [0, 0]) is False
    assert igm_consistent(near, [1, 1]) is True
    three = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 5.0]]])
    assert igm_consistent(three, [1, 1, 1]) is True
    assert igm_consistent(three, [1, 1, 0]) is False
    assert igm_consistent(three, [0, 0, 0]) is False
