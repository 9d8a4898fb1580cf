"""The README's commands, run as written but with tiny budgets, so that they cannot rot; and
its Python snippet, which is ``examples/losses_in_your_own_loop.py``.

The commands are read from README.md's ``bash`` blocks (every ``python <script>.py`` segment of
a line, install steps and ``python -m pytest`` aside), run in order in one scratch working
directory (later commands use earlier outputs: resume, evaluate, plot), each in this process
(``script_runner``: one torch import for all of them). Budget settings are appended as
overrides; everything else is the README's. Finally every file they wrote must be one the
repository's ``.gitignore`` ignores, so running them from the repository root leaves
``git status`` clean.
"""

from __future__ import annotations

import glob
import importlib.util
import re
import shlex
import shutil
import subprocess

import pytest
import torch
from script_runner import ROOT, run_in_process

README = (ROOT / "README.md").read_text()
EXAMPLE = ROOT / "examples" / "losses_in_your_own_loop.py"

#: train.py on a tiny budget: batches of 2 episodes of at most 10 steps, two of them
TRAIN_TINY = {
    "n_envs": "2",
    "rollout_steps": "5",
    "episodes_per_batch": "2",
    "batch_episodes": "2",
    "updates_per_episode": "0.5",
    "eval_episodes": "2",
    "eval_interval": "20",
    "env.max_steps": "10",
    "total_frames": "40",
    "progress": "false",
}
TINY = {
    "scripts/matrix_game.py": {"n_updates": "20", "progress": "false"},
    "scripts/matrix_game_sweep.py": {"n_updates": "3", "n_seeds": "1", "workers": "1"},
    "scripts/train.py": TRAIN_TINY,
    "scripts/evaluate.py": {"episodes": "2"},
    "scripts/plot.py": {"reps": "100"},
    "scripts/diagnose_ro.py": {
        "episodes": "4",
        "n_envs": "2",
        "updates": "2",
        "log_every": "1",
        "batch_episodes": "2",
        "progress": "false",
    },
    "benchmarks/throughput.py": {"quick": "true"},
}


def readme_commands() -> list[list[str]]:
    """Every ``python <path>.py ...`` of the README's bash blocks, as argv lists."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            tokens = shlex.split(line, comments=True)
            segment: list[str] = []
            for token in [*tokens, "&&"]:
                if token != "&&":
                    segment.append(token)
                    continue
                if len(segment) > 1 and segment[0] == "python" and segment[1].endswith(".py"):
                    commands.append(segment[1:])
                segment = []
    return commands


RESUMED: list[list[str]] = []  # the README's resuming train.py commands run so far


def tiny(argv: list[str]) -> list[str]:
    """``argv`` with the budget settings of :data:`TINY` put in place of the README's."""
    script, *args = argv
    if script not in TINY:
        raise AssertionError(f"README runs {script}: give it a tiny budget in TINY")
    budget = dict(TINY[script])
    resumes = [
        a for a in args if a.startswith("resume=") and a not in ("resume=auto", "resume=false")
    ]
    if script == "scripts/train.py" and resumes:  # resume=true or resume=PATH
        # each continuation goes beyond every run before it (the README chains them)
        RESUMED.append(argv)
        budget["total_frames"] = str((1 + len(RESUMED)) * int(budget["total_frames"]))
    if "env=matrix_game" in args:
        del budget["env.max_steps"]  # one-step episodes
    kept = [a for a in args if a.partition("=")[0] not in budget]
    return [script, *kept, *(f"{k}={v}" for k, v in budget.items())]


def expected_failure(argv: list[str]) -> str | None:
    """The one-line error a README command must give on this machine, if any."""
    args = " ".join(argv)
    if "hydra/launcher=slurm" in args and shutil.which("sbatch") is None:
        pytest.skip("needs a SLURM cluster (sbatch); tests/test_scaling.py composes the preset")
    if ("device=cuda" in args or "gpu=true" in args) and not torch.cuda.is_available():
        return "device=cuda was asked for"
    for family in ("smacv2", "smac"):
        if f"env={family}/" in args:
            if importlib.util.find_spec(family) is None:
                return "docs/smac.md"
            pytest.skip(f"{family} is installed: its run needs StarCraft II, not a smoke test")
    return None


def needs(argv: list[str]) -> str | None:
    """The extra a command needs, when it is not installed here."""
    args = " ".join(argv)
    for family, module in (("vmas", "vmas"), ("pettingzoo", "mpe2"), ("smax", "jaxmarl")):
        if f"env={family}/" in args and importlib.util.find_spec(module) is None:
            return module
    return None


COMMANDS = readme_commands()
#: commands too slow for the default suite, with the reason (run them with -m slow)
SLOW = {
    "env=smax/": "SMAX's JIT compilation alone takes 1-2 minutes on 2 cores",
    "hydra/launcher=joblib": "its worker processes each import torch (30-50 s on 2 cores)",
    "logger=mlflow": "mlflow's import and store take ~20 s (tests/test_loggers.py covers it)",
    "collector=multi": "its worker processes each import torch (tests/test_scaling.py)",
    "collector=ray": "starting Ray and its actors takes 20-60 s (tests/test_scaling.py)",
}


if torch.cuda.is_available():  # elsewhere it stops at once: device=cuda without CUDA
    SLOW["benchmarks/throughput.py"] = "a GPU benchmark of a few minutes"


def command_param(argv: list[str]):
    slow = [why for key, why in SLOW.items() if any(a.startswith(key) for a in argv)]
    marks = [pytest.mark.slow] if slow else []
    return pytest.param(argv, marks=marks, id=" ".join(argv)[:80])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


def test_the_readme_has_the_commands_we_expect():
    scripts = {argv[0] for argv in COMMANDS}
    assert {"scripts/matrix_game.py", "scripts/train.py", "scripts/evaluate.py"} <= scripts
    assert ["scripts/matrix_game.py", "algorithm=resq"] in COMMANDS  # the quick start
    assert any("-m" in argv for argv in COMMANDS)  # many seeds


@pytest.mark.parametrize("argv", [command_param(argv) for argv in COMMANDS])
def test_readme_command(argv, workdir):
    missing = needs(argv)
    if missing:
        pytest.skip(f"{missing} is not installed")
    failure = expected_failure(argv)
    command = tiny(argv)
    # the shell expands the README's globs; plot.py globs its own runs='[...]'
    expanded = []
    for arg in command:
        matches = sorted(glob.glob(arg, root_dir=workdir)) if "*" in arg else []
        expanded.extend(matches or [arg])
    result = run_in_process(expanded, workdir)
    if failure is not None:
        assert result.returncode == 2, result.stderr[-3000:]
        assert failure in result.stderr and "Traceback" not in result.stderr
        return
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    # a joblib multirun's jobs print from their own processes; this one logs their launch
    done = r"^(wrote|outputs in|done:|\{)"
    if "hydra/launcher=joblib" in argv:
        done = r"Joblib\.Parallel"
    assert re.search(done, result.stdout, flags=re.M)


def test_readme_commands_write_only_ignored_files(workdir):
    """Run after the commands (same module, in order): all they wrote is git-ignored."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    written = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
    assert written, "the README commands wrote nothing"
    ignored = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", "--stdin"],
        input="\n".join(written),
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert sorted(set(written) - set(ignored)) == []


def test_the_readme_snippet_is_the_example():
    block = re.search(
        r"## Using the losses in your own TorchRL code.*?```python\n(.*?)```", README, flags=re.S
    ).group(1)
    example = EXAMPLE.read_text().split('"""', 2)[2].lstrip("\n")
    assert block == example


def test_the_example_runs(tmp_path):
    result = run_in_process([str(EXAMPLE.relative_to(ROOT))], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "update 400: loss_td" in result.stdout
