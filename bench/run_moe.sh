#!/bin/bash
# The MoE performance run, in one call on the GPU machine (docs/PERF.md): makes a
# Mixtral-8x7B-shaped checkpoint cut to LAYERS layers with HF (bench/moe_peer.py make), times
# tpx bench at tp=1 with the MoE layers sparse at decode (the default) and dense (backend.tuning.moe = "dense"),
# then HF transformers on the same checkpoint, and prints them side by side.
#   bench/run_moe.sh OUT_DIR [LAYERS]     (after: source /tmp/runtime/env.sh from the device bundle)
set -euo pipefail
out=${1:?usage: bench/run_moe.sh OUT_DIR [LAYERS]}
layers=${2:-8}
here=$(cd "$(dirname "$0")" && pwd)
ckpt=${TPX_BENCH_MOE_CKPT:-/tmp/mixtral$layers}
mkdir -p "$out"
[ -f "$ckpt/config.json" ] || python3 "$here/moe_peer.py" make "$ckpt" "$layers" | tee "$out/make.txt"
for moe in auto dense; do
cat > "$out/job_$moe.toml" <<JOB
[job]
name = "mixtral-$layers-layers"
[model]
path = "$ckpt"
dtype = "bfloat16"
[backend]
device = "cuda"
[run]
max_batch = 64
max_seq_len = 2304
output = "$out/mixtral.out.jsonl"
[backend.tuning]
moe = "$moe"
JOB
  echo "== tpx bench, moe = $moe"
  tpx bench "$out/job_$moe.toml" --json "$out/tpx_$moe.json" 2>&1 | grep -v "^tpx run: mpirun" | tee "$out/tpx_$moe.txt"
done
[ -n "${TPX_BENCH_NO_HF:-}" ] && exit 0
python3 "$here/moe_peer.py" tp1 "$ckpt" 2>&1 | grep RESULT | tee "$out/hf.txt"
echo; echo "== side by side (ms/token, batch 1, 128-token prompt) =="
python3 - "$out" <<'PY'
import json, os, re, sys
out = sys.argv[1]
hf = dict(re.findall(r"RESULT (\S+)=(\S+)", open(os.path.join(out, "hf.txt")).read())) if os.path.exists(os.path.join(out, "hf.txt")) else {}
for moe in ("auto", "dense"):
    j = json.load(open(os.path.join(out, f"tpx_{moe}.json")))
    for d in j["decode"]:
        print(f"tpx moe={moe} batch {d['batch']}: {d['ms_per_step']:.3f} ms/step ({100 * d['fraction_of_roofline']:.0f}% of roofline {d['roofline_ms']:.3f} ms)")
    print(f"tpx moe={moe} load {j['load_s']:.2f} s")
for k, v in hf.items():
    print(f"HF {k} = {v}")
j = json.load(open(os.path.join(out, "tpx_auto.json")))
d1 = [d for d in j["decode"] if d["batch"] == 1][0]["ms_per_step"]
for k in ("hf_moe_eager_tp1_ms_per_token", "hf_moe_compile_tp1_ms_per_token"):
    if k in hf:
        print(f"tpx (sparse) batch 1 is {float(hf[k]) / d1:.2f}x faster than {k}")
if "hf_moe_load_tp1_s" in hf:
    print(f"tpx load {j['load_s']:.2f} s = {j['load_s'] / float(hf['hf_moe_load_tp1_s']):.2f}x HF from_pretrained")
PY
