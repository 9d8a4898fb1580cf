"""scripts/matrix_game_sweep.py and its run cache, on tiny budgets."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from script_runner import run_in_process

from resq_torchrl.analysis.sweep import markdown_table, summarize
from resq_torchrl.training.matrix_game import job_key, train_matrix_game_seeds

BASE = {
    "payoff": [[8, -12, -12], [-12, 0, 0], [-12, 0, 7.9]],
    "device": "cpu",
    "batch_size": 8,
    "n_updates": 3,
    "optimizer": "adam",
    "lr": 0.001,
    "optim_eps": 1e-5,
    "lr_schedule": "cosine",
    "grad_clip": 10,
    "target_update_interval": 100,
    "agent": {"hidden": [8], "agent_id": True},
}
VDN = {"name": "vdn", "gamma": 0.99}


def test_cache_resumes_and_never_reuses_a_run_with_other_settings(tmp_path):
    cache = tmp_path / "cache"
    first = train_matrix_game_seeds(BASE, {"vdn": VDN}, [0, 1], cache_dir=cache)
    files = sorted(cache.glob("*.json"))
    assert [f.name.split("_")[:2] for f in files] == [["vdn", "seed0"], ["vdn", "seed1"]]
    # a cached file is read back instead of training: plant a marker in one
    marked = json.loads(files[0].read_text()) | {"greedy_payoff": -99}
    files[0].write_text(json.dumps(marked))
    again = train_matrix_game_seeds(BASE, {"vdn": VDN}, [0, 1], cache_dir=cache)
    assert again[0]["greedy_payoff"] == -99 and again[1] == first[1]
    # other settings hash to another key: trained anew
    other = dict(BASE, n_updates=4)
    assert job_key(dict(other, algorithm=VDN, seed=0)) != job_key(dict(BASE, algorithm=VDN, seed=0))
    fresh = train_matrix_game_seeds(other, {"vdn": VDN}, [0], cache_dir=cache)
    assert fresh[0]["greedy_payoff"] != -99 and len(list(cache.glob("*.json"))) == 3


def test_sweep_script_writes_table_figure_and_runs(tmp_path, run_script):
    proc = run_script(
        "matrix_game_sweep.py",
        "algorithms=[vdn,qtran]",
        "n_seeds=2",
        "n_updates=3",
        "workers=1",
        f"out_dir={tmp_path}",
        f"cache_dir={tmp_path / 'cache'}",
    )
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "matrix_game.md").read_text()
    assert "| vdn |" in table and "| qtran |" in table
    runs = json.loads((tmp_path / "matrix_game.json").read_text())["runs"]
    assert [(r["algorithm"], r["seed"]) for r in runs] == [
        ("vdn", 0),
        ("vdn", 1),
        ("qtran", 0),
        ("qtran", 1),
    ]
    assert (tmp_path / "matrix_game.png").stat().st_size > 1000
    assert len(list((tmp_path / "cache").glob("*.json"))) == 4


@pytest.mark.parametrize("vectorize", [False, True])
def test_an_unreadable_cache_entry_is_trained_again_with_a_warning(vectorize, tmp_path):
    """A cache entry cut short (or otherwise unreadable) is a miss: one warning line naming
    it, the run trained again and the entry overwritten (it was a JSONDecodeError)."""
    sweep = [
        "scripts/matrix_game_sweep.py",
        "algorithms=[vdn]",
        "n_seeds=2",
        "n_updates=3",
        "workers=1",
        f"vectorize={str(vectorize).lower()}",
        f"out_dir={tmp_path / 'out'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    first = run_in_process(sweep, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    entries = sorted((tmp_path / "cache").glob("*.json"))
    assert len(entries) == 2
    before = [json.loads(e.read_text()) for e in entries]
    entries[1].write_text('{"algorithm": "vd')  # cut short
    again = run_in_process(sweep, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    warnings = [line for line in again.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and f"cache entry {entries[1]} is unreadable" in warnings[0]
    assert "Traceback" not in again.stderr
    assert [json.loads(e.read_text()) for e in entries] == before  # trained again, overwritten
    runs = json.loads((tmp_path / "out" / "matrix_game.json").read_text())["runs"]
    assert runs == before


def test_vectorized_sweep_caches_apart_and_retrains_incomplete_groups(tmp_path):
    """vectorize=True: the seeds of a method train as one model, in (algorithm, seed)
    order; their cache keys differ from the single-seed runs' and hash the group's seeds;
    a group with a run missing is trained again whole, giving the same numbers."""
    cache = tmp_path / "cache"
    single = train_matrix_game_seeds(BASE, {"vdn": VDN}, [0, 1], cache_dir=cache)
    vec = train_matrix_game_seeds(BASE, {"vdn": VDN}, [0, 1, 2], cache_dir=cache, vectorize=True)
    assert [(r["seed"], r.get("vectorized", False)) for r in vec] == [
        (0, True),
        (1, True),
        (2, True),
    ]
    assert all("vectorized" not in r for r in single)
    assert len(list(cache.glob("*.json"))) == 5  # 2 single + 3 vectorised
    (victim,) = [
        f for f in cache.glob("vdn_seed1_*.json") if json.loads(f.read_text()).get("vectorized")
    ]
    victim.unlink()
    seen = []
    again = train_matrix_game_seeds(
        BASE,
        {"vdn": VDN},
        [0, 1, 2],
        cache_dir=cache,
        vectorize=True,
        on_result=lambda i, n, r: seen.append(r["seed"]),
    )
    assert seen == [0, 1, 2] and again == vec
    # another group (seeds 0, 1 only): other keys, trained anew
    train_matrix_game_seeds(BASE, {"vdn": VDN}, [0, 1], cache_dir=cache, vectorize=True)
    assert len(list(cache.glob("*.json"))) == 7


def test_vectorized_sweep_keeps_variants_that_share_a_name_apart(tmp_path):
    qmix = {"name": "qmix", "mixer": "qmix", "hypernet_embed": 8, "hypernet_layers": 2}
    variants = {"small": dict(qmix, mixing_embed_dim=4), "large": dict(qmix, mixing_embed_dim=8)}
    runs = train_matrix_game_seeds(BASE, variants, [0], vectorize=True)
    assert runs[0]["q_jt"] != runs[1]["q_jt"]
    singles = [
        train_matrix_game_seeds(BASE, {k: v}, [0], vectorize=True)[0] for k, v in variants.items()
    ]
    assert runs == singles


def test_costliest_methods_train_first_and_results_keep_their_order():
    """The sweep schedules the costliest method first (so ResZ's group never starts last
    and runs alone), an unmeasured one counting as the costliest; the returned results stay
    in (algorithm, seed) order."""
    from resq_torchrl.training.matrix_game import _relative_cost

    assert _relative_cost("resz") > _relative_cost("qplex") > _relative_cost("vdn")
    assert _relative_cost("not_measured") == _relative_cost("resz")
    qtran = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs/algorithm/qtran.yaml").read_text()
    )
    seen = []
    results = train_matrix_game_seeds(
        BASE,
        {"vdn": VDN, "qtran": qtran},
        [0, 1],
        on_result=lambda n, total, r: seen.append((r["algorithm"], r["seed"])),
    )
    assert seen == [("qtran", 0), ("qtran", 1), ("vdn", 0), ("vdn", 1)]
    assert [(r["algorithm"], r["seed"]) for r in results] == [
        ("vdn", 0),
        ("vdn", 1),
        ("qtran", 0),
        ("qtran", 1),
    ]


def _run(algorithm, seed, greedy, q_jt, igm):
    """One result as ``train_matrix_game`` writes it (the fields ``summarize`` reads)."""
    payoff = BASE["payoff"]
    return {
        "algorithm": algorithm,
        "seed": seed,
        "payoff": payoff,
        "greedy_action": greedy,
        "greedy_payoff": float(payoff[greedy[0]][greedy[1]]),
        "optimal_payoff": 8.0,
        "q_jt": q_jt,
        "igm_consistent": igm,
    }


def test_summarize_and_the_table_row_on_three_hand_made_runs():
    """Three runs on the paper's payoff, every field checked against numbers worked out by
    hand (errors chosen exact in float32):

    - resq seed 0: greedy (A, A) = 8; q_jt = payoff but (B, B) = -1 and (B, C) = 0.5:
      max |q_jt - payoff| = 1 (mean over cells 1.5 / 9); IGM consistent.
    - resq seed 1: greedy (C, C) = 7.9; q_jt = payoff but (A, A) = 5: max error 3 (mean 3/9);
      IGM consistent (7.9 is q_jt's maximum) though not optimal.
    - qmix seed 0: greedy (C, C) = 7.9; q_jt = payoff but (A, A) = 10 and (A, B) = -8: max
      error 4; IGM inconsistent (10 > 7.9).

    resq: optimal 1/2 (greedy payoff equals the optimum, not IGM: 2/2), mean greedy payoff
    (8 + 7.9) / 2, mean of the per-run *max* errors (1 + 3) / 2 = 2; qmix: 0/1, 7.9, 4, 0/1.
    """
    p = [row[:] for row in BASE["payoff"]]
    a = [row[:] for row in p]
    a[1][1], a[1][2] = -1, 0.5
    b = [row[:] for row in p]
    b[0][0] = 5
    c = [row[:] for row in p]
    c[0][0], c[0][1] = 10, -8
    runs = [
        _run("resq", 0, [0, 0], a, True),
        _run("resq", 1, [2, 2], b, True),
        _run("qmix", 0, [2, 2], c, False),
    ]
    summary = summarize(runs)
    assert list(summary) == ["resq", "qmix"]  # methods in the order of the results
    resq, qmix = summary["resq"], summary["qmix"]
    assert resq["mean_greedy_payoff"] == pytest.approx(7.95)
    assert qmix["mean_greedy_payoff"] == pytest.approx(7.9)
    for s in (resq, qmix):
        s.pop("mean_greedy_payoff")
    assert resq == {
        "runs": 2,
        "optimal": 1,
        "mean_max_abs_error": 2.0,
        "igm_consistent": 2,
        "greedy_actions": {"AA": 1, "CC": 1},
    }
    assert qmix == {
        "runs": 1,
        "optimal": 0,
        "mean_max_abs_error": 4.0,
        "igm_consistent": 0,
        "greedy_actions": {"CC": 1},
    }
    table = markdown_table(summarize(runs)).splitlines()
    assert table[2:] == [
        "| resq | 1/2 | 7.95 | 2.00 | 2/2 | AA: 1, CC: 1 |",
        "| qmix | 0/1 | 7.90 | 4.00 | 0/1 | CC: 1 |",
    ]


def test_algorithm_settings_reach_the_algorithms_that_have_them():
    """``algorithm_settings={central_mixer_layers:3}`` deepens the feed-forward mixers of
    the methods that have one and leaves the others as they are; a key no listed method
    has is one line, before anything trains."""
    import importlib.util

    from resq_torchrl.errors import ConfigError

    path = Path(__file__).resolve().parent.parent / "scripts" / "matrix_game_sweep.py"
    spec = importlib.util.spec_from_file_location("matrix_game_sweep_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    algos = {n: script.load_algorithm(n) for n in ("resq", "qmix", "cw_qmix")}
    assert algos["resq"]["central_mixer_layers"] == 2  # the default of the committed runs
    deep = script.with_settings(algos, {"central_mixer_layers": 3})
    assert deep["resq"]["central_mixer_layers"] == deep["cw_qmix"]["central_mixer_layers"] == 3
    assert deep["qmix"] == algos["qmix"] and "central_mixer_layers" not in deep["qmix"]
    assert script.with_settings(algos, None) == algos
    with pytest.raises(ConfigError, match="no listed algorithm has 'central_mixer_layers'"):
        script.with_settings({"qmix": algos["qmix"]}, {"central_mixer_layers": 3})
    # and the method trains with it: ResQ's central and residual mixers of 3 hidden layers
    from resq_torchrl.training.builders import EnvDims, make_loss

    loss = make_loss(deep["resq"], {"type": "mlp", "hidden": [8]}, EnvDims(2, 3, 1, 1), "cpu")
    for mixer in (loss.central_mixer, loss.residual_mixer):
        assert sum(isinstance(m, torch.nn.Linear) for m in mixer.net) == 4
