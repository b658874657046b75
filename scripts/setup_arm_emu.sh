#!/usr/bin/env bash
# Sets up an emulated aarch64 board (qemu-user) that runs TVM RPC servers for tests and demos.
#
#   bash scripts/setup_arm_emu.sh [DEST]
#
# DEST defaults to $BIMATTING_ARM_EMU, else ${XDG_CACHE_HOME:-~/.cache}/bimatting/arm-emu.
# Idempotent: every step is skipped when its result is already there. What it makes:
#   DEST/rootfs/          arm64 Debian bookworm files: CPython 3.11 + the C/C++ runtime (qemu -L sysroot)
#   DEST/site-packages/   aarch64 wheels: apache-tvm (runtime libraries only), apache-tvm-ffi, numpy,
#                         cloudpickle, psutil -- installed by the host's pip for the aarch64 platform
#   DEST/cpprpc/          mini_rpc_server (deploy/device/native/mini_rpc_server.cc) + the two libraries it needs
#   DEST/bin/python3      the board's Python under qemu (sys.executable re-exec works without binfmt)
#   DEST/emu.json         what was installed; written last, so its presence means "ready"
# Needs qemu-user-static, mmdebstrap and the aarch64 cross compiler; as root on Debian/Ubuntu they are
# installed with apt-get. binfmt_misc is not needed (qemu is always called explicitly).
# Environment: PYTHON (host python with pip, default python3), TVM_VERSION / TVM_FFI_VERSION (default:
# the versions installed for PYTHON, else 0.27.0.post1 / 0.1.14.post1), DEBIAN_MIRROR.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-${BIMATTING_ARM_EMU:-${XDG_CACHE_HOME:-$HOME/.cache}/bimatting/arm-emu}}
hostpy=${PYTHON:-python3}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
server_source=$repo/deploy/device/native/mini_rpc_server.cc
started=$SECONDS

say() { echo "[arm-emu] $*"; }
die() { echo "[arm-emu] error: $*" >&2; exit 1; }
step_start() { step_t0=$SECONDS; say "$1"; }
step_done() { say "  done in $((SECONDS - step_t0)) s"; }

mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
say "emulated aarch64 board in $dest"

# 1. Host tools: qemu-user, mmdebstrap, the aarch64 cross compiler (Debian package names).
need_packages=()
command -v qemu-aarch64-static >/dev/null || command -v qemu-aarch64 >/dev/null \
  || need_packages+=(qemu-user-static binfmt-support)
command -v mmdebstrap >/dev/null || need_packages+=(mmdebstrap debian-archive-keyring)
command -v aarch64-linux-gnu-g++ >/dev/null || need_packages+=(g++-aarch64-linux-gnu binutils-aarch64-linux-gnu)
if [ ${#need_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "missing host packages: ${need_packages[*]} (install them as root, e.g. apt-get install ${need_packages[*]})"
  fi
  step_start "installing ${need_packages[*]} (apt-get)"
  apt_options=(-qq -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
  apt-get "${apt_options[@]}" update
  DEBIAN_FRONTEND=noninteractive apt-get "${apt_options[@]}" install -y --no-install-recommends \
    "${need_packages[@]}" >/dev/null
  step_done
fi
qemu=$(command -v qemu-aarch64-static || command -v qemu-aarch64)

# 2. arm64 sysroot: unpacked Debian packages, no maintainer scripts, nothing run under emulation.
if [ ! -x "$dest/rootfs/usr/bin/python3.11" ]; then
  step_start "unpacking arm64 CPython 3.11 (Debian bookworm) into rootfs/"
  rm -rf "$dest/rootfs.partial" "$dest/.compiled" "$dest/emu.json"
  # --mode=auto: plain extraction as root, a user namespace (unshare) otherwise.
  mmdebstrap --quiet --mode=auto --variant=extract --arch=arm64 \
    --include=python3.11-minimal,libpython3.11-stdlib,libstdc++6,libgcc-s1 \
    bookworm "$dest/rootfs.partial" "deb $mirror bookworm main" >/dev/null
  rm -rf "$dest/rootfs" && mv "$dest/rootfs.partial" "$dest/rootfs"
  step_done
else
  say "rootfs/: cached"
fi

# 3. aarch64 wheels through the host's pip; the client and the board use the same TVM release.
host_version() {
  "$hostpy" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || echo "$2"
}
tvm_version=${TVM_VERSION:-$(host_version apache-tvm 0.27.0.post1)}
ffi_version=${TVM_FFI_VERSION:-$(host_version apache-tvm-ffi 0.1.14.post1)}
# --no-deps with the full list: the resolver would otherwise check the host's environment too.
wheels="apache-tvm==$tvm_version apache-tvm-ffi==$ffi_version numpy ml_dtypes typing_extensions cloudpickle psutil"
site=$dest/site-packages
if [ "$(cat "$site/.installed" 2>/dev/null)" != "$wheels" ]; then
  step_start "installing aarch64 wheels: $wheels"
  rm -rf "$site.partial" "$dest/.compiled" "$dest/emu.json"
  platforms=()
  for tag in manylinux_2_36 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014; do
    platforms+=(--platform "${tag}_aarch64")
  done
  # shellcheck disable=SC2086  # $wheels is a list of requirement words
  "$hostpy" -m pip install -q --disable-pip-version-check --no-compile --no-warn-script-location --no-deps \
    --target "$site.partial" --only-binary=:all: "${platforms[@]}" \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none $wheels
  # Runtime only: the compiler (LLVM, ~240 MB), CUDA runtime and sources are never used on the board.
  rm -rf "$site.partial"/tvm/lib/libtvm_compiler.so "$site.partial"/tvm/lib/libtvm_runtime_cuda.so \
    "$site.partial"/tvm/{src,3rdparty,web,include} "$site.partial"/tvm_ffi/{src,3rdparty} "$site.partial"/bin
  echo "$wheels" >"$site.partial/.installed"
  rm -rf "$site" && mv "$site.partial" "$site"
  step_done
else
  say "site-packages/: cached ($wheels)"
fi

# 4. Byte-compile once: the board's Python would otherwise recompile on every start under
# PYTHONDONTWRITEBYTECODE. A host CPython 3.11 writes the same .pyc format, 30x faster than emulated.
if [ ! -e "$dest/.compiled" ]; then  # removed whenever rootfs/ or site-packages/ is rebuilt
  step_start "byte-compiling the board's Python files"
  if "$hostpy" -c "import sys; sys.exit(sys.version_info[:2] != (3, 11))"; then
    compiler=("$hostpy")
  else
    compiler=("$qemu" -L "$dest/rootfs" "$dest/rootfs/usr/bin/python3.11")
  fi
  "${compiler[@]}" -m compileall -q -j0 "$dest/rootfs/usr/lib/python3.11" "$site" >/dev/null || true
  touch "$dest/.compiled"
  step_done
fi

# 5. The C++ RPC server: starts in under a second under qemu (the Python one needs ~10 s).
server=$dest/cpprpc/mini_rpc_server
if [ ! -x "$server" ] || [ "$server_source" -nt "$server" ] || [ "$site/.installed" -nt "$server" ]; then
  [ -f "$server_source" ] || die "missing $server_source"
  step_start "building cpprpc/mini_rpc_server (aarch64-linux-gnu-g++)"
  rm -f "$dest/emu.json"
  mkdir -p "$dest/cpprpc/lib"
  cp "$site/tvm_ffi/lib/libtvm_ffi.so" "$site/tvm/lib/libtvm_runtime.so" "$dest/cpprpc/lib/"
  # --no-as-needed: nothing references libtvm_runtime by symbol, but rpc.ServerLoop lives there.
  aarch64-linux-gnu-g++ -std=c++17 -O2 -Wall -I"$site/tvm_ffi/include" "$server_source" \
    -o "$server.partial" -L"$dest/cpprpc/lib" -Wl,-rpath-link,"$dest/cpprpc/lib" \
    -Wl,--no-as-needed -ltvm_ffi -ltvm_runtime -Wl,--as-needed -Wl,-rpath,'$ORIGIN/lib'
  mv "$server.partial" "$server"
  step_done
else
  say "cpprpc/mini_rpc_server: cached"
fi

# 6. The board's Python: qemu -0 sets argv[0], so sys.executable is this script and the Python RPC
# server's worker re-exec goes through qemu again (no binfmt_misc registration needed).
mkdir -p "$dest/bin"
cat >"$dest/bin/python3" <<EOF
#!/bin/sh
# aarch64 CPython 3.11 of the emulated board; made by setup_arm_emu.sh
here=\$(cd "\$(dirname "\$0")/.." && pwd)
export PYTHONPATH="\$here/site-packages" PYTHONNOUSERSITE=1 TVM_USE_RUNTIME_LIB=\${TVM_USE_RUNTIME_LIB:-1}
unset PYTHONHOME
exec "$qemu" -L "\$here/rootfs" -0 "\$here/bin/python3" "\$here/rootfs/usr/bin/python3.11" "\$@"
EOF
chmod +x "$dest/bin/python3"

# 7. Smoke test: both programs start under qemu, see an aarch64 machine and load their libraries.
read -r machine python_version < <("$dest/bin/python3" -c \
  "import platform, tvm; print(platform.machine(), platform.python_version())") \
  || die "the board's Python cannot import tvm under $qemu"
[ "$machine" = aarch64 ] || die "the board's Python reports machine '$machine', expected aarch64"
rc=0; "$qemu" -L "$dest/rootfs" "$server" --help 2>/dev/null || rc=$?
[ "$rc" = 2 ] || die "mini_rpc_server does not start under $qemu (exit code $rc)"

cat >"$dest/emu.json" <<EOF
{"qemu": "$qemu", "python": "$python_version", "apache-tvm": "$tvm_version", "apache-tvm-ffi": "$ffi_version",
 "python_launcher": "bin/python3", "cpp_server": "cpprpc/mini_rpc_server", "sysroot": "rootfs"}
EOF
say "ready in $((SECONDS - started)) s, $(du -sh "$dest" | cut -f1) on disk: $dest"
