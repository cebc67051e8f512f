#!/usr/bin/env python3
"""A second checkpoint for bench/refit.sh: SRC's safetensors files with every bf16 weight
negated (its sign bit flipped: exact, the same shapes and dtypes, other answers), every other
file copied. Plain Python (no torch): each tensor's bytes stream through in 64 MiB pieces.
Usage: bench/negate_checkpoint.py SRC_DIR DST_DIR"""
import json
import os
import shutil
import struct
import sys

PIECE = 64 << 20
_masks = {}


def sign_mask(n):
    """0x8000 in every 16-bit little-endian element of n bytes, as an int (a whole piece's kept)."""
    if n in _masks:
        return _masks[n]
    mask = int.from_bytes(b"\x00\x80" * (n // 2), "little")
    if n == PIECE:
        _masks[n] = mask
    return mask


def negate_file(src, dst):
    with open(src, "rb") as f, open(dst + ".tmp", "wb") as g:
        n = struct.unpack("<Q", f.read(8))[0]
        header = f.read(n)
        g.write(struct.pack("<Q", n) + header)
        meta = json.loads(header)
        spans = sorted((v["data_offsets"][0], v["data_offsets"][1], v["dtype"]) for k, v in meta.items() if k != "__metadata__")
        at = 0  # offsets are from the end of the header
        for begin, end, dtype in spans:
            if begin > at:  # (no gaps in files save_pretrained writes; copied as they are)
                g.write(f.read(begin - at))
            at = begin
            while at < end:
                data = f.read(min(PIECE, end - at))
                if dtype == "BF16":  # little-endian: the sign bit is bit 7 of each element's second byte
                    data = (int.from_bytes(data, "little") ^ sign_mask(len(data))).to_bytes(len(data), "little")
                g.write(data)
                at += len(data)
        g.write(f.read())
    os.replace(dst + ".tmp", dst)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if name.endswith(".safetensors"):
            negate_file(path, os.path.join(dst, name))
        elif os.path.isfile(path):
            shutil.copy(path, dst)
    print(f"wrote {dst}: every bf16 weight of {src} negated")


main()
