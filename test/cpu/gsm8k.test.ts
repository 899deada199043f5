// GSM8K: bundled copy (counts, every row's ground truth), jsonl/parquet/HF-cache loading, the peer prompt, and
// the prepare:gsm8k dataset writer (records, limits, atomic files, the CLI).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  GSM8K_EXPECTED_ROWS,
  bundledGsm8kDir,
  extractGsm8kAnswer,
  findHfCachedGsm8k,
  gsm8kPrompt,
  gsm8kRecord,
  hfHubCacheDir,
  loadGsm8k,
  readGsm8kRows,
  readPromptDataset,
  resolveGsm8kFiles,
  writeJsonl,
} from '../../src/data/index.ts';
import { gsm8kReward } from '../../src/reward/index.ts';
import { prepareGsm8k, runPrepareGsm8k } from '../../src/cli/prepare-gsm8k.ts';
import { writeStringParquet } from '../helpers/parquet-writer.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const tmp = (p: string) => mkdtempSync(join(tmpdir(), `gptoss-${p}-`));

test('the bundled copy has 7,473 train and 1,319 test rows, each with a ground truth', async () => {
  assert.equal(bundledGsm8kDir(), join(ROOT, 'data', 'gsm8k'));
  assert.ok(existsSync(join(bundledGsm8kDir(), 'LICENSE')));
  assert.match(readFileSync(join(bundledGsm8kDir(), 'LICENSE'), 'utf8'), /MIT License/);
  for (const split of ['train', 'test'] as const) {
    const rows = await loadGsm8k(split);
    assert.equal(rows.length, GSM8K_EXPECTED_ROWS[split]);
    assert.equal(rows.length, split === 'train' ? 7473 : 1319);
    for (const [i, r] of rows.entries()) {
      assert.equal(r.index, i);
      assert.equal(r.split, split);
      // Every ground truth is an integer (commas removed), and it is the number after the row's only `####`.
      assert.match(r.groundTruth, /^-?\d+$/, `${split} ${i}: ${r.groundTruth}`);
      const tail = r.answer.slice(r.answer.lastIndexOf('####') + 4).trim().replace(/,/g, '');
      assert.equal(r.groundTruth, tail, `${split} ${i}`);
      // The reference solution earns the strict reward.
      assert.equal(gsm8kReward(r.answer, r.groundTruth).reward, 1, `${split} ${i}`);
    }
  }
  const first = (await loadGsm8k('train', { limit: 1 }))[0]!;
  assert.equal(first.groundTruth, '72');
  assert.ok(first.question.startsWith('Natalia sold clips'));
});

test('ground truth extraction follows the peer (first #### N, commas removed)', () => {
  assert.equal(extractGsm8kAnswer('so\n#### 1,250'), '1250');
  assert.equal(extractGsm8kAnswer('#### -3'), '-3');
  assert.equal(extractGsm8kAnswer('#### 2.5\n#### 7'), '2.5');
  assert.equal(extractGsm8kAnswer('no answer'), undefined);
  assert.equal(extractGsm8kAnswer('####7'), undefined);
});

test('the prompt is the question plus the peer instruction', () => {
  assert.equal(gsm8kPrompt('What is 2 + 2?'), 'What is 2 + 2? Let\'s think step by step and output the final answer after "####".');
});

const SAMPLE = [
  { question: 'A has 3 apples and buys 1,000 more. How many?', answer: '3 + 1000 = 1003\n#### 1,003' },
  { question: 'B owes 5.', answer: '#### -5' },
  { question: 'C?', answer: 'x\n#### 12' },
];

test('loads jsonl, json and parquet files, and split files in a directory', async () => {
  const dir = tmp('gsm8k-path');
  writeFileSync(join(dir, 'train.jsonl'), SAMPLE.map((r) => JSON.stringify(r)).join('\n') + '\n\n');
  writeStringParquet(join(dir, 'test.parquet'), ['question', 'answer'], SAMPLE.slice(0, 2));
  writeFileSync(join(dir, 'rows.json'), JSON.stringify(SAMPLE));
  const train = await loadGsm8k('train', { source: dir });
  assert.deepEqual(train.map((r) => r.groundTruth), ['1003', '-5', '12']);
  const test_ = await loadGsm8k('test', { source: dir });
  assert.deepEqual(test_.map((r) => [r.question, r.groundTruth]), [[SAMPLE[0]!.question, '1003'], [SAMPLE[1]!.question, '-5']]);
  assert.equal((await loadGsm8k('test', { source: join(dir, 'rows.json'), limit: 2 })).length, 2);
  assert.deepEqual(await readGsm8kRows(join(dir, 'test.parquet')), SAMPLE.slice(0, 2));
  // Errors name the file and the row.
  writeFileSync(join(dir, 'bad.jsonl'), '{"question": "q", "answer": "a\\n#### 1"}\n{"question": 3}\n');
  await assert.rejects(readGsm8kRows(join(dir, 'bad.jsonl')), /bad\.jsonl:2: expected \{question: string, answer: string\}/);
  writeFileSync(join(dir, 'nogt.jsonl'), '{"question": "q", "answer": "no number"}\n');
  await assert.rejects(loadGsm8k('train', { source: join(dir, 'nogt.jsonl') }), /row 0: the answer has no "#### N" line/);
  await assert.rejects(loadGsm8k('train', { source: join(dir, 'missing') }), /does not exist/);
  const empty = tmp('gsm8k-empty');
  assert.throws(() => resolveGsm8kFiles('train', { source: empty }), /has no train file/);
});

test('finds GSM8K in the Hugging Face hub cache layout (parquet shards of a snapshot)', async () => {
  const cache = tmp('hfcache');
  const base = join(cache, 'datasets--openai--gsm8k');
  const snap = join(base, 'snapshots', 'e53f048856ff4f594e959d75785d2c2d37b678ee', 'main');
  mkdirSync(snap, { recursive: true });
  mkdirSync(join(base, 'refs'), { recursive: true });
  writeFileSync(join(base, 'refs', 'main'), 'e53f048856ff4f594e959d75785d2c2d37b678ee\n');
  writeStringParquet(join(snap, 'train-00000-of-00002.parquet'), ['question', 'answer'], SAMPLE.slice(0, 2));
  writeStringParquet(join(snap, 'train-00001-of-00002.parquet'), ['question', 'answer'], SAMPLE.slice(2));
  writeStringParquet(join(snap, 'test-00000-of-00001.parquet'), ['question', 'answer'], SAMPLE.slice(1));
  assert.equal(findHfCachedGsm8k('train', { hfCacheDir: cache })!.length, 2);
  const train = await loadGsm8k('train', { source: 'hf', hfCacheDir: cache });
  assert.deepEqual(train.map((r) => [r.index, r.groundTruth]), [[0, '1003'], [1, '-5'], [2, '12']]);
  assert.equal((await loadGsm8k('test', { source: 'auto', hfCacheDir: cache })).length, 2);
  // 'auto' falls back to the bundled copy; 'hf' without a cache is an error.
  const none = tmp('hfnone');
  assert.equal((await loadGsm8k('test', { source: 'auto', hfCacheDir: none })).length, 1319);
  await assert.rejects(loadGsm8k('test', { source: 'hf', hfCacheDir: none }), /not in the Hugging Face hub cache/);
  // The cache directory follows HF_HUB_CACHE, then HF_HOME.
  assert.equal(hfHubCacheDir({ HF_HUB_CACHE: '/x/hub' }), '/x/hub');
  assert.equal(hfHubCacheDir({ HF_HOME: '/y' }), join('/y', 'hub'));
  assert.match(hfHubCacheDir({ HOME: '/home/u' }), /huggingface[/\\]hub$/);
});

test('dataset records match the peer gsm8k_dataset.py rows and round trip through jsonl', async () => {
  const [ex] = await loadGsm8k('train', { limit: 1 });
  const rec = gsm8kRecord(ex!);
  assert.deepEqual(rec, {
    data_source: 'openai/gsm8k',
    prompt: [{ role: 'user', content: gsm8kPrompt(ex!.question) }],
    env_class: 'gsm8k',
    reward_spec: { method: 'rule', ground_truth: '72' },
    extra_info: { split: 'train', index: 0, answer: ex!.answer, question: ex!.question },
  });
  const dir = tmp('records');
  writeJsonl(join(dir, 'a.jsonl'), [rec, rec]);
  assert.deepEqual(readPromptDataset(join(dir, 'a.jsonl')), [rec, rec]);
  writeFileSync(join(dir, 'bad.jsonl'), JSON.stringify({ ...rec, reward_spec: {} }) + '\n');
  assert.throws(() => readPromptDataset(join(dir, 'bad.jsonl')), /bad\.jsonl:1: reward_spec\.ground_truth must be a string/);
});

test('prepare:gsm8k writes train.jsonl and validation.jsonl atomically, with limits and sources', async () => {
  const out = tmp('prepare');
  const r = await prepareGsm8k({ outputDir: out, trainLimit: 10, testLimit: 4 });
  assert.deepEqual(r.counts, { train: 10, validation: 4 });
  const train = readPromptDataset(join(out, 'train.jsonl'));
  const val = readPromptDataset(join(out, 'validation.jsonl'));
  assert.equal(train.length, 10);
  assert.deepEqual(val.map((x) => x.extra_info.split), ['test', 'test', 'test', 'test']);
  assert.equal(train[0]!.reward_spec.ground_truth, '72');
  // No temporary files are left behind.
  assert.deepEqual(readdirSync(out).sort(), ['train.jsonl', 'validation.jsonl']);
  // Synthetic source.
  const syn = tmp('prepare-syn');
  const s = await runPrepareGsm8k(['--output-dir', syn, '--source', 'synthetic', '--synthetic-train-size', '30', '--synthetic-test-size', '5', '--seed', '3']);
  assert.deepEqual(s.counts, { train: 30, validation: 5 });
  const srec = readPromptDataset(join(syn, 'train.jsonl'))[0]!;
  assert.equal(srec.data_source, 'skyrl-gptoss/synthetic-arithmetic');
  assert.match(srec.prompt[0]!.content!, /^What is \d \+ \d\?$/);
  // A path source and bad flags.
  const src = tmp('prepare-src');
  writeFileSync(join(src, 'train.jsonl'), SAMPLE.map((x) => JSON.stringify(x)).join('\n'));
  writeFileSync(join(src, 'test.jsonl'), JSON.stringify(SAMPLE[2]));
  const p = await runPrepareGsm8k(['--output-dir', join(src, 'out'), '--source', src]);
  assert.deepEqual(p.counts, { train: 3, validation: 1 });
  await assert.rejects(runPrepareGsm8k(['--output-dir', out, '--train-limit', '-1']), /--train-limit must be a non-negative integer/);
});

test('npm run prepare:gsm8k runs as a command', () => {
  const out = tmp('prepare-cli');
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/prepare-gsm8k.ts'), '--output-dir', out, '--train-limit', '3', '--test-limit', '2'], {
    encoding: 'utf8',
    cwd: ROOT,
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /train: +3 records/);
  assert.match(r.stdout, /validation: +2 records/);
  assert.equal(readPromptDataset(join(out, 'validation.jsonl')).length, 2);
  const bad = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/prepare-gsm8k.ts'), '--output-dir', out, '--source', join(out, 'nope')], {
    encoding: 'utf8',
    cwd: ROOT,
  });
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /prepare:gsm8k: GSM8K source .* does not exist/);
});
