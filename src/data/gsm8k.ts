// gsm8k.ts: GSM8K (grade-school math word problems, MIT license) from a path, from the Hugging Face hub cache,
// or from the copy bundled with this package (data/gsm8k: train 7,473 rows, test 1,319), plus the peer's prompt
// and ground-truth extraction.
//
// Sources:
// - 'bundled': data/gsm8k/{train,test}.jsonl of this package (works offline);
// - 'hf': the hub cache layout `$HF_HUB_CACHE` (or `$HF_HOME/hub`, or ~/.cache/huggingface/hub)
//   `/datasets--openai--gsm8k/snapshots/<rev>/main/<split>-*.parquet` (rev from refs/main, else the newest);
//   the `datasets` library's own Arrow cache (~/.cache/huggingface/datasets) is not read;
// - a path: a .jsonl/.json/.parquet file (used for whichever split is asked), or a directory holding
//   `<split>.jsonl`, `<split>.parquet`, `<split>-*.parquet`, `main/<split>-*.parquet` or `data/<split>-*.parquet`;
// - 'auto': the hub cache if it has the split, else the bundled copy.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export type Gsm8kSplit = 'train' | 'test';
export const GSM8K_SPLITS: readonly Gsm8kSplit[] = ['train', 'test'];
/** The instruction the peer appends to every question. */
export const GSM8K_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".';
export const GSM8K_DATA_SOURCE = 'openai/gsm8k';
export const GSM8K_EXPECTED_ROWS: Readonly<Record<Gsm8kSplit, number>> = { train: 7473, test: 1319 };

/** A raw row as the dataset ships it. */
export interface Gsm8kRow {
  question: string;
  /** Worked solution ending with `#### <number>`. */
  answer: string;
}

export interface Gsm8kExample extends Gsm8kRow {
  split: Gsm8kSplit;
  /** Row index within the split. */
  index: number;
  /** The number after `####`, commas removed (e.g. '72', '-3', '1250'). */
  groundTruth: string;
}

export type Gsm8kSource = 'bundled' | 'hf' | 'auto' | (string & {});

export interface LoadGsm8kOptions {
  /** Default 'bundled'. */
  source?: Gsm8kSource;
  /** Hub cache directory for source 'hf'/'auto' (default from HF_HUB_CACHE / HF_HOME / ~/.cache/huggingface/hub). */
  hfCacheDir?: string;
  /** Dataset repo (default 'openai/gsm8k') and config folder (default 'main') in the hub cache. */
  repo?: string;
  config?: string;
  /** Keep only the first `limit` rows. */
  limit?: number;
}

/** The question as the peer prompts it: question + ` Let's think step by step and output the final answer after "####".` */
export function gsm8kPrompt(question: string): string {
  return `${question} ${GSM8K_INSTRUCTION}`;
}

/** The peer's ground truth: the first `#### N` of a solution (N: digits, `-`, `.`, `,`), commas removed. */
export function extractGsm8kAnswer(solution: string): string | undefined {
  const m = /#### (-?[0-9.,]+)/.exec(solution);
  return m ? m[1]!.replace(/,/g, '') : undefined;
}

/** The package's data/gsm8k directory (found by walking up from this module, in src/ or dist/src/). */
export function bundledGsm8kDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const cand = join(dir, 'data', 'gsm8k');
    if (existsSync(join(cand, 'train.jsonl'))) return cand;
    dir = dirname(dir);
  }
  throw new Error('bundled GSM8K not found: expected data/gsm8k/train.jsonl in the package');
}

/** The Hugging Face hub cache directory. */
export function hfHubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HUGGINGFACE_HUB_CACHE) return env.HUGGINGFACE_HUB_CACHE;
  if (env.HF_HOME) return join(env.HF_HOME, 'hub');
  return join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'huggingface', 'hub');
}

function splitFiles(dir: string, split: string): string[] {
  for (const f of [`${split}.jsonl`, `${split}.parquet`, `${split}.json`]) {
    if (existsSync(join(dir, f))) return [join(dir, f)];
  }
  for (const sub of ['', 'main', 'data']) {
    const d = join(dir, sub);
    if (!existsSync(d) || !statSync(d).isDirectory()) continue;
    const shards = readdirSync(d)
      .filter((f) => f.startsWith(`${split}-`) && f.endsWith('.parquet'))
      .sort();
    if (shards.length > 0) return shards.map((f) => join(d, f));
  }
  return [];
}

/** Parquet files of a split in the hub cache, or undefined when it is not cached. */
export function findHfCachedGsm8k(split: Gsm8kSplit, opts: Pick<LoadGsm8kOptions, 'hfCacheDir' | 'repo' | 'config'> = {}): string[] | undefined {
  const repo = opts.repo ?? GSM8K_DATA_SOURCE;
  const base = join(opts.hfCacheDir ?? hfHubCacheDir(), `datasets--${repo.replace(/\//g, '--')}`);
  const snapshots = join(base, 'snapshots');
  if (!existsSync(snapshots)) return undefined;
  const revs: string[] = [];
  const ref = join(base, 'refs', 'main');
  if (existsSync(ref)) revs.push(readFileSync(ref, 'utf8').trim());
  revs.push(
    ...readdirSync(snapshots)
      .map((r) => ({ r, t: statSync(join(snapshots, r)).mtimeMs }))
      .sort((a, b) => b.t - a.t)
      .map((x) => x.r),
  );
  for (const rev of revs) {
    const dir = join(snapshots, rev, opts.config ?? 'main');
    if (!existsSync(dir)) continue;
    const files = readdirSync(dir)
      .filter((f) => f.startsWith(`${split}-`) && f.endsWith('.parquet'))
      .sort()
      .map((f) => join(dir, f));
    if (files.length > 0) return files;
  }
  return undefined;
}

function checkRow(r: unknown, where: string): Gsm8kRow {
  const row = r as Partial<Gsm8kRow> | null;
  if (!row || typeof row.question !== 'string' || typeof row.answer !== 'string') {
    throw new Error(`${where}: expected {question: string, answer: string}, got ${JSON.stringify(r)?.slice(0, 120)}`);
  }
  return { question: row.question, answer: row.answer };
}

/** Reads question/answer rows from a .jsonl, .json (array) or .parquet file. */
export async function readGsm8kRows(file: string): Promise<Gsm8kRow[]> {
  const ext = extname(file).toLowerCase();
  if (ext === '.parquet') {
    // Loaded on first use: importing the data module needs no Parquet reader.
    const { asyncBufferFromFile, parquetReadObjects } = await import('hyparquet');
    const rows = await parquetReadObjects({ file: await asyncBufferFromFile(file), columns: ['question', 'answer'] });
    return rows.map((r, i) => checkRow(r, `${file} row ${i}`));
  }
  const text = readFileSync(file, 'utf8');
  if (ext === '.json') {
    const arr = JSON.parse(text) as unknown;
    if (!Array.isArray(arr)) throw new Error(`${file}: expected a JSON array of {question, answer}`);
    return arr.map((r, i) => checkRow(r, `${file} row ${i}`));
  }
  const out: Gsm8kRow[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new Error(`${file}:${i + 1}: invalid JSON (${(e as Error).message})`);
    }
    out.push(checkRow(v, `${file}:${i + 1}`));
  });
  return out;
}

/** The files a source resolves to for a split (throws when there are none). */
export function resolveGsm8kFiles(split: Gsm8kSplit, opts: LoadGsm8kOptions = {}): string[] {
  const source = opts.source ?? 'bundled';
  if (source === 'bundled') return [join(bundledGsm8kDir(), `${split}.jsonl`)];
  if (source === 'hf' || source === 'auto') {
    const files = findHfCachedGsm8k(split, opts);
    if (files) return files;
    if (source === 'auto') return [join(bundledGsm8kDir(), `${split}.jsonl`)];
    throw new Error(`GSM8K ${split} split not in the Hugging Face hub cache ${opts.hfCacheDir ?? hfHubCacheDir()} (repo ${opts.repo ?? GSM8K_DATA_SOURCE})`);
  }
  if (!existsSync(source)) throw new Error(`GSM8K source ${source} does not exist`);
  if (statSync(source).isFile()) return [source];
  const files = splitFiles(source, split);
  if (files.length === 0) throw new Error(`GSM8K source ${source} has no ${split} file (${split}.jsonl, ${split}.parquet, ${split}-*.parquet, main/${split}-*.parquet)`);
  return files;
}

/** Loads a split with its ground truths. Throws (naming file and row) when a row has no `#### N`. */
export async function loadGsm8k(split: Gsm8kSplit, opts: LoadGsm8kOptions = {}): Promise<Gsm8kExample[]> {
  const files = resolveGsm8kFiles(split, opts);
  const out: Gsm8kExample[] = [];
  for (const f of files) {
    const rows = await readGsm8kRows(f);
    rows.forEach((r, i) => {
      const groundTruth = extractGsm8kAnswer(r.answer);
      if (groundTruth === undefined) throw new Error(`${f} row ${i}: the answer has no "#### N" line`);
      out.push({ split, index: out.length, question: r.question, answer: r.answer, groundTruth });
    });
    if (opts.limit !== undefined && out.length >= opts.limit) break;
  }
  return opts.limit !== undefined ? out.slice(0, opts.limit) : out;
}
