#!/usr/bin/env bash
# Configures and builds tpx into build/ (or $TPX_BUILD_DIR). With a CUDA toolkit at
# /usr/local/cuda the GPU backend is built for Hopper (sm_90a); without one the build is
# CPU-only and configure says so.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${TPX_BUILD_DIR:-$root/build}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=${TPX_BUILD_TYPE:-RelWithDebInfo} ${TPX_CMAKE_ARGS:-} \
  | grep -E '^-- tpx:|Error|error' || true
cmake --build "$build" -j "$(nproc)"
