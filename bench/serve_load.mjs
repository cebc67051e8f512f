// Load generator for `tpx serve` (docs/SERVE.md): N concurrent clients of the OpenAI Node SDK,
// each sending streamed completions back to back until the run's request count is reached.
// Prompt and output lengths are drawn from a distribution (uniform or log-normal around a mean,
// seeded); reports throughput (requests/s, generated tokens/s), time to first token and
// inter-token latency percentiles, as one JSON object on stdout.
// usage: node bench/serve_load.mjs --modules DIR/node_modules --url http://HOST:PORT [--key KEY]
//          [--model NAME] [--clients 8] [--requests 64] [--prompt-mean 128] [--output-mean 64]
//          [--dist uniform|lognormal] [--vocab 3000] [--seed 1]
import { createRequire } from "node:module";
import path from "node:path";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith("--") ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []));
const opt = {
  modules: args.modules, url: args.url ?? "http://127.0.0.1:8000", key: args.key ?? "none", model: args.model,
  clients: Number(args.clients ?? 8), requests: Number(args.requests ?? 64), promptMean: Number(args["prompt-mean"] ?? 128),
  outputMean: Number(args["output-mean"] ?? 64), dist: args.dist ?? "uniform", vocab: Number(args.vocab ?? 3000), seed: Number(args.seed ?? 1),
};
if (!opt.modules) {
  console.error("serve_load: --modules DIR/node_modules (where npm installed openai) is required");
  process.exit(2);
}
const OpenAI = createRequire(path.join(opt.modules, "x.js"))("openai");
const client = new OpenAI({ baseURL: opt.url + "/v1", apiKey: opt.key, maxRetries: 0, timeout: 600000 });
const model = opt.model ?? (await client.models.list()).data[0].id;

// A seeded generator (mulberry32), so that two runs send the same load.
let state = opt.seed >>> 0;
const random = () => {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
// A length around `mean`: uniform in [mean/2, 3mean/2], or log-normal with sigma 0.5 (long tail).
const length = (mean) => {
  if (opt.dist === "lognormal") {
    const z = Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
    return Math.max(1, Math.round(mean * Math.exp(0.5 * z - 0.125)));
  }
  return Math.max(1, Math.round(mean * (0.5 + random())));
};
const work = Array.from({ length: opt.requests }, () => ({
  prompt: Array.from({ length: length(opt.promptMean) }, () => 1 + Math.floor(random() * (opt.vocab - 1))),
  max_tokens: length(opt.outputMean),
}));

const ttft = [], itl = [], failures = [];
let generated = 0, next = 0;
async function clientLoop() {
  while (next < work.length) {
    const w = work[next++];
    const t0 = performance.now();
    let last = t0, first = true;
    try {
      // ignore_eos: every request runs to its max_tokens, as bench/hf_serve_peer.py's.
      const stream = await client.completions.create({ model, prompt: w.prompt, max_tokens: w.max_tokens, temperature: 0, stream: true,
                                                       return_token_ids: true, ignore_eos: true });
      for await (const chunk of stream) {
        const n = chunk.choices[0]?.token_ids?.length ?? 1;
        const now = performance.now();
        if (first) ttft.push(now - t0);
        else itl.push((now - last) / n);
        first = false;
        last = now;
        generated += n;
      }
    } catch (e) {
      failures.push(String(e.status ?? e.message));
    }
  }
}
const start = performance.now();
await Promise.all(Array.from({ length: opt.clients }, clientLoop));
const seconds = (performance.now() - start) / 1000;
const pct = (xs, p) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return Number(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))].toFixed(2));
};
const summary = (xs) => ({ p50: pct(xs, 50), p90: pct(xs, 90), p99: pct(xs, 99), mean: xs.length ? Number((xs.reduce((a, b) => a + b) / xs.length).toFixed(2)) : null });
console.log(JSON.stringify({
  settings: opt, seconds: Number(seconds.toFixed(2)), requests: opt.requests - failures.length, failures,
  requests_per_s: Number(((opt.requests - failures.length) / seconds).toFixed(3)), generated_tokens: generated,
  generated_tokens_per_s: Number((generated / seconds).toFixed(1)), ttft_ms: summary(ttft), inter_token_ms: summary(itl),
}, null, 1));
