// model-files.ts: checks that a model directory's Hugging Face tokenizer files (tokenizer.json,
// tokenizer_config.json) agree with our o200k_harmony: every added/special token at the same id with the same
// text, the bos/eos/pad tokens known, and (optionally) every byte-level BPE vocabulary entry spelling the same
// bytes as our rank of that id. A checkpoint with another tokenizer then fails loudly at load time instead of
// training on shifted ids.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { NUM_ORDINARY_TOKENS, SPECIAL_TOKENS, specialIdToText, specialTextToId } from './specials.ts';
import { getTokenizer, type HarmonyTokenizer } from './tokenizer.ts';

export interface TokenizerFilesCheck {
  /** No disagreement found (also true when the directory has neither file). */
  ok: boolean;
  /** What was compared, e.g. 'tokenizer.json added_tokens (21)'. */
  checked: string[];
  mismatches: string[];
}

export interface TokenizerFilesCheckOptions {
  /** Also compare tokenizer.json's model.vocab byte strings with our ranks (default true; ~0.3 s for 200k). */
  vocab?: boolean;
}

/** GPT-2 byte-level alphabet: the character that stands for each byte in tokenizer.json's vocab. */
function byteLevelDecoder(): Map<string, number> {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const map = new Map<string, number>();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (printable(b)) map.set(String.fromCharCode(b), b);
    else map.set(String.fromCharCode(256 + n++), b);
  }
  return map;
}

function sameText(id: number, content: string): boolean {
  if (specialIdToText(id) === content) return true;
  return id === SPECIAL_TOKENS.endofprompt && content === `<|reserved_${id}|>`;
}

function tokenName(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

function checkAdded(id: number, content: string, where: string, mismatches: string[]): void {
  if (id >= NUM_ORDINARY_TOKENS) {
    if (!sameText(id, content)) mismatches.push(`${where}: id ${id} is ${JSON.stringify(content)}, ours is ${specialIdToText(id) ?? '(outside the vocabulary)'}`);
  } else {
    const ours = specialTextToId(content);
    mismatches.push(`${where}: ${JSON.stringify(content)} is added at id ${id}, inside the ordinary ranks${ours !== undefined ? ` (ours: ${ours})` : ''}`);
  }
}

/** Compares the tokenizer files of a model directory with our tokenizer. */
export function checkTokenizerFiles(
  modelDir: string,
  opts: TokenizerFilesCheckOptions = {},
  tok: HarmonyTokenizer = getTokenizer(),
): TokenizerFilesCheck {
  const checked: string[] = [];
  const mismatches: string[] = [];
  const cfgPath = join(modelDir, 'tokenizer_config.json');
  if (existsSync(cfgPath)) {
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>;
    const decoder = (cfg.added_tokens_decoder ?? {}) as Record<string, { content?: string }>;
    const entries = Object.entries(decoder);
    for (const [idStr, entry] of entries) {
      if (typeof entry?.content === 'string') checkAdded(Number(idStr), entry.content, 'tokenizer_config.json added_tokens_decoder', mismatches);
    }
    checked.push(`tokenizer_config.json added_tokens_decoder (${entries.length})`);
    for (const key of ['bos_token', 'eos_token', 'pad_token', 'unk_token']) {
      const name = tokenName(cfg[key]);
      if (name === undefined) continue;
      checked.push(`tokenizer_config.json ${key}`);
      if (specialTextToId(name) === undefined) mismatches.push(`tokenizer_config.json ${key} ${JSON.stringify(name)} is not an o200k_harmony special token`);
    }
  }
  const tjPath = join(modelDir, 'tokenizer.json');
  if (existsSync(tjPath)) {
    const tj = JSON.parse(readFileSync(tjPath, 'utf8')) as {
      added_tokens?: Array<{ id: number; content: string }>;
      model?: { type?: string; vocab?: Record<string, number> };
    };
    const added = tj.added_tokens ?? [];
    for (const a of added) checkAdded(a.id, a.content, 'tokenizer.json added_tokens', mismatches);
    checked.push(`tokenizer.json added_tokens (${added.length})`);
    const vocab = tj.model?.vocab;
    if ((opts.vocab ?? true) && vocab) {
      if (tj.model?.type !== undefined && tj.model.type !== 'BPE') mismatches.push(`tokenizer.json model.type is ${tj.model.type}, expected BPE`);
      const dec = byteLevelDecoder();
      let n = 0;
      let bad = 0;
      for (const [piece, id] of Object.entries(vocab)) {
        n++;
        if (id >= NUM_ORDINARY_TOKENS) {
          if (!sameText(id, piece)) mismatches.push(`tokenizer.json vocab: id ${id} is ${JSON.stringify(piece)}, ours is ${specialIdToText(id)}`);
          continue;
        }
        const bytes: number[] = [];
        let ok = true;
        for (const ch of piece) {
          const b = dec.get(ch);
          if (b === undefined) ok = false;
          else bytes.push(b);
        }
        const ours = tok.tokenBytes(id);
        if (ok && bytes.length === ours.length && bytes.every((b, i) => b === ours[i])) continue;
        if (bad++ < 20) mismatches.push(`tokenizer.json vocab: id ${id} is ${JSON.stringify(piece)}, ours is ${JSON.stringify(tok.idToString(id))}`);
      }
      if (bad > 20) mismatches.push(`tokenizer.json vocab: ${bad - 20} more mismatches`);
      checked.push(`tokenizer.json model.vocab (${n})`);
    }
  }
  return { ok: mismatches.length === 0, checked, mismatches };
}

/** checkTokenizerFiles(), throwing an Error that lists the disagreements. */
export function assertTokenizerFilesAgree(modelDir: string, opts: TokenizerFilesCheckOptions = {}): TokenizerFilesCheck {
  const r = checkTokenizerFiles(modelDir, opts);
  if (!r.ok) {
    throw new Error(`the tokenizer files in ${modelDir} disagree with o200k_harmony:\n  ${r.mismatches.slice(0, 12).join('\n  ')}`);
  }
  return r;
}
