"""Run a script of this repository as ``python <script> <args>`` would, inside the test
process: the same ``sys.argv``, working directory, ``__main__`` and exit code, without paying
a new interpreter's torch import for every command (several seconds each on 2 cores)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_in_process(command: str | list[str], cwd: Path = ROOT) -> Result:
    """Run ``command`` (``"scripts/train.py algorithm=resq ..."``, the script relative to the
    repository root) in ``cwd``; environment, thread count, argv and cwd are restored."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    script = ROOT / argv[0]
    streams = sys.stdout, sys.stderr  # pytest's capture, when under pytest
    if any("smax" in a for a in argv) and importlib.util.find_spec("jaxmarl") is not None:
        # jaxmarl's first import puts back the process's own sys.stdout and sys.stderr
        # (jaxmarl/environments/mabrax/mabrax_env.py): import it before redirecting them,
        # then undo that
        import jaxmarl  # noqa: F401

        sys.stdout, sys.stderr = streams
    saved = (list(sys.argv), os.getcwd(), dict(os.environ), torch.get_num_threads())
    # Hydra configures logging with dictConfig, which closes every handler made so far; absl's
    # (jax) then closes its stream, pytest's capture, as it is not the current sys.stderr.
    # The run sees none of them, and the root logger is given back as it was.
    root = logging.getLogger()
    handlers = (list(logging._handlerList), list(root.handlers), root.level)
    logging._handlerList[:] = []
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        sys.argv = [str(script), *argv[1:]]
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.stdout, sys.stderr = streams
        logging._handlerList[:] = handlers[0]
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers[1]:
            root.addHandler(handler)
        root.setLevel(handlers[2])
        sys.argv, cwd_before, env, threads = saved
        os.chdir(cwd_before)
        os.environ.clear()
        os.environ.update(env)
        torch.set_num_threads(threads)
    return Result(code, out.getvalue(), err.getvalue())
