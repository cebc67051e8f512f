// HF's tokenizers (npm, Rust) on the text tpx-tokbench wrote: the same 64 KiB chunks, encoded
// then decoded one at a time, single-threaded (RAYON_NUM_THREADS=1 is set by the caller).
// usage: node tokenizer_bench.mjs NODE_MODULES TOKENIZER_JSON TEXT
import { createRequire } from 'module';
import fs from 'fs';
import path from 'path';

const [modules, tokenizerJson, textFile] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(modules), 'x.js'));
const { Tokenizer } = require('tokenizers');

// Chunks cut at the same byte offsets as tpx-tokbench's (64 KiB, then to the next line end).
const bytes = fs.readFileSync(textFile);
const chunks = [];
for (let pos = 0; pos < bytes.length;) {
  let end = Math.min(bytes.length, pos + 64 * 1024);
  const nl = bytes.indexOf(10, end);
  end = nl < 0 ? bytes.length : nl + 1;
  chunks.push(bytes.subarray(pos, end).toString('utf8'));
  pos = end;
}
const mb = bytes.length / 1e6;
let t0 = process.hrtime.bigint();
const tok = Tokenizer.fromFile(tokenizerJson);
const load = Number(process.hrtime.bigint() - t0) / 1e9;
t0 = process.hrtime.bigint();
const ids = [];
let count = 0;
for (const c of chunks) {
  const e = await tok.encode(c, null, { addSpecialTokens: false });
  ids.push(e.getIds());
  count += ids[ids.length - 1].length;
}
const enc = Number(process.hrtime.bigint() - t0) / 1e9;
t0 = process.hrtime.bigint();
let back = 0;
for (const v of ids) back += Buffer.byteLength(await tok.decode(v, false), 'utf8');
const dec = Number(process.hrtime.bigint() - t0) / 1e9;
console.log(`hf:  ${mb.toFixed(2)} MB in ${chunks.length} chunks, ${count} tokens; load ${load.toFixed(2)} s; ` +
  `encode ${enc.toFixed(2)} s = ${(mb / enc).toFixed(2)} MB/s; decode ${dec.toFixed(2)} s = ${(mb / dec).toFixed(2)} MB/s ` +
  `(${back} bytes back)`);
