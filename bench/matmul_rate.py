"""The bf16 matrix rate measured with PyTorch, beside `tpx bench`'s own (worker/gpu_context.cpp),
so that the prefill floor's rate is checked by code that is not ours (docs/PERF.md, Method).

An 8192^3 product on four kinds of data (torch.randn; randn * 0.02, the checkpoint's weights'
scale; tpx's own bits: random sign and mantissa, magnitudes in [0.25, 4); constant matrices),
each timed three ways: 5 products after 1 (a burst), 50 after 100 (clocks settled, tpx's
floor), 300 more (long). Then the prefill's own GEMM shapes at 2048 tokens. Prints one
'RESULT key=value' line per figure, in TFLOP/s.
    python3 bench/matmul_rate.py
"""
import time
import torch

N = 8192


def rate(a, b, warm, timed, flops):
    for _ in range(warm):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(timed):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return timed * flops / (start.elapsed_time(end) / 1e3) / 1e12


def tpx_bits(shape, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = torch.randint(0, 1 << 30, shape, device="cuda", generator=g, dtype=torch.int32)
    sign, exponent, mantissa = (r >> 29) & 1, 125 + ((r >> 7) & 3), r & 0x7F
    return ((sign << 15) | (exponent << 7) | mantissa).to(torch.int16).view(torch.bfloat16)


def randn(*shape, scale=1.0):
    return torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * scale


data = {
    "randn": lambda: (randn(N, N), randn(N, N)),
    "randn_0.02": lambda: (randn(N, N, scale=0.02), randn(N, N, scale=0.02)),
    "tpx_bits": lambda: (tpx_bits((N, N), 1), tpx_bits((N, N), 2)),
    "constant": lambda: (torch.full((N, N), 0.0115, device="cuda", dtype=torch.bfloat16),) * 2,
}
flops = 2.0 * N**3
for name, make in data.items():
    a, b = make()
    torch.cuda.synchronize()
    time.sleep(2)  # the clocks back up between kinds
    burst = rate(a, b, 1, 5, flops)
    settled = rate(a, b, 100, 50, flops)
    long = rate(a, b, 0, 300, flops)
    print(f"RESULT torch_{name}_burst_TFLOPs={burst:.0f}\nRESULT torch_{name}_settled_TFLOPs={settled:.0f}\n"
          f"RESULT torch_{name}_long_TFLOPs={long:.0f}", flush=True)
    del a, b

# The prefill's GEMMs (Llama-3-8B, 2048 tokens): activations randn, weights randn * 0.02.
for k, n, what in [(4096, 6144, "qkv"), (4096, 4096, "o"), (4096, 28672, "gate_up"), (14336, 4096, "down")]:
    x, w = randn(2048, k), randn(n, k, scale=0.02)
    torch.cuda.synchronize()
    time.sleep(1)
    f = 2.0 * 2048 * k * n
    print(f"RESULT torch_prefill_{what}_burst_TFLOPs={rate(x, w.t(), 1, 5, f):.0f}\n"
          f"RESULT torch_prefill_{what}_settled_TFLOPs={rate(x, w.t(), 100, 200, f):.0f}", flush=True)
