#!/usr/bin/env python3
"""Writes a Llama-3-8B-shaped checkpoint in Meta's own layout (params.json + consolidated.NN.pth,
one torch.save file per model-parallel rank), for timing tpx's Meta reader against safetensors.

The weights are those of bench/hf_peer.py's HF checkpoint (random bf16, torch.manual_seed(0)),
made first when HF_DIR has none, so the two loads compare like for like: the same bytes, in
Meta's order. As Meta's own export lays them out (and as /work/shared/golden/make_refs.py writes
the test fixtures): q/k rows in the interleaved-pair RoPE order (HF's permutation inverted);
wq/wk/wv/w1/w3/output and tok_embeddings (Llama 3's VocabParallelEmbedding) split on dim 0,
wo/w2 on dim 1, norms replicated in every file.

  python3 bench/make_meta_checkpoint.py HF_DIR OUT_DIR [--files N]     (GPU machine: needs torch)
  e.g. python3 bench/make_meta_checkpoint.py /tmp/l8b /tmp/l8b-meta-mp2 --files 2
then point a job's [model] path at OUT_DIR (bench/run_8b.sh's job with TPX_BENCH_CKPT=OUT_DIR).
"""
import argparse, json, os, subprocess, sys, time

import torch
from safetensors import safe_open

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("hf_dir")
ap.add_argument("out_dir")
ap.add_argument("--files", type=int, default=1, help="model-parallel files (Meta ships 8B as 1, 70B as 8)")
a = ap.parse_args()

t0 = time.perf_counter()
if not os.path.exists(os.path.join(a.hf_dir, "config.json")):
    subprocess.run([sys.executable, os.path.join(here, "hf_peer.py"), "make", a.hf_dir], check=True)
c = json.load(open(os.path.join(a.hf_dir, "config.json")))
H, nh, L = c["hidden_size"], c["num_attention_heads"], c["num_hidden_layers"]
nkv = c.get("num_key_value_heads", nh)
theta = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta", 10000.0)

sd = {}
index = os.path.join(a.hf_dir, "model.safetensors.index.json")
files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
for f in files:
    with safe_open(os.path.join(a.hf_dir, f), framework="pt") as s:
        for k in s.keys():
            sd[k] = s.get_tensor(k)


def unpermute(w, n):  # HF's rotate-half rows back to Meta's interleaved pairs
    d1 = w.shape[0]
    return w.view(n, 2, d1 // n // 2, w.shape[1]).transpose(1, 2).reshape(d1, w.shape[1])


meta = {"tok_embeddings.weight": (sd["model.embed_tokens.weight"], 0), "norm.weight": (sd["model.norm.weight"], None),
        "output.weight": (sd["lm_head.weight"], 0)}
for l in range(L):
    p, m = f"model.layers.{l}.", f"layers.{l}."
    meta[m + "attention.wq.weight"] = (unpermute(sd[p + "self_attn.q_proj.weight"], nh), 0)
    meta[m + "attention.wk.weight"] = (unpermute(sd[p + "self_attn.k_proj.weight"], nkv), 0)
    meta[m + "attention.wv.weight"] = (sd[p + "self_attn.v_proj.weight"], 0)
    meta[m + "attention.wo.weight"] = (sd[p + "self_attn.o_proj.weight"], 1)
    meta[m + "feed_forward.w1.weight"] = (sd[p + "mlp.gate_proj.weight"], 0)
    meta[m + "feed_forward.w2.weight"] = (sd[p + "mlp.down_proj.weight"], 1)
    meta[m + "feed_forward.w3.weight"] = (sd[p + "mlp.up_proj.weight"], 0)
    meta[m + "attention_norm.weight"] = (sd[p + "input_layernorm.weight"], None)
    meta[m + "ffn_norm.weight"] = (sd[p + "post_attention_layernorm.weight"], None)

os.makedirs(a.out_dir, exist_ok=True)
for r in range(a.files):
    part = {k: (w.clone() if dim is None else w.chunk(a.files, dim=dim)[r].clone().contiguous()) for k, (w, dim) in meta.items()}
    torch.save(part, os.path.join(a.out_dir, f"consolidated.{r:02d}.pth"))
    del part
json.dump({"dim": H, "n_layers": L, "n_heads": nh, "n_kv_heads": nkv, "vocab_size": c["vocab_size"], "multiple_of": 1024,
           "ffn_dim_multiplier": 1.3, "norm_eps": c["rms_norm_eps"], "rope_theta": theta},
          open(os.path.join(a.out_dir, "params.json"), "w"))
size = sum(os.path.getsize(os.path.join(a.out_dir, f)) for f in os.listdir(a.out_dir))
print(f"RESULT make_meta_s={time.perf_counter() - t0:.1f} files={a.files} bytes={size}")
