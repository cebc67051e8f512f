#!/usr/bin/env python3
"""Writes the Meta-format fixtures of tests/test_meta.cpp with the Python standard library alone
(no torch here): torch.save's zip layout and protocol-2 pickle, byte for byte in structure as
torch 2.x writes them for a dict of tensors (compare with
`python3 -c "import zipfile,pickletools; pickletools.dis(zipfile.ZipFile(F).read(N))"` on a real
consolidated.00.pth).

  meta-llama2-mp4/  llama-gqa's weights (tests/data/golden/llama-gqa) re-split into 4 files as
                    Llama 2's model-parallel code splits them: tok_embeddings on dim 1
                    (ParallelEmbedding), wq/wk/wv/w1/w3/output on dim 0, wo/w2 on dim 1, norms and
                    rope.freqs replicated; q/k rows in Meta's interleaved-pair order (HF's
                    permutation inverted); params.json as Llama 2's (vocab_size -1, no rope_theta).
  bad-*/            one defect each, for the refusals (see make_bad below).

Usage: python3 tests/data/meta/make_meta_fixtures.py   (rewrites the folders next to it)
       python3 tests/data/meta/make_meta_fixtures.py --large DIR   (test_meta, at test time: DIR/hf
       and DIR/meta, random weights too large to commit, whose q/k span several read chunks)
       python3 tests/data/meta/make_meta_fixtures.py --zip64 IN.pth OUT.pth   (test_meta: IN with a
       central directory that gives every local header's offset in a zip64 extra field, as
       torch's writer does for entries past 4 GiB)
"""
import json, os, shutil, struct, zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "golden", "llama-gqa")
STORAGE = {"BF16": ("BFloat16Storage", 2), "F32": ("FloatStorage", 4), "F16": ("HalfStorage", 2)}


# ---------------------------------------------------------------- safetensors in
def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        b, e = h["data_offsets"]
        out[name] = (h["dtype"], h["shape"], data[b:e])
    return out


# ---------------------------------------------------------------- tensors as (dtype, shape, bytes)
def rows(t):
    dtype, shape, raw = t
    size = STORAGE[dtype][1]
    width = (shape[1] if len(shape) == 2 else shape[0]) * size
    return [raw[i * width:(i + 1) * width] for i in range(shape[0] if len(shape) == 2 else 1)]


def chunk(t, parts, dim):
    """torch.chunk(t, parts, dim)[k] for every k, contiguous."""
    dtype, shape, raw = t
    size = STORAGE[dtype][1]
    out = []
    if dim == 0:
        n = shape[0] // parts
        r = rows(t)
        for k in range(parts):
            out.append((dtype, [n, shape[1]], b"".join(r[k * n:(k + 1) * n])))
    else:
        n = shape[1] // parts
        for k in range(parts):
            out.append((dtype, [shape[0], n], b"".join(row[k * n * size:(k + 1) * n * size] for row in rows(t))))
    return out


def unpermute(t, heads):
    """HF's rotate-half rows back to Meta's interleaved pairs (HF row h*hd + s*hd/2 + p <- Meta row h*hd + 2p + s)."""
    dtype, shape, raw = t
    r = rows(t)
    hd = shape[0] // heads
    meta = [None] * shape[0]
    for h in range(heads):
        for s in range(2):
            for p in range(hd // 2):
                meta[h * hd + 2 * p + s] = r[h * hd + s * (hd // 2) + p]
    return (dtype, shape, b"".join(meta))


def bf16(x):
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    bits += 0x7FFF + ((bits >> 16) & 1)  # round to nearest even, as torch does
    return struct.pack("<H", (bits >> 16) & 0xFFFF)


# ---------------------------------------------------------------- torch.save's pickle (protocol 2)
class Pickle:
    def __init__(self):
        self.out = bytearray(b"\x80\x02")
        self.memo = {}

    def put(self):
        n = len(self.memo) if not hasattr(self, "_n") else self._n
        self._n = n + 1
        self.out += b"q" + bytes([n]) if n < 256 else b"r" + struct.pack("<I", n)
        return n

    def get(self, n):
        self.out += b"h" + bytes([n]) if n < 256 else b"j" + struct.pack("<I", n)

    def string(self, s):
        if ("s", s) in self.memo:
            return self.get(self.memo[("s", s)])
        b = s.encode()
        self.out += b"X" + struct.pack("<I", len(b)) + b
        self.memo[("s", s)] = self.put()

    def glob(self, module, name):
        if ("g", module, name) in self.memo:
            return self.get(self.memo[("g", module, name)])
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        self.memo[("g", module, name)] = self.put()

    def integer(self, v):
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -2**31 <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(b)]) + b

    def int_tuple(self, values):
        if len(values) == 0:
            self.out += b")"
            return
        if len(values) > 3:
            self.out += b"("
        for v in values:
            self.integer(v)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(values), b"t")
        self.put()

    def tensor(self, name, dtype, shape, key, numel):
        """name: torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())"""
        self.string(name)
        self.glob("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("
        self.string("storage")
        self.glob("torch", STORAGE[dtype][0])
        self.string(key)
        self.string("cpu")
        self.integer(numel)
        self.out += b"t"
        self.put()
        self.out += b"Q"
        self.integer(0)
        self.int_tuple(shape)
        stride, acc = [], 1
        for d in reversed(shape):
            stride.insert(0, acc)
            acc *= d
        self.int_tuple(stride)
        self.out += b"\x89"
        self.glob("collections", "OrderedDict")
        self.out += b")R"
        self.put()
        self.out += b"t"
        self.put()
        self.out += b"R"
        self.put()


def pickle_dict(tensors):
    """tensors: list of (name, dtype, shape, key, numel) -> data.pkl bytes."""
    p = Pickle()
    p.out += b"}"
    p.put()
    p.out += b"("
    for t in tensors:
        p.tensor(*t)
    p.out += b"u."
    return bytes(p.out)


# ---------------------------------------------------------------- torch.save's zip
def write_zip(path, archive, pickle_bytes, storages, compress=()):
    """Entries in torch's order, stored, each one's data 64-byte aligned by an 'FB' extra field."""
    entries = [("data.pkl", pickle_bytes), (".format_version", b"1"), (".storage_alignment", b"64"), ("byteorder", b"little")]
    entries += [("data/" + k, v) for k, v in storages]
    entries += [("version", b"3\n"), (".data/serialization_id", b"0" * 40)]
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries:
            full = archive + "/" + name
            info = zipfile.ZipInfo(full, date_time=(1980, 1, 1, 0, 0, 0))
            pad = (-(f.tell() + 30 + len(full) + 4)) % 64
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            info.compress_type = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            z.writestr(info, data)


def save(path, tensors, compress=(), drop_storage=None, pickle_override=None):
    """torch.save({name: tensor}) for tensors = [(name, (dtype, shape, bytes))]."""
    archive = os.path.splitext(os.path.basename(path))[0]
    meta, storages = [], []
    for i, (name, (dtype, shape, raw)) in enumerate(tensors):
        meta.append((name, dtype, shape, str(i), len(raw) // STORAGE[dtype][1]))
        if str(i) != drop_storage:
            storages.append((str(i), raw))
    write_zip(path, archive, pickle_override or pickle_dict(meta), storages, tuple("data/" + c for c in compress))


# ---------------------------------------------------------------- the fixtures
def make_llama2_mp4():
    out = os.path.join(HERE, "meta-llama2-mp4")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    c = json.load(open(os.path.join(SRC, "config.json")))
    sd = read_safetensors(os.path.join(SRC, "model.safetensors"))
    H, nh, nkv, L = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["num_hidden_layers"]
    hd, theta = H // nh, c["rope_parameters"]["rope_theta"]
    meta = [("tok_embeddings.weight", sd["model.embed_tokens.weight"], 1), ("norm.weight", sd["model.norm.weight"], None),
            ("output.weight", sd["lm_head.weight"], 0)]
    for l in range(L):
        p = "model.layers.%d." % l
        m = "layers.%d." % l
        meta += [(m + "attention.wq.weight", unpermute(sd[p + "self_attn.q_proj.weight"], nh), 0),
                 (m + "attention.wk.weight", unpermute(sd[p + "self_attn.k_proj.weight"], nkv), 0),
                 (m + "attention.wv.weight", sd[p + "self_attn.v_proj.weight"], 0),
                 (m + "attention.wo.weight", sd[p + "self_attn.o_proj.weight"], 1),
                 (m + "feed_forward.w1.weight", sd[p + "mlp.gate_proj.weight"], 0),
                 (m + "feed_forward.w2.weight", sd[p + "mlp.down_proj.weight"], 1),
                 (m + "feed_forward.w3.weight", sd[p + "mlp.up_proj.weight"], 0),
                 (m + "attention_norm.weight", sd[p + "input_layernorm.weight"], None),
                 (m + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], None)]
    freqs = b"".join(bf16(1.0 / theta ** (i / hd)) for i in range(0, hd, 2))
    meta.append(("rope.freqs", ("BF16", [hd // 2], freqs), None))
    mp = 4
    for r in range(mp):
        part = [(name, t if dim is None else chunk(t, mp, dim)[r]) for name, t, dim in meta]
        save(os.path.join(out, "consolidated.%02d.pth" % r), part)
    json.dump({"dim": H, "multiple_of": 32, "n_heads": nh, "n_kv_heads": nkv, "n_layers": L, "norm_eps": c["rms_norm_eps"],
               "vocab_size": -1}, open(os.path.join(out, "params.json"), "w"))


def make_bad():
    """Tiny folders, one defect each (params.json fits the tensors unless said)."""
    params = {"dim": 8, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "vocab_size": 4, "norm_eps": 1e-5}
    t = lambda *shape: ("BF16", list(shape), bytes(2 * (shape[0] * (shape[1] if len(shape) > 1 else 1))))

    def folder(name, files, p=params):
        out = os.path.join(HERE, name)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        json.dump(p, open(os.path.join(out, "params.json"), "w"))
        for i, f in enumerate(files):
            f(os.path.join(out, "consolidated.%02d.pth" % i))

    one = [("layers.0.attention.wq.weight", t(8, 8)), ("norm.weight", t(8))]
    # A pickle that would run a shell command when unpickled: GLOBAL os.system / builtins.eval, then REDUCE.
    def evil(module, name, arg):
        s = arg.encode()
        return b"\x80\x02c" + module + b"\n" + name + b"\nq\x00X" + struct.pack("<I", len(s)) + s + b"q\x01\x85q\x02Rq\x03."
    folder("bad-global-os-system", [lambda f: save(f, one, pickle_override=evil(b"os", b"system", "touch tpx-meta-marker"))])
    folder("bad-global-eval", [lambda f: save(f, one, pickle_override=evil(
        b"builtins", b"eval", "open('tpx-meta-marker', 'w').write('ran')"))])
    folder("bad-missing-entry", [lambda f: save(f, one, drop_storage="1")])
    folder("bad-compressed-entry", [lambda f: save(f, one, compress=("0",))])
    folder("bad-shapes-disagree", [lambda f: save(f, [("layers.0.attention.wq.weight", t(4, 8))]),
                                   lambda f: save(f, [("layers.0.attention.wq.weight", t(4, 6))])])
    # A replicated tensor (every file holds it whole) whose copies disagree in dtype.
    folder("bad-replicated-disagrees", [lambda f: save(f, [("norm.weight", t(8))]),
                                        lambda f: save(f, [("norm.weight", ("F16", [8], bytes(16)))])])
    # A whole one-layer checkpoint and a tensor of a layer past any integer (20 digits).
    whole = [("tok_embeddings.weight", t(4, 8)), ("norm.weight", t(8)), ("output.weight", t(4, 8))]
    whole += [("layers.0." + n, t(*shape)) for n, shape in [
        ("attention.wq.weight", (8, 8)), ("attention.wk.weight", (4, 8)), ("attention.wv.weight", (4, 8)),
        ("attention.wo.weight", (8, 8)), ("feed_forward.w1.weight", (16, 8)), ("feed_forward.w2.weight", (8, 16)),
        ("feed_forward.w3.weight", (16, 8)), ("attention_norm.weight", (8,)), ("ffn_norm.weight", (8,))]]
    folder("bad-layer-index", [lambda f: save(f, whole + [("layers.99999999999999999999.attention_norm.weight", t(8))])])


def write_safetensors(path, tensors):
    header, offset = {}, 0
    for name, (dtype, shape, raw) in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, (_, _, raw) in tensors:
            f.write(raw)


def make_large(out):
    """One layer of dim 2048 (16 heads of 128, 4 KV heads): q is 4 Mi elements, so its reads span
    4 chunks of whole heads; the vocabulary of 600 rows makes the embedding 1.2 Mi elements (2
    chunks). HF's tensors are random bf16; Meta's are them unpermuted and split over 2 files."""
    import random
    rng = random.Random(7)
    D, nh, nkv, F, V = 2048, 16, 4, 256, 600
    hd = D // nh
    values = [bf16(rng.uniform(-1, 1)) for _ in range(4096)]
    rand = lambda *shape: ("BF16", list(shape), b"".join(rng.choice(values) for _ in range(shape[0] * (shape[1] if len(shape) > 1 else 1))))
    hf = {"model.embed_tokens.weight": rand(V, D), "model.norm.weight": rand(D), "lm_head.weight": rand(V, D),
          "model.layers.0.self_attn.q_proj.weight": rand(nh * hd, D), "model.layers.0.self_attn.k_proj.weight": rand(nkv * hd, D),
          "model.layers.0.self_attn.v_proj.weight": rand(nkv * hd, D), "model.layers.0.self_attn.o_proj.weight": rand(D, nh * hd),
          "model.layers.0.mlp.gate_proj.weight": rand(F, D), "model.layers.0.mlp.down_proj.weight": rand(D, F),
          "model.layers.0.mlp.up_proj.weight": rand(F, D), "model.layers.0.input_layernorm.weight": rand(D),
          "model.layers.0.post_attention_layernorm.weight": rand(D)}
    os.makedirs(os.path.join(out, "hf"))
    write_safetensors(os.path.join(out, "hf", "model.safetensors"), sorted(hf.items()))
    p = "model.layers.0."
    meta = [("tok_embeddings.weight", hf["model.embed_tokens.weight"], 0), ("norm.weight", hf["model.norm.weight"], None),
            ("output.weight", hf["lm_head.weight"], 0),
            ("layers.0.attention.wq.weight", unpermute(hf[p + "self_attn.q_proj.weight"], nh), 0),
            ("layers.0.attention.wk.weight", unpermute(hf[p + "self_attn.k_proj.weight"], nkv), 0),
            ("layers.0.attention.wv.weight", hf[p + "self_attn.v_proj.weight"], 0),
            ("layers.0.attention.wo.weight", hf[p + "self_attn.o_proj.weight"], 1),
            ("layers.0.feed_forward.w1.weight", hf[p + "mlp.gate_proj.weight"], 0),
            ("layers.0.feed_forward.w2.weight", hf[p + "mlp.down_proj.weight"], 1),
            ("layers.0.feed_forward.w3.weight", hf[p + "mlp.up_proj.weight"], 0),
            ("layers.0.attention_norm.weight", hf[p + "input_layernorm.weight"], None),
            ("layers.0.ffn_norm.weight", hf[p + "post_attention_layernorm.weight"], None)]
    os.makedirs(os.path.join(out, "meta"))
    for r in range(2):
        save(os.path.join(out, "meta", "consolidated.%02d.pth" % r),
             [(name, t if dim is None else chunk(t, 2, dim)[r]) for name, t, dim in meta])
    json.dump({"dim": D, "n_layers": 1, "n_heads": nh, "n_kv_heads": nkv, "vocab_size": V, "norm_eps": 1e-5, "rope_theta": 500000.0},
              open(os.path.join(out, "meta", "params.json"), "w"))


def rewrite_zip64(src, dst):
    """The same local headers and data, and the central directory's records with every local
    header offset moved into a zip64 extra field (id 1), then zip64 end records: what torch's
    writer does for entries past 4 GiB."""
    raw = open(src, "rb").read()
    eocd = raw.rindex(b"PK\x05\x06")
    if raw[eocd - 20:eocd - 16] == b"PK\x06\x07":  # already zip64: the real values are in the zip64 record
        z = struct.unpack("<Q", raw[eocd - 12:eocd - 4])[0]
        count, cd_size, cd_at = struct.unpack("<QQQ", raw[z + 32:z + 56])
    else:
        count, cd_size, cd_at = struct.unpack("<HII", raw[eocd + 10:eocd + 20])
    cd, at = b"", cd_at
    for _ in range(count):
        fixed = bytearray(raw[at:at + 46])
        n, e, c = struct.unpack("<HHH", fixed[28:34])
        offset = struct.unpack("<I", fixed[42:46])[0]
        rest = raw[at + 46:at + 46 + n + e + c]
        at += 46 + n + e + c
        extra = struct.pack("<HHQ", 1, 8, offset) + rest[n:n + e]
        fixed[30:32] = struct.pack("<H", len(extra))
        fixed[42:46] = b"\xff\xff\xff\xff"
        cd += bytes(fixed) + rest[:n] + extra + rest[n + e:]
    eocd64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, len(cd), cd_at)
    locator = struct.pack("<IIQI", 0x07064B50, 0, cd_at + len(cd), 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    open(dst, "wb").write(raw[:cd_at] + cd + eocd64 + locator + end)


if __name__ == "__main__":
    import sys
    if len(sys.argv) == 3 and sys.argv[1] == "--large":
        make_large(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "--zip64":
        rewrite_zip64(sys.argv[2], sys.argv[3])
    else:
        make_llama2_mp4()
        make_bad()
