// The client of tests/test_refit.cpp: completions through the OpenAI Node SDK (npm `openai`),
// refits as plain POSTs to /v1/admin/refit; each mode prints one JSON object for the test to judge.
// usage: node refit_client.mjs NODE_MODULES BASE_URL API_KEY MODE ARG_JSON
import { createRequire } from "node:module";
import path from "node:path";

const [modules, base, apiKey, mode, argText] = process.argv.slice(2);
const arg = JSON.parse(argText ?? "{}");
const require = createRequire(path.join(modules, "x.js"));
const OpenAI = require("openai");
const client = new OpenAI({ baseURL: base + "/v1", apiKey, maxRetries: 0, timeout: 120000 });
const model = "tiny";

async function complete(prompt, max_tokens) {
  const r = await client.completions.create({ model, prompt, max_tokens, temperature: 0, return_token_ids: true });
  return { status: 200, token_ids: r.choices[0].token_ids, finish_reason: r.choices[0].finish_reason };
}

async function refit(body) {
  const r = await fetch(base + "/v1/admin/refit", { method: "POST", body: JSON.stringify(body),
                                                    headers: { Authorization: "Bearer " + apiKey, "Content-Type": "application/json" } });
  return { status: r.status, body: await r.json() };
}

async function running() {
  const r = await fetch(base + "/metrics", { headers: { Authorization: "Bearer " + apiKey } });
  return Number(((await r.text()).match(/^tpx_running_sequences (\S+)$/m) ?? [])[1]);
}

async function until(ok) {
  for (let i = 0; i < 200 && !(await ok()); i++) await new Promise((r) => setTimeout(r, 50));
}

const modes = {
  // Each of arg.prompts (token ids), greedy, arg.max_tokens tokens.
  async answers() {
    const out = [];
    for (const p of arg.prompts) out.push(await complete(p, arg.max_tokens));
    return { answers: out };
  },
  // arg.count calls at once (the prompts in turn); once some run, a refit to arg.path: every call
  // must still be answered (with the old weights or the new, never a mix).
  async load() {
    const calls = Array.from({ length: arg.count }, (_, i) =>
      complete(arg.prompts[i % arg.prompts.length], arg.max_tokens).catch((e) => ({ status: e.status ?? String(e), message: e.message })));
    await until(async () => (await running()) > 0);
    const r = await refit({ path: arg.path });
    return { refit: r, answers: await Promise.all(calls) };
  },
  // Two long calls in flight (one whole, one streamed with usage), then a refit with "abort": true:
  // both end at once with what they have; the stream's ids are as many as its usage counts.
  async abort() {
    const failed = (e) => ({ status: e.status ?? String(e), message: e.message });
    const call = complete(arg.prompt, arg.max_tokens).catch(failed);
    const streamed = (async () => {
      const stream = await client.completions.create({ model, prompt: arg.prompt, max_tokens: arg.max_tokens, temperature: 0,
                                                       return_token_ids: true, stream: true, stream_options: { include_usage: true } });
      const ids = [];
      let finish = null, usage = null;
      for await (const chunk of stream) {
        if (chunk.usage) usage = chunk.usage;
        for (const c of chunk.choices ?? []) {
          ids.push(...(c.token_ids ?? []));
          if (c.finish_reason) finish = c.finish_reason;
        }
      }
      return { status: 200, token_ids: ids, finish_reason: finish, completion_tokens: usage?.completion_tokens ?? null };
    })().catch(failed);
    await until(async () => (await running()) > 1);
    const r = await refit({ path: arg.path, abort: true });
    const answer = await call;
    const stream = await streamed;
    const after = await complete(arg.prompt, 4);
    return { refit: r, answer, stream, after };
  },
  // Bad refit bodies: each answer's status and error.
  async bad() {
    const out = {};
    const post = async (name, body) => {
      const r = await fetch(base + "/v1/admin/refit", { method: "POST", body, headers: { Authorization: "Bearer " + apiKey } });
      out[name] = { status: r.status, ...(await r.json()).error };
    };
    await post("no_path", JSON.stringify({ abort: true }));
    await post("unknown_key", JSON.stringify({ path: "/x", force: 1 }));
    await post("not_json", "{");
    return out;
  },
};

try {
  console.log(JSON.stringify(await modes[mode]()));
} catch (e) {
  console.log(JSON.stringify({ crashed: String(e), stack: e.stack }));
  process.exit(1);
}
