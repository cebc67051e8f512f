#!/bin/bash
# The performance run, in one call on the GPU machine (docs/PERF.md): makes the
# Llama-3-8B-shaped checkpoint with HF (bench/hf_peer.py make), then times tpx (tpx bench at
# tp=1, and tp=2 and tp=4 where that many GPUs are visible) and HF transformers on it, and prints both.
#   bench/run_8b.sh OUT_DIR         (after: source /tmp/runtime/env.sh from the device bundle)
set -euo pipefail
out=${1:?usage: bench/run_8b.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
ckpt=${TPX_BENCH_CKPT:-/tmp/l8b}
mkdir -p "$out"
[ -f "$ckpt/config.json" ] || python3 "$here/hf_peer.py" make "$ckpt" | tee "$out/make.txt"
gpus=$(nvidia-smi -L | wc -l)
for tp in 1 2 4; do
  [ "$tp" -le "$gpus" ] || continue
  cat > "$out/job_tp$tp.toml" <<JOB
[job]
name = "llama8b-tp$tp"
[model]
path = "$ckpt"
dtype = "bfloat16"
[parallel]
tp = $tp
[backend]
device = "cuda"
[run]
max_batch = 64
max_seq_len = 2304
output = "$out/llama8b-tp$tp.out.jsonl"
JOB
  tpx bench "$out/job_tp$tp.toml" --json "$out/tpx_tp$tp.json" 2>&1 | grep -v "^tpx run: mpirun" | tee "$out/tpx_tp$tp.txt"
done
[ -n "${TPX_BENCH_NO_HF:-}" ] && exit 0   # tpx alone (profiling runs)
python3 "$here/hf_peer.py" tp1 "$ckpt" 2>&1 | grep RESULT | tee "$out/hf_tp1.txt"
python3 "$here/matmul_rate.py" 2>&1 | grep RESULT | tee "$out/matmul_rate.txt"   # the floor's rate, by PyTorch
for tp in 2 4; do   # HF's own tensor parallelism: load and eager decode at tp=2 and 4
  if [ "$tp" -le "$gpus" ] && command -v torchrun >/dev/null; then
    torchrun --nproc-per-node $tp "$here/hf_peer.py" tp "$ckpt" 2>&1 | grep RESULT | tee "$out/hf_tp$tp.txt" || true
  fi
done
echo; echo "== side by side (ms/token, batch 1, 128-token prompt) =="
python3 - "$out" <<'PY'
import json, sys, os, re
out = sys.argv[1]
hf = {}
for f in ("hf_tp1.txt", "hf_tp2.txt", "hf_tp4.txt", "matmul_rate.txt"):
    if os.path.exists(os.path.join(out, f)):
        hf.update(re.findall(r"RESULT (\S+)=(\S+)", open(os.path.join(out, f)).read()))
for tp in (1, 2, 4):
    p = os.path.join(out, f"tpx_tp{tp}.json")
    if not os.path.exists(p): continue
    j = json.load(open(p))
    d1 = [d for d in j["decode"] if d["batch"] == 1][0]
    print(f"tpx tp={tp}: {d1['ms_per_step']:.2f} ms/token ({100*d1['fraction_of_roofline']:.0f}% of roofline {d1['roofline_ms']:.2f} ms)")
    hf_load = hf.get(f"hf_load_tp{tp}_s")
    if hf_load and "load_s" in j:
        print(f"tpx tp={tp} load {j['load_s']:.2f} s = {j['load_s']/float(hf_load):.2f}x HF from_pretrained ({hf_load} s)")
for k in ("hf_eager_tp1_ms_per_token", "hf_compile_tp1_ms_per_token", "hf_load_tp1_s", "hf_eager_tp2_ms_per_token", "hf_load_tp2_s", "hf_eager_tp4_ms_per_token", "hf_load_tp4_s", "hbm_copy_GBps"):
    if k in hf: print(f"HF {k} = {hf[k]}")
if os.path.exists(os.path.join(out, "tpx_tp1.json")):   # the 2048-token prefill against each measured matrix rate
    j = json.load(open(os.path.join(out, "tpx_tp1.json")))
    p = [p for p in j["prefill"] if p["prompt_tokens"] == 2048]
    if p:
        flops = p[0]["flops"]
        rates = {k: j[k] for k in ("matmul_TFLOPs", "matmul_TFLOPs_random_burst", "matmul_TFLOPs_random_settled",
                                   "matmul_TFLOPs_constant_data") if k in j}
        rates.update({k: float(v) for k, v in hf.items() if k.startswith("torch_") and "prefill" not in k})
        for k, r in rates.items():
            print(f"prefill 2048 {p[0]['ms']:.2f} ms at {k} = {r:.0f}: floor {flops / (r * 1e12) * 1e3:.2f} ms, {p[0]['ms'] * r * 1e12 / flops / 1e3:.2f}x")
if "hf_compile_tp1_ms_per_token" in hf and os.path.exists(os.path.join(out, "tpx_tp1.json")):
    j = json.load(open(os.path.join(out, "tpx_tp1.json")))
    d1 = [d for d in j["decode"] if d["batch"] == 1][0]
    print(f"tpx tp=1 is {float(hf['hf_compile_tp1_ms_per_token'])/d1['ms_per_step']:.2f}x faster than HF torch.compile")
PY
