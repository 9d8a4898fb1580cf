"""The run's logger (training/loggers.py): each of torchrl's loggers writes under the run's
directory, and what it wrote reads back, with each tool's own reader, as the values logged."""

from __future__ import annotations

import json
import pickle
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_PREDATOR_PREY, compose_config
from script_runner import run_in_process

from resq_torchrl.errors import ConfigError, MissingDependencyError
from resq_torchrl.training.loggers import (
    LOGGER_EXTRAS,
    check_logger,
    close_logger,
    close_open_loggers,
    hparams,
    make_logger,
    resume_logger,
)

#: (key, step, value) logged by every test; the values are exact in float32 (tensorboard)
SCALARS = [
    ("train/return", 10, 1.5),
    ("train/epsilon", 10, 0.75),
    ("train/return", 20, -2.25),
    ("eval/return", 20, 0.125),
]


def run_cfg(logger: str, **extra) -> dict:
    return {
        "logger": logger,
        "experiment_name": "resq_pp_seed3",
        "seed": 3,
        "lr": 0.0005,
        "agent": {"type": "gru", "hidden_dim": 64},
        "resume": None,
        **extra,
    }


def log_all(logger) -> None:
    for key, step, value in SCALARS:
        logger.log_scalar(key, value, step=step)


def rng_states() -> tuple:
    """The global random streams a run draws from (exact resume restores these): a logger
    must leave them as they were."""
    return torch.get_rng_state(), pickle.dumps(np.random.get_state()), random.getstate()


def same_rng(before: tuple) -> bool:
    after = rng_states()
    return torch.equal(before[0], after[0]) and before[1:] == after[1:]


def expected(key: str) -> list[tuple[int, float]]:
    return [(step, value) for k, step, value in SCALARS if k == key]


def test_hparams_are_plain_and_flat():
    cfg = {"lr": 0.001, "agent": {"type": "gru", "n": {"deep": 2}}, "resume": None, "d": [1, 2]}
    assert hparams(cfg) == {
        "lr": 0.001,
        "agent.type": "gru",
        "agent.n.deep": 2,
        "resume": "None",
        "d": "[1, 2]",
    }
    assert hparams(cfg, nested=True) == {
        "lr": 0.001,
        "agent": {"type": "gru", "n": {"deep": 2}},
        "resume": "None",
        "d": "[1, 2]",
    }


def test_csv(tmp_path):
    before = rng_states()
    logger = make_logger(run_cfg("csv"), tmp_path)
    log_all(logger)
    close_logger(logger)
    assert same_rng(before)
    run = tmp_path / "resq_pp_seed3"
    for key in ("train/return", "train/epsilon", "eval/return"):
        lines = (run / "scalars" / f"{key}.csv").read_text().splitlines()
        assert [(int(s), float(v)) for s, v in (line.split(",") for line in lines)] == expected(key)
    text = (run / "texts" / "hparams0.txt").read_text().splitlines()
    assert "agent.hidden_dim: 64" in text and "lr: 0.0005" in text and "resume: None" in text


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep all
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    before = rng_states()
    logger = make_logger(run_cfg("tensorboard"), tmp_path)
    log_all(logger)
    close_logger(logger)
    assert same_rng(before)
    run = tmp_path / "resq_pp_seed3"
    scalars = tensorboard_scalars(run)
    assert set(scalars) == {"train/return", "train/epsilon", "eval/return"}
    for key, values in scalars.items():
        assert values == expected(key)
    # add_hparams writes the configuration in a sub-run of its own
    (sub,) = [p for p in run.iterdir() if p.is_dir()]
    events = EventAccumulator(str(sub))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hp = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hp["lr"].number_value == 0.0005 and hp["agent.type"].string_value == "gru"
    assert hp["agent.hidden_dim"].number_value == 64 and hp["resume"].string_value == "None"


@pytest.mark.parametrize("kind", ["csv", "tensorboard"])
def test_a_resumed_run_does_not_log_the_steps_past_its_checkpoint_twice(tmp_path, kind):
    """An interrupted run logged steps 10 and 20; resumed from a checkpoint at 10, it logs 20
    and 30 again with new values: each step is read back once, with the resumed value."""
    first = make_logger(run_cfg(kind), tmp_path)
    log_all(first)  # steps 10, 20
    close_logger(first)
    again = make_logger(run_cfg(kind), tmp_path)
    resume_logger(again, frames=10)
    again.log_scalar("train/return", 7.5, step=20)
    again.log_scalar("train/return", 8.5, step=30)
    close_logger(again)
    run = tmp_path / "resq_pp_seed3"
    if kind == "csv":
        # a header line is kept, and a line cut short by a kill (no newline) is dropped
        cut = run / "scalars" / "train" / "epsilon.csv"
        cut.write_text("step,value\n10,0.75\n20,0.7")
        third = make_logger(run_cfg(kind), tmp_path)
        resume_logger(third, frames=30)
        close_logger(third)
        assert cut.read_text() == "step,value\n10,0.75\n"
        lines = (run / "scalars" / "train" / "return.csv").read_text().splitlines()
        read = [(int(s), float(v)) for s, v in (line.split(",") for line in lines)]
        # a key the resumed run has not logged yet keeps only the steps up to 10
        assert (run / "scalars" / "eval" / "return.csv").read_text() == ""
    else:
        read = tensorboard_scalars(run)["train/return"]
    assert read == [(10, 1.5), (20, 7.5), (30, 8.5)]


def wandb_records(run_file: Path):
    """The protobuf records of a wandb run's transaction log ``run-<id>.wandb``: a header
    (``:W&B``, magic, version), then a LevelDB-style log of 32 KiB blocks whose records are
    ``crc32 (4) | length (2, little-endian) | type (1)`` and a payload, one wandb ``Record``
    per FULL chunk or FIRST..MIDDLE..LAST run of chunks."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, header, pos, pending = 32768, 7, 7, b""
    while pos + header <= len(data):
        if block - pos % block < header:  # a block's tail too short for a header: padding
            pos += block - pos % block
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        if pos + header + length > len(data):  # still being written
            return
        pending += data[pos + header : pos + header + length]
        pos += header + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """wandb with none of the user's settings, its caches under ``tmp_path``."""
    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)  # offline by our setting alone
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    # an address nothing answers at: a try at the network would fail, not reach a server
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")


def wandb_run(out: Path) -> tuple[list[dict], dict]:
    """The history rows and the config of the one offline wandb run under ``out``."""
    (run_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    # finish() returns before wandb's service process has written the log out: wait for the
    # run's exit record (it comes within a second; 30 s on a loaded machine at most)
    deadline = time.monotonic() + 30
    while not any(r.HasField("exit") for r in wandb_records(run_file)):
        assert time.monotonic() < deadline, "the offline run was not written out in 30 s"
        time.sleep(0.1)
    history, config = [], {}
    for record in wandb_records(run_file):
        if record.HasField("history"):
            row = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.history.item
            }
            history.append(row)
        if record.HasField("run"):
            assert record.run.project == "resq_torchrl"
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        if record.HasField("config"):
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
    return history, config


def logged(history: list[dict], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``key`` (torchrl logs the step as ``<group>/step``)."""
    step_key = key.rpartition("/")[0] + "/step"
    return [(row[step_key], row[key]) for row in history if key in row]


def test_wandb_offline(tmp_path, offline_wandb):
    out = tmp_path / "run"
    before = rng_states()
    logger = make_logger(run_cfg("wandb"), out)
    log_all(logger)
    close_logger(logger)
    assert same_rng(before)
    history, config = wandb_run(out)
    for key in ("train/return", "train/epsilon", "eval/return"):
        assert logged(history, key) == expected(key)
    assert config["lr"] == 0.0005 and config["agent"] == {"type": "gru", "hidden_dim": 64}


def test_a_new_logger_closes_the_one_left_open(tmp_path, offline_wandb):
    """A run that does not close its logger (a multirun's earlier job) has it closed when the
    next run's logger is made: wandb would otherwise hand the next run the open one."""
    first = make_logger(run_cfg("wandb"), tmp_path / "a")
    first.log_scalar("train/return", 1.5, step=10)
    second = make_logger(run_cfg("wandb"), tmp_path / "b")
    assert not first.is_alive
    second.log_scalar("train/return", -2.25, step=20)
    close_logger(second)
    close_logger(first)  # twice: nothing happens
    assert logged(wandb_run(tmp_path / "a")[0], "train/return") == [(10, 1.5)]
    assert logged(wandb_run(tmp_path / "b")[0], "train/return") == [(20, -2.25)]


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_mlflow_local_store(tmp_path):
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    before = rng_states()
    logger = make_logger(run_cfg("mlflow"), out)
    log_all(logger)
    close_logger(logger)
    assert same_rng(before)
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("resq_pp_seed3")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == RunStatus.to_string(RunStatus.FINISHED)
    for key in ("train/return", "train/epsilon", "eval/return"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in history] == expected(key)
    params = run.data.params
    assert params["lr"] == "0.0005" and params["agent.hidden_dim"] == "64"
    assert experiment.artifact_location == (out / "mlartifacts").resolve().as_uri()
    assert sorted(p.name for p in out.iterdir()) == ["mlflow.db"]  # no artifact logged yet


def test_a_failed_run_is_marked_failed_in_mlflow(tmp_path):
    """A run stopped by an error (a non-finite loss) closes its mlflow run as FAILED."""
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    logger = make_logger(run_cfg("mlflow"), out)
    log_all(logger)
    close_logger(logger, failed=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("resq_pp_seed3").experiment_id])
    assert run.info.status == RunStatus.to_string(RunStatus.FAILED)


def test_an_mlflow_store_it_cannot_open_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = f"file:{tmp_path / 'mlruns'}"  # the old default store, refused by mlflow 3
    with pytest.raises(ConfigError) as err:
        make_logger(run_cfg("mlflow", mlflow_tracking_uri=uri), tmp_path / "run")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"logger=mlflow cannot use mlflow_tracking_uri={uri}: ")
    assert "filesystem tracking backend" in message


def test_every_extra_is_in_pyproject():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11's")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for name, need in LOGGER_EXTRAS.items():
        if need is not None:
            module, extra = need
            assert any(dep.startswith(module) for dep in extras[extra]), name


@pytest.mark.parametrize("name", [n for n, need in LOGGER_EXTRAS.items() if need])
def test_a_missing_package_names_its_extra(name, tmp_path, monkeypatch):
    module, extra = LOGGER_EXTRAS[name]
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(MissingDependencyError) as err:
        make_logger(run_cfg(name), tmp_path / "run")
    message = str(err.value)
    assert "\n" not in message
    assert f"logger={name} needs the {module!r} package" in message
    assert message.endswith(f"pip install -e '.[{extra}]'")
    assert not (tmp_path / "run").exists()


def test_an_unknown_logger_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown logger 'tb'; choose one of: ") as err:
        check_logger("tb")
    assert str(err.value).endswith("csv, tensorboard, wandb, mlflow")


def test_train_script_writes_tensorboard_scalars(tmp_path):
    """``python scripts/train.py logger=tensorboard``: its train/ and eval/ scalars are in
    the event file once its logger is closed (at the latest when the process exits), the
    evaluations those of eval.jsonl."""
    proc = run_in_process(
        [
            "scripts/train.py",
            "logger=tensorboard",
            *TINY_PREDATOR_PREY,
            "total_frames=40",
            "batch_episodes=2",
            "eval_interval=20",
            "eval_episodes=2",
            "progress=false",
            f"output_dir={tmp_path}",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    close_open_loggers()  # as at the process's exit
    scalars = tensorboard_scalars(tmp_path / "resq_predator_prey_seed0")
    evals = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [step for step, _ in scalars["eval/return"]] == [e["frames"] for e in evals]
    assert [v for _, v in scalars["eval/return"]] == pytest.approx(
        [e["eval/return"] for e in evals], rel=1e-6
    )
    steps = [step for step, _ in scalars["train/return"]]  # one per batch, frames so far
    assert len(steps) >= 2 and steps == sorted(set(steps)) and steps[-1] == evals[-1]["frames"]
    assert {"train/epsilon", "train/loss_td"} <= set(scalars)


def test_the_logged_epsilon_is_the_linear_anneal_over_the_frames_so_far(tmp_path):
    """A run's ``train/epsilon`` (csv) at each logged step (its frames so far, the batch's
    included): ``eps_init + (eps_end - eps_init) * min(frames / anneal_frames, 1)``, the
    epsilon stepped by the batch's frames before it is logged; past ``anneal_frames`` it stays
    at ``eps_end``."""
    from resq_torchrl.training.trainer import train

    eps_init, eps_end, anneal = 0.9, 0.2, 130
    cfg = compose_config(
        "train",
        "logger=csv",
        *TINY_PREDATOR_PREY,
        "agent.hidden_dim=8",
        "total_frames=200",
        "batch_episodes=2",
        "eval_interval=1000",
        "eval_episodes=1",
        "checkpoint_interval=1000",
        "progress=false",
        f"exploration.eps_init={eps_init}",
        f"exploration.eps_end={eps_end}",
        f"exploration.anneal_frames={anneal}",
        f"output_dir={tmp_path}",
    )
    result = train(cfg)
    run = tmp_path / cfg["experiment_name"] / "scalars" / "train"
    rows = [line.split(",") for line in (run / "epsilon.csv").read_text().splitlines()]
    logged = [(int(step), float(value)) for step, value in rows]
    steps = [step for step, _ in logged]
    # one row per batch, at the frames so far (those train/return is logged at)
    returns = (run / "return.csv").read_text().splitlines()
    assert steps == [int(line.split(",")[0]) for line in returns]
    assert steps == sorted(set(steps)) and steps[-1] == result["frames"]
    # the schedule is seen mid-anneal (more than one value strictly between) and at its end
    assert sum(0 < step < anneal for step in steps) >= 2 and steps[-1] > anneal
    want = [eps_init + (eps_end - eps_init) * min(step / anneal, 1.0) for step in steps]
    # torchrl subtracts (eps_init - eps_end) / anneal_frames once a frame in float32
    assert [value for _, value in logged] == pytest.approx(want, abs=1e-5)


def test_the_eval_history_reader_skips_a_line_cut_short(tmp_path, capsys):
    """One reader of ``eval.jsonl`` for the trainer (resume) and the plots: a last line cut
    short by a kill is skipped, with a note when asked."""
    from resq_torchrl.analysis.aggregate import read_eval
    from resq_torchrl.training.loggers import read_eval_rows

    path = tmp_path / "eval.jsonl"
    path.write_text(
        '{"frames": 10, "eval/return": 1.0}\n\n{"frames": 20, "eval/return": 2.5}\n{"fr'
    )
    assert read_eval_rows(path) == [
        {"frames": 10, "eval/return": 1.0},
        {"frames": 20, "eval/return": 2.5},
    ]
    assert capsys.readouterr().err == ""
    frames, values, _ = read_eval(tmp_path, "eval/return")
    assert frames.tolist() == [10, 20] and values.tolist() == [1.0, 2.5]
    assert capsys.readouterr().err == f"note: skipped a line cut short in {path}\n"


def test_the_log_tools_start_without_torch():
    """``benchmarks/collect_runs.py`` reads logs only: it imports ``evallog`` and never
    torch, torchrl or the envs (it took 5 s to start, in every call); the package's
    exported names still import on first use."""
    import subprocess

    code = (
        "import runpy, sys; sys.argv = ['collect_runs.py', '--help']\n"
        "try:\n    runpy.run_path('benchmarks/collect_runs.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = {'torch', 'torchrl', 'tensordict'} & {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(heavy))\n"
        "from resq_torchrl.training import EnvDims, train_matrix_game\n"
        "print(train_matrix_game.__module__, EnvDims.__module__)\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == "[]"
    assert lines[-1] == "resq_torchrl.training.matrix_game resq_torchrl.training.builders"
