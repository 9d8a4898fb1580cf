"""The matrix-game entry point, run as a user runs it: in the test process with the script's
own ``sys.argv``, ``__main__`` and exit code (``script_runner``), which spares each case a new
interpreter's imports, and once as a real subprocess (the unknown-algorithm error)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from script_runner import run_in_process
from test_cli import one_error_line

from resq_torchrl.analysis import format_table
from resq_torchrl.errors import ConfigError, check_figure_path
from resq_torchrl.training import EnvDims, make_loss

ROOT = Path(__file__).resolve().parent.parent
KEYS = {
    "algorithm",
    "seed",
    "payoff",
    "q_agents",
    "greedy_action",
    "greedy_payoff",
    "optimal_payoff",
    "q_jt",
    "q_tot",
    "q_r",
    "igm_consistent",
}


DISTRIBUTIONAL = {"resz": {"z_jt_quantiles", "z_r_max"}, "ddn": {"z_jt_quantiles"}}
DISTRIBUTIONAL["dmix"] = DISTRIBUTIONAL["ddn"]


def matrix_game(*args: str):
    """``python scripts/matrix_game.py *args``, in this process."""
    return run_in_process(["scripts/matrix_game.py", *args])


@pytest.mark.parametrize(
    "algorithm",
    ["resq", "qmix", "vdn", "cw_qmix", "ow_qmix", "qtran", "qplex", "resz", "ddn", "dmix"],
)
def test_script_writes_the_json_contract(algorithm, tmp_path):
    out = tmp_path / "out.json"
    proc = matrix_game(
        f"algorithm={algorithm}",
        "seed=0",
        "payoff=[[8,-12,-12],[-12,0,0],[-12,0,7.9]]",
        f"json_out={out}",
        "n_updates=30",
        "progress=false",
        f"plot={tmp_path / 'q.png'}",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result) == KEYS | DISTRIBUTIONAL.get(algorithm, set())
    assert result["algorithm"] == algorithm and result["seed"] == 0
    assert result["payoff"] == [[8, -12, -12], [-12, 0, 0], [-12, 0, 7.9]]
    assert len(result["q_agents"]) == 2 and all(len(q) == 3 for q in result["q_agents"])
    q_jt, q_tot = torch.tensor(result["q_jt"]), torch.tensor(result["q_tot"])
    assert q_jt.shape == (3, 3)
    greedy = tuple(result["greedy_action"])
    assert greedy == tuple(torch.tensor(result["q_agents"]).argmax(-1).tolist())
    assert result["greedy_payoff"] == result["payoff"][greedy[0]][greedy[1]]
    assert result["optimal_payoff"] == 8
    # IGM: the greedy cell is a maximum of the written q_jt (computed here, not by the
    # function under test; the hand cases are in test_igm.py)
    assert result["igm_consistent"] is bool(q_jt[greedy] == q_jt.max())
    if algorithm == "resq":
        q_r = torch.tensor(result["q_r"])
        assert (q_r <= 0).all()
        assert q_jt[greedy] == q_tot[greedy]
    elif algorithm == "resz":  # expectations of Z_jt = Z_tot + w_r Z_r, Z_r <= 0
        q_r = torch.tensor(result["q_r"])
        assert (q_r <= 0).all() and result["z_r_max"] <= 0
        assert q_jt[greedy] == q_tot[greedy]
        z = result["z_jt_quantiles"]
        assert len(z["fractions"]) == len(z["greedy_cell"]) == 32
        mean = torch.tensor(z["greedy_cell"]).mean()
        torch.testing.assert_close(mean, q_jt[greedy].float(), atol=1e-4, rtol=0)
    elif algorithm == "qtran":  # q_jt is the joint network, q_tot the sum of utilities
        assert result["q_r"] is None
        q_agents = torch.tensor(result["q_agents"])
        sums = q_agents[0].unsqueeze(1) + q_agents[1].unsqueeze(0)
        torch.testing.assert_close(q_tot, sums, atol=1e-4, rtol=0)
    else:
        assert result["q_r"] is None and torch.equal(q_jt, q_tot)
    # the printed table shows the utilities and marks the greedy cell
    assert "[" in proc.stdout and "greedy joint action" in proc.stdout
    assert (tmp_path / "q.png").stat().st_size > 1000


def test_three_agent_payoff(tmp_path):
    out = tmp_path / "out.json"
    payoff = "[[[1,0],[0,0]],[[0,0],[0,5]]]"
    proc = matrix_game(
        "algorithm=resq",
        f"payoff={payoff}",
        f"json_out={out}",
        "n_updates=20",
        "progress=false",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert torch.tensor(result["q_jt"]).shape == (2, 2, 2)
    assert len(result["q_agents"]) == 3 and result["optimal_payoff"] == 5
    assert "AAA" in proc.stdout  # joint actions listed for n > 2


@pytest.mark.parametrize(
    "payoff, message",
    [
        ("[[1,2],[3]]", "ragged"),
        ("[1,2,3]", "at least 2 agents"),
        ("[[1,nan],[1,1]]", "finite"),
        ("[[1,inf],[1,1]]", "finite"),
    ],
)
def test_script_rejects_bad_payoff(payoff, message, tmp_path):
    proc = matrix_game(f"payoff={payoff}", "n_updates=5", "progress=false")
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "plot, fragment",
    [
        ("q.txt", "matplotlib cannot write .txt figures; end it in one of"),
        ("q", "has no file extension: end it in one of"),  # savefig would write q.png
    ],
)
def test_a_plot_matplotlib_cannot_write_is_refused_before_training(plot, fragment, tmp_path):
    """The figure's format is checked before the training (it failed in savefig, after the
    training and the JSON, with a traceback and no table)."""
    proc = matrix_game(
        f"plot={tmp_path / plot}", f"json_out={tmp_path / 'out.json'}", "n_updates=5"
    )
    line = one_error_line(proc)
    assert f"plot={tmp_path / plot}" in line and fragment in line
    assert ".png" in line and ".pdf" in line and ".svg" in line  # the choices
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written


def test_check_figure_path_takes_what_savefig_writes(monkeypatch):
    for path in (None, "", "q.png", "out/Q.PNG", "a.b/q.svg", "q.pdf"):
        check_figure_path("plot", path)
    with pytest.raises(ConfigError, match=r"plot=q\.txt: matplotlib cannot write \.txt figures"):
        check_figure_path("plot", "q.txt")
    with pytest.raises(ConfigError, match=r"plot=a\.b/q has no file extension"):
        check_figure_path("plot", "a.b/q")
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no TeX: savefig fails on .pgf
    with pytest.raises(ConfigError, match=r"\.pgf figures need \w+ .*which is not installed"):
        check_figure_path("plot", "q.pgf")


def test_script_rejects_unknown_algorithm(run_script):
    proc = run_script("matrix_game.py", "algorithm=nope", "n_updates=5", "progress=false")
    assert proc.returncode == 2
    assert "unknown algorithm 'nope'" in proc.stderr and "resq" in proc.stderr  # the options


def test_make_loss_rejects_unknown_algorithm():
    with pytest.raises(ValueError, match="unknown algorithm 'nope'; available"):
        make_loss({"name": "nope"}, {}, EnvDims(2, 3, 1, 1))


def test_format_table_marks_greedy_cell():
    result = {
        "q_agents": [[0.1, -0.3, 0.1], [0.1, -0.3, 0.05]],
        "q_jt": [[8.0, -12.0, -12.0], [-12.0, 0.0, 0.0], [-12.0, 0.0, 7.9]],
        "greedy_action": [0, 0],
        "greedy_payoff": 8.0,
        "optimal_payoff": 8.0,
        "igm_consistent": True,
    }
    text = format_table(result)
    assert "[8.00]" in text and "7.90" in text and "[7.90]" not in text
    assert "A 0.10" in text and "B -0.30" in text
