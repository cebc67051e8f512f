#!/bin/bash
# Every GPU check in one call on the lent GPU machine (docs/GPU.md): the kernel tests, the
# end-to-end GPU tests (their two- and four-GPU cases run where that many GPUs are visible),
# then the performance runs beside HF transformers (bench/run_8b.sh, the Llama-3-8B shape;
# bench/run_moe.sh, a Mixtral-shaped MoE). Each part's output goes
# to OUT_DIR; the exit status is non-zero when a test failed.
#   scripts/gpu_check.sh OUT_DIR        (after unpacking the device bundle, as docs/GPU.md says)
#   TPX_CHECK_NO_BENCH=1 scripts/gpu_check.sh OUT_DIR     (the tests alone)
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
nvidia-smi --query-gpu=index,name,clocks.max.sm,power.limit,driver_version --format=csv | tee "$out/gpus.csv" ||
  { echo "gpu_check: nvidia-smi failed: no GPU here"; exit 1; }
failed=0
for t in test_cuda_kernels test_gpu_run; do
  echo "== $t"
  "$t" > "$out/$t.txt" 2>&1 || failed=1
  grep -E "^\[==========\] .* ran|^\[  (PASSED  |SKIPPED) \] [0-9]|^\[  FAILED  \]" "$out/$t.txt"
done
if [ -z "${TPX_CHECK_NO_BENCH:-}" ]; then
  echo "== bench/run_8b.sh"
  bash "$here/bench/run_8b.sh" "$out/bench" 2>&1 | tail -n 40 || failed=1
  echo "== bench/run_moe.sh"
  bash "$here/bench/run_moe.sh" "$out/moe" 2>&1 | tail -n 16 || failed=1
fi
[ "$failed" = 0 ] && echo "gpu_check: all passed" || echo "gpu_check: FAILED (see $out)"
exit "$failed"
