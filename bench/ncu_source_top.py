#!/usr/bin/env python3
"""Where a kernel's warps stall, by SASS instruction, from Nsight Compute's source page.

    ncu --import REPORT.ncu-rep --page source --csv --print-source sass > src.csv
    bench/ncu_source_top.py src.csv [TOP]

For each kernel in the CSV (a block of rows under its own header line): the total warp stall
samples and instructions executed, the TOP (default 25) instructions with the most samples, and
the samples summed by opcode (the SASS text's first word, predicates dropped)."""
import csv
import sys
from collections import defaultdict


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def blocks(rows):
    """(kernel title, header, data rows) for each header line in rows."""
    title, header, data = "", None, []
    for row in rows:
        if not row:
            continue
        if any("Source" == c.strip() for c in row) and any("Warp Stall Sampling" in c for c in row):
            if header:
                yield title, header, data
            header, data = row, []
        elif header is None or len(row) < len(header) // 2:
            if header:
                yield title, header, data
                header, data = None, []
            title = " ".join(c for c in row if c)
        else:
            data.append(row)
    if header:
        yield title, header, data


def column(header, *needles):
    for i, c in enumerate(header):
        if all(n in c for n in needles):
            return i
    return None


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    seen = set()
    for title, header, data in blocks(rows):
        key = (title, len(data), tuple(data[0]) if data else ())
        if key in seen:  # the same function's page printed again
            continue
        seen.add(key)
        src = column(header, "Source")
        stall = column(header, "Warp Stall Sampling (All")
        execd = column(header, "Instructions Executed")
        addr = column(header, "Address")
        if src is None or stall is None:
            print("no source or stall column in", header)
            continue
        total = sum(number(r[stall]) for r in data if len(r) > stall)
        insts = sum(number(r[execd]) for r in data if execd is not None and len(r) > execd)
        print(f"== {title[:160]}")
        print(f"   {len(data)} SASS lines, {total:.0f} stall samples, {insts:.0f} warp instructions executed")
        by_op = defaultdict(lambda: [0.0, 0.0])
        for r in data:
            if len(r) <= max(src, stall):
                continue
            words = [w for w in r[src].split() if not w.startswith("@")]
            op = words[0].split(".")[0] if words else "?"
            by_op[op][0] += number(r[stall])
            by_op[op][1] += number(r[execd]) if execd is not None and len(r) > execd else 0
        ranked = sorted((r for r in data if len(r) > max(src, stall)), key=lambda r: -number(r[stall]))
        for r in ranked[:top]:
            s = number(r[stall])
            e = number(r[execd]) if execd is not None and len(r) > execd else 0
            where = r[addr] if addr is not None and len(r) > addr else ""
            print(f"   {100 * s / max(total, 1):5.1f}%  {e:10.0f}  {where:>8}  {r[src][:90]}")
        print("   by opcode (stall share, executed):")
        for op, (s, e) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:20]:
            print(f"   {100 * s / max(total, 1):5.1f}%  {e:10.0f}  {op}")


if __name__ == "__main__":
    main()
