#!/bin/bash
# Two builds of tpx timed against each other in one call on the GPU machine (docs/PERF.md,
# Method: every ratio within one run): `tpx bench` on the Llama-3-8B shape at tp=1, ROUNDS times
# each, alternating A and B, then the median of each figure per build and B's ratio to A.
#   bench/alternate.sh OUT_DIR ROUNDS DIR_A DIR_B      (each DIR holds a tpx and its tpx-worker)
set -euo pipefail
out=${1:?usage: bench/alternate.sh OUT_DIR ROUNDS DIR_A DIR_B}; rounds=${2:?}; a=${3:?}; b=${4:?}
here=$(cd "$(dirname "$0")" && pwd)
ckpt=${TPX_BENCH_CKPT:-/tmp/l8b}
mkdir -p "$out"
[ -f "$ckpt/config.json" ] || python3 "$here/hf_peer.py" make "$ckpt" | tee "$out/make.txt"
cat > "$out/job.toml" <<JOB
[job]
name = "llama8b-alternate"
[model]
path = "$ckpt"
dtype = "bfloat16"
[backend]
device = "cuda"
[run]
max_batch = 64
max_seq_len = 2304
output = "$out/alternate.out.jsonl"
JOB
for r in $(seq 1 "$rounds"); do
  for side in A B; do
    dir=$a; [ "$side" = B ] && dir=$b
    "$dir/tpx" bench "$out/job.toml" --json "$out/$side-$r.json" > "$out/$side-$r.txt" 2>&1 || { cat "$out/$side-$r.txt"; exit 1; }
  done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def figures(side):
    rows = {}
    for r in range(1, rounds + 1):
        j = json.load(open(f"{out}/{side}-{r}.json"))
        for d in j["decode"]: rows.setdefault(f"decode b{d['batch']} ms", []).append(d["ms_per_step"])
        for p in j["prefill"]: rows.setdefault(f"prefill {p['prompt_tokens']} ms", []).append(p["ms"])
    return rows
A, B = figures("A"), figures("B")
print(f"{'figure':<20}{'A (each round)':<36}{'B (each round)':<36}{'B/A median':>10}")
for k in A:
    ma, mb = statistics.median(A[k]), statistics.median(B[k])
    print(f"{k:<20}{' '.join(f'{x:.3f}' for x in A[k]):<36}{' '.join(f'{x:.3f}' for x in B[k]):<36}{mb / ma:>10.4f}")
PY
