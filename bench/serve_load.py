#!/usr/bin/env python3
"""Load generator for `tpx serve` with the standard library only (the GPU machine has python3
but no npm): the same load as bench/serve_load.mjs, N concurrent clients sending streamed
completions of token-id prompts back to back, plus an optional probe that sends one long prompt
at a time while the load runs (its time to first token "under load").

The request set is drawn from a seed and can be written to a file (--write-requests) so that
bench/hf_serve_peer.py runs the same prompts and output lengths. Reports one JSON object:
requests/s, generated tokens/s, and TTFT / inter-token latency percentiles (ms).

  python3 bench/serve_load.py --url http://127.0.0.1:8000 --clients 64 --requests 256 \
      --prompt-mean 256 --output-mean 128 [--probe-prompt 512] [--write-requests FILE]
"""
import argparse, http.client, json, random, statistics, sys, threading, time, urllib.parse


def percentiles(xs):
    if not xs:
        return {}
    xs = sorted(xs)
    pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "mean": statistics.fmean(xs), "n": len(xs)}


def request_set(args):
    rng = random.Random(args.seed)
    def length(mean):
        if args.dist == "lognormal":
            return max(1, round(mean * rng.lognormvariate(-0.125, 0.5)))
        return rng.randint(max(1, mean // 2), mean + mean // 2)
    return [{"prompt": [rng.randrange(1, args.vocab) for _ in range(length(args.prompt_mean))],
             "max_tokens": args.output_mean if args.fixed_output else length(args.output_mean)} for _ in range(args.requests)]


def stream_one(url, key, model, req, sampling):
    """One streamed completion; returns (ttft_s, [gaps_s], tokens)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    # ignore_eos: every request runs to its max_tokens, as the HF peer's (eos_token_id=None).
    body = json.dumps({"model": model, "prompt": req["prompt"], "max_tokens": req["max_tokens"], **sampling,
                       "stream": True, "return_token_ids": True, "ignore_eos": True})
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    times, tokens = [], 0
    for line in resp:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        ids = [t for c in chunk.get("choices", []) for t in (c.get("token_ids") or [])]
        if ids:
            now = time.perf_counter()
            times.extend([now] * len(ids))
            tokens += len(ids)
    conn.close()
    if not times:
        raise RuntimeError("a stream ended without tokens")
    gaps = [b - a for a, b in zip(times, times[1:]) if b > a]
    return times[0] - start, gaps, tokens


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--key", default="none")
    p.add_argument("--model", default=None)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--prompt-mean", type=int, default=128)
    p.add_argument("--output-mean", type=int, default=64)
    p.add_argument("--dist", choices=("uniform", "lognormal"), default="uniform")
    p.add_argument("--vocab", type=int, default=3000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fixed-output", action="store_true", help="every request asks for --output-mean tokens")
    p.add_argument("--probe-prompt", type=int, default=0, help="also send one prompt of this many tokens at a time")
    p.add_argument("--write-requests", default=None)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; else each call sampled (seeded by its index)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--logprobs-every", type=int, default=0,
                   help="every n-th call also asks for its tokens' logprobs (1 most likely beside): rows rank 0 reads on the host")
    args = p.parse_args()

    reqs = request_set(args)
    if args.write_requests:
        with open(args.write_requests, "w") as f:
            json.dump(reqs, f)
    model = args.model
    if model is None:
        u = urllib.parse.urlparse(args.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {args.key}"})
        model = json.loads(conn.getresponse().read())["data"][0]["id"]

    def sampling(index):
        out = {"temperature": 0}
        if args.temperature > 0:
            out = {"temperature": args.temperature, "seed": index + 1}
        if args.logprobs_every > 0 and index % args.logprobs_every == 0:
            out["logprobs"] = 1
        if args.temperature <= 0:
            return out
        if args.top_p < 1:
            out["top_p"] = args.top_p
        if args.top_k > 0:
            out["top_k"] = args.top_k
        return out

    lock = threading.Lock()
    next_req, ttft, gaps, tokens, errors, probe_ttft = [0], [], [], [0], [], []
    done = threading.Event()

    def client():
        while True:
            with lock:
                if next_req[0] >= len(reqs):
                    return
                req = reqs[next_req[0]]
                index = next_req[0]
                next_req[0] += 1
            try:
                t, g, n = stream_one(args.url, args.key, model, req, sampling(index))
            except Exception as e:  # a failed call is reported, not hidden
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                ttft.append(t); gaps.extend(g); tokens[0] += n

    def probe():
        rng = random.Random(args.seed + 1)
        while not done.is_set():
            req = {"prompt": [rng.randrange(1, args.vocab) for _ in range(args.probe_prompt)], "max_tokens": 2}
            try:
                t, _, _ = stream_one(args.url, args.key, model, req, sampling(-1))
                probe_ttft.append(t)
            except Exception as e:
                errors.append("probe: " + str(e))
            done.wait(0.25)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    prober = threading.Thread(target=probe) if args.probe_prompt > 0 else None
    if prober:
        prober.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    done.set()
    if prober:
        prober.join()
    ms = lambda d: {k: (v * 1e3 if k != "n" else v) for k, v in d.items()}
    print(json.dumps({
        "clients": args.clients, "requests": len(reqs), "failed": len(errors), "errors": errors[:5],
        "seconds": elapsed, "requests_per_s": (len(reqs) - len(errors)) / elapsed,
        "generated_tokens": tokens[0], "generated_tokens_per_s": tokens[0] / elapsed,
        "ttft_ms": ms(percentiles(ttft)), "itl_ms": ms(percentiles(gaps)),
        "probe_prompt": args.probe_prompt, "probe_ttft_ms": ms(percentiles(probe_ttft)),
        "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
    }))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
