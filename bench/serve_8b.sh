#!/bin/bash
# `tpx serve` under load against HF transformers' continuous batching, in one call on the GPU
# machine (docs/PERF.md, docs/SERVE.md): the Llama-3-8B-shaped checkpoint (bench/hf_peer.py make),
# tpx serve at tp=1 with 64 KV slots, CLIENTS concurrent streaming clients (bench/serve_load.py,
# token-id prompts around 256 tokens, OUTPUT tokens each) with a 512-token probe for TTFT under
# load; then tpx bench's batch-64 decode step (the inter-token latency's floor), then HF's
# generate_batch on the same request set. Prints one table.
#   bench/serve_8b.sh OUT_DIR [CLIENTS] [REQUESTS] [OUTPUT] [PEER]   (PEER: hf (default), or none to skip HF)
set -euo pipefail
out=${1:?usage: bench/serve_8b.sh OUT_DIR [CLIENTS] [REQUESTS] [OUTPUT] [PEER]}
clients=${2:-64}; requests=${3:-256}; output=${4:-128}; peer=${5:-hf}
case $peer in hf|none) ;; *) echo "bench/serve_8b.sh: PEER is hf or none, not '$peer'" >&2; exit 2;; esac
here=$(cd "$(dirname "$0")" && pwd)
ckpt=${TPX_BENCH_CKPT:-/tmp/l8b}
port=${TPX_BENCH_PORT:-8123}
mkdir -p "$out"
[ -f "$ckpt/config.json" ] || python3 "$here/hf_peer.py" make "$ckpt" | tee "$out/make.txt"
cat > "$out/serve.toml" <<JOB
[job]
name = "llama8b"
[model]
path = "$ckpt"
dtype = "bfloat16"
[backend]
device = "cuda"
[run]
max_batch = 64
max_seq_len = 1024
max_new_tokens = $output
output = "$out/bench.out.jsonl"
[serve]
port = $port
max_queue = 1024
prefill_chunk = 512
JOB
tpx serve "$out/serve.toml" > "$out/serve.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true' EXIT
python3 - "$port" <<'PY'
import http.client, sys, time
deadline = time.time() + 300
while time.time() < deadline:
    try:
        c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=5); c.request("GET", "/health")
        if c.getresponse().status == 200: sys.exit(0)
    except OSError: pass
    time.sleep(0.5)
sys.exit("tpx serve did not become ready in 300 s")
PY
# A short warm-up (captures the decode graphs of the batch sizes it meets), then the measured load.
python3 "$here/serve_load.py" --url "http://127.0.0.1:$port" --clients 16 --requests 32 --prompt-mean 256 \
  --output-mean 32 --vocab 128000 --seed 7 > "$out/warmup.json"
python3 "$here/serve_load.py" --url "http://127.0.0.1:$port" --clients "$clients" --requests "$requests" \
  --prompt-mean 256 --output-mean "$output" --fixed-output --vocab 128000 --probe-prompt 512 \
  --write-requests "$out/requests.json" | tee "$out/tpx_serve.json"
python3 - "$port" > "$out/metrics.txt" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10); c.request("GET", "/metrics")
print(c.getresponse().read().decode())
PY
# SIGTERM: in-flight calls (none now) finish, the server exits 0 and leaves no process.
kill -TERM $server; t0=$(date +%s.%N)
if wait $server; then echo "tpx serve: SIGTERM -> exit 0 in $(python3 -c "import time; print(round(time.time() - $t0, 2))") s"; else echo "tpx serve exited $? after SIGTERM"; tail -20 "$out/serve.log"; fi
sleep 1; pgrep -f tpx-worker > /dev/null && echo "tpx-worker processes left after SIGTERM: $(pgrep -fc tpx-worker)" || echo "no tpx-worker left"
trap - EXIT
tpx bench "$out/serve.toml" --json "$out/tpx_bench.json" 2>&1 | grep -v "^tpx run: mpirun" > "$out/tpx_bench.txt"
if [ "$peer" = hf ]; then python3 "$here/hf_serve_peer.py" "$ckpt" "$out/requests.json" 2>&1 | grep RESULT | tee "$out/hf.txt"; else : > "$out/hf.txt"; fi
python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
t = json.load(open(f"{out}/tpx_serve.json"))
hf = dict(re.findall(r"RESULT (\S+)=(\S+)", open(f"{out}/hf.txt").read()))
bench = json.load(open(f"{out}/tpx_bench.json"))
b64 = [d for d in bench["decode"] if d["batch"] == 64][0]
print(f"tpx serve: {t['generated_tokens_per_s']:.0f} tok/s, {t['clients']} clients, {t['requests']} requests, {t['failed']} failed")
print(f"  TTFT p50 {t['ttft_ms']['p50']:.1f} ms p90 {t['ttft_ms']['p90']:.1f}; ITL p50 {t['itl_ms']['p50']:.2f} ms p90 {t['itl_ms']['p90']:.2f} p99 {t['itl_ms']['p99']:.2f}")
print(f"  512-token prompt under load: TTFT p50 {t['probe_ttft_ms'].get('p50', float('nan')):.1f} ms (n={t['probe_ttft_ms'].get('n', 0)})")
print(f"tpx bench batch-64 decode step {b64['ms_per_step']:.2f} ms ({100*b64['fraction_of_roofline']:.0f}% of roofline): ITL p50 / step = {t['itl_ms']['p50']/b64['ms_per_step']:.2f}")
# Scheduler steps during the whole serve (warm-up included): quantiles read off the histogram.
steps = {}
for kind in ("decode", "mixed"):
    buckets = [(float(le), int(n)) for le, n in re.findall(r'tpx_step_seconds_bucket\{kind="%s",le="([0-9.e+-]+)"\} (\d+)' % kind, open(f"{out}/metrics.txt").read())]
    total = int(re.search(r'tpx_step_seconds_count\{kind="%s"\} (\d+)' % kind, open(f"{out}/metrics.txt").read()).group(1))
    q = lambda f: next((le for le, n in buckets if n >= f * total), float("inf"))
    steps[kind] = (total, q(0.5), q(0.9))
    print(f"  {kind} steps: {total}, p50 <= {1e3*q(0.5):.1f} ms, p90 <= {1e3*q(0.9):.1f} ms")
    dev = [(float(le), int(n)) for le, n in re.findall(r'tpx_step_device_seconds_bucket\{kind="%s",le="([0-9.e+-]+)"\} (\d+)' % kind, open(f"{out}/metrics.txt").read())]
    dtotal = re.search(r'tpx_step_device_seconds_count\{kind="%s"\} (\d+)' % kind, open(f"{out}/metrics.txt").read())
    if dtotal and int(dtotal.group(1)) > 0:
        n = int(dtotal.group(1))
        dq = lambda f: next((le for le, c in dev if c >= f * n), float("inf"))
        print(f"  {kind} steps on the GPU: {n}, p50 <= {1e3*dq(0.5):.1f} ms, p90 <= {1e3*dq(0.9):.1f} ms")
if "hf_cb_tokens_per_s" in hf:
    print(f"HF generate_batch: {float(hf['hf_cb_tokens_per_s']):.0f} tok/s ({hf['hf_cb_seconds']} s): tpx / HF = {t['generated_tokens_per_s']/float(hf['hf_cb_tokens_per_s']):.2f}")
PY
