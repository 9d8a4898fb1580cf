"""Scale-out (issue 14): collector processes (``collector=multi_sync`` / ``multi_async``), Ray
actors (``collector=ray``) and Hydra launchers running the runs of a sweep in parallel."""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_PREDATOR_PREY, compose_config
from script_runner import run_in_process
from torchrl.envs import TensorDictPrimer

from resq_torchrl.envs.predator_prey import STAY
from resq_torchrl.errors import ConfigError
from resq_torchrl.training.builders import env_dims, make_env, make_loss
from resq_torchrl.training.collectors import (
    COLLECTORS,
    agent_transforms,
    check_ray_address,
    make_collector,
    ray_init_config,
    worker_env_factories,
    worker_seed,
)
from resq_torchrl.training.trainer import add_agent_transforms, make_policies, train

#: a traceback frame of ray.init: where a Ray that cannot start on this machine fails
RAY_INIT_FRAME = re.compile(r'ray/_private/worker\.py", line \d+, in init\b')
#: tiny predator-prey whose state ends with t / episode_limit (a step counter)
TIMED = [*TINY_PREDATOR_PREY, "env.state_time=true"]


def trainer_parts(cfg: dict):
    """What ``train()`` builds before its collector: env (with agent transforms), loss,
    collection policy and its epsilon-greedy module."""
    env = make_env(cfg["env"], int(cfg["n_envs"]), "cpu", seed=int(cfg["seed"]))
    loss = make_loss(cfg["algorithm"], cfg["agent"], env_dims(env), "cpu")
    add_agent_transforms(env, loss)
    policy, egreedy = make_policies(loss, env, cfg["exploration"])
    return env, loss, policy, egreedy


# ------------------------------------------------------------------------ config, no workers


def test_collector_choices_and_worker_count_are_checked(tmp_path):
    cfg = compose_config("train", "algorithm=qmix", *TIMED)
    env, _, policy, _ = trainer_parts(cfg)
    with pytest.raises(ConfigError, match="unknown collector 'bogus'; choose one of: single"):
        make_collector({**cfg, "collector": {"type": "bogus"}}, env, policy, torch.device("cpu"))
    for bad in (0, -1, "two", 1.5):
        with pytest.raises(ConfigError, match="collector.num_workers must be a whole number"):
            make_collector(
                {**cfg, "collector": {"type": "multi_sync", "num_workers": bad}},
                env,
                policy,
                torch.device("cpu"),
            )
    # the command line names the valid choices of the group (configs/collector/)
    proc = run_in_process(f"scripts/train.py collector=bogus output_dir={tmp_path}")
    assert proc.returncode == 2
    expected = f"error: unknown collector 'bogus'; choose one of: {', '.join(sorted(COLLECTORS))}"
    assert proc.stderr.strip().splitlines()[-1] == expected


def test_worker_envs_are_the_trainers_env_seeded_per_worker():
    cfg = compose_config("train", "algorithm=qmix", *TIMED, "seed=3")
    env, _, _, _ = trainer_parts(cfg)
    extra = agent_transforms(env)  # the GRU agents' primer of hidden state and last action
    assert [type(t) for t in extra] == [TensorDictPrimer]
    factories = worker_env_factories(cfg, env, "cpu", 2)
    assert [f.seed for f in factories] == [worker_seed(3, 0), worker_seed(3, 1)]
    rng = torch.get_rng_state()
    worker_env = factories[0]()
    # built in the process that made the factory, it leaves its torch generator alone
    assert torch.equal(torch.get_rng_state(), rng)
    assert worker_env.observation_spec == env.observation_spec
    assert worker_env.full_action_spec == env.full_action_spec
    # the same seed, the same first state; another worker's seed, another one
    again = factories[0]().reset()["state"]
    assert torch.equal(worker_env.reset()["state"], again)
    assert not torch.equal(factories[1]().reset()["state"], again)
    mlp = compose_config("train", "algorithm=qmix", *TIMED, "agent.type=mlp")
    assert agent_transforms(trainer_parts(mlp)[0]) == []


def test_worker_seeds_are_no_other_runs_seeds():
    """The workers of one run never take the seed of another run's env or workers: with
    ``seed + 1000 (i + 1)``, worker 0 of the run of seed 0 collected the episodes of the run
    of seed 1000 (whose training env is seeded 1000), and worker 1 of seed 1 those of worker
    0 of seed 1001."""
    seeds = range(2100)
    envs = set(seeds) | {s + 1 for s in seeds}  # training and evaluation envs
    workers = [worker_seed(s, i) for s in seeds for i in range(4)]
    assert len(set(workers)) == len(workers)
    assert not envs & set(workers)
    assert all(0 <= w < 2**32 for w in workers)
    # beyond that range (a seed of 2**21 or more) a hash, still a 32-bit seed
    assert 0 <= worker_seed(2**40, 3) < 2**32 and worker_seed(2**40, 3) != worker_seed(2**40, 4)


def test_a_resumed_run_seeds_its_workers_anew(tmp_path, monkeypatch):
    """The workers' envs and exploration cannot be restored: a resume must not reseed them as
    at the start (replaying random streams the run already used). Resumed at N frames: seeds
    that differ from the fresh ones, per worker and per N, and repeat for the same N (a
    resume is reproducible)."""
    fresh = [worker_seed(3, i) for i in range(2)]
    assert fresh == [worker_seed(3, i) for i in range(2)] and len(set(fresh)) == 2
    at_100 = [worker_seed(3, i, resumed_at=100) for i in range(2)]
    at_200 = [worker_seed(3, i, resumed_at=200) for i in range(2)]
    assert len(set(fresh + at_100 + at_200)) == 6
    assert at_100 == [worker_seed(3, i, resumed_at=100) for i in range(2)]
    cfg = compose_config("train", "algorithm=qmix", *TIMED, "seed=3")
    env, _, _, _ = trainer_parts(cfg)
    factories = worker_env_factories(cfg, env, "cpu", 2, resumed_at=100)
    assert [f.seed for f in factories] == at_100

    # train() reads the checkpoint's frames and hands them to make_collector
    out = tmp_path / "run"
    base = ["algorithm=qmix", *TIMED, f"output_dir={out}", "progress=false", "eval_episodes=2"]
    first = compose_config("train", *base, "total_frames=40", "checkpoint_interval=20")
    train(first)
    seen = []

    def stop(cfg, env, policy, device, resumed_at=0):
        seen.append((cfg["collector"]["type"], resumed_at))
        raise KeyboardInterrupt

    monkeypatch.setattr("resq_torchrl.training.trainer.make_collector", stop)
    for kind in ("multi_sync", "single"):
        again = compose_config(
            "train", *base, "total_frames=80", "resume=true", f"collector={kind}"
        )
        with pytest.raises(KeyboardInterrupt):
            train(again)
    frames = json.loads((out / "final.json").read_text())["frames"]
    assert seen == [("multi_sync", frames), ("single", 0)] and frames >= 40


def test_ray_init_config_starts_a_small_local_instance_or_joins_a_cluster():
    cfg = compose_config("train", "collector=ray", "collector.num_workers=3")
    local = ray_init_config(cfg)
    assert local["address"] is None and local["num_cpus"] == 3
    assert local["_node_ip_address"] == "127.0.0.1" and local["include_dashboard"] is False
    assert local["object_store_memory"] == 128 * 1024**2
    cluster = compose_config("train", "collector=ray", "collector.ray_address=10.0.0.5:6379")
    assert ray_init_config(cluster)["address"] == "10.0.0.5:6379"
    assert "num_cpus" not in ray_init_config(cluster)
    # workers reserving 2 CPUs each could never be placed on num_workers CPUs: a silent hang
    big = compose_config(
        "train", "collector=ray", "collector.num_workers=2", "collector.worker_cpus=2"
    )
    assert ray_init_config(big)["num_cpus"] == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["collector=multi_sync", "collector.num_workers=0"], "collector.num_workers must be"),
        (
            ["collector=ray", "collector.worker_cpus=-1"],
            "collector.worker_cpus must be a number > 0",
        ),
        (["collector=ray", "collector.worker_memory_mb=0"], "collector.worker_memory_mb must be"),
    ],
)
def test_collector_settings_are_refused_before_anything_is_written(overrides, message, tmp_path):
    """They failed when the collector was made, after the run's logs were written, so the
    corrected command was refused as a run into an output_dir that holds one."""
    cfg = compose_config(
        "train", "env=predator_prey_small", *overrides, f"output_dir={tmp_path / 'r'}"
    )
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "r").exists()


def test_an_unreachable_ray_address_is_one_line_before_anything_is_written(tmp_path):
    """ray.init retried an address where nothing listens for minutes, then raised a
    traceback: the address is tried first (a closed port on loopback: refused at once)."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on once the socket is closed
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    out = tmp_path / "r"
    cfg = compose_config(
        "train",
        "env=predator_prey_small",
        "collector=ray",
        f"collector.ray_address=127.0.0.1:{closed}",
        f"output_dir={out}",
    )
    with pytest.raises(ConfigError, match=f"127.0.0.1:{closed}: no Ray cluster answers there"):
        train(cfg)
    assert not out.exists()
    for bad in ("headnode", "ray://:10001", "host:port"):
        with pytest.raises(ConfigError, match="must be HOST:PORT, ray://HOST:PORT, auto"):
            check_ray_address(bad)
    with socket.socket() as head:  # something listening: the address is taken as given
        head.bind(("127.0.0.1", 0))
        head.listen()
        port = head.getsockname()[1]
        check_ray_address(f"127.0.0.1:{port}")
        check_ray_address(f"ray://127.0.0.1:{port}")
    check_ray_address("auto")


# ------------------------------------------------------------------ collector processes
# Slow: each worker process is a fresh interpreter importing torch and torchrl (torchrl's
# collectors start them with "spawn"): 6 s of CPU each on this project's 2-core machine.


@pytest.fixture(scope="module", params=["multi_sync", "multi_async"])
def worker_batches(request):
    """Batches of ``collector=<param> collector.num_workers=2`` on the timed tiny
    predator-prey: 6 with the initial policy (epsilon 1), then, after the training process
    changed the weights to always ``STAY`` and epsilon to 0, 6 more."""
    cfg = compose_config(
        "train", "algorithm=qmix", *TIMED, f"collector={request.param}", "collector.num_workers=2"
    )
    env, loss, policy, egreedy = trainer_parts(cfg)
    collector = make_collector(cfg, env, policy, torch.device("cpu"))
    try:
        batches = iter(collector)
        before = [next(batches) for _ in range(6)]
        params = dict(loss.named_parameters())
        with torch.no_grad():  # in place, as the optimizer changes them
            params["agent_network_params.net.fc2.weight"].zero_()
            bias = params["agent_network_params.net.fc2.bias"]
            bias.zero_()
            bias[STAY] = 1.0
            egreedy.eps.fill_(0.0)
        after = [next(batches) for _ in range(6)]
    finally:
        collector.shutdown()
    return {"cfg": cfg, "before": before, "after": after}


@pytest.mark.slow
def test_collector_processes_yield_complete_valid_episodes(worker_batches):
    cfg = worker_batches["cfg"]
    limit, n_actions = int(cfg["env"]["max_steps"]), 6
    batches = worker_batches["before"] + worker_batches["after"]
    ids = set()
    for batch in batches:
        assert batch.shape[0] == int(cfg["episodes_per_batch"])
        mask = batch.get(("collector", "mask"))  # [E, T]
        done = batch.get(("next", "done")).squeeze(-1)
        for e in range(batch.shape[0]):
            length = int(mask[e].sum())
            assert 1 <= length <= limit
            assert mask[e, :length].all() and not mask[e, length:].any()  # real steps first
            # done at the last real step only: a complete episode, ended once
            assert done[e, length - 1] and not done[e, : length - 1].any()
            step = batch[e, :length]
            # the step counter t / limit of the state counts 0, 1, ..., length - 1
            t = step.get("state")[:, -1] * limit
            torch.testing.assert_close(t, torch.arange(length, dtype=t.dtype))
            torch.testing.assert_close(step.get(("next", "state"))[:, -1] * limit, t + 1)
            assert step.get("is_init").squeeze(-1).tolist() == [True] + [False] * (length - 1)
            # recurrent state and last action start at zero in every episode of each worker
            assert not step.get(("agents", "rnn_hidden"))[0].any()
            last = step.get(("agents", "last_action"))
            action = step.get(("agents", "action"))  # [L, N]
            assert not last[0].any()
            expected = torch.nn.functional.one_hot(action[:-1], n_actions).float()
            torch.testing.assert_close(last[1:], expected)
            # every action is available under the env's action mask
            available = step.get(("agents", "action_mask")).gather(-1, action.unsqueeze(-1))
            assert available.all()
            # the return is the sum of the episode's rewards
            torch.testing.assert_close(
                step.get(("next", "episode_reward"))[-1], step.get(("next", "reward")).sum(0)
            )
            ids.add(int(step.get(("collector", "traj_ids"))[0]))
    assert len(ids) == len(batches) * int(cfg["episodes_per_batch"])  # no episode twice


@pytest.mark.slow
def test_collector_processes_act_with_the_weights_of_the_training_process(worker_batches):
    def stay_share(batch) -> float:
        action = batch.get(("agents", "action"))[batch.get(("collector", "mask"))]
        return float((action == STAY).float().mean())

    # epsilon 1 at first: uniform over the available actions, not all STAY
    assert all(stay_share(b) < 0.6 for b in worker_batches["before"])
    # weights and epsilon changed in the training process: once the episodes under way when
    # they changed are done, every action of every worker is the new greedy STAY
    assert stay_share(worker_batches["after"][-1]) == 1.0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mpe2") is None, reason="needs .[pettingzoo]")
def test_multi_sync_trains_on_the_same_frames_as_the_single_collector(tmp_path):
    """simple_speaker_listener: 25-step episodes, padded actions masked. 150 frames are 3
    batches of 2 episodes x 25 steps; updates start once the replay holds 4 episodes (after
    batch 2), one per episode: 2 + 2."""
    results = {}
    for kind in ("single", "multi_sync"):
        cfg = compose_config(
            "train",
            "algorithm=qmix",
            "env=pettingzoo/simple_speaker_listener",
            f"collector={kind}",
            *(["collector.num_workers=2"] if kind == "multi_sync" else []),
            "n_envs=2",
            "rollout_steps=25",
            "episodes_per_batch=2",
            "batch_episodes=4",
            "total_frames=150",
            "eval_episodes=2",
            "eval_interval=1000",
            "checkpoint_interval=1000",
            "progress=false",
            f"output_dir={tmp_path / kind}",
        )
        results[kind] = train(cfg)
    for kind, final in results.items():
        assert (final["frames"], final["episodes"], final["updates"]) == (150, 6, 4), kind
        assert math.isfinite(final["eval/return"])


# -------------------------------------------------------------------------------- Ray


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs .[distributed]")
def test_train_script_with_the_ray_collector_learns(tmp_path):
    out = tmp_path / "ray_run"
    proc = run_in_process(
        "scripts/train.py algorithm=qmix collector=ray collector.num_workers=2 "
        f"{' '.join(TINY_PREDATOR_PREY)} total_frames=80 batch_episodes=4 eval_episodes=2 "
        f"eval_interval=1000 checkpoint_interval=1000 progress=false output_dir={out}"
    )
    if proc.returncode != 0 and RAY_INIT_FRAME.search(proc.stderr):  # failed in ray.init
        pytest.skip("Ray could not start here: " + proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((out / "final.json").read_text())
    # 80 frames: 4 batches of 2 episodes x 10 steps; updates from batch 2 on, 2 per batch
    assert (final["frames"], final["episodes"], final["updates"]) == (80, 8, 6)
    (csv,) = out.rglob("loss_td.csv")  # step,value per collector batch with updates
    values = [float(line.split(",")[-1]) for line in csv.read_text().split()]
    assert len(values) == 3 and all(math.isfinite(v) for v in values)
    import ray

    assert not ray.is_initialized()  # the local instance was shut down with the collector


# ----------------------------------------------------------------------- Hydra launchers

RECORD_PID = """
import os
from pathlib import Path

from hydra.experimental.callback import Callback


class RecordPid(Callback):
    def on_multirun_start(self, config, **kwargs):  # in the process that launches the jobs
        out = Path(config.hydra.sweep.dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "launcher_pid").write_text(str(os.getpid()))

    def on_job_start(self, config, **kwargs):  # in the process that runs the job
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "pid").write_text(str(os.getpid()))
"""


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
    reason="needs .[launchers]",
)
def test_joblib_multirun_runs_each_seed_in_its_own_process(tmp_path):
    (tmp_path / "record_pid.py").write_text(RECORD_PID)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "OMP_NUM_THREADS": "1",
        "RL_WARNINGS": "False",
        "PYTHONPATH": str(tmp_path),
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            "-m",
            "seed=0,1",
            "algorithm=qmix",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
            "+hydra.callbacks.pid._target_=record_pid.RecordPid",
            *TINY_PREDATOR_PREY,
            "total_frames=40",
            "batch_episodes=2",
            "eval_episodes=2",
            "eval_interval=1000",
            "checkpoint_interval=1000",
            "progress=false",
            f"output_dir={tmp_path}/seed${{seed}}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pids = {int((tmp_path / f"seed{s}" / "pid").read_text()) for s in (0, 1)}
    launcher = int((tmp_path / "multirun" / "launcher_pid").read_text())
    assert len(pids) == 2 and launcher not in pids  # two worker processes, not the launcher
    finals = [json.loads((tmp_path / f"seed{s}" / "final.json").read_text()) for s in (0, 1)]
    assert all(f["frames"] == 40 and f["updates"] > 0 for f in finals)
    assert (tmp_path / "multirun" / "multirun.yaml").exists()


def test_launcher_presets_compose():
    """``hydra/launcher=slurm`` and ``=local``: the plugins' launchers with our settings."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        slurm = compose(
            "train",
            ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        ).hydra.launcher
        local = compose("train", ["hydra/launcher=local"], return_hydra_config=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition == "gpu"
    assert slurm.timeout_min == 240 and slurm.cpus_per_task == 2
    assert local._target_.endswith("JoblibLauncher") and local.n_jobs == 2


@pytest.mark.slow
def test_scaling_benchmark_runs_and_pairs_its_ratios(tmp_path):
    tiny = ",".join(f'"{o}"' for o in (*TINY_PREDATOR_PREY, "algorithm=qmix", "progress=false"))
    proc = run_in_process(
        [
            "benchmarks/scaling.py",
            "rounds=2",
            "total_frames=40",
            f"train=[{tiny}]",
            *(f"~candidates.{c}" for c in ("multi_async_2", "multi_sync_2", "ray_1")),
            f"run_dir={tmp_path / 'runs'}",
            f"out={tmp_path / 'scaling.json'}",
            f"markdown={tmp_path / 'scaling.md'}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "scaling.json").read_text())
    runs = result["runs"]
    assert set(runs) == {"single", "multi_async_1"}
    assert all(r["frames"] == 40 for rs in runs.values() for r in rs)
    fps = {k: [r["loop_fps"] for r in v] for k, v in runs.items()}
    ratios = [a / b for a, b in zip(fps["multi_async_1"], fps["single"], strict=True)]
    assert result["summary"]["multi_async_1"]["fps_ratio"]["rounds"] == ratios
    assert result["summary"]["single"]["fps_ratio"]["rounds"] == [1.0, 1.0]
    assert "| `multi_async_1`" in (tmp_path / "scaling.md").read_text()
