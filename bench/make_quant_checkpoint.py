"""Llama-3-8B-shaped quantized checkpoints with random weights, for the GPU work on quantized
weights (issue 29's second half). Run where torch is (the GPU machine):

  python3 make_quant_checkpoint.py gptq OUT_DIR [--group 128] [--desc-act] [--asym] [--v2] [--layers 32]
  python3 make_quant_checkpoint.py fp8  OUT_DIR [--layers 32]

The weights are random (std 0.02), rounded to bf16, then quantized with exactly the rules of
/work/shared/golden/make_refs.py (gptq_quant, fp8_quant), so that what tpx reads can be checked
against the same dequantized numbers. Every layers.*.*_proj.weight is quantized; embeddings,
norms and lm_head stay bf16 (GPTQ: fp16, as GPTQ tools write them). Written as HF does: sharded
model-0000N-of-0000M.safetensors (about 5 GB each) with model.safetensors.index.json,
config.json with quantization_config, generation_config.json.
"""
import argparse, json, os
import torch
from safetensors.torch import save_file

p = argparse.ArgumentParser()
p.add_argument("method", choices=["gptq", "fp8"])
p.add_argument("out")
p.add_argument("--group", type=int, default=128, help="GPTQ group_size (-1: one group)")
p.add_argument("--desc-act", action="store_true", help="GPTQ act-order: g_idx from a random permutation")
p.add_argument("--asym", action="store_true", help="GPTQ asymmetric zeros (sym: false)")
p.add_argument("--v2", action="store_true", help="checkpoint_format gptq_v2 (zeros stored as they are)")
p.add_argument("--layers", type=int, default=32)
p.add_argument("--seed", type=int, default=1234)
a = p.parse_args()

H, I, V, NH, NKV = 4096, 14336, 128256, 32, 8
HD = H // NH
config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": H,
          "intermediate_size": I, "num_hidden_layers": a.layers, "num_attention_heads": NH, "num_key_value_heads": NKV,
          "head_dim": HD, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "hidden_act": "silu",
          "rope_theta": 500000.0, "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
          "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "float16" if a.method == "gptq" else "bfloat16"}

# ---- the rules of make_refs.py, unchanged
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max
def fp8_quant(w):
    o, i = w.shape; assert o % 128 == 0 and i % 128 == 0, w.shape
    b = w.float().reshape(o // 128, 128, i // 128, 128)
    amax = b.abs().amax(dim=(1, 3), keepdim=True).clamp(min=1e-12)
    scale = amax / FP8_MAX
    q = (b / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.reshape(o, i).contiguous(), scale.reshape(o // 128, i // 128).contiguous()

def gptq_quant(w, group, desc_act, sym, v2, seed):
    o, i = w.shape
    group = i if group == -1 else group
    assert i % group == 0 and i % 8 == 0 and o % 8 == 0
    w = w.float()
    if desc_act:
        perm = torch.randperm(i, generator=torch.Generator().manual_seed(seed))
        g_idx = torch.empty(i, dtype=torch.int32); g_idx[perm] = (torch.arange(i) // group).to(torch.int32)
    else:
        g_idx = (torch.arange(i) // group).to(torch.int32)
    G = i // group
    dev = w.device  # (everything on w's device: the rules' arithmetic is the same on either)
    g_idx_d = g_idx.to(dev)
    scales = torch.empty(G, o, device=dev); zeros = torch.empty(G, o, dtype=torch.int32, device=dev)
    for gi in range(G):
        cols = (g_idx_d == gi).nonzero().flatten(); wg = w[:, cols]
        if sym:
            s = (wg.abs().amax(dim=1) / 7.5).clamp(min=1e-8); z = torch.full((o,), 8, dtype=torch.int32, device=dev)
        else:
            lo, hi = wg.amin(dim=1), wg.amax(dim=1); s = ((hi - lo) / 15).clamp(min=1e-8)
            # v1 stores zero - 1 and reads stored + 1: it cannot hold zero 0
            z = torch.round(-lo / s).clamp(0 if v2 else 1, 15).to(torch.int32)
        scales[gi] = s.half().float(); zeros[gi] = z
    sc = scales[g_idx_d.long()].t(); zz = zeros[g_idx_d.long()].t()
    q = torch.clamp(torch.round(w / sc) + zz, 0, 15).to(torch.int32)
    qt = q.t().contiguous()
    qweight = torch.zeros(i // 8, o, dtype=torch.int64, device=dev)
    for j in range(8): qweight |= (qt[j::8].to(torch.int64) & 0xF) << (4 * j)
    zs = zeros if v2 else (zeros - 1) & 0xF
    qzeros = torch.zeros(G, o // 8, dtype=torch.int64, device=dev)
    for j in range(8): qzeros |= (zs[:, j::8].to(torch.int64)) << (4 * j)
    to32 = lambda t: ((t + 2**31) % 2**32 - 2**31).to(torch.int32).contiguous()
    return to32(qweight), to32(qzeros), scales.half().contiguous(), g_idx.contiguous()

# ---- the model, one tensor at a time (an 8B model quantized on the GPU when there is one)
dev = "cuda" if torch.cuda.is_available() else "cpu"
gen = torch.Generator(device=dev).manual_seed(a.seed)
other = torch.float16 if a.method == "gptq" else torch.bfloat16
def randn(*shape):
    return (0.02 * torch.randn(*shape, generator=gen, device=dev)).to(torch.bfloat16).float()

os.makedirs(a.out, exist_ok=True)
shards, shard, shard_bytes, weight_map = [], {}, 0, {}
def put(name, t):
    global shard, shard_bytes
    shard[name] = t.cpu().contiguous(); shard_bytes += t.numel() * t.element_size()
    if shard_bytes > 5e9: flush()
def flush():
    global shard, shard_bytes
    if shard: shards.append(shard); shard, shard_bytes = {}, 0
    # written at the end, when the count is known

def linear(name, o, i, seed):
    w = randn(o, i)
    if a.method == "fp8":
        q, s = fp8_quant(w); put(name + ".weight", q); put(name + ".weight_scale_inv", s.float())
    else:
        qw, qz, s, g = gptq_quant(w, a.group, a.desc_act, not a.asym, a.v2, seed)
        for k, t in (("qweight", qw), ("qzeros", qz), ("scales", s), ("g_idx", g)): put(f"{name}.{k}", t)

put("model.embed_tokens.weight", randn(V, H).to(other))
for l in range(a.layers):
    p_ = f"model.layers.{l}."
    put(p_ + "input_layernorm.weight", (1 + 0.1 * randn(H)).to(other))
    put(p_ + "post_attention_layernorm.weight", (1 + 0.1 * randn(H)).to(other))
    for k, (o, i) in enumerate([(NH * HD, H), (NKV * HD, H), (NKV * HD, H), (H, NH * HD)]):
        linear(p_ + "self_attn." + ["q_proj", "k_proj", "v_proj", "o_proj"][k], o, i, a.seed + 10 * l + k)
    for k, (o, i) in enumerate([(I, H), (I, H), (H, I)]):
        linear(p_ + "mlp." + ["gate_proj", "up_proj", "down_proj"][k], o, i, a.seed + 10 * l + 4 + k)
    print(f"layer {l} done", flush=True)
put("model.norm.weight", (1 + 0.1 * randn(H)).to(other))
put("lm_head.weight", randn(V, H).to(other))
flush()

n = len(shards)
for k, sd in enumerate(shards):
    f = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
    save_file(sd, os.path.join(a.out, f), metadata={"format": "pt"})
    for name in sd: weight_map[name] = f
json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(a.out, "model.safetensors.index.json"), "w"), indent=2)
if a.method == "gptq":
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": a.group, "desc_act": a.desc_act,
                                     "sym": not a.asym, "checkpoint_format": "gptq_v2" if a.v2 else "gptq",
                                     "true_sequential": True, "damp_percent": 0.01}
else:
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128],
                                     "modules_to_not_convert": ["lm_head"]}
json.dump(config, open(os.path.join(a.out, "config.json"), "w"), indent=2)
json.dump({"bos_token_id": 128000, "eos_token_id": 128001, "do_sample": False}, open(os.path.join(a.out, "generation_config.json"), "w"), indent=2)
print(f"wrote {a.out}: {len(weight_map)} tensors in {n} files, {a.method}")
