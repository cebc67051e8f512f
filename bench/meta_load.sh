#!/bin/bash
# Loading the Llama-3-8B shape from Meta's layout against the same weights in safetensors, in
# one call on the GPU machine (docs/PERF.md): makes the Meta folder from bench/hf_peer.py's
# checkpoint (bench/make_meta_checkpoint.py), then `tpx run` with one prompt and one token on
# each, alternating, ROUNDS times; prints each load ("loaded ... in S s") and the ratio.
#   bench/meta_load.sh OUT_DIR ROUNDS [FILES]
set -euo pipefail
out=${1:?usage: bench/meta_load.sh OUT_DIR ROUNDS [FILES]}; rounds=${2:?}; files=${3:-1}
here=$(cd "$(dirname "$0")" && pwd)
hf=${TPX_BENCH_CKPT:-/tmp/l8b}; meta=/tmp/l8b-meta-mp$files
mkdir -p "$out"
[ -f "$meta/params.json" ] || python3 "$here/make_meta_checkpoint.py" "$hf" "$meta" --files "$files" | tail -n 3
sync  # both folders written back before any timing: pinning pages under writeback waits for it
echo '{"id": "p", "input_ids": [1, 2, 3, 4]}' > "$out/prompt.jsonl"
for name in hf meta; do
  path=$hf; [ "$name" = meta ] && path=$meta
  printf '[model]\npath = "%s"\ndtype = "bfloat16"\n[backend]\ndevice = "cuda"\n[run]\nprompts = "%s"\nmax_new_tokens = 1\nmax_seq_len = 256\nmax_batch = 1\noutput = "%s"\n' \
    "$path" "$out/prompt.jsonl" "$out/$name.out.jsonl" > "$out/$name.toml"
done
for r in $(seq 0 "$rounds"); do   # round 0: untimed, both folders' pages in the page cache
  for name in hf meta; do
    tpx run "$out/$name.toml" > "$out/$name-$r.txt" 2>&1 || { cat "$out/$name-$r.txt"; exit 1; }
    echo "$name round $r: $(grep -o 'loaded .*' "$out/$name-$r.txt" | head -1)"
    [ "$r" = 1 ] && grep -o 'weights: .*' "$out/$name-$r.txt" | head -1
  done
done
python3 - "$out" "$rounds" <<'PY'
import re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
load = {n: [float(re.search(r"per rank in ([0-9.]+) s", open(f"{out}/{n}-{r}.txt").read()).group(1)) for r in range(1, rounds + 1)] for n in ("hf", "meta")}
print(f"load s, safetensors {load['hf']}, meta {load['meta']}: meta / safetensors = {statistics.median(load['meta']) / statistics.median(load['hf']):.3f}")
PY
