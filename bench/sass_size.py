#!/usr/bin/env python3
"""Static SASS instruction counts of the functions in a CUDA cubin, read from its ELF sections.

    bench/sass_size.py CUBIN [MATCH] [--ops] [--against OTHER]

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
arguments are spelled out after the name. MATCH, when given, filters on the mangled name.

--ops adds each function's instructions by opcode. Hopper's encoding is not published; the
opcode is taken as the low 9 bits of an instruction's first 64-bit word (bits 9 to 11 tell its
operand forms apart: a register, an immediate, a constant), and the names below are those of the
probe kernels compiled here to find each one (OPCODES: a kernel of one kind of instruction, its
opcode the one the probe adds; LDL and STL appeared only in builds ptxas reported as spilling).
Others print in hex. IMAD covers the moves, shifts and adds the compiler makes with it.
--against OTHER prints, for each function in both cubins, its count in each and the change by
opcode (CUBIN minus OTHER): a build with one more step in a loop against one without tells what
a step costs, kind by kind."""
import argparse
import collections
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
        if h[1] != 8 and h[4] + h[5] > len(data):  # SHT_NOBITS (8) has no bytes in the file
            raise ValueError(f"section at {h[4]:#x} ({h[5]} bytes) past the end of the file ({len(data)} bytes)")
        yield data[start:end].decode(errors="replace"), h[4], h[5]


# Opcodes (low 9 bits) named from probe kernels (see the module's text).
OPCODES = {
    0x002: "MOV", 0x00B: "FSETP", 0x00C: "ISETP", 0x010: "IADD3", 0x011: "LEA", 0x012: "LOP3", 0x016: "PRMT", 0x019: "SHF",
    0x020: "FMUL", 0x021: "FADD", 0x023: "FFMA", 0x024: "IMAD", 0x025: "IMAD.WIDE", 0x030: "HADD2", 0x031: "HFMA2",
    0x035: "HFMA2.MMA", 0x03C: "HMMA", 0x03E: "F2FP", 0x045: "I2F", 0x0B9: "ULDC", 0x108: "MUFU", 0x118: "NOP", 0x119: "S2R",
    0x11D: "BAR", 0x147: "BRA", 0x14D: "EXIT", 0x180: "LD", 0x181: "LDG", 0x182: "LDC", 0x183: "LDL", 0x184: "LDS", 0x185: "ST",
    0x186: "STG", 0x187: "STL", 0x188: "STS", 0x189: "SHFL",
}


def opcodes(code):
    """Counter of a function's instructions by opcode name (hex where unnamed)."""
    count = collections.Counter()
    for at in range(0, len(code) - 15, 16):
        op = struct.unpack_from("<Q", code, at)[0] & 0x1FF
        count[OPCODES.get(op, f"{op:#05x}")] += 1
    return count


def functions(path):
    """{mangled name: code bytes} of a cubin's functions; ValueError, OSError as sections()."""
    with open(path, "rb") as f:
        data = f.read()
    return {name[len(".text."):]: data[at:at + size] for name, at, size in sections(data) if name.startswith(".text.")}


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
    p.add_argument("--ops", action="store_true", help="each function's instructions by opcode")
    p.add_argument("--against", metavar="OTHER", help="another build's cubin: counts side by side, the change by opcode")
    a = p.parse_args()
    other = {}
    for path, into in [(a.cubin, None), (a.against, other)]:
        if path is None:
            continue
        try:
            found = functions(path)
        except (OSError, ValueError) as e:
            print(f"sass_size.py: {path}: {e}", file=sys.stderr)
            sys.exit(2)
        if into is None:
            mine = found
        else:
            into.update(found)
    shown = sorted(name for name in mine if a.match in name and (a.against is None or name in other))
    if not shown:
        where = f" whose name holds {a.match!r}" if a.match else ""
        also = f" that {a.against} has too" if a.against else ""
        print(f"sass_size.py: {a.cubin}: no code section{where}{also}", file=sys.stderr)
        sys.exit(2)
    for name in shown:
        code = mine[name]
        if a.against is None:
            print(f"{len(code) // 16:8d}  {label(name)}")
        else:
            print(f"{len(code) // 16:8d} {len(other[name]) // 16:8d} {len(code) // 16 - len(other[name]) // 16:+8d}  {label(name)}")
        if a.ops and a.against is None:
            print("          " + " ".join(f"{op}:{n}" for op, n in opcodes(code).most_common()))
        elif a.against is not None:
            mine_ops, theirs = opcodes(code), opcodes(other[name])
            change = {op: mine_ops[op] - theirs[op] for op in set(mine_ops) | set(theirs) if mine_ops[op] != theirs[op]}
            print("          " + (" ".join(f"{op}:{n:+d}" for op, n in sorted(change.items(), key=lambda x: (-abs(x[1]), x[0]))) or "no change"))


if __name__ == "__main__":
    main()
