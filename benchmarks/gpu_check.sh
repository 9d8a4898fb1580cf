#!/usr/bin/env bash
# The CUDA checks of issue 12 as one prepared command for a lent GPU machine (the `device`
# tool: one H200, no internet, python 3.12 with torch already installed, 15 minutes of device
# time per session, a machine start included). Prepare here first:
#
#   bash benchmarks/gpu_wheels.sh          # .whl/: our dependencies the GPU image lacks
#
# then run on the device, naming .whl in `carry`, with timeout_s=600:
#
#   bash benchmarks/gpu_check.sh           # writes to $OUT (runs/gpu_check without it)
#   bash benchmarks/gpu_check.sh rounds=3  # extra arguments go to throughput.py
#
# Steps, each logged under $OUT: the wheels installed into /tmp/site (nothing else on the
# machine changes); versions, the GPU, whether torchrl's C++ extension loads with that torch
# (versions.txt); the CUDA tests of the suite (pytest.log: a loss on CUDA, everything of a
# VMAS rollout staying on CUDA); then `python benchmarks/throughput.py gpu=true`
# (device=cuda, VMAS balance at 1024/4096/16384 envs) within BENCH_SECONDS (default 420),
# writing benchmarks_gpu.md and .json. Copy those into docs/ and report them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RL_WARNINGS=False
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}  # where gpu_wheels.sh put them
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || { echo "error: installing $WHEELS/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  echo "no wheels in $WHEELS/: using the packages already installed" >&2
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

"$PY" - <<'EOF' 2>&1 | tee "$OUT/versions.txt"
import importlib, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0))
for name in ("tensordict", "torchrl", "vmas", "hydra", "resq_torchrl"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), module.__file__)
    except Exception as err:  # report every missing piece, then stop below
        print(name, "FAILED:", repr(err))
try:
    import torchrl._torchrl  # noqa: F401  the segment trees of prioritized replay
    print("torchrl C++ extension: loads")
except Exception as err:
    print("torchrl C++ extension: does not load with this torch:", repr(err)[:200])
EOF
if ! grep -q "available True" "$OUT/versions.txt"; then
  echo "error: torch sees no CUDA device here (see $OUT/versions.txt)" >&2
  exit 1
fi
if grep -q "FAILED" "$OUT/versions.txt"; then
  echo "error: a package does not import (see $OUT/versions.txt)" >&2
  exit 1
fi

timeout 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/test_losses.py::test_resq_runs_on_cuda tests/test_vmas.py::test_everything_stays_on_cuda \
  2>&1 | tee "$OUT/pytest.log"
echo "pytest exit status ${PIPESTATUS[0]}" | tee -a "$OUT/pytest.log"

timeout "${BENCH_SECONDS:-420}" "$PY" benchmarks/throughput.py gpu=true \
  out="$OUT/benchmarks_gpu.json" markdown="$OUT/benchmarks_gpu.md" "$@" 2>&1 |
  tee "$OUT/throughput.log"
status=${PIPESTATUS[0]}
echo "throughput.py exit status $status (124: stopped at BENCH_SECONDS); wrote to $OUT:"
ls -l "$OUT"
exit "$status"
