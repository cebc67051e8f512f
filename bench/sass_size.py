#!/usr/bin/env python3
"""Static SASS instruction counts of the functions in a CUDA cubin, read from its ELF sections.

    bench/sass_size.py CUBIN [MATCH]

This machine's toolkit has neither nvdisasm nor cuobjdump. Build the cubin from one kernel file
with the build's own flags, e.g.

    cd build/kernels && nvcc --options-file CMakeFiles/tpx_kernels_cuda.dir/includes_CUDA.rsp \\
        -std=c++17 -arch=sm_90a -O3 -cubin ../../kernels/cuda/quant_gemv_mma.cu -o /tmp/q.cubin

Each kernel (and each device function the compiler did not inline) has its code in an ELF
section named .text.<mangled name>; a Hopper instruction is 16 bytes, so the section's size over
16 is its instruction count. The count is static (a loop body counts once, whatever its trip
count) and includes the padding after the last instruction (a branch to itself, then NOPs up to
a multiple of 128 bytes): differences below about 16 are noise. Comparing two builds of a kernel
one change apart tells what the change costs in instructions before a GPU is lent. Prints the
count and the name; for the quantized GEMV's instances (quant_gemv_mma.cu) the template
arguments are spelled out after the name. MATCH, when given, filters on the mangled name."""
import argparse
import re
import struct
import sys

EM_CUDA = 190
SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")  # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, ...


def sections(data):
    """(name, size) of every section of a CUDA cubin (a 64-bit little-endian ELF file for EM_CUDA);
    ValueError naming what does not fit."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    machine = struct.unpack_from("<H", data, 0x12)[0]
    if machine != EM_CUDA:
        raise ValueError(f"ELF machine {machine}, not CUDA ({EM_CUDA}): not a cubin")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shentsize != SECTION_HEADER.size:
        raise ValueError(f"section header size {shentsize}, not {SECTION_HEADER.size}")
    if shnum == 0 or shstrndx >= shnum:
        raise ValueError(f"{shnum} section headers, names in section {shstrndx}")
    if shoff + shnum * shentsize > len(data):
        raise ValueError(f"section header table at {shoff:#x} ({shnum} headers) past the end of the file ({len(data)} bytes)")
    headers = [SECTION_HEADER.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    names_at, names_size = headers[shstrndx][4], headers[shstrndx][5]
    if names_at + names_size > len(data):
        raise ValueError(f"section name table at {names_at:#x} past the end of the file ({len(data)} bytes)")
    for h in headers:
        start = names_at + h[0]
        end = data.find(b"\0", start, names_at + names_size)
        if h[0] >= names_size or end < 0:
            raise ValueError(f"a section name at {h[0]} outside the name table ({names_size} bytes)")
        yield data[start:end].decode(errors="replace"), h[5]


FORMATS = {"0": "fp8", "1": "gptq"}
EPILOGUES = {"0": "none", "1": "swiglu", "2": "rope"}


def label(name):
    """The mangled name, with the quantized GEMV's template arguments spelled out after it."""
    m = re.search(r"FormatE(\d)ELNS0_12GemvEpilogueE(\d)ELb(\d)ELb(\d)", name)
    if not m:
        return name
    fmt, epi, norm, gather = m.groups()
    return f"{name}  [{FORMATS.get(fmt, fmt)}, epilogue {EPILOGUES.get(epi, epi)}, norm {norm}, gather {gather}]"


def main():
    p = argparse.ArgumentParser(description="Static SASS instruction counts of a CUDA cubin's functions.")
    p.add_argument("cubin")
    p.add_argument("match", nargs="?", default="", help="only functions whose mangled name holds this")
    a = p.parse_args()
    try:
        with open(a.cubin, "rb") as f:
            data = f.read()
        found = [(size // 16, name[len(".text."):]) for name, size in sections(data) if name.startswith(".text.")]
    except (OSError, ValueError) as e:
        print(f"sass_size.py: {a.cubin}: {e}", file=sys.stderr)
        sys.exit(2)
    shown = [(count, name) for count, name in sorted(found, key=lambda x: x[1]) if a.match in name]
    if not shown:
        print(f"sass_size.py: {a.cubin}: no code section" + (f" whose name holds {a.match!r}" if a.match else ""), file=sys.stderr)
        sys.exit(2)
    for count, name in shown:
        print(f"{count:8d}  {label(name)}")


if __name__ == "__main__":
    main()
