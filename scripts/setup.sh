#!/usr/bin/env bash
# The README's first command: installs what tpx needs, builds it, and runs the main job (the
# tiny model shipped in models/tiny, CPU backend, two ranks under mpirun).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install_deps.sh"
"$root/scripts/build.sh"
job="$root/jobs/examples/tiny.toml"
if "$root/build/bin/tpx" --help | grep -q '^  run '; then
  exec "$root/build/bin/tpx" run "$job"
fi
echo "setup: tpx built; \`tpx run\` is not in this build yet, so the main job is validated only:"
exec "$root/build/bin/tpx" validate "$job"
