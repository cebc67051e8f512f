#!/usr/bin/env python3
"""The peer of `tpx serve` under load: HF transformers' own continuous batching
(`model.generate_batch`, paged attention) on the same checkpoint and the same request set
(bench/serve_load.py --write-requests), greedy, each request's own max_new_tokens. Not tpx code.
Prints one 'RESULT key=value' line per figure: generated tokens/s over the timed run (after a
warm-up run of a few requests, which captures HF's graphs).

  python3 bench/hf_serve_peer.py CHECKPOINT REQUESTS.json
"""
import argparse, json, time, torch
import transformers as tf
from transformers.generation import GenerationConfig

p = argparse.ArgumentParser()
p.add_argument("checkpoint")
p.add_argument("requests")
args = p.parse_args()
reqs = json.load(open(args.requests))

t = time.perf_counter()
attn = "sdpa_paged"
try:
    model = tf.AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.bfloat16, device_map="cuda", attn_implementation=attn)
except Exception as e:  # older names: let generate_batch pick its default paged attention
    print(f"RESULT hf_attn_fallback={type(e).__name__}")
    model = tf.AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.bfloat16, device_map="cuda")
print(f"RESULT hf_load_s={time.perf_counter() - t:.1f}", flush=True)


def run(batch):
    # generate_batch takes one GenerationConfig for all of them: the comparison's request set
    # has one output length (bench/serve_load.py --fixed-output), every request runs to it.
    lengths = {r["max_tokens"] for r in batch}
    assert len(lengths) == 1, f"the request set has {len(lengths)} output lengths; write it with --fixed-output"
    cfg = GenerationConfig(max_new_tokens=lengths.pop(), do_sample=False, eos_token_id=None, pad_token_id=0)
    start = time.perf_counter()
    out = model.generate_batch(inputs=[r["prompt"] for r in batch], generation_config=cfg, progress_bar=False)
    torch.cuda.synchronize()
    return sum(len(o.generated_tokens) for o in out.values()), time.perf_counter() - start


run(reqs[:8])  # warm-up
tokens, secs = run(reqs)
print(f"RESULT hf_cb_requests={len(reqs)}")
print(f"RESULT hf_cb_generated_tokens={tokens}")
print(f"RESULT hf_cb_seconds={secs:.2f}")
print(f"RESULT hf_cb_tokens_per_s={tokens / secs:.1f}", flush=True)
