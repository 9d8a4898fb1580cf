"""Throughput of the env adapters: env-only steps/s (random available actions) and full
training-loop frames/s (collector + episode replay + ResQ updates), per env and number of
vectorized envs.

    python benchmarks/throughput.py                      # configs/throughput.yaml
    python benchmarks/throughput.py device=cuda 'cases=[{env: vmas/balance, n_envs: [4096]}]'

Prints a markdown table and writes ``out`` (JSON). One env step of ``B`` envs counts ``B``
steps/frames.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import hydra
import torch
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from resq_torchrl.training.builders import make_env
from resq_torchrl.training.trainer import train

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def env_config(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / "env" / f"{name}.yaml"), resolve=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def env_steps_per_second(env_name: str, n_envs: int, device, steps: int, warmup: int) -> float:
    """Random available actions (``rand_action`` follows the masks), auto-reset as in a
    collector."""
    env = make_env(env_config(env_name), n_envs, device, seed=0)
    td = env.reset()
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        _, td = env.step_and_maybe_reset(env.rand_action(td))
    sync(device)
    elapsed = time.perf_counter() - start
    env.close()
    return n_envs * steps / elapsed


def train_frames_per_second(env_name: str, n_envs: int, device: str, cfg: DictConfig) -> dict:
    max_steps = int(env_config(env_name)["max_steps"])
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            f"algorithm={cfg.algorithm}",
            f"env={env_name}",
            f"device={device}",
            f"n_envs={n_envs}",
            f"episodes_per_batch={n_envs}",
            f"rollout_steps={max_steps}",
            f"total_frames={cfg.batches * n_envs * max_steps}",
            f"updates_per_episode={cfg.updates_per_episode}",
            f"batch_episodes={cfg.batch_episodes}",
            "eval_interval=1000000000",
            "checkpoint_interval=1000000000",
            "eval_episodes=1",
            "progress=false",
            f"output_dir={out}",
        ]
        # hydra.main has loaded configs/: compose the training config from the same tree
        run_cfg = OmegaConf.to_container(compose("train", overrides=overrides), resolve=True)
        final = train(run_cfg)
    return {
        "frames": final["frames"],
        "updates": final["updates"],
        "seconds": final["seconds"],
        "frames_per_s": final["frames"] / final["seconds"],
    }


@hydra.main(config_path="../configs", config_name="throughput", version_base="1.3")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(int(cfg.threads))
    device = torch.device(cfg.device)
    rows = []
    for case in cfg.cases:
        for n_envs in case.n_envs:
            env_sps = env_steps_per_second(
                case.env, int(n_envs), device, int(cfg.env_steps), int(cfg.warmup_steps)
            )
            loop = train_frames_per_second(case.env, int(n_envs), cfg.device, cfg.train)
            row = {"env": case.env, "n_envs": int(n_envs), "env_steps_per_s": env_sps, **loop}
            rows.append(row)
            print(json.dumps(row), flush=True)
    header = "| env | envs | env-only steps/s | training loop frames/s | updates | frames |"
    print(f"\ndevice {cfg.device}, {cfg.threads} thread(s)\n\n{header}\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['env']} | {r['n_envs']} | {r['env_steps_per_s']:,.0f} | "
            f"{r['frames_per_s']:,.0f} | {r['updates']} | {r['frames']} |"
        )
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps({"device": cfg.device, "rows": rows}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    main()
