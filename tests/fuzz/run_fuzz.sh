#!/usr/bin/env bash
# Builds the safetensors header fuzzer with clang (libFuzzer + ASan + UBSan) and runs it for a
# fixed time, seeded with the golden checkpoints' headers. Exits non-zero on any crash.
#   tests/fuzz/run_fuzz.sh SOURCE_DIR WORK_DIR SECONDS
set -euo pipefail
src=$1 work=$2 seconds=${3:-20}
mkdir -p "$work/corpus"
clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -DOMPI_SKIP_MPICXX=1 -I"$src" \
  "$src/tests/fuzz/fuzz_safetensors.cpp" "$src/loader/safetensors.cpp" "$src/loader/regular_file.cpp" "$src/loader/dtype.cpp" \
  "$src/common/error.cpp" "$src/common/check.cpp" "$src/common/file.cpp" "$src/common/output_path.cpp" "$src/common/temporaries.cpp" "$src/common/log.cpp" -o "$work/fuzz_safetensors"
# Seeds: the first 4 KiB of each golden file (length prefix and header, some data).
for f in "$src"/tests/data/golden/*/model*.safetensors; do
  head -c 4096 "$f" > "$work/corpus/$(basename "$(dirname "$f")")-$(basename "$f")"
done
cd "$work"
./fuzz_safetensors -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 corpus 2>&1 | tail -n 15
