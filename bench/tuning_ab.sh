#!/bin/bash
# One [backend.tuning] key timed on and off against each other in one call on the GPU machine
# (docs/PERF.md, Method): `tpx bench` on the Llama-3-8B shape at tp=1, KEY = true then false,
# ROUNDS times, alternating; one line a run in OUT/summary.txt; with TRACE_MATCH set, one more
# run with KEY = true under libtpx_trace.so, summarised by bench/timeline.py TRACE TRACE_MATCH.
# TPX_BENCH_CKPT: the checkpoint (default /tmp/l8b, made when missing; a quantized one must be made
# first, bench/make_quant_checkpoint.py); AB_BATCHES / AB_PROMPTS: the [bench] table's
# batch_sizes / prompt_lengths (default 1, 8, 64 / 128, 2048), e.g. AB_BATCHES="1, 8" AB_PROMPTS="".
#   bench/tuning_ab.sh OUT_DIR ROUNDS BIN_DIR KEY     (BIN_DIR holds tpx, tpx-worker, libtpx_trace.so)
set -uo pipefail
out=${1:?usage: bench/tuning_ab.sh OUT_DIR ROUNDS BIN_DIR KEY}; rounds=${2:?}; bin=${3:?}; key=${4:?}
here=$(cd "$(dirname "$0")" && pwd)
ckpt=${TPX_BENCH_CKPT:-/tmp/l8b}
mkdir -p "$out"
[ -f "$ckpt/config.json" ] || python3 "$here/hf_peer.py" make "$ckpt" > "$out/make.txt" 2>&1 || { echo "checkpoint: see $out/make.txt"; exit 1; }
for v in true false; do
  printf '[job]\nname = "ab-%s"\n[model]\npath = "%s"\ndtype = "bfloat16"\n[backend]\ndevice = "cuda"\n[backend.tuning]\n%s = %s\n[run]\nmax_batch = 64\nmax_seq_len = 2304\noutput = "%s/ab-%s.jsonl"\n[bench]\nbatch_sizes = [%s]\nprompt_lengths = [%s]\n' \
    "$v" "$ckpt" "$key" "$v" "$out" "$v" "${AB_BATCHES-1, 8, 64}" "${AB_PROMPTS-128, 2048}" > "$out/$v.toml"
done
line() { python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(" ".join(f"b{x['batch']}={x['ms_per_step']:.3f}ms({100 * x.get('fraction_of_roofline', 0):.1f}%)" for x in d["decode"]),
      " ".join(f"p{x['prompt_tokens']}={x['ms']:.2f}" for x in d["prefill"]))
PY
}
for r in $(seq 1 "$rounds"); do
  for v in true false; do
    timeout 200 "$bin/tpx" bench "$out/$v.toml" --json "$out/$v-$r.json" > "$out/$v-$r.txt" 2>&1
    rc=$?
    echo "$key=$v round $r rc=$rc $([ $rc = 0 ] && line "$out/$v-$r.json" || grep -m2 -E 'error|Error' "$out/$v-$r.txt" | tr '\n' ' ')" >> "$out/summary.txt"
  done
done
if [ -n "${TRACE_MATCH:-}" ]; then
  LD_PRELOAD="$bin/libtpx_trace.so" TPX_TRACE=/tmp/ab_trace_%r.csv timeout 200 "$bin/tpx" bench "$out/true.toml" --json "$out/traced.json" > "$out/traced.txt" 2>&1
  python3 "$here/timeline.py" /tmp/ab_trace_0.csv "$TRACE_MATCH" --sequence 1 12 > "$out/timeline.txt" 2>&1
fi
cat "$out/summary.txt"
