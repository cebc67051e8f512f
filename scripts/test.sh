#!/usr/bin/env bash
# The README's test command (and CI's): installs what is missing, builds, runs every test.
# GPU tests skip with a message on a machine without a GPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install_deps.sh"
"$root/scripts/build.sh"
cd "${TPX_BUILD_DIR:-$root/build}"
ctest --output-on-failure -j "$(nproc)" --timeout 600
