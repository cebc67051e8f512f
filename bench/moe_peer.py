"""HF transformers on a Mixtral-8x7B-shaped model cut to a few layers (random bf16 weights), the
peer of tpx's MoE decode (bench/run_moe.sh, docs/PERF.md). Written after
../shared/peer/hf_peer.py, which does the same for the Llama-3-8B shape.

    python3 bench/moe_peer.py make DIR [LAYERS]   saves the checkpoint (default 8 layers)
    python3 bench/moe_peer.py tp1 DIR             load time and batch-1 greedy decode, eager and
                                                  torch.compile, on one GPU

Prints one 'RESULT key=value' line per figure.
"""
import sys
import time

import torch
import transformers as tf


def cfg(layers):
    return tf.MixtralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                            num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
                            max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=1e6, tie_word_embeddings=False)


def decode_ms(model, prompt=128, new=128, reps=2):
    ids = torch.randint(0, 32000, (1, prompt), device="cuda")
    kw = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))

    def run(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    run(new), run(1)  # warm-up (and compile where enabled)
    return min((run(new) - run(1)) / (new - 1) for _ in range(reps)) * 1e3


mode, path = sys.argv[1], sys.argv[2]
if mode == "make":
    layers = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    t = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = tf.MixtralForCausalLM(cfg(layers)).to(torch.bfloat16)
    m.save_pretrained(path)
    print(f"RESULT make_s={time.perf_counter() - t:.1f} params={sum(p.numel() for p in m.parameters())}")
elif mode == "tp1":
    t = time.perf_counter()
    m = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda")
    torch.cuda.synchronize()
    print(f"RESULT hf_moe_load_tp1_s={time.perf_counter() - t:.1f}")
    print(f"RESULT hf_moe_eager_tp1_ms_per_token={decode_ms(m):.2f}", flush=True)
    try:
        m.generation_config.cache_implementation = "static"
        m.forward = torch.compile(m.forward)
        print(f"RESULT hf_moe_compile_tp1_ms_per_token={decode_ms(m):.2f}", flush=True)
    except Exception as e:  # MoE routing is data-dependent; say so rather than fail the run
        print(f"RESULT hf_moe_compile_tp1_failed={type(e).__name__}", flush=True)
