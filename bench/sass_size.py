#!/usr/bin/env python3
"""Static SASS instruction counts of a cubin's kernels, without nvdisasm or cuobjdump (this
machine's toolkit has neither).

    bench/sass_size.py CUBIN [MATCH]

Build the cubin from one kernel file with the build's own flags, e.g.

    cd build/kernels && nvcc --options-file CMakeFiles/tpx_kernels_cuda.dir/includes_CUDA.rsp \\
        -std=c++17 -arch=sm_90a -O3 -cubin ../../kernels/cuda/quant_gemv_mma.cu -o /tmp/q.cubin

Each kernel's code is an ELF section named .text.<mangled name>; every Hopper instruction is 16
bytes, so the section's size over 16 is its instruction count (a static count: a loop body
counts once, whatever its trip count). Comparing two builds of one kernel (one change apart)
tells what that change costs in instructions before a GPU is lent. Prints count and name, the
name's template arguments shortened where they follow the tpx GEMV pattern; only names holding
MATCH when given."""
import argparse
import re
import struct
import sys


def sections(data):
    """(name, size) of every section of a 64-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    for h in headers:
        start = names_at + h[0]
        yield data[start:data.index(b"\0", start)].decode(), h[5]


def short(name):
    """FORMAT/EPILOGUE/NORM/GATHER for the quantized GEMV's instances, else the mangled name."""
    m = re.search(r"FormatE(\d)ELNS0_12GemvEpilogueE(\d)ELb(\d)ELb(\d)", name)
    if m:
        return "format %s epilogue %s norm %s gather %s" % m.groups()
    return name


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cubin")
    p.add_argument("match", nargs="?", default="")
    a = p.parse_args()
    try:
        with open(a.cubin, "rb") as f:
            data = f.read()
        found = [(size // 16, name[len(".text."):]) for name, size in sections(data) if name.startswith(".text.")]
    except (OSError, ValueError, struct.error) as e:
        print(f"sass_size.py: {a.cubin}: {e}", file=sys.stderr)
        sys.exit(2)
    for count, name in sorted(found, key=lambda x: x[1]):
        if a.match in name:
            print(f"{count:8d}  {short(name)}")


if __name__ == "__main__":
    main()
