#!/usr/bin/env python3
"""Functions over 100 lines and source files over 600 lines in the folders the house rules
bound (worker/ kernels/ sharding/ loader/ launcher/ jobs/). Function bodies are found by
brace depth: a brace at namespace or class level after a header with '(' opens a function.
Usage: scripts/size_check.py [ROOT]   (exit 1 when something is over)"""
import os
import re
import sys

FOLDERS = ["worker", "kernels", "sharding", "loader", "launcher", "jobs"]
EXT = (".cpp", ".cu", ".h", ".cuh")


def strip(text):
    # Comments, strings and chars out; newlines kept so line numbers hold.
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == '"' and text[max(0, i - 1)] == "R":
            m = re.match(r'"([^(]*)\(', text[i:])
            end = text.find(")" + m.group(1) + '"', i) if m else -1
            j = n if end < 0 else end + len(m.group(1)) + 2
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path):
    text = strip(open(path, encoding="utf-8", errors="replace").read())
    stack, header, line, found = [], "", 1, []
    for c in text:
        if c == "\n":
            line += 1
        if c == "{":
            h = header.strip()
            outer = all(kind in ("ns", "type") for kind, _, _ in stack)
            if re.search(r"\bnamespace\b", h) or h.startswith("extern \"\""):
                kind = "ns"
            elif re.search(r"\b(class|struct|union|enum)\b", h) and "(" not in h.split("{")[0].split(":")[0]:
                kind = "type"
            elif outer and "(" in h and not h.endswith("="):
                kind = "fn"
            else:
                kind = "block"
            name = re.sub(r"\s+", " ", h)[-90:]
            stack.append((kind, line, name))
            header = ""
        elif c == "}":
            if stack:
                kind, start, name = stack.pop()
                if kind == "fn":
                    found.append((line - start + 1, start, name))
            header = ""
        elif c == ";":
            header = ""
        else:
            header += c
    return found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    over = False
    for folder in FOLDERS:
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for f in sorted(files):
                if not f.endswith(EXT):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, root)
                lines = sum(1 for _ in open(path, encoding="utf-8", errors="replace"))
                if lines > 600:
                    print(f"file {rel}: {lines} lines")
                    over = True
                for length, start, name in functions(path):
                    if length > 100:
                        print(f"function {rel}:{start}: {length} lines: {name.strip()}")
                        over = True
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
