#!/usr/bin/env python3
"""Where a prefill's time goes, from a libtpx_trace.so timeline (bench/trace.cpp) of `tpx bench`.

    bench/prefill_timeline.py TRACE.csv [--top N]

The bench's prefills are bursts of kernels with the GPU idle around them (the host waits for
each to finish): a burst is a run of kernels and copies with no idle gap over 0.5 ms. Every
burst of more than 100 kernels and less than 200 ms on the GPU is printed in order (the
warm-up prefill of each length, which also tunes the GEMMs, then its 5 timed ones; the decode
steps follow one another too closely to part, so they make longer bursts, left out): its
length on the GPU, kernels, busy time, idle time inside it (the GPU waiting for the host's
launches) and the N kernel kinds that took longest."""
import collections
import csv
import sys


def kind(name):
    for key in ("flash", "gemv", "rmsnorm", "rope", "silu", "argmax", "embedding", "kv_write", "scale_add", "to_f32",
                "attention", "memcpy", "memset", "nvjet", "sm90_xmma", "cutlass", "gemm", "Kernel2"):
        if key in name:
            return key if key not in ("nvjet", "sm90_xmma", "cutlass", "gemm", "Kernel2") else "cublas " + name[:40]
    return name[:48]


def main():
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 8
    ev = []
    with open(sys.argv[1]) as f:
        for r in csv.DictReader(f):
            ev.append((int(r["start_ns"]), int(r["end_ns"]), r["name"]))
    ev.sort()
    bursts, cur, end = [], [], 0
    for e in ev:
        if cur and e[0] - end > 500_000:
            bursts.append(cur)
            cur = []
        cur.append(e)
        end = max(end, e[1]) if len(cur) > 1 else e[1]
    if cur:
        bursts.append(cur)
    for b in bursts:
        span = (max(e[1] for e in b) - b[0][0]) / 1e6
        if len(b) <= 100 or span >= 200:
            continue
        busy, idle, reach = 0, 0, b[0][0]
        per = collections.defaultdict(lambda: [0, 0])
        for s, t, n in b:
            if s > reach:
                idle += s - reach
            busy += max(0, t - max(s, reach))
            reach = max(reach, t)
            per[kind(n)][0] += 1
            per[kind(n)][1] += t - s
        print(f"burst: {span:.3f} ms on the GPU, {len(b)} kernels, busy {busy / 1e6:.3f} ms, idle inside {idle / 1e6:.3f} ms")
        for k, (calls, ns) in sorted(per.items(), key=lambda kv: -kv[1][1])[:top]:
            print(f"    {k:48s} {calls:5d} calls {ns / 1e6:8.3f} ms ({ns / calls / 1e3:.1f} us each)")


if __name__ == "__main__":
    main()
