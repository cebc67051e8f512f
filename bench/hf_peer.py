# Copied from the project's shared peer folder (../shared/peer/hf_peer.py): HF transformers, the peer
# tpx is measured against. Not tpx code; kept here so that the GPU machine has it.
"""Peer measurement: HF transformers decoding a Llama-3-8B-shaped random bf16 model.

Modes: 'make DIR' saves the checkpoint; 'tp1 DIR' times batch-1 greedy decode on one GPU
(eager, then static cache + torch.compile); 'tp DIR' is run under torchrun and times
load + decode with tp_plan='auto'. Prints one 'RESULT key=value' line per figure.
"""
import os, sys, time, torch
import transformers as tf

def cfg():
    return tf.LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                          rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False)

def decode_ms(model, dev, prompt=128, new=128, reps=2):
    ids = torch.randint(0, 128000, (1, prompt), device=dev)
    kw = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    def run(n):
        torch.cuda.synchronize(); t = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        torch.cuda.synchronize(); return time.perf_counter() - t
    run(new); run(1)  # warm-up (and compile where enabled)
    best = min((run(new) - run(1)) / (new - 1) for _ in range(reps))
    return best * 1e3

mode, path = sys.argv[1], sys.argv[2]
if mode == "make":
    t = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = tf.LlamaForCausalLM(cfg()).to(torch.bfloat16)
    m.save_pretrained(path)
    print(f"RESULT make_s={time.perf_counter()-t:.1f} params={sum(p.numel() for p in m.parameters())}")
elif mode == "tp1":
    t = time.perf_counter()
    m = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda")
    torch.cuda.synchronize(); print(f"RESULT hf_load_tp1_s={time.perf_counter()-t:.1f}")
    x = torch.empty(4 << 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
    for _ in range(3): y.copy_(x)
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): y.copy_(x)
    torch.cuda.synchronize(); print(f"RESULT hbm_copy_GBps={2*10*x.numel()/(time.perf_counter()-t)/1e9:.0f}")
    del x, y
    print(f"RESULT hf_eager_tp1_ms_per_token={decode_ms(m, 'cuda'):.2f}", flush=True)
    m.generation_config.cache_implementation = "static"
    # mode="reduce-overhead" (CUDA graphs) failed under generate() with transformers 5.17; plain inductor works
    m.forward = torch.compile(m.forward, fullgraph=True)
    print(f"RESULT hf_compile_tp1_ms_per_token={decode_ms(m, 'cuda'):.2f}", flush=True)
elif mode == "tp":
    import torch.distributed as dist
    t = time.perf_counter()
    m = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, tp_plan="auto")
    torch.cuda.synchronize(); load = time.perf_counter() - t
    r, w = dist.get_rank(), dist.get_world_size()
    ms = decode_ms(m, m.device)
    if r == 0: print(f"RESULT hf_load_tp{w}_s={load:.1f}\nRESULT hf_eager_tp{w}_ms_per_token={ms:.2f}", flush=True)
    dist.destroy_process_group()
