"""The library's user errors: mistakes in a run's settings or in what is installed.

The scripts print them on one line (``error: <message>``, exit code 2) instead of a
traceback (``resq_torchrl.cli``); a library user catches them as ``ValueError``.
"""

from __future__ import annotations

import importlib
import numbers
import tempfile
from pathlib import Path
from types import ModuleType


class ConfigError(ValueError):
    """A setting that cannot work (an unknown choice, a budget too small for one batch, a
    device that is not there): the message says what to change."""


class MissingDependencyError(ConfigError, ImportError):
    """A setting needs an optional package that is not installed: the message names the
    extra that installs it."""


class CheckpointNotFoundError(ConfigError, FileNotFoundError):
    """A run was asked to continue from, or to evaluate, a checkpoint that does not exist."""


class UnsafeCheckpointError(ConfigError):
    """A checkpoint that cannot be loaded safely: it holds something other than tensors,
    numbers, strings and plain containers (e.g. a pickled object whose loading would run
    code), or it is not a checkpoint at all. Refused without running anything
    (``torch.load(weights_only=True)``)."""


class TrainingDivergedError(ValueError):
    """A loss term or the gradient of an update was not finite: the run stopped before
    applying that update, after checkpointing the last good state; the message names the
    update, the term and the frames collected just before it."""


def at_least(key: str, value, low: float, strict: bool = False) -> None:
    """Raise a :class:`ConfigError` ``<key> must be >= <low>, got <value>`` (``> <low>``
    with ``strict``) for a setting below its range; ``None`` (not set) passes. The one
    range check of the entry points, run before they build anything."""
    if value is None:
        return
    if float(value) < low or (strict and float(value) == low):
        raise ConfigError(f"{key} must be {'>' if strict else '>='} {low:g}, got {value}")


def is_whole(value) -> bool:
    """Whether a setting's value is a whole number: an int, or a float with no fraction
    (``1e6`` from the command line); never a bool."""
    if isinstance(value, bool):
        return False
    # numbers.Integral: numpy and other integer types too
    return isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())


def check_writable(key: str, path, kind: str = "file") -> None:
    """Raise a :class:`ConfigError` when ``path`` (``kind``: a ``"file"`` to write, or a
    ``"dir"`` to create or write into) cannot be written, before any work whose result would
    go there is done: a file path that is a directory, a directory path that is a file, a
    parent that is a file, or a place this process cannot write (probed by creating and
    removing a temporary directory in the nearest existing ancestor). ``None`` passes."""
    if path is None or str(path) == "":
        return
    target = Path(path)
    if kind == "file" and target.is_dir():
        raise ConfigError(f"{key}={path} is a directory: give the path of a file")
    if kind == "dir" and target.exists() and not target.is_dir():
        raise ConfigError(f"{key}={path} is a file, not a directory: choose another")
    wanted = target.parent if kind == "file" else target
    ancestor = wanted
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(
            f"{key}={path}: {ancestor} is a file, so {target} cannot be created: choose "
            "another path"
        )
    try:
        tempfile.TemporaryDirectory(dir=ancestor).cleanup()
    except OSError as err:
        raise ConfigError(
            f"{key}={path}: cannot write under {ancestor} ({err.strerror or err}): choose a "
            "writable path"
        ) from err


def check_figure_path(key: str, path) -> None:
    """Raise a :class:`ConfigError` naming ``key`` and the extensions matplotlib's ``savefig``
    writes when the figure path ``path`` ends in none of them (no extension: savefig would
    write ``<path>.png`` instead), or in ``.pgf`` without the TeX program that format runs;
    run before the work whose figure it is. ``None`` passes."""
    if path is None or str(path) == "":
        return
    import os
    import shutil

    import matplotlib
    from matplotlib.backend_bases import FigureCanvasBase

    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    choices = ", ".join(f".{f}" for f in formats)
    extension = os.path.splitext(str(path))[1][1:].lower()  # as savefig reads it
    if not extension:
        raise ConfigError(f"{key}={path} has no file extension: end it in one of {choices}")
    if extension not in formats:
        raise ConfigError(
            f"{key}={path}: matplotlib cannot write .{extension} figures; end it in one of "
            f"{choices}"
        )
    tex = matplotlib.rcParams["pgf.texsystem"]
    if extension == "pgf" and shutil.which(tex) is None:  # savefig runs it for the text
        others = ", ".join(f".{f}" for f in formats if f != "pgf")
        raise ConfigError(
            f"{key}={path}: .pgf figures need {tex} (matplotlib's pgf.texsystem), which is "
            f"not installed; end it in one of {others}"
        )


def require(module: str, extra: str, needed_by: str) -> ModuleType:
    """Import ``module`` or raise a :class:`MissingDependencyError` saying that ``needed_by``
    (e.g. ``"logger=tensorboard"``) needs the package extra ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{needed_by} needs the {module!r} package, which is not installed "
            f"({err}): pip install -e '.[{extra}]'"
        ) from err


__all__ = [
    "ConfigError",
    "MissingDependencyError",
    "CheckpointNotFoundError",
    "UnsafeCheckpointError",
    "TrainingDivergedError",
    "require",
    "at_least",
    "is_whole",
    "check_writable",
    "check_figure_path",
]
