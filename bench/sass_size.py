#!/usr/bin/env python3
"""Static SASS instruction counts of the functions in a CUDA cubin, read from its ELF sections.

    bench/sass_size.py CUBIN [MATCH] [--ops] [--against OTHER] [--lines N]

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
a step costs, kind by kind.
--lines N (a cubin built with -lineinfo added to the flags) attributes each function's
instructions to source lines through the cubin's DWARF line table and prints the N lines with
the most, their opcodes and the line's text as the file reads now: where a kernel's instructions come from (inlined
lines count where they were written; loads often land on the intrinsic's header line)."""
import argparse
import collections
import re
import struct
import sys

EM_CUDA = 190
SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")  # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, ...


def section_table(data):
    """[(name, header)] of every section of a CUDA cubin (a 64-bit little-endian ELF file for
    EM_CUDA), header = (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, ...);
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
    table = []
    for h in headers:
        start = names_at + h[0]
        end = data.find(b"\0", start, names_at + names_size)
        if h[0] >= names_size or end < 0:
            raise ValueError(f"a section name at {h[0]} outside the name table ({names_size} bytes)")
        if h[1] != 8 and h[4] + h[5] > len(data):  # SHT_NOBITS (8) has no bytes in the file
            raise ValueError(f"section at {h[4]:#x} ({h[5]} bytes) past the end of the file ({len(data)} bytes)")
        table.append((data[start:end].decode(errors="replace"), h))
    return table


def sections(data):
    """(name, offset, size) of every section of a cubin; ValueError as section_table()."""
    return [(name, h[4], h[5]) for name, h in section_table(data)]


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


def uleb128(data, at):
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def sleb128(data, at):
    value, end = uleb128(data, at)
    bits = 7 * (end - at)
    return (value - (1 << bits) if value & (1 << (bits - 1)) else value), end


def line_tables(path):
    """{function: [(offset in its code, source file, line)]} from a cubin built with -lineinfo:
    its .debug_line program (DWARF 2 to 4; ptxas writes one sequence a function, its address
    relocated against the function's symbol). ValueError where the cubin has none."""
    with open(path, "rb") as f:
        data = f.read()
    table = section_table(data)
    by_name = {name: h for name, h in table}
    if ".debug_line" not in by_name:
        raise ValueError("no .debug_line section: build the cubin with -lineinfo")
    symtab = by_name.get(".symtab")
    symbols = []
    if symtab:
        names = table[symtab[6]][1]
        for i in range(symtab[5] // 24):
            st_name, _, _, shndx, _, _ = struct.unpack_from("<IBBHQQ", data, symtab[4] + i * 24)
            end = data.find(b"\0", names[4] + st_name)
            name = data[names[4] + st_name:end].decode(errors="replace")
            symbols.append(name or (table[shndx][0] if shndx < len(table) else ""))
    relocated = {}  # offset in .debug_line -> (function, addend)
    rela = by_name.get(".rela.debug_line")
    for i in range(rela[5] // 24 if rela else 0):
        at, info, addend = struct.unpack_from("<QQq", data, rela[4] + i * 24)
        if info >> 32 < len(symbols):
            relocated[at] = (symbols[info >> 32].removeprefix(".text."), addend)
    h = by_name[".debug_line"]
    base, limit = h[4], h[4] + h[5]
    rows = collections.defaultdict(list)
    unit = base
    while unit + 10 <= limit:
        length, version = struct.unpack_from("<IH", data, unit)
        end = unit + 4 + length
        if length == 0xFFFFFFFF or not 2 <= version <= 4 or end > limit:
            raise ValueError(f".debug_line unit at {unit - base:#x}: version {version}, length {length:#x} (only 32-bit DWARF 2 to 4)")
        header_length = struct.unpack_from("<I", data, unit + 6)[0]
        at = unit + 10
        min_inst = data[at]
        at += 2 if version >= 4 else 1  # (v4: maximum_operations_per_instruction)
        line_base = struct.unpack_from("<b", data, at + 1)[0]
        line_range, opcode_base = data[at + 2], data[at + 3]
        lengths = list(data[at + 4:at + 3 + opcode_base])
        at += 3 + opcode_base
        dirs = []
        while data[at]:
            zero = data.find(b"\0", at)
            dirs.append(data[at:zero].decode(errors="replace"))
            at = zero + 1
        at += 1
        files = [""]
        while data[at]:
            zero = data.find(b"\0", at)
            name = data[at:zero].decode(errors="replace")
            directory, at = uleb128(data, zero + 1)
            _, at = uleb128(data, at)
            _, at = uleb128(data, at)
            files.append(f"{dirs[directory - 1]}/{name}" if 0 < directory <= len(dirs) and not name.startswith("/") else name)
        at = unit + 10 + header_length
        function, address, file, line = None, 0, 1, 1
        while at < end:
            op = data[at]
            at += 1
            if op >= opcode_base:
                step = op - opcode_base
                address += step // line_range * min_inst
                line += line_base + step % line_range
                rows[function].append((address, files[file] if file < len(files) else "?", line))
            elif op == 0:
                size, at = uleb128(data, at)
                if data[at] == 1:  # end_sequence
                    rows[function].append((address, None, None))
                    function, address, file, line = None, 0, 1, 1
                elif data[at] == 2:  # set_address
                    function, addend = relocated.get(at + 1 - base, (None, 0))
                    address = addend + (struct.unpack_from("<Q", data, at + 1)[0] if size == 9 else 0)
                at += size
            elif op == 1:
                rows[function].append((address, files[file] if file < len(files) else "?", line))
            elif op == 2:
                step, at = uleb128(data, at)
                address += step * min_inst
            elif op == 3:
                step, at = sleb128(data, at)
                line += step
            elif op == 4:
                file, at = uleb128(data, at)
            elif op == 8:
                address += (255 - opcode_base) // line_range * min_inst
            elif op == 9:
                address += struct.unpack_from("<H", data, at)[0]
                at += 2
            else:  # column, stmt, basic block and the rest: their operands skipped
                for _ in range(lengths[op - 1] if op - 1 < len(lengths) else 0):
                    _, at = uleb128(data, at)
        unit = end
    return rows


def by_line(code, rows):
    """{(file, line): Counter of opcodes} of one function's code and its line rows."""
    out = collections.defaultdict(collections.Counter)
    ordered = sorted(rows, key=lambda r: r[0])
    for (start, file, line), (stop, _, _) in zip(ordered, ordered[1:]):
        if file is None:
            continue
        for at in range(start, min(stop, len(code)) - 15, 16):
            op = struct.unpack_from("<Q", code, at)[0] & 0x1FF
            out[(file, line)][OPCODES.get(op, f"{op:#05x}")] += 1
    return out


def source_line(file, line, cache={}):
    if file not in cache:
        try:
            with open(file, errors="replace") as f:
                cache[file] = f.read().split("\n")
        except OSError:
            cache[file] = []
    text = cache[file]
    return text[line - 1].strip() if 0 < line <= len(text) else ""


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
    p.add_argument("--lines", type=int, metavar="N", help="the N source lines with the most instructions (a cubin built with -lineinfo)")
    a = p.parse_args()
    if a.lines is not None and a.against:
        p.error("--lines takes one cubin (no --against)")
    if a.lines is not None and a.lines < 1:
        p.error("--lines N needs N >= 1")
    if a.ops and a.against:
        p.error("--ops takes one cubin (--against prints the change by opcode itself)")
    tables = {}
    if a.lines is not None:
        try:
            tables = line_tables(a.cubin)
        except (OSError, ValueError, IndexError, struct.error) as e:
            print(f"sass_size.py: {a.cubin}: {e}", file=sys.stderr)
            sys.exit(2)
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
        if a.lines is not None:
            lines = by_line(code, tables.get(name, []))
            print(f"          {sum(sum(c.values()) for c in lines.values())} of them on {len(lines)} source lines; the most:")
            for (file, line), ops in sorted(lines.items(), key=lambda x: -sum(x[1].values()))[:a.lines]:
                mix = " ".join(f"{op}:{n}" for op, n in ops.most_common(6))
                print(f"{sum(ops.values()):8d}  {file.rsplit('/', 1)[-1]}:{line}  {mix}  | {source_line(file, line)[:100]}")
        elif a.against is not None:
            mine_ops, theirs = opcodes(code), opcodes(other[name])
            change = {op: mine_ops[op] - theirs[op] for op in set(mine_ops) | set(theirs) if mine_ops[op] != theirs[op]}
            print("          " + (" ".join(f"{op}:{n:+d}" for op, n in sorted(change.items(), key=lambda x: (-abs(x[1]), x[0]))) or "no change"))


if __name__ == "__main__":
    main()
