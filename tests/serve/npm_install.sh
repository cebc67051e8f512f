#!/usr/bin/env bash
# ctest fixture for tests/test_serve.cpp: installs the official OpenAI Node SDK (npm `openai`)
# into NPM_DIR (once; later runs reuse it). Never fails: without node, npm or the registry it
# says why and the serve tests skip.
# usage: npm_install.sh NPM_DIR
set -uo pipefail
npm_dir=$1
package=openai@4.104.0
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "serve npm_install: SKIP: node or npm is not installed"; exit 0
fi
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 18 ]; then
  echo "serve npm_install: SKIP: node $(node --version) is older than 18 (the SDK and client.mjs need fetch)"; exit 0
fi
if [ -f "$npm_dir/node_modules/openai/package.json" ]; then
  echo "serve npm_install: $package already in $npm_dir"; exit 0
fi
mkdir -p "$npm_dir"
# Bounded: without a registry npm would retry for minutes.
if ! timeout 300 npm install --prefix "$npm_dir" --no-audit --no-fund --no-save --fetch-retries=1 --fetch-timeout=30000 "$package"; then
  echo "serve npm_install: SKIP: npm could not install $package"
  rm -rf "$npm_dir/node_modules/openai"
fi
exit 0
