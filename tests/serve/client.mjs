// The OpenAI Node SDK (npm `openai`) as tpx serve's client, for tests/test_serve.cpp: each mode
// makes its calls and prints one JSON object with what came back; the C++ test judges it.
// usage: node client.mjs NODE_MODULES BASE_URL API_KEY MODE [ARG]
import { createRequire } from "node:module";
import net from "node:net";
import path from "node:path";

const [modules, base, apiKey, mode, arg] = process.argv.slice(2);
const require = createRequire(path.join(modules, "x.js"));
const OpenAI = require("openai");
const client = new OpenAI({ baseURL: base + "/v1", apiKey, maxRetries: 0, timeout: 120000 });
const model = "tiny";

// An error as the SDK reports it.
function failure(e) {
  return { status: e.status ?? null, type: e.type ?? null, param: e.param ?? null, code: e.code ?? null, message: e.message };
}

async function complete(body) {
  const r = await client.completions.create({ model, temperature: 0, return_token_ids: true, ...body });
  const c = r.choices[0];
  return { text: c.text, token_ids: c.token_ids, prompt_token_ids: c.prompt_token_ids, finish_reason: c.finish_reason, stop_reason: c.stop_reason,
           usage: r.usage, object: r.object };
}

async function completeStream(body) {
  const stream = await client.completions.create({ model, temperature: 0, return_token_ids: true, stream: true, ...body });
  let text = "", ids = [], finish = null, chunks = 0, prompt = null, promptChunks = 0, stopReason = null;
  for await (const chunk of stream) {
    const c = chunk.choices[0];
    chunks++;
    text += c.text;
    ids.push(...(c.token_ids ?? []));
    if (c.prompt_token_ids) prompt = c.prompt_token_ids, promptChunks++;
    if (c.finish_reason) finish = c.finish_reason, stopReason = c.stop_reason;
  }
  return { text, token_ids: ids, finish_reason: finish, stop_reason: stopReason, chunks, prompt_token_ids: prompt, prompt_chunks: promptChunks };
}

async function chat(body) {
  const r = await client.chat.completions.create({ model, temperature: 0, return_token_ids: true, ...body });
  const c = r.choices[0];
  return { text: c.message.content, role: c.message.role, token_ids: c.token_ids, prompt_token_ids: r.prompt_token_ids, finish_reason: c.finish_reason,
           usage: r.usage, object: r.object };
}

async function chatStream(body) {
  const stream = await client.chat.completions.create({ model, temperature: 0, return_token_ids: true, stream: true, ...body });
  let text = "", ids = [], finish = null, role = null, prompt = null, promptChunks = 0;
  for await (const chunk of stream) {
    const c = chunk.choices[0];
    if (c.delta.role) role = c.delta.role;
    text += c.delta.content ?? "";
    ids.push(...(c.token_ids ?? []));
    if (chunk.prompt_token_ids) prompt = chunk.prompt_token_ids, promptChunks++;  // (vLLM's place for a chat's)
    if (c.finish_reason) finish = c.finish_reason;
  }
  return { text, token_ids: ids, finish_reason: finish, role, prompt_token_ids: prompt, prompt_chunks: promptChunks };
}

// 32 prompts of mixed lengths (token ids; a fixed LCG), half greedy, half sampled with a seed.
function mixedCalls() {
  let x = 12345;
  const next = (n) => ((x = (x * 1103515245 + 12345) % 2147483648), (x >> 16) % n);
  const calls = [];
  for (let i = 0; i < 32; i++) {
    const prompt = Array.from({ length: 1 + next(40) }, () => 3 + next(200));
    const body = { prompt, max_tokens: 1 + next(20) };
    if (i % 2) Object.assign(body, { temperature: 0.9, top_p: 0.95, seed: 1000 + i });
    calls.push(body);
  }
  return calls;
}

async function metrics() {
  const r = await fetch(base + "/metrics", { headers: { Authorization: "Bearer " + apiKey } });
  const text = await r.text();
  const get = (name) => Number((text.match(new RegExp("^" + name + " (\\S+)$", "m")) ?? [])[1]);
  return {
    cancelled: get("tpx_requests_cancelled_total"), running: get("tpx_running_sequences"), queue: get("tpx_queue_depth"),
    decode_steps: get('tpx_step_seconds_count\\{kind="decode"\\}'), mixed_steps: get('tpx_step_seconds_count\\{kind="mixed"\\}'),
  };
}

const modes = {
  // Every prompt of ARG (a JSON file: [{id, text} | {id, messages}]) as completions or chat, whole and streamed.
  async outputs() {
    const { readFileSync } = await import("node:fs");
    const out = {};
    for (const p of JSON.parse(readFileSync(arg, "utf8"))) {
      const body = p.text !== undefined ? { prompt: p.text, max_tokens: 16 } : { messages: p.messages, max_tokens: 16 };
      out[p.id] = p.text !== undefined ? { whole: await complete(body), streamed: await completeStream(body) }
                                       : { whole: await chat(body), streamed: await chatStream(body) };
    }
    return out;
  },
  // A stop string ("count", from the greedy text of ARG) ends the output and is cut from it,
  // whole and streamed; the streamed usage chunk counts the tokens.
  async stop() {
    const body = { prompt: arg, max_tokens: 16, stop: ["zzz-never", "count"] };
    const whole = await complete(body);
    const streamed = await completeStream(body);
    const stream = await client.completions.create({ model, prompt: arg, max_tokens: 5, temperature: 0, stream: true,
                                                     stream_options: { include_usage: true } });
    let usage = null;
    for await (const chunk of stream) if (chunk.usage) usage = chunk.usage;
    // vLLM's continuous_usage_stats: each chunk's usage so far (a chat's role chunk first).
    const counts = [];
    const chatStream = await client.chat.completions.create({ model, messages: [{ role: "user", content: arg }], max_tokens: 5, temperature: 0,
                                                              stream: true, stream_options: { include_usage: true, continuous_usage_stats: true } });
    for await (const chunk of chatStream) counts.push(chunk.usage ? [chunk.choices.length, chunk.usage.completion_tokens, chunk.usage.total_tokens - chunk.usage.prompt_tokens] : null);
    // Two prompts (of 3 and 5 ids), 4 tokens each: each chunk's usage is its own prompt's.
    const byPrompt = [];
    const two = await client.completions.create({ model, prompt: [[5, 6, 7], [8, 9, 10, 11, 12]], max_tokens: 4, temperature: 0, stream: true,
                                                  stream_options: { include_usage: true, continuous_usage_stats: true } });
    for await (const chunk of two)
      if (chunk.choices.length) byPrompt.push([chunk.choices[0].index, chunk.usage.prompt_tokens, chunk.usage.completion_tokens]);
    // Without include_usage, continuous_usage_stats adds nothing (as vLLM's).
    let alone = 0;
    const plain = await client.completions.create({ model, prompt: arg, max_tokens: 3, temperature: 0, stream: true,
                                                    stream_options: { continuous_usage_stats: true } });
    for await (const chunk of plain) if (chunk.usage) alone++;
    return { whole, streamed, usage, counts, byPrompt, alone };
  },
  // vLLM's skip_special_tokens and add_special_tokens. tiny-text's greedy output for these ids
  // has <|begin_of_text|> (id 0) third.
  async specials() {
    const body = { prompt: [938, 572], max_tokens: 4 };
    const hi = [{ role: "user", content: "Hi" }];
    return {
      skipped: await complete(body), skipped_streamed: await completeStream(body),
      kept: await complete({ ...body, skip_special_tokens: false }),
      kept_streamed: await completeStream({ ...body, skip_special_tokens: false }),
      stop_kept: await complete({ ...body, skip_special_tokens: false, stop: ["<|begin"] }),
      stop_skipped: await complete({ ...body, stop: ["<|begin"] }),
      stop_id: await complete({ ...body, stop_token_ids: [0], skip_special_tokens: false }),
      stop_id_streamed: await completeStream({ ...body, stop_token_ids: [5, 0] }),
      stop_kept_streamed: await completeStream({ ...body, skip_special_tokens: false, stop: ["<|begin"] }),
      ignore_eos: await complete({ ...body, ignore_eos: true }),
      text_default: await complete({ prompt: "Hi", max_tokens: 1 }),
      text_plain: await complete({ prompt: "Hi", max_tokens: 1, add_special_tokens: false }),
      chat_default: await chat({ messages: hi, max_tokens: 1 }),
      chat_added: await chat({ messages: hi, max_tokens: 1, add_special_tokens: true }),
    };
  },
  // A model without a tokenizer: ids in, ids out; a text prompt is refused.
  async ids() {
    const ids = await complete({ prompt: [1, 2, 3], max_tokens: 6 });
    let text = { status: 200 };
    try { await client.completions.create({ model, prompt: "Hello" }); } catch (e) { text = failure(e); }
    return { ids, text };
  },
  // Each call alone, then all 32 at once: every answer must be the same.
  async concurrent() {
    const calls = mixedCalls();
    const alone = [];
    for (const c of calls) alone.push(await complete(c));
    const together = await Promise.all(calls.map((c, i) => (i % 3 ? complete(c) : completeStream(c))));
    const differ = [];
    calls.forEach((c, i) => {
      if (JSON.stringify(alone[i].token_ids) !== JSON.stringify(together[i].token_ids) || alone[i].text !== together[i].text)
        differ.push({ i, alone: alone[i], together: together[i] });
    });
    return { count: calls.length, differ, tokens: alone.map((a) => a.token_ids.length), prompt_lengths: calls.map((c) => c.prompt.length) };
  },
  async errors() {
    const out = {};
    const attempt = async (name, fn) => {
      try { await fn(); out[name] = { status: 200 }; } catch (e) { out[name] = failure(e); }
    };
    await attempt("bad_key", () => new OpenAI({ baseURL: base + "/v1", apiKey: "wrong", maxRetries: 0 }).completions.create({ model, prompt: "Hi" }));
    // The key percent-encoded ("sk-test%2541"): a server that decoded header values took it for the key.
    await attempt("encoded_key", () => new OpenAI({ baseURL: base + "/v1", apiKey: encodeURIComponent(apiKey), maxRetries: 0 }).completions.create({ model, prompt: "Hi" }));
    await attempt("n", () => client.completions.create({ model, prompt: "Hi", n: 2 }));
    await attempt("echo", () => client.completions.create({ model, prompt: "Hi", echo: true }));
    await attempt("temperature", () => client.completions.create({ model, prompt: "Hi", temperature: "hot" }));
    await attempt("token_range", () => client.completions.create({ model, prompt: [1, 99999999] }));
    await attempt("messages", () => client.chat.completions.create({ model, messages: [] }));
    await attempt("model", () => client.completions.create({ model: "gpt-17", prompt: "Hi" }));
    await attempt("too_long", () => client.completions.create({ model, prompt: "Hi", max_tokens: 100000 }));
    // A prompt that alone fills the context: the prompt's fault, whatever max_tokens says.
    await attempt("prompt_too_long", () => client.completions.create({ model, prompt: [Array(600).fill(1)], max_tokens: 1 }));
    await attempt("top_p", () => client.completions.create({ model, prompt: "Hi", top_p: 0 }));
    // More stop strings than a call may give; what would change the answer and is not done here.
    await attempt("stops", () => client.completions.create({ model, prompt: "Hi", stop: Array.from({ length: 17 }, (_, i) => "s" + i) }));
    await attempt("logit_bias", () => client.completions.create({ model, prompt: "Hi", logit_bias: { 5: 100 } }));
    await attempt("tools", () => client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }],
                                                                tools: [{ type: "function", function: { name: "f", parameters: {} } }] }));
    await attempt("include_usage", () => client.completions.create({ model, prompt: "Hi", stream: true, stream_options: { include_usage: 3 } }));
    // Penalties out of range, min_tokens past max_tokens; sampling that is not done here (refused,
    // not ignored); stream_options without a stream; a user's message without content.
    // Logprobs: a completion's count past vLLM's 20 or given as true; a chat's top_logprobs without
    // "logprobs": true, and its logprobs as a count.
    await attempt("logprobs_range", () => client.completions.create({ model, prompt: "Hi", logprobs: 21 }));
    await attempt("logprobs_true", () => client.completions.create({ model, prompt: "Hi", logprobs: true }));
    await attempt("top_logprobs_alone", () => client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], top_logprobs: 2 }));
    await attempt("chat_logprobs_count", () => client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], logprobs: 3 }));
    await attempt("presence_penalty", () => client.completions.create({ model, prompt: "Hi", presence_penalty: 2.5 }));
    await attempt("repetition_penalty", () => client.completions.create({ model, prompt: "Hi", repetition_penalty: 0 }));
    await attempt("min_tokens", () => client.completions.create({ model, prompt: "Hi", max_tokens: 4, min_tokens: 5 }));
    await attempt("min_p", () => client.completions.create({ model, prompt: "Hi", min_p: 0.1 }));
    await attempt("suffix", () => client.completions.create({ model, prompt: "Hi", suffix: "end" }));
    await attempt("skip_special_tokens", () => client.completions.create({ model, prompt: "Hi", skip_special_tokens: "no" }));
    await attempt("stop_token_ids", () => client.completions.create({ model, prompt: "Hi", stop_token_ids: [1, 3000] }));
    await attempt("audio", () => client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], modalities: ["text", "audio"],
                                                                   audio: { voice: "alloy", format: "wav" } }));
    await attempt("modalities", () => client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], modalities: ["text", "audio"] }));
    await attempt("text_modality", () => client.chat.completions.create({ model, max_tokens: 1, messages: [{ role: "user", content: "Hi" }],
                                                                           modalities: ["text"] }));
    await attempt("functions", () => client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }],
                                                                    functions: [{ name: "f", parameters: {} }] }));
    await attempt("unstreamed_options", () => client.completions.create({ model, prompt: "Hi", stream_options: { include_usage: true } }));
    await attempt("no_content", () => client.chat.completions.create({ model, messages: [{ role: "user" }] }));
    await attempt("function_null", () => client.chat.completions.create({ model, max_tokens: 1,
      messages: [{ role: "user", content: "Hi" }, { role: "function", name: "f", content: null }] }));
    // A route by another method: 405 naming the one it takes.
    const get = await fetch(base + "/v1/completions", { headers: { Authorization: "Bearer " + apiKey } });
    out.get_route = { status: get.status, ...(await get.json()).error };
    out.get_allow = get.headers.get("allow");
    // A body read as JSON whatever its Content-Type says (curl -d sends a form's): one of 12 KB,
    // past cpp-httplib's 8 KiB for forms, and one marked multipart.
    const padded = JSON.stringify({ model, prompt: "Hi", max_tokens: 1, user: "u".repeat(12000) });
    for (const [name, type] of [["form_body", "application/x-www-form-urlencoded"], ["multipart_body", "multipart/form-data; boundary=x"]])
      out[name] = (await fetch(base + "/v1/completions", { method: "POST", body: padded, headers: { Authorization: "Bearer " + apiKey, "Content-Type": type } })).status;
    await attempt("route", () => client.get("/no/such/route"));
    // Not JSON at all: the SDK always sends JSON, so fetch does.
    const r = await fetch(base + "/v1/completions", { method: "POST", body: "{not json", headers: { Authorization: "Bearer " + apiKey } });
    out.bad_json = { status: r.status, ...(await r.json()).error };
    // What the SDK cannot send: a path and a body holding bytes that are not UTF-8 (the 404's
    // message quotes the path), an integer past 2^63, a NUL in a refit's path. Then a call of
    // more prompts than the queue holds (max_queue 64 by default).
    const raw = async (name, path, body) => {
      const r = await fetch(base + path, { method: body === undefined ? "GET" : "POST", body, headers: { Authorization: "Bearer " + apiKey } });
      out[name] = { status: r.status, ...(await r.json()).error };
    };
    await raw("bytes_path", "/%ff");
    await raw("bytes_body", "/v1/completions", new Uint8Array([...Buffer.from('{"prompt": "ab'), 0xff, ...Buffer.from('"}')]));
    await raw("huge_max_tokens", "/v1/completions", '{"model": "tiny", "prompt": "Hi", "max_tokens": 18446744073709551615}');
    await raw("past_64_bits", "/v1/completions", '{"model": "tiny", "prompt": "Hi", "max_tokens": 18446744073709551616}');
    await raw("nul_refit", "/v1/admin/refit", '{"path": "/tmp/a\\u0000b"}');
    // A compressed body (a few MB could decode to GB): refused before it is read.
    const br = await fetch(base + "/v1/completions", { method: "POST", body: "{}", headers: { Authorization: "Bearer " + apiKey, "Content-Encoding": "br" } });
    out.encoded = { status: br.status, ...(await br.json()).error };
    await attempt("too_many", () => client.completions.create({ model, prompt: Array(65).fill("Hi") }));
    // A body past the server's bound (tiny-text: 64 prompts of 512 tokens at 64 bytes, 2 MiB):
    // refused by its Content-Length (the server reads the bytes past, parsing none of them).
    const reply = await new Promise((resolve, reject) => {
      const u = new URL(base);
      const s = net.connect(Number(u.port), u.hostname, () =>
        s.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${apiKey}\r\nContent-Type: application/json\r\nContent-Length: 3000000\r\n\r\n` + "x".repeat(3000000)));
      let text = "";
      s.on("data", (d) => { text += d; if (text.includes("}}")) { s.destroy(); resolve(text); } });
      s.on("error", () => resolve(text));  // the server closes without reading the body: EPIPE here
      s.on("close", () => resolve(text));
    });
    out.too_big = { status: Number(reply.split(" ")[1]), ...JSON.parse(reply.slice(reply.indexOf("{"))).error };
    // Lengths that readers could take differently, counting a GET behind the body: refused and the
    // connection closed at once, so that nothing after the body is read as a request (no second
    // response): two Content-Lengths, and one holding a list.
    const body = `{"model": "${model}", "prompt": [1, 2], "max_tokens": 1}`, smuggled = "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";
    // `head` (request line and headers, without the blank line), then after `later` ms `rest`.
    const exchange = async (head, rest, later = 0) => {
      const sent = Date.now();
      const got = await new Promise((resolve, reject) => {
        const u = new URL(base);
        const s = net.connect(Number(u.port), u.hostname, () => {
          s.write(head + "\r\n" + (later ? "" : rest));
          if (later) setTimeout(() => { if (!s.destroyed) s.write(rest, () => {}); }, later);
        });
        let text = "";
        const timer = setTimeout(() => { s.destroy(); resolve({ text, closed: false }); }, 10000);
        s.on("data", (d) => { text += d; });
        s.on("error", (e) => { clearTimeout(timer); resolve({ text, closed: true, error: e.code }); });  // (then "close")
        s.on("close", () => { clearTimeout(timer); resolve({ text, closed: true }); });
      });
      return { status: Number(got.text.split(" ")[1]), ...JSON.parse(got.text.slice(got.text.indexOf("{"))).error,
               closed: got.closed, responses: got.text.split("HTTP/1.1 ").length - 1, seconds: (Date.now() - sent) / 1000 };
    };
    const post = `POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${apiKey}\r\nContent-Type: application/json\r\n`;
    const smuggle = (lengths) => exchange(post + lengths, body + smuggled);
    out.two_lengths = await smuggle(`Content-Length: ${body.length}\r\nContent-Length: ${body.length + smuggled.length}\r\n`);
    out.length_list = await smuggle(`Content-Length: ${body.length}, ${body.length + smuggled.length}\r\n`);
    // Refused before their bodies are read: the connection ends with the answer, so that a request
    // inside a body is never served. A chunked body (its size unknown until read), a call without
    // the key, a GET carrying a body, the body 0.3 s after the headers (by when the connection is
    // closed: it is not written) or with them.
    const authorized = `GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${apiKey}\r\n\r\n`;
    out.chunked = await exchange(post + "Transfer-Encoding: chunked\r\n", `${authorized.length.toString(16)}\r\n${authorized}\r\n0\r\n\r\n`, 300);
    out.no_key_body = await exchange(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ${authorized.length}\r\n`, authorized, 300);
    out.get_body = await exchange(`GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: ${authorized.length}\r\n`, authorized, 300);
    out.no_key_body_at_once = await exchange(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ${authorized.length}\r\n`, authorized);
    out.get_body_at_once = await exchange(`GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: ${authorized.length}\r\n`, authorized);
    // A POST with neither Content-Length nor Transfer-Encoding (its body would be read until the
    // client closes, whatever its size).
    out.no_length = await exchange(post, authorized);
    // A PUT without a length (cpp-httplib would read its body until the client closes).
    out.put = await exchange(`PUT /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${apiKey}\r\n`, authorized, 300);
    out.put_allow = (await fetch(base + "/v1/completions", { method: "PUT", headers: { Authorization: "Bearer " + apiKey } })).headers.get("allow");
    // Another method on a path that is no route: 404, as for GET and POST.
    out.delete_route = (await fetch(base + "/nope", { method: "DELETE", headers: { Authorization: "Bearer " + apiKey } })).status;
    // Without the key, any method on any path (a route or not) is a 401 first.
    out.delete_no_key = (await fetch(base + "/v1/admin/refit", { method: "DELETE" })).status;
    out.put_nope_no_key = (await fetch(base + "/nope", { method: "PUT" })).status;
    // No key for a HEAD of /health (a load balancer's probe); the scheme "Bearer" in any case.
    out.head_health = (await fetch(base + "/health", { method: "HEAD" })).status;
    out.lower_bearer = (await fetch(base + "/v1/models", { headers: { Authorization: "bearer " + apiKey } })).status;
    await attempt("model_retrieve", () => client.models.retrieve("gpt-17"));
    out.model_one = await client.models.retrieve(model);
    out.models = (await client.models.list()).data.map((m) => m.id);
    return out;
  },
  // ARG calls at once against the server's slots and a queue of one: the rest get 429. Each
  // answer holds its slot for 32 steps, so that calls the client starts late (a loaded machine)
  // still find the slots taken.
  async queue() {
    const statuses = await Promise.all(Array.from({ length: Number(arg) }, () =>
      client.completions.create({ model, prompt: "Hello", max_tokens: 32 }).then(() => 200, (e) => e.status ?? String(e))));
    return { statuses };
  },
  // A stream abandoned after three chunks: the server cancels it and frees its slot.
  async cancel() {
    const before = await metrics();
    const stream = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 200, stream: true });
    let chunks = 0;
    for await (const chunk of stream) if (++chunks === 3) break;  // leaving the loop aborts the request
    let m = await metrics();
    for (let i = 0; i < 100 && (m.cancelled === before.cancelled || m.running !== 0); i++) {
      await new Promise((r) => setTimeout(r, 100));
      m = await metrics();
    }
    const after = await complete({ prompt: "Hello", max_tokens: 4 });
    return { before, after_cancel: m, chunks, next: after.token_ids.length };
  },
  // A whole (non-streamed) call whose client hangs up once it runs: cancelled, its slot freed.
  async cancel_whole() {
    const before = await metrics();
    const controller = new AbortController();
    const call = client.completions.create({ model, prompt: "Once upon a time", max_tokens: 200 }, { signal: controller.signal })
      .then(() => "answered", (e) => e.name ?? String(e));
    let m = await metrics();
    for (let i = 0; i < 100 && m.running !== 1; i++) {
      await new Promise((r) => setTimeout(r, 50));
      m = await metrics();
    }
    const running = m.running;
    controller.abort();
    const outcome = await call;
    for (let i = 0; i < 100 && (m.cancelled === before.cancelled || m.running !== 0); i++) {
      await new Promise((r) => setTimeout(r, 100));
      m = await metrics();
    }
    const after = await complete({ prompt: "Hello", max_tokens: 4 });
    return { before, running, outcome, after_cancel: m, next: after.token_ids.length };
  },
  // /health and a completion while the model loads (or after).
  // Model ids of every shape: the served one, one with a slash, one of 8,000 characters.
  async model_ids() {
    const out = {};
    for (const [name, id] of [["served", model], ["slash", "org/x"], ["long", "a".repeat(8000)]]) {
      try { out[name] = { status: 200, ...(await client.models.retrieve(id)) }; } catch (e) { out[name] = failure(e); }
    }
    out.health = (await fetch(base + "/health")).status;
    return out;
  },
  async health() {
    const h = await fetch(base + "/health");
    let completion = { status: 200 };
    try { await client.completions.create({ model, prompt: "Hi", max_tokens: 1 }); } catch (e) { completion = failure(e); }
    return { health: h.status, completion };
  },
  async metrics() {
    return await metrics();
  },
  // One call of ARG tokens (for SIGTERM and rank-failure tests); prints when it is in flight.
  async long() {
    console.error("client: sending");
    try {
      const r = await complete({ prompt: "Once upon a time", max_tokens: Number(arg), stream: false });
      return { status: 200, tokens: r.token_ids.length, finish_reason: r.finish_reason };
    } catch (e) {
      return failure(e);
    }
  },
  // One call through the SDK, ARG = {"chat": bool, "body": {...}}: the answer, or a stream's chunks.
  async call() {
    const { chat, body } = JSON.parse(arg);
    const api = chat ? client.chat.completions : client.completions;
    const r = await api.create({ model, temperature: 0, ...body });
    if (!body.stream) return { whole: r };
    const chunks = [];
    for await (const chunk of r) chunks.push(chunk);
    return { chunks };
  },
  // ARG = {"chat": bool, "body": {...}, "first": F, "seeds": N}: the body's answers at seeds F ..
  // F + N - 1, all sent at once.
  async seeds() {
    const { chat, body, first, seeds } = JSON.parse(arg);
    const api = chat ? client.chat.completions : client.completions;
    return await Promise.all(Array.from({ length: seeds }, (_, i) => api.create({ model, temperature: 0, ...body, seed: first + i })));
  },
  // A stream read raw: its status and its last two events.
  async long_stream() {
    const res = await fetch(base + "/v1/completions", {
      method: "POST",
      headers: { Authorization: "Bearer " + apiKey, "Content-Type": "application/json" },
      body: JSON.stringify({ model, prompt: "Once upon a time", max_tokens: Number(arg), stream: true }),
    });
    const events = (await res.text()).split("\n\n").filter((e) => e.startsWith("data: "));
    return { status: res.status, last: events.slice(-2) };
  },
};

try {
  console.log(JSON.stringify(await modes[mode]()));
} catch (e) {
  console.log(JSON.stringify({ crashed: String(e), stack: e.stack }));
  process.exit(1);
}
