"""scripts/train.py and the training loop behind it, on tiny budgets."""

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_PREDATOR_PREY, compose_config

from resq_torchrl.data import EpisodeReplayBuffer
from resq_torchrl.training.checkpoint import load_checkpoint
from resq_torchrl.training.trainer import CHECKPOINT, train

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "matrix_game": ["n_envs=4", "rollout_steps=1", "episodes_per_batch=4", "total_frames=96"],
    "predator_prey": [*TINY_PREDATOR_PREY, "total_frames=200"],
}


def config(algorithm: str, env: str, out: Path, *extra: str) -> dict:
    overrides = [
        f"algorithm={algorithm}",
        f"env={env}",
        f"output_dir={out}",
        "progress=false",
        "batch_episodes=4",
        "eval_episodes=2",
        "eval_interval=40",
        "checkpoint_interval=40",
        *TINY[env],
        *extra,
    ]
    return compose_config("train", *overrides)


@pytest.mark.parametrize("env", ["matrix_game", "predator_prey"])
@pytest.mark.parametrize(
    "algorithm",
    ["resq", "qmix", "vdn", "cw_qmix", "ow_qmix", "qtran", "qplex", "resz", "ddn", "dmix"],
)
def test_every_algorithm_trains_on_every_env(algorithm, env, tmp_path):
    final = train(config(algorithm, env, tmp_path))
    assert final["frames"] >= 96 and final["updates"] > 0
    assert torch.isfinite(torch.tensor(final["eval/return"]))
    csv = tmp_path / f"{algorithm}_{env}_seed0" / "scalars" / "train"
    assert (csv / "loss_td.csv").stat().st_size > 0
    assert (csv / "return.csv").stat().st_size > 0
    share = [float(line.split(",")[-1]) for line in (csv / "real_step_share.csv").open()]
    assert share and all(0 < x <= 1 for x in share)  # the real steps of the sampled batches
    if algorithm in ("resq", "resz"):
        assert (csv / "w_r_mean.csv").exists() and (csv / "loss_central.csv").exists()
    if algorithm.endswith("_qmix"):
        assert (csv / "w_mean.csv").exists() and (csv / "loss_central.csv").exists()
    if algorithm == "qtran":
        assert (csv / "loss_opt.csv").exists() and (csv / "loss_nopt.csv").exists()
    evals = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert len(evals) >= 2 and evals[-1]["frames"] == final["frames"]
    assert (tmp_path / CHECKPOINT).exists() and (tmp_path / "final.json").exists()


def test_resq_with_the_qatten_main_mixer_trains(tmp_path):
    final = train(config("resq", "predator_prey", tmp_path, "algorithm.mixer=qatten"))
    assert final["updates"] > 0 and torch.isfinite(torch.tensor(final["eval/return"]))


def test_resume_continues_from_the_checkpoint(tmp_path):
    first = train(config("qmix", "predator_prey", tmp_path))
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["frames"] == first["frames"]
    second = train(config("qmix", "predator_prey", tmp_path, "total_frames=400", "resume=true"))
    assert second["frames"] >= 400 and second["episodes"] > first["episodes"]
    assert second["updates"] > first["updates"]
    with pytest.raises(ValueError, match="nothing to do"):
        train(config("qmix", "predator_prey", tmp_path, "total_frames=400", "resume=true"))


def test_train_script_command_line(tmp_path, run_script):
    proc = run_script(
        "train.py",
        "algorithm=resq",
        "env=predator_prey",
        "seed=0",
        f"output_dir={tmp_path}",
        "progress=false",
        "batch_episodes=4",
        "eval_episodes=2",
        *TINY["predator_prey"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final evaluation (resq on predator_prey, seed 0)" in proc.stdout
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["frames"] >= 200
    # what produced the run, in its log and its final.json (a commit here: a git checkout)
    code = final["code"]
    assert code["torch"] == torch.__version__ and code["cpu"]
    if (ROOT / ".git").exists():
        assert code["commit"] and code["commit"] in proc.stdout
    assert f"cpu: {code['cpu']}" in proc.stdout
    assert code["threads"] == 1 and ", 1 thread" in proc.stdout  # the tests' OMP_NUM_THREADS


def test_unknown_env_is_rejected(tmp_path):
    from resq_torchrl.training.builders import make_env

    with pytest.raises(ValueError, match="unknown env family 'nope'"):
        make_env({"name": "nope"}, 2)


@pytest.mark.parametrize("eps", [1.0, 0.0])
def test_collection_policy_never_picks_an_unavailable_action(eps):
    """Property: masked greedy + EGreedyModule, fully random (eps 1) or fully greedy (eps 0),
    only takes actions the env's action_mask allows (catch only next to a prey)."""
    from resq_torchrl.training.builders import env_dims, make_env, make_loss
    from resq_torchrl.training.trainer import make_policies

    torch.manual_seed(0)
    env_cfg = {
        "name": "predator_prey",
        "grid_size": 5,
        "n_predators": 3,
        "n_prey": 2,
        "episode_limit": 30,
    }
    env = make_env(env_cfg, 6, seed=0)
    algo = {"name": "resq", "mixing_embed_dim": 8, "hypernet_embed": 8, "central_mixer_embed": 8}
    loss = make_loss(algo, {"type": "gru", "hidden_dim": 8}, env_dims(env))
    env.append_transform(loss.agent_network.make_tensordict_primer())
    policy, _ = make_policies(loss, env, {"eps_init": eps, "eps_end": eps, "anneal_frames": 1})
    rollout = env.rollout(60, policy, break_when_any_done=False)
    mask = rollout["agents", "action_mask"]
    taken = mask.gather(-1, rollout["agents", "action"].unsqueeze(-1))
    assert taken.all()
    assert (~mask).any()  # the masks did forbid something


def test_evaluate_script_reloads_the_checkpoint(tmp_path, run_script):
    from resq_torchrl.training.trainer import evaluate_checkpoint

    final = train(config("resq", "predator_prey", tmp_path))
    first = evaluate_checkpoint(tmp_path, episodes=4, seed=3)
    assert first["checkpoint_frames"] == final["frames"] and first["eval/episodes"] == 4
    assert evaluate_checkpoint(tmp_path, episodes=4, seed=3) == first  # greedy: reproducible
    proc = run_script("evaluate.py", f"output_dir={tmp_path}", "episodes=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["eval/episodes"] == 3
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluate_checkpoint(tmp_path / "nothing")


def test_resume_with_checkpoint_buffer_keeps_the_stored_episodes(tmp_path, capsys):
    """With ``checkpoint_buffer=true`` a resumed run starts from the saved episodes: the
    buffer holds the first run's episodes plus the new ones (the capacity is not reached)."""
    first = train(config("qmix", "predator_prey", tmp_path, "checkpoint_buffer=true"))
    assert (tmp_path / "replay" / "episodes.json").exists()
    # an evaluation made after the checkpoint by a run that then died is redone, not kept
    with (tmp_path / "eval.jsonl").open("a") as f:
        f.write(json.dumps({"frames": first["frames"] + 1, "eval/return": -99.0}) + "\n")
    capsys.readouterr()
    second = train(
        config(
            "qmix",
            "predator_prey",
            tmp_path,
            "total_frames=400",
            "resume=true",
            "checkpoint_buffer=true",
        )
    )
    assert f"({first['episodes']} episodes, {first['episodes']} in the replay buffer)" in (
        capsys.readouterr().out
    )
    frames = [json.loads(line)["frames"] for line in (tmp_path / "eval.jsonl").open()]
    assert frames == sorted(frames) and first["frames"] + 1 not in frames
    replay = EpisodeReplayBuffer(capacity=5000, max_len=10)
    replay.loads(tmp_path / "replay")
    assert len(replay) == second["episodes"] == replay.episodes_added
    # a buffer saved after the checkpoint (a run that died in between) is not used
    meta = tmp_path / "replay" / "episodes.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "tag": 10**9}))
    capsys.readouterr()
    train(
        config(
            "qmix",
            "predator_prey",
            tmp_path,
            "total_frames=600",
            "resume=true",
            "checkpoint_buffer=true",
        )
    )
    assert "starting with an empty buffer" in capsys.readouterr().out
