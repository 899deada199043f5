// prepare-gsm8k.ts: `npm run prepare:gsm8k`: writes the prompt datasets the trainer reads (the equivalent of
// the peer's `python examples/gsm8k/gsm8k_dataset.py`): <output-dir>/train.jsonl and <output-dir>/validation.jsonl
// (the GSM8K test split), one record per line (see src/data/dataset.ts), each file written atomically.
//
//   npm run prepare:gsm8k -- --output-dir ~/data/gsm8k [--source bundled|hf|auto|synthetic|PATH]
//                            [--train-limit N] [--test-limit N] [--hf-cache-dir DIR]
//                            [--seed S --synthetic-difficulty tiny|easy|medium|hard --synthetic-train-size N --synthetic-test-size N]
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { gsm8kRecord, writeJsonl, type PromptRecord } from '../data/dataset.ts';
import { loadGsm8k, resolveGsm8kFiles, type Gsm8kSplit } from '../data/gsm8k.ts';
import { SYNTHETIC_PRESETS, generateSynthetic, syntheticRecord } from '../data/synthetic.ts';

export interface PrepareOptions {
  outputDir: string;
  /** 'bundled' (default), 'hf', 'auto', 'synthetic', or a path (file or directory). */
  source?: string;
  trainLimit?: number;
  testLimit?: number;
  hfCacheDir?: string;
  /** Synthetic task only. */
  seed?: number;
  syntheticDifficulty?: keyof typeof SYNTHETIC_PRESETS;
  syntheticTrainSize?: number;
  syntheticTestSize?: number;
}

export interface PrepareResult {
  files: { train: string; validation: string };
  counts: { train: number; validation: number };
  sources: { train: string[]; validation: string[] };
}

/** Prepares the datasets (no process exit, no printing: the CLI below wraps it). */
export async function prepareGsm8k(opts: PrepareOptions): Promise<PrepareResult> {
  const source = opts.source ?? 'bundled';
  const out = { train: join(opts.outputDir, 'train.jsonl'), validation: join(opts.outputDir, 'validation.jsonl') };
  let train: PromptRecord[];
  let validation: PromptRecord[];
  let sources: PrepareResult['sources'];
  if (source === 'synthetic') {
    const difficulty = opts.syntheticDifficulty ?? 'tiny';
    const gen = (split: 'train' | 'test', size: number, limit?: number) =>
      generateSynthetic({ count: Math.min(size, limit ?? size), split, seed: opts.seed ?? 0, difficulty }).map(syntheticRecord);
    train = gen('train', opts.syntheticTrainSize ?? 2000, opts.trainLimit);
    validation = gen('test', opts.syntheticTestSize ?? 200, opts.testLimit);
    const tag = `synthetic:${difficulty}:seed=${opts.seed ?? 0}`;
    sources = { train: [tag], validation: [tag] };
  } else {
    const load = async (split: Gsm8kSplit, limit?: number) =>
      (await loadGsm8k(split, { source, ...(opts.hfCacheDir ? { hfCacheDir: opts.hfCacheDir } : {}), ...(limit !== undefined ? { limit } : {}) })).map((ex) =>
        gsm8kRecord(ex),
      );
    const where = (split: Gsm8kSplit) => resolveGsm8kFiles(split, { source, ...(opts.hfCacheDir ? { hfCacheDir: opts.hfCacheDir } : {}) });
    train = await load('train', opts.trainLimit);
    validation = await load('test', opts.testLimit);
    sources = { train: where('train'), validation: where('test') };
  }
  writeJsonl(out.train, train);
  writeJsonl(out.validation, validation);
  return { files: out, counts: { train: train.length, validation: validation.length }, sources };
}

function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? join(homedir(), p.slice(1)) : p;
}

/**
 * The CLI (argv without node and script). Bad flags throw; with `exitProcess` (the command line), yargs prints
 * usage and exits instead, and --help/--version work.
 */
export async function runPrepareGsm8k(argv: string[], opts: { exitProcess?: boolean } = {}): Promise<PrepareResult> {
  const exit = opts.exitProcess ?? false;
  let parser = yargs(argv).exitProcess(exit);
  if (!exit) {
    parser = parser.fail((msg, err) => {
      throw err ?? new Error(msg);
    });
  }
  const args = await parser
    .scriptName('prepare:gsm8k')
    .usage('$0 [options]: write train.jsonl and validation.jsonl prompt datasets for GRPO on GSM8K')
    .option('output-dir', { type: 'string', default: '~/data/gsm8k', describe: 'where to write train.jsonl and validation.jsonl' })
    .option('source', {
      type: 'string',
      default: 'bundled',
      describe: "'bundled' (the copy in this package), 'hf' (Hugging Face hub cache), 'auto' (hub cache, else bundled), 'synthetic', or a path to a file or directory of jsonl/parquet",
    })
    .option('train-limit', { type: 'number', describe: 'keep the first N training rows' })
    .option('test-limit', { type: 'number', describe: 'keep the first N test rows' })
    .option('hf-cache-dir', { type: 'string', describe: 'hub cache directory (default $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub)' })
    .option('seed', { type: 'number', default: 0, describe: 'synthetic task: seed' })
    .option('synthetic-difficulty', { choices: Object.keys(SYNTHETIC_PRESETS), default: 'tiny', describe: 'synthetic task: difficulty preset' })
    .option('synthetic-train-size', { type: 'number', default: 2000, describe: 'synthetic task: training examples' })
    .option('synthetic-test-size', { type: 'number', default: 200, describe: 'synthetic task: validation examples' })
    .check((a) => {
      for (const k of ['train-limit', 'test-limit', 'synthetic-train-size', 'synthetic-test-size'] as const) {
        const v = a[k];
        if (v !== undefined && (!Number.isInteger(v) || v < 0)) throw new Error(`--${k} must be a non-negative integer, got ${v}`);
      }
      return true;
    })
    .strict()
    .help()
    .parseAsync();
  const outputDir = resolve(expandHome(args['output-dir']));
  return prepareGsm8k({
    outputDir,
    source: args.source,
    ...(args['train-limit'] !== undefined ? { trainLimit: args['train-limit'] } : {}),
    ...(args['test-limit'] !== undefined ? { testLimit: args['test-limit'] } : {}),
    ...(args['hf-cache-dir'] !== undefined ? { hfCacheDir: args['hf-cache-dir'] } : {}),
    seed: args.seed,
    syntheticDifficulty: args['synthetic-difficulty'] as keyof typeof SYNTHETIC_PRESETS,
    syntheticTrainSize: args['synthetic-train-size'],
    syntheticTestSize: args['synthetic-test-size'],
  });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  runPrepareGsm8k(hideBin(process.argv), { exitProcess: true }).then(
    (r) => {
      console.log(`train:      ${r.counts.train} records -> ${r.files.train}  (from ${r.sources.train.join(', ')})`);
      console.log(`validation: ${r.counts.validation} records -> ${r.files.validation}  (from ${r.sources.validation.join(', ')})`);
    },
    (e: unknown) => {
      console.error(`prepare:gsm8k: ${e instanceof Error ? e.message : String(e)}`);
      process.exit(1);
    },
  );
}
