// o200k_harmony tokenizer: special-token ids, encode/decode round trips, special-token policy, model-file checks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  NUM_ORDINARY_TOKENS,
  SPECIAL_TOKENS,
  STOP_TOKEN_IDS,
  VOCAB_SIZE,
  allSpecialTokens,
  assertTokenizerFilesAgree,
  checkTokenizerFiles,
  getTokenizer,
  specialIdToText,
  specialTextToId,
} from '../../src/tokenizer/index.ts';

const tok = getTokenizer();
// OpenAI harmony's golden renders (Apache-2.0), copied from ../shared/peer-tests/harmony: see its README.
const GOLDEN = fileURLToPath(new URL('../fixtures/harmony/', import.meta.url));
const golden = (f: string) => readFileSync(join(GOLDEN, f), 'utf8').trimEnd();
const repoFile = (p: string) => new URL(`../../${p}`, import.meta.url);

test('special tokens sit at their o200k_harmony ids', () => {
  const expected: Array<[string, number]> = [
    ['<|startoftext|>', 199998],
    ['<|endoftext|>', 199999],
    ['<|return|>', 200002],
    ['<|constrain|>', 200003],
    ['<|channel|>', 200005],
    ['<|start|>', 200006],
    ['<|end|>', 200007],
    ['<|message|>', 200008],
    ['<|call|>', 200012],
  ];
  for (const [text, id] of expected) {
    assert.equal(specialTextToId(text), id, text);
    assert.equal(specialIdToText(id), text);
    assert.deepEqual(tok.encode(text, { allowSpecial: true }), [id]);
    assert.equal(tok.decode([id]), text);
  }
  assert.equal(SPECIAL_TOKENS.return, 200002);
  assert.deepEqual([...STOP_TOKEN_IDS].sort(), [200002, 200012]);
  for (const id of [200000, 200001, 200004, 200009, 200010, 200011, 200013, 200014, 201087]) {
    assert.equal(specialIdToText(id), `<|reserved_${id}|>`);
    assert.equal(specialTextToId(`<|reserved_${id}|>`), id);
  }
  assert.equal(tok.decode([200014]), '<|reserved_200014|>');
  // 200018 is o200k_base's <|endofprompt|>; tiktoken also spells it <|reserved_200018|>.
  assert.equal(specialIdToText(200018), '<|endofprompt|>');
  assert.equal(specialTextToId('<|reserved_200018|>'), 200018);
  // Not special tokens: a named id spelled as reserved, out-of-range ids, leading zeros, unknown names.
  for (const t of ['<|reserved_200002|>', '<|reserved_201088|>', '<|reserved_199997|>', '<|reserved_0200014|>', '<|foo|>', '<|end']) {
    assert.equal(specialTextToId(t), undefined, t);
  }
  assert.equal(VOCAB_SIZE, 201088);
  assert.equal(tok.vocabSize, 201088);
  const all = allSpecialTokens();
  assert.equal(all.length, VOCAB_SIZE - NUM_ORDINARY_TOKENS);
  assert.equal(new Set(all.map(([t]) => t)).size, all.length);
  assert.equal(tok.isSpecial(199997), false);
  assert.equal(tok.isSpecial(199998), true);
});

test('the tokenizer is a singleton and rejects ids outside the vocabulary', () => {
  assert.equal(getTokenizer(), tok);
  assert.throws(() => tok.decode([VOCAB_SIZE]), /outside the vocabulary/);
  assert.throws(() => tok.decode([-1]), /outside the vocabulary/);
  assert.throws(() => tok.tokenBytes(1.5), /outside the vocabulary/);
});

test('BPE ids match the reference o200k_harmony ids', () => {
  // From the harmony golden test_simple_reasoning_response (token ids produced by tiktoken).
  assert.deepEqual(
    tok.encode('User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.'),
    [1844, 31064, 25, 392, 4827, 382, 220, 17, 659, 220, 17, 16842, 12295, 81645, 13, 51441, 6052, 13],
  );
  assert.deepEqual(tok.encode('analysis'), [35644]);
  assert.deepEqual(tok.encode('assistant'), [173781]);
  assert.deepEqual(tok.encode('2 + 2 = 4.'), [17, 659, 220, 17, 314, 220, 19, 13]);
  assert.deepEqual(tok.encode(''), []);
});

test('encode/decode round trip GSM8K questions and answers', () => {
  const rows = (split: string) =>
    readFileSync(repoFile(`data/gsm8k/${split}.jsonl`), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { question: string; answer: string });
  const test = rows('test');
  const train = rows('train').filter((_, i) => i % 7 === 0);
  let n = 0;
  for (const r of [...test, ...train]) {
    for (const text of [r.question, r.answer]) {
      const ids = tok.encode(text);
      assert.equal(tok.decode(ids), text);
      assert.ok(ids.every((id) => id < NUM_ORDINARY_TOKENS));
      n++;
    }
  }
  assert.ok(n > 4000);
});

test('rendered harmony text round trips with specials allowed', () => {
  for (const f of readdirSync(GOLDEN).filter((f) => f.endsWith('.txt'))) {
    const text = golden(f);
    if (/^\d/.test(text)) continue; // the two token-id goldens
    const ids = tok.encode(text, { allowSpecial: true });
    assert.equal(tok.decode(ids), text, f);
    assert.ok(ids.includes(SPECIAL_TOKENS.message), f);
  }
  const ids = golden('test_simple_reasoning_response.txt').split(/\s+/).map(Number);
  const text = tok.decode(ids);
  assert.ok(text.startsWith('<|channel|>analysis<|message|>User asks:'));
  assert.deepEqual(tok.encode(text, { allowSpecial: true }), ids);
});

test('special-token text in user text: refused by encode(), plain characters with encodeOrdinary()', () => {
  assert.throws(() => tok.encode('please say <|end|> now'), /special token <\|end\|> at offset 11/);
  const plain = tok.encodeOrdinary('please say <|end|> now');
  assert.ok(!plain.some((id) => tok.isSpecial(id)));
  assert.equal(tok.decode(plain), 'please say <|end|> now');
  // An allow-list admits some specials and still refuses the others.
  assert.deepEqual(tok.encode('<|start|>', { allowSpecial: new Set(['<|start|>']) }), [200006]);
  assert.throws(() => tok.encode('<|start|><|end|>', { allowSpecial: new Set(['<|start|>']) }), /<\|end\|>/);
  // Strings that merely look like specials are ordinary text.
  assert.equal(tok.decode(tok.encode('<|foo|> <|reserved_7|>')), '<|foo|> <|reserved_7|>');
  // Specials inside a longer string, not only at its start (gpt-tokenizer 3.4's own search misses these).
  assert.deepEqual(tok.encode('a<|start|>b<|message|>c', { allowSpecial: true }).filter((id) => tok.isSpecial(id)), [200006, 200008]);
});

test('decode: skipSpecialTokens, partial UTF-8, no state carried between calls', () => {
  const ids = tok.encode('<|start|>user<|message|>Hi<|end|>', { allowSpecial: true });
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), 'userHi');
  const emoji = tok.encode('🦙');
  assert.ok(emoji.length > 1, 'the llama emoji spans several byte tokens');
  const first = tok.decode([emoji[0]!]);
  assert.ok(first.includes('\uFFFD'));
  assert.equal(tok.decode(tok.encode('ok')), 'ok');
  assert.equal(tok.decode(emoji), '🦙');
  assert.equal(tok.idToString(200007), '<|end|>');
  assert.equal(tok.idToString(tok.encode(' the')[0]!), ' the');
});

// ---- model directory files -------------------------------------------------------------------------------

/** GPT-2 byte-level spelling of bytes (the alphabet of tokenizer.json vocab entries). */
function byteLevel(bytes: Uint8Array): string {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const map: string[] = [];
  let n = 0;
  for (let b = 0; b < 256; b++) map[b] = printable(b) ? String.fromCharCode(b) : String.fromCharCode(256 + n++);
  return [...bytes].map((b) => map[b]).join('');
}

function writeModelDir(mutate?: (tj: { added_tokens: Array<{ id: number; content: string; special: boolean }>; model: { type: string; vocab: Record<string, number> } }, cfg: Record<string, unknown>) => void): string {
  const dir = mkdtempSync(join(tmpdir(), 'gptoss-tok-'));
  const specials = allSpecialTokens().filter(([, id]) => id <= 200020 || id === 201087);
  const vocab: Record<string, number> = {};
  for (const id of [0, 1, 13, 220, 35644, 173781, 198, ...tok.encode('🦙 é 北京 the'), 199997]) vocab[byteLevel(tok.tokenBytes(id))] = id;
  const tj = {
    added_tokens: specials.map(([content, id]) => ({ id, content, special: true })),
    model: { type: 'BPE', vocab },
  };
  const cfg: Record<string, unknown> = {
    added_tokens_decoder: Object.fromEntries(specials.map(([content, id]) => [String(id), { content, special: true }])),
    bos_token: '<|startoftext|>',
    eos_token: '<|return|>',
    pad_token: '<|endoftext|>',
  };
  mutate?.(tj, cfg);
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tj));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(cfg));
  return dir;
}

test('model tokenizer files that agree pass the check', () => {
  const r = checkTokenizerFiles(writeModelDir());
  assert.deepEqual(r.mismatches, []);
  assert.ok(r.ok);
  assert.ok(r.checked.some((c) => c.startsWith('tokenizer.json model.vocab')));
  assert.ok(r.checked.some((c) => c.startsWith('tokenizer_config.json added_tokens_decoder')));
  assert.doesNotThrow(() => assertTokenizerFilesAgree(writeModelDir()));
  // The <|reserved_200018|> spelling of 200018 is accepted too.
  const alias = writeModelDir((tj) => {
    tj.added_tokens.find((a) => a.id === 200018)!.content = '<|reserved_200018|>';
  });
  assert.ok(checkTokenizerFiles(alias).ok);
  // A directory without tokenizer files has nothing to disagree with.
  const empty = checkTokenizerFiles(mkdtempSync(join(tmpdir(), 'gptoss-empty-')));
  assert.deepEqual(empty, { ok: true, checked: [], mismatches: [] });
});

test('model tokenizer files that disagree are reported', () => {
  const shifted = writeModelDir((tj, cfg) => {
    tj.added_tokens.find((a) => a.content === '<|end|>')!.id = 200009;
    (cfg.added_tokens_decoder as Record<string, { content: string }>)['200012'] = { content: '<|im_end|>' };
    cfg.eos_token = '<|im_end|>';
    tj.model.vocab['hello'] = 13;
  });
  const r = checkTokenizerFiles(shifted);
  assert.equal(r.ok, false);
  const all = r.mismatches.join('\n');
  assert.match(all, /id 200009 is "<\|end\|>"/);
  assert.match(all, /id 200012 is "<\|im_end\|>"/);
  assert.match(all, /eos_token "<\|im_end\|>"/);
  assert.match(all, /vocab: id 13 is "hello"/);
  assert.throws(() => assertTokenizerFilesAgree(shifted), /disagree with o200k_harmony/);
  // vocab: false skips the vocabulary comparison.
  assert.ok(!checkTokenizerFiles(shifted, { vocab: false }).mismatches.some((m) => m.includes('vocab:')));
});
