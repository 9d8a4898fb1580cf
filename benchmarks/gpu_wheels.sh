#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that benchmarks/gpu_check.sh installs on a lent
# GPU machine that cannot reach the internet (the `device` tool of this project's sessions):
# what our package needs and that machine's image lacks (it has torch, numpy, scipy,
# matplotlib, tqdm, pyyaml, pytest, ...). Its python is 3.12; binary wheels are fetched for
# cp312 manylinux, and the pure-Python packages that PyPI has only as source (vmas, gym,
# antlr4-python3-runtime) are built into py3 wheels here.
#
#   bash benchmarks/gpu_wheels.sh            # -> .whl/ (git-ignored), about 7 MB
#
# Versions are those the CPU test environment runs (torchrl and tensordict 0.14, vmas 1.5.2,
# hydra-core 1.3.8); torchrl's C++ extension is built for torch 2.13, and the GPU image's
# torch is older (2.11 when last seen): gpu_check.sh prints whether it loads.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
mkdir -p "$DEST"
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
BINARY=(torchrl==0.14.1 tensordict==0.14.3 pyvers==0.2.3 hoptorch==0.1.4 orjson==3.13.0
  importlib_metadata==9.1.0 hydra-core==1.3.8 omegaconf==2.3.1 pyglet==1.5.27
  gym-notices==0.0.8 cloudpickle)
SOURCE_ONLY=(vmas==1.5.2 gym==0.26.2 antlr4-python3-runtime==4.9.3)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${BINARY[@]}"
python3 -m pip wheel -q --no-deps -w "$DEST" "${SOURCE_ONLY[@]}"
echo "wrote $(ls "$DEST"/*.whl | wc -l) wheels to $DEST ($(du -sh "$DEST" | cut -f1)):"
ls "$DEST"
