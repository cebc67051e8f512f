#!/usr/bin/env python3
"""One decode step from a libtpx_trace.so timeline (bench/trace.cpp): where its time goes.

    bench/timeline.py TRACE.csv [MATCH] [--sequence FIRST COUNT]

Steps end at the argmax kernel (one a step, after the graph). For the middle half of the
batch-1 steps (those with a kernel whose name holds MATCH: by default the bf16 step's fused
gate_up GEMV; for FP8, fp8_ring_kernelILNS0_12GemvEpilogueE1ELb1, whose norm only batch 1
fuses) it prints the median step on the GPU (first kernel's start to the argmax's end), the
GPU's idle time between steps (the host's turn), and per kernel kind: calls a step,
microseconds each, the gap before each (negative: it started before the previous kernel ended,
programmatic dependent launch), how far its end is past the latest end of the kernels before it
in the step ("past": what it adds to the step when launches overlap; the step's first kernel
counts 0) and milliseconds a step. With --sequence, also kernels FIRST .. FIRST + COUNT - 1 of
the steps in launch order (a layer's kernels one by one, where the kinds above pool o_proj with
down_proj): for each, medians over the steps of its start and end relative to the end of the
kernel before it and of its "past" (kernel 0, with none before it, is not listed)."""
import argparse
import collections
import csv
import statistics
import sys

KINDS = [("fp8_ring_kernelILNS0_12GemvEpilogueE1ELb1", "fp8 gemv+norm+swiglu"), ("fp8_ring_kernelILNS0_12GemvEpilogueE2ELb1", "fp8 gemv+norm+rope"),
         ("fp8_ring_kernelILNS0_12GemvEpilogueE0ELb0", "fp8 gemv"), ("fp8_ring_kernel", "fp8 gemv (other)"),
         ("gemv_kernelILNS0_12GemvEpilogueE1ELb1ELb1", "gemv+sum+norm+swiglu"), ("gemv_kernelILNS0_12GemvEpilogueE2ELb1ELb1", "gemv+sum+norm+rope"),
         ("gemv_split_kernelILi4ELb1", "gemv split-k + push"), ("gemv_split_kernelILi2ELb1", "gemv split-k + push"),
         ("gemv_split_kernelILi1ELb1", "gemv split-k + push"), ("exchange_advance", "exchange epoch"),
         ("gemv_kernelILNS0_12GemvEpilogueE0ELb1", "gemv+norm"), ("gemv_kernelILNS0_12GemvEpilogueE1ELb1", "gemv+norm+swiglu"),
         ("gemv_kernelILNS0_12GemvEpilogueE2ELb1", "gemv+norm+rope"), ("gemv_kernel", "gemv fused (other)"),
         ("gemv_split", "gemv split-k"), ("oneshot", "one-shot all-reduce"), ("attention_heads", "decode attention"), ("attention_split", "decode attention (split)"),
         ("argmax_partial", "argmax partial"), ("argmax_final", "argmax final"), ("rmsnorm", "rmsnorm"),
         ("embedding", "embedding"), ("to_f32", "to_f32"), ("nccl", "nccl"), ("memcpy", "copy"),
         ("gemv_mma_kernelILNS0_12GemvEpilogueE0", "gemv mma"), ("gemv_mma_kernelILNS0_12GemvEpilogueE1", "gemv mma+swiglu"),
         ("gemv_mma_kernelILNS0_12GemvEpilogueE2", "gemv mma+rope"), ("batch_gemm_kernelILNS0_12GemvEpilogueE0", "batch gemm"),
         ("batch_gemm_kernelILNS0_12GemvEpilogueE1", "batch gemm+swiglu"), ("batch_gemm_kernelILNS0_12GemvEpilogueE2", "batch gemm+rope"),
         ("attention_one_pass", "decode attention (one pass)"), ("attention_mma", "decode attention (one pass, tensor cores)"), ("attention", "attention (other)")]


def kind(name):
    for key, label in KINDS:
        if key in name:
            return label
    for prefix in ("_ZN3tpx4cuda12_GLOBAL__N_1", "_ZN3tpx4cuda"):  # the rest: the mangled name past tpx's namespaces
        if name.startswith(prefix):
            return name[len(prefix):].lstrip("0123456789")[:48]
    return name[:48]


def label(e):
    return kind(e[2]) + " (grid %s)" % e[3]


def main():
    ap = argparse.ArgumentParser(description="one decode step from a libtpx_trace.so timeline")
    ap.add_argument("trace")
    ap.add_argument("match", nargs="?", default="gemv_kernelILNS0_12GemvEpilogueE1",
                    help="a kernel name part that only the summarised steps have")
    ap.add_argument("--sequence", nargs=2, type=int, metavar=("FIRST", "COUNT"))
    args = ap.parse_args()
    ev = []
    with open(args.trace) as f:
        for r in csv.DictReader(f):
            ev.append((int(r["start_ns"]), int(r["end_ns"]), r["name"], r["grid_x"]))
    ev.sort()
    ends = [i for i, e in enumerate(ev) if "argmax_final" in e[2]]
    steps = [ev[a + 1:b + 1] for a, b in zip(ends, ends[1:])]
    gaps_between = [steps[i][0][0] - steps[i - 1][-1][1] for i in range(1, len(steps))]
    b1 = [i for i, s in enumerate(steps) if any(args.match in e[2] for e in s)]
    mid = b1[len(b1) // 4:3 * len(b1) // 4]
    if not mid:
        sys.exit("no batch-1 decode steps in the trace")
    group = [steps[i] for i in mid]
    print("batch-1 decode steps: %d (the middle %d summarised)" % (len(b1), len(mid)))
    print("kernels and copies a step: %d" % statistics.median(len(s) for s in group))
    print("step on the GPU (first start to argmax end): %.4f ms" % (statistics.median(s[-1][1] - s[0][0] for s in group) / 1e6))
    print("GPU idle between steps (host turn): %.1f us" % (statistics.median(gaps_between[i - 1] for i in mid if i > 0) / 1e3))
    per = collections.OrderedDict()
    for s in group:
        prev_end = None
        for e in s:
            k = label(e)
            c = per.setdefault(k, [0, 0, 0, 0])
            c[0] += 1
            c[1] += e[1] - e[0]
            if prev_end is not None:
                c[2] += e[0] - prev_end
                c[3] += max(0, e[1] - prev_end)
            prev_end = max(e[1], prev_end or 0)
    n = len(group)
    print("%-44s %6s %9s %9s %9s %9s" % ("kernel (grid)", "calls", "us each", "gap us", "past us", "ms/step"))
    for k, (c, d, g, p) in sorted(per.items(), key=lambda x: -x[1][1]):
        print("%-44s %6.1f %9.2f %9.2f %9.2f %9.4f" % (k[:44], c / n, d / c / 1e3, g / c / 1e3, p / c / 1e3, d / n / 1e6))
    print("sum of kernel times %.4f ms, sum of gaps %.4f ms" % (sum(v[1] for v in per.values()) / n / 1e6,
                                                                sum(v[2] for v in per.values()) / n / 1e6))
    if args.sequence:
        print_sequence(group, *args.sequence)


def print_sequence(group, first, count):
    """Kernels first .. first + count - 1 of each step in launch (start) order: median start and end
    relative to the previous kernel's end, duration and past, us."""
    print("%-4s %-44s %9s %9s %9s %9s" % ("#", "kernel (grid)", "start us", "end us", "us", "past us"))
    for i in range(max(first, 1), first + count):  # (the step's first kernel has none before it)
        rows = []
        for s in group:
            if i >= len(s):
                continue
            latest = max(e[1] for e in s[:i])
            e = s[i]
            rows.append((e[0] - s[i - 1][1], e[1] - s[i - 1][1], e[1] - e[0], max(0, e[1] - latest)))
        if not rows:
            break
        med = [statistics.median(r[k] for r in rows) / 1e3 for k in range(4)]
        name = label(next(s[i] for s in group if i < len(s)))
        print("%-4d %-44s %9.2f %9.2f %9.2f %9.2f" % (i, name[:44], med[0], med[1], med[2], med[3]))


if __name__ == "__main__":
    main()
