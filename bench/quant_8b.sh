#!/bin/bash
# Quantized Llama-3-8B-shaped decode and prefill on one GPU (issue 29's targets), in one call on
# the GPU machine: makes the GPTQ int4 (group 128, symmetric) and FP8 (128x128 blocks)
# checkpoints with bench/make_quant_checkpoint.py (torch there), and the bf16 one with
# bench/hf_peer.py make unless present, then `tpx bench` on each at tp=1 (prefill 128 and 2048
# tokens; decode batch 1, 8 and 64; FP8 three times: quant_prefill "dequant" and "w8a8", and quant_mma = false; GPTQ twice: quant_mma true and false) and prints the ratios the issue asks for: decode batch 1
# against the byte roofline of the weights as held (FP8 >= 90%, GPTQ >= 85%), and the 2048-token
# prefill against bf16's (FP8 <= 0.7x).
#   bench/quant_8b.sh OUT_DIR         (after: source /tmp/runtime/env.sh from the device bundle)
# TPX_QUANT_CKPT_DIR (default /tmp): where the checkpoints go (~6, ~9 and 16 GB).
set -euo pipefail
out=${1:?usage: bench/quant_8b.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
dir=${TPX_QUANT_CKPT_DIR:-/tmp}
mkdir -p "$out"
[ -f "$dir/l8b-gptq/config.json" ] || python3 "$here/make_quant_checkpoint.py" gptq "$dir/l8b-gptq" | tail -1 | tee "$out/make_gptq.txt"
[ -f "$dir/l8b-fp8/config.json" ] || python3 "$here/make_quant_checkpoint.py" fp8 "$dir/l8b-fp8" | tail -1 | tee "$out/make_fp8.txt"
[ -f "$dir/l8b/config.json" ] || [ -n "${TPX_QUANT_NO_BF16:-}" ] || python3 "$here/hf_peer.py" make "$dir/l8b" | tee "$out/make_bf16.txt"
for kind in ${TPX_QUANT_KINDS:-gptq gptqfma fp8 fp8fma fp8w8a8 bf16}; do
  ckpt="$dir/l8b-$kind"; [ "$kind" = bf16 ] && ckpt="$dir/l8b"; [ "$kind" = fp8w8a8 ] && ckpt="$dir/l8b-fp8"
  [ "$kind" = fp8fma ] && ckpt="$dir/l8b-fp8"; [ "$kind" = gptqfma ] && ckpt="$dir/l8b-gptq"
  tuning=""; [ "$kind" = fp8w8a8 ] && tuning=$'[backend.tuning]\nquant_prefill = "w8a8"'
  case $kind in *fma) tuning=$'[backend.tuning]\nquant_mma = false';; esac
  [ -f "$ckpt/config.json" ] || continue
  cat > "$out/job_$kind.toml" <<JOB
[job]
name = "llama8b-$kind"
[model]
path = "$ckpt"
dtype = "bfloat16"
[backend]
device = "cuda"
[run]
max_batch = 64
max_seq_len = 2304
output = "$out/llama8b-$kind.out.jsonl"
$tuning
JOB
  tpx bench "$out/job_$kind.toml" --json "$out/tpx_$kind.json" 2>&1 | grep -v "^tpx run: mpirun" | tee "$out/tpx_$kind.txt"
done
echo; echo "== quantized 8B on one GPU =="
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
runs = {k: json.load(open(os.path.join(out, f"tpx_{k}.json"))) for k in ("gptq", "gptqfma", "fp8", "fp8fma", "fp8w8a8", "bf16") if os.path.exists(os.path.join(out, f"tpx_{k}.json"))}
target = {"gptq": 0.85, "gptqfma": 0.85, "fp8": 0.90, "fp8fma": 0.90, "fp8w8a8": 0.90}
for k, j in runs.items():
    for d in j["decode"]:
        line = f"{k:7s} decode batch {d['batch']:3d}: {d['ms_per_step']:.3f} ms/step"
        if "roofline_ms" in d:
            line += f", roofline {d['roofline_ms']:.3f} ms ({d['roofline_weight_bytes'] / 1e9:.2f} GB), {100 * d['fraction_of_roofline']:.0f}%"
            if d["batch"] == 1 and k in target: line += f" (target >= {100 * target[k]:.0f}%: {'met' if d['fraction_of_roofline'] >= target[k] else 'NOT met'})"
        print(line)
    for p in j["prefill"]:
        line = f"{k:7s} prefill {p['prompt_tokens']:5d} tokens: {p['ms']:.2f} ms"
        if "bf16" in runs and k != "bf16":
            ref = [q for q in runs["bf16"]["prefill"] if q["prompt_tokens"] == p["prompt_tokens"]]
            if ref:
                line += f" = {p['ms'] / ref[0]['ms']:.2f}x bf16's {ref[0]['ms']:.2f} ms"
                if k.startswith("fp8") and p["prompt_tokens"] == 2048: line += f" (target <= 0.7x: {'met' if p['ms'] / ref[0]['ms'] <= 0.7 else 'NOT met'})"
        print(line)
PY
