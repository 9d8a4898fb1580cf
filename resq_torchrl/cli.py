"""What every script shares: one-line answers to user mistakes, one thread policy and one
memory-allocator policy.

    @cli.main("evaluate", auto_threads={"cpu": 1, "cuda": 1})  # hydra.main, configs/evaluate.yaml
    def main(cfg): ...

**Errors.** A user mistake ends the script with ``error: <message>`` on one line of stderr
and exit code 2, no traceback: an unknown ``env=``/``algorithm=`` choice (checked against
``configs/`` before Hydra composes, listing the valid choices of that family), an override
Hydra refuses (an unknown key, a malformed override: composed once before Hydra runs), a
missing mandatory value, and any :class:`~resq_torchrl.errors.ConfigError` or ``ValueError`` /
``ImportError`` raised by this package's own checks. ``--debug`` (or
``HYDRA_FULL_ERROR=1``) keeps the full traceback. Errors raised inside third-party code
keep theirs.

**Threads.** The torch thread count is, in this order of precedence: ``threads=N`` on the
command line, else ``OMP_NUM_THREADS`` when set, else the config's ``threads`` (``auto``:
the script's default for the device: a count, or a rule of the config such as
``train.py``'s every usable core). The script prints the
count it used, and why, on one line of stderr at start (with a hint when ``auto`` took several
threads on cores other work keeps busy); child processes inherit it through
``OMP_NUM_THREADS``.

**Allocator.** With ``reuse_freed_memory`` true (the default of every script; a config key,
``reuse_freed_memory=false`` turns it off), the process keeps the memory torch frees for its
next tensors instead of handing it back to the system (:func:`reuse_freed_memory`, glibc
only); printed on one line of stderr like the threads.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from resq_torchrl.errors import ConfigError, is_whole

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
#: a ValueError or ImportError raised from these directories is one of our own checks
_OWN_CODE = tuple(REPO / d for d in ("resq_torchrl", "scripts", "benchmarks", "examples"))
EXIT_USER_ERROR = 2
#: the exit status of a script stopped by Ctrl-C (128 + SIGINT, as a shell reports it)
EXIT_INTERRUPTED = 130


def _debug() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def fail(message: str) -> None:
    """Print ``error: <message>`` on one line of stderr and exit with code 2."""
    line = " ".join(str(message).split())
    print(f"error: {line}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def _raised_by_own_code(err: BaseException) -> bool:
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    return any(path.is_relative_to(d) for d in _OWN_CODE)


def user_error_message(err: BaseException) -> str | None:
    """The one-line message of ``err`` if it is a user mistake, else ``None``."""
    if isinstance(err, ConfigError):
        return str(err)
    if isinstance(err, MissingMandatoryValue):
        return f"{err.full_key} is required: add {err.full_key}=... to the command line"
    if isinstance(err, (ValueError, ImportError)) and _raised_by_own_code(err):
        return str(err)
    return None


# ----------------------------------------------------------------------------------- choices


def _options(group: Path) -> tuple[list[str], list[str]]:
    """(config names, family subdirectories) of a config group directory."""
    names = sorted(p.stem for p in group.glob("*.yaml"))
    families = sorted(p.name for p in group.iterdir() if p.is_dir())
    return names, families


def _tasks(family: Path) -> str:
    return ", ".join(sorted(p.stem for p in family.glob("*.yaml")))


def check_choice(group: str, choice: str, configs: Path = CONFIGS) -> None:
    """Raise a :class:`ConfigError` listing the valid choices when ``configs/<group>/<choice>``
    is not a config (``env=vmas/nonexistent`` lists the vmas tasks)."""
    root = configs / group
    if (root / f"{choice}.yaml").is_file():
        return
    names, families = _options(root)
    family, _, task = choice.partition("/")
    if family in families and task:
        raise ConfigError(
            f"unknown {group} {choice!r}: the {family} tasks are {_tasks(root / family)} "
            f"(configs/{group}/{family}/)"
        )
    if family in families:
        raise ConfigError(
            f"{group}={family} needs a task, {group}={family}/<task>, one of: "
            f"{_tasks(root / family)}"
        )
    every = names + [f"{f}/<task>" for f in families]
    raise ConfigError(f"unknown {group} {choice!r}; choose one of: {', '.join(every)}")


def _split_sweep(value: str) -> list[str]:
    """The choices of a Hydra override value: ``resq,qmix`` -> both (brackets kept whole)."""
    return [v.strip().strip("'\"") for v in re.split(r",(?![^\[]*\])", value) if v.strip()]


def check_choices(args: list[str], configs: Path = CONFIGS) -> None:
    """Check every ``group=choice`` override in ``args`` whose group is a directory of
    ``configs`` (``algorithm``, ``env``); sweeps (``algorithm=resq,qmix``) choice by choice.
    Hydra's own sweep functions (``choice(...)``) are left to Hydra."""
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if not sep or not key or "@" in key or "(" in value or "/" in key:
            continue
        if not (configs / key).is_dir():
            continue
        for choice in _split_sweep(value):
            check_choice(key, choice, configs)


#: flags that change which config the overrides apply to: the checks here are left out
_OTHER_CONFIG = frozenset(
    ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun")
)
#: Hydra's flags that take the next word as their value (``hydra._internal.utils.
#: get_args_parser``); ``--info`` takes it only when it is one of its choices
_FLAGS_WITH_VALUE = _OTHER_CONFIG | {"--cfg", "-c", "--package", "-p"}
_INFO_FLAGS = frozenset(("--info", "-i"))
_INFO_CHOICES = frozenset(("all", "config", "defaults", "defaults-tree", "plugins", "searchpath"))


def override_args(args: list[str]) -> list[str]:
    """The overrides of a Hydra command line: its words without the flags and their values
    (``--cfg job``, ``--info plugins``, ``-p collector``: the value was read as an override)."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg.startswith("-"):
            following = args[i + 1] if i + 1 < len(args) else None
            skip = arg in _FLAGS_WITH_VALUE or (arg in _INFO_FLAGS and following in _INFO_CHOICES)
        else:
            out.append(arg)
    return out


def check_overrides(config_name: str, args: list[str], configs: Path = CONFIGS) -> list[str]:
    """Compose ``configs/<config_name>`` with the command line's overrides as Hydra would, and
    raise a :class:`ConfigError` of one line for one it refuses (an unknown key, a malformed
    override, a value not of its setting's type: :func:`check_type`), where Hydra would print
    several. With ``-m`` (a sweep) every value of every swept setting is checked, before the
    first job runs (a bad one failed its job after the others had trained), composing with
    the first value of each. Flags and ``hydra``'s own overrides are left to Hydra, and
    so are sweeps through Hydra's functions (``range(...)``) for the composition.

    Returns ``args`` with whole-number values of integer settings written as integers
    (``seed=2.0`` -> ``seed=2``, ``total_frames=1e6`` -> ``total_frames=1000000``): Hydra
    keeps them floats, which went into the run's config, its name (``..._seed2.0``) and so
    its default ``output_dir``."""
    multirun = any(a in ("-m", "--multirun") for a in args)
    if any(a.partition("=")[0] in _OTHER_CONFIG for a in args):
        return list(args)  # another config than configs/<config_name>: Hydra's own checks
    overrides = [a for a in override_args(args) if not a.lstrip("+~").startswith("hydra")]
    if not overrides:
        return list(args)
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
        # each sweep's values as Hydra reads them (commas inside {} or [] and quotes stay
        # its); None for a sweep that is no list of values (interval(), for sweeper plugins)
        sweeps = [_sweep_values(o) if o.is_sweep_override() else None for o in parsed]
        # a sweep composes with its first value; one that is no list of values is left out
        composable = []
        for arg, o, swept in zip(overrides, parsed, sweeps, strict=True):
            if not (multirun and o.is_sweep_override()):
                composable.append(arg)
            elif swept is not None:
                composable.append(f"{arg.partition('=')[0]}={swept[0]}")
        with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
            given = compose(config_name, overrides=composable)
    except HydraException as err:
        unknown = re.match(r"Could not override '([^']+)'", str(err))
        if unknown and type(err.__cause__).__name__ == "ConfigAttributeError":
            key = unknown.group(1)
            value = next((a.split("=", 1)[1] for a in overrides if a.startswith(f"{key}=")), "")
            raise ConfigError(
                f"unknown config key {key!r} (configs/{config_name}.yaml): check its spelling, "
                f"or add it with +{key}={value}"
            ) from err
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        message = " ".join(line for line in lines if not line.startswith("See https://"))
        raise ConfigError(f"{message} (configs/{config_name}.yaml)") from err
    # values are checked against the defaults of the chosen groups (algorithm=qmix, ...)
    groups = [a for a in composable if (configs / a.partition("=")[0].lstrip("+~")).is_dir()]
    values = [
        (arg, o, swept)
        for arg, o, swept in zip(overrides, parsed, sweeps, strict=True)
        if "=" in arg
        and not o.is_delete()
        and not (configs / o.key_or_group).is_dir()
        and o.package is None
    ]
    if not values:  # only group choices: nothing to type-check, no second composition
        return list(args)
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        defaults = compose(config_name, overrides=groups)
    # a key given twice takes its last value (Hydra's rule): check that one, by that value
    last = {o.key_or_group: (o, swept) for _, o, swept in values}
    for key, (o, swept) in last.items():
        if not (multirun and o.is_sweep_override()):  # as composed: interpolations resolved
            check_type(key, OmegaConf.select(given, key, default=None), defaults)
            continue
        for text in swept or []:
            value = parser.parse_override(f"{key}={text}").value()
            if not (isinstance(value, str) and "${" in value):  # an interpolation: Hydra's
                check_type(key, value, defaults)
    rewritten = {}
    for arg, o, swept in values:
        default = OmegaConf.select(defaults, o.key_or_group, default=None)
        if not isinstance(default, int) or isinstance(default, bool):
            continue
        texts = swept if o.is_sweep_override() else [arg.partition("=")[2]]
        if texts is None or (o.is_sweep_override() and "(" in arg.partition("=")[2]):
            continue  # range(...), choice(...): Hydra's functions, left as written
        as_ints = [_whole_as_int(t) for t in texts]
        if as_ints != texts:
            rewritten[arg] = f"{arg.partition('=')[0]}={','.join(as_ints)}"
    return [rewritten.get(a, a) for a in args]


def _sweep_values(override) -> list[str] | None:
    """The values of a sweep override as Hydra writes them (``None``: a sweep that is not a
    list of values, e.g. ``interval(0, 1)`` for a sweeper plugin)."""
    try:
        return list(override.sweep_string_iterator())
    except Exception:  # hydra raises several types for the sweeps it cannot enumerate
        return None


def _whole_as_int(text: str) -> str:
    """``"2.0"`` or ``"1e6"`` -> ``"2"``, ``"1000000"``; anything else unchanged."""
    try:
        number = float(text)
    except ValueError:
        return text
    if not number.is_integer() or text.strip().lstrip("+-").isdigit():
        return text
    return str(int(number))


#: keys whose values are of more than one type (``resume``: false, true, auto or a path;
#: ``threads``: a number or auto), left out of :func:`check_type`
POLYMORPHIC = frozenset({"resume", "threads"})


def check_type(key: str, new, defaults) -> None:
    """Raise a :class:`ConfigError` when ``key``'s value ``new`` (as Hydra parsed it from the
    command line) is not of the type of ``key``'s default: true/false for a boolean, a
    whole number for an integer (``1e6`` is one), a number for a float. Hydra would take
    ``seed=1.5`` or ``n_envs=abc`` as given and the run would truncate the one and fail on
    the other deep inside; a misspelt ``prioritized_replay=maybe`` would even count as true.
    Keys whose default is ``null``, a string, a list or a mapping, and :data:`POLYMORPHIC`
    ones, are not checked; nor is ``null`` given for a setting."""
    if key.split(".")[-1] in POLYMORPHIC:
        return
    default = OmegaConf.select(defaults, key, default=None, throw_on_missing=False)
    if default is None or new is None:
        return
    shown = repr(str(new))
    if isinstance(default, bool):
        if not isinstance(new, bool):
            raise ConfigError(f"{key} must be true or false, got {shown}")
    elif isinstance(default, int):
        if not is_whole(new):
            raise ConfigError(f"{key} must be a whole number, got {shown}")
    elif isinstance(default, float):
        if isinstance(new, bool) or not isinstance(new, (int, float)):
            raise ConfigError(f"{key} must be a number, got {shown}")


# ----------------------------------------------------------------------------------- threads


def _command_line_value(key: str) -> str | None:
    """``key``'s value among this job's command-line overrides (Hydra), if given there."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    found = None
    for override in HydraConfig.get().overrides.task:
        name, _, value = override.partition("=")
        if name.lstrip("+") == key:
            found = value  # a key given twice takes its last value, as in Hydra
    return found


def _positive_int(value, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"{what} must be a whole number >= 1 (or auto), got {value!r}")
    return n


def _cgroup_cpu_limit(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """The CPUs a cgroup v2 quota allows this process (``docker --cpus``, a Kubernetes
    limit), rounded up; ``None`` without a quota."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, -(-int(quota) // int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (``os.cpu_count()`` where there is
    none), capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return min(n, limit) if limit else n


#: what ``threads=auto`` means on a device: a count, or a function of the config returning
#: (count, why)
AutoThreads = int | Callable[[Mapping], tuple[int, str]]

#: ``OMP_NUM_THREADS`` before :func:`use_threads` last exported it, and what it exported: a
#: later job of the same process (a sequential Hydra multirun) resolves its threads from the
#: user's setting, not from the previous job's choice
_exported: tuple[str | None, str] | None = None


def _resolve(cfg: Mapping, auto: Mapping[str, AutoThreads]) -> tuple[int, str, bool]:
    """(thread count, where it came from, whether ``auto`` chose it)."""
    given = _command_line_value("threads")
    if given is not None and given not in ("auto", "null"):
        return _positive_int(given, "threads"), "threads= on the command line", False
    env = os.environ.get("OMP_NUM_THREADS")
    if env and given is None:
        return _positive_int(env, "OMP_NUM_THREADS"), "OMP_NUM_THREADS", False
    value = cfg.get("threads", "auto")
    if value in (None, "auto"):
        device = str(cfg.get("device") or "cpu").split(":")[0]
        n = auto.get(device, auto.get("cpu", 1))
        if callable(n):
            n, why = n(cfg)
            return n, f"threads=auto on {device}: {why}", True
        return n, f"threads=auto on {device}", True
    return _positive_int(value, "threads"), "the config's threads", False


def resolve_threads(cfg: Mapping, auto: Mapping[str, AutoThreads]) -> tuple[int, str]:
    """(thread count, where it came from) by the precedence of the module docstring."""
    return _resolve(cfg, auto)[:2]


def busy_cores_note(n: int) -> str:
    """A hint, or "", for ``threads=auto`` taking ``n > 1`` threads while other work already
    keeps at least one of the cores busy (the 1-minute load average, rounded, plus ``n``
    exceeds the usable cores): oversubscribed threads wait for each other. On the 2-core
    machine of ``docs/speed.md`` two threads beside other work took 2.5-5x the time of one.
    The hint names the count that leaves the busy cores to the other work."""
    if n < 2 or not hasattr(os, "getloadavg"):
        return ""
    load, cores = os.getloadavg()[0], usable_cores()
    busy = round(load)
    if busy + n <= cores:
        return ""
    free = max(1, cores - busy)
    return (
        f"; other work keeps about {busy} of the {cores} cores busy (load average "
        f"{load:.1f}): threads={free} leaves them to it, and oversubscribed threads wait for "
        "each other (docs/speed.md, Threads)"
    )


def use_threads(cfg: Mapping, auto: Mapping[str, AutoThreads] | None = None) -> int:
    """Set torch's intra-op thread count by :func:`resolve_threads`, export it as
    ``OMP_NUM_THREADS`` for child processes (and one XLA thread for one torch thread), and
    print one line saying what was used (with :func:`busy_cores_note` when ``auto`` chose
    several threads on busy cores)."""
    import torch

    global _exported
    if _exported is not None and os.environ.get("OMP_NUM_THREADS") == _exported[1]:
        # this process's own export for an earlier job (a sequential multirun): undo it
        if _exported[0] is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = _exported[0]
    n, why, chosen_by_auto = _resolve(cfg, auto or {"cpu": 1})
    torch.set_num_threads(n)
    _exported = (os.environ.get("OMP_NUM_THREADS"), str(n))
    os.environ["OMP_NUM_THREADS"] = str(n)
    if n == 1:  # JAX (SMAX) otherwise spreads its CPU work over every core
        os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    note = busy_cores_note(n) if chosen_by_auto else ""
    print(f"threads: {n} ({why}){note}", file=sys.stderr, flush=True)
    return n


# ------------------------------------------------------------------------------ allocator

#: glibc's ``mallopt`` parameters (``malloc.h``)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory in the process for reuse; returns whether it applied.

    torch's CPU tensors come from ``malloc``. glibc serves every allocation above its mmap
    threshold (128 KiB, rising to at most 32 MiB) with fresh pages from ``mmap`` and unmaps
    them on free, so each large tensor of a training step is page-faulted and zeroed by the
    kernel anew, every step. A recurrent update on the predator-prey batch allocates dozens
    of such tensors (its ``[T, M, 3H]`` gate buffers are 39 MB each): allocating and filling
    one of 39 MB cost more than the matrix product that filled it (``docs/speed.md``).
    Here ``mallopt(M_MMAP_MAX, 0)`` serves every allocation from the heap and
    ``mallopt(M_TRIM_THRESHOLD, 1 GiB)`` keeps freed heap memory, so after the first steps
    the tensors reuse memory already paged in. torch has no caching allocator for the CPU
    to do this instead. The numbers computed are unchanged; the process's resident memory
    stays near its peak instead of shrinking between steps. Elsewhere than glibc (macOS,
    musl) nothing is done and ``False`` is returned.
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**30))


def use_allocator(cfg: Mapping) -> bool:
    """:func:`reuse_freed_memory` unless the config's ``reuse_freed_memory`` is false (a
    config without the key gets it); prints one line saying what was used."""
    wanted = cfg.get("reuse_freed_memory", True)
    if not isinstance(wanted, bool):
        raise ConfigError(f"reuse_freed_memory must be true or false, got {wanted!r}")
    applied = wanted and reuse_freed_memory()
    if applied:
        why = "freed memory kept for reuse (reuse_freed_memory=true)"
    elif wanted:
        why = "system default (reuse_freed_memory needs glibc)"
    else:
        why = "system default (reuse_freed_memory=false)"
    print(f"allocator: {why}", file=sys.stderr, flush=True)
    return applied


# -------------------------------------------------------------------------------- entry point


def main(
    config_name: str, auto_threads: Mapping[str, AutoThreads] | None = None
) -> Callable[[Callable[[DictConfig], None]], Callable[[], None]]:
    """Decorator making ``task(cfg)`` a script entry point over ``configs/<config_name>``:
    ``hydra.main`` plus the one-line user errors and the thread policy of this module
    (``auto_threads``: what ``threads=auto`` means per device type, :data:`AutoThreads`)."""

    def decorate(task: Callable[[DictConfig], None]) -> Callable[[], None]:
        @functools.wraps(task)
        def guarded(cfg: DictConfig) -> None:
            try:
                use_threads(cfg, auto_threads)
                use_allocator(cfg)
                task(cfg)
            except KeyboardInterrupt:  # Ctrl-C: one line, not a 50-line traceback
                if _debug():
                    raise
                hint = (
                    ": continue the run with resume=auto (from its last checkpoint, or anew if "
                    "it reached none)"
                    if config_name == "train"
                    else ""
                )
                print(f"interrupted (Ctrl-C){hint}", file=sys.stderr, flush=True)
                sys.exit(EXIT_INTERRUPTED)
            except Exception as err:
                message = None if _debug() else user_error_message(err)
                if message is None:
                    raise
                fail(message)

        hydra_main = hydra.main(
            config_path=str(CONFIGS), config_name=config_name, version_base="1.3"
        )(guarded)

        @functools.wraps(task)
        def entry() -> None:
            if "--debug" in sys.argv:
                sys.argv.remove("--debug")
                os.environ["HYDRA_FULL_ERROR"] = "1"
            try:
                check_choices(override_args(sys.argv[1:]))
                sys.argv[1:] = check_overrides(config_name, sys.argv[1:])
            except ConfigError as err:
                if _debug():
                    raise
                fail(str(err))
            hydra_main()

        return entry

    return decorate


__all__ = [
    "main",
    "fail",
    "check_choice",
    "check_choices",
    "check_overrides",
    "override_args",
    "check_type",
    "use_threads",
    "resolve_threads",
    "usable_cores",
    "use_allocator",
    "reuse_freed_memory",
]
