// The command line as a user meets it: each mistake is one line naming what is wrong (exit 2), never a stack trace
// or the whole help page; --help and --version work (exit 0); the launcher bin runs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomModel } from '../../src/model/index.ts';
import { native } from '../../src/native.ts';
import { saveTrainingCheckpoint } from '../../src/trainer/checkpoint.ts';
import { checkResume } from '../../src/trainer/preflight.ts';
import { loadConfig } from '../../src/config/index.ts';
import { CheckpointError } from '../../src/trainer/checkpoint.ts';

const VERSION = (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version;

function cli(file: string, args: string[], env: Record<string, string> = {}): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', `src/cli/${file}.ts`, ...args], {
    encoding: 'utf8',
    env: { ...process.env, GPTOSS_LOG_LEVEL: 'warn', COLUMNS: '80', ...env },
    timeout: 120_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** exit 2 and exactly one line on stderr (`error: ...`) that matches `re`; no stack trace, no help page. */
function assertOneLineError(r: { code: number | null; out: string; err: string }, re: RegExp): void {
  assert.equal(r.code, 2, `exit code; stderr: ${r.err}`);
  const lines = r.err.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one line, got:\n${r.err}`);
  assert.match(lines[0]!, /^error: /);
  assert.match(lines[0]!, re);
  assert.doesNotMatch(r.err, /\n\s+at /, 'no stack trace');
  assert.doesNotMatch(r.out + r.err, /Options:/, 'no help page');
}

const tmp = mkdtempSync(join(tmpdir(), 'gptoss-cli-'));
// The GSM8K pipeline preset (the default run is the synthetic demo) on a few examples.
const small = ['-c', 'tiny-cpu', 'data.max_train_samples=8', 'data.max_val_samples=4'];

test('an unknown flag: one line with a suggestion, not the help page', () => {
  assertOneLineError(cli('train', ['--modle', 'x']), /unknown option --modle \(did you mean --model\?\)/);
  assertOneLineError(cli('sft', ['--dryrun']), /unknown option --dryrun \(did you mean --dry-run\?\)/);
  assertOneLineError(cli('plot', ['m.jsonl', '--outpt', 'c.png']), /unknown option --outpt \(did you mean --output\?\)/);
});

test('--version prints the package version; sft --help shows its own examples, unwrapped', () => {
  const v = cli('train', ['--version']);
  assert.equal(v.code, 0);
  assert.equal(v.out.trim(), VERSION);
  const h = cli('sft', ['--help']);
  assert.equal(h.code, 0);
  const examples = h.out.slice(h.out.indexOf('Examples:'));
  assert.match(examples, /npm run sft -- environment\.env_class=synthetic/);
  assert.doesNotMatch(h.out, /npm run train/, "no train examples in sft's help");
  assert.match(examples, /'?trainer\.sft\.steps=300/, 'an example argument stays whole');
  for (const line of examples.split('\n')) assert.ok(line.length <= 80, `example line wider than the terminal: ${line}`);
});

test('trainer.device=cuda and GPTOSS_DEVICE=cuda on a CPU-only build: one line', { skip: native().features.cuda ? 'this addon has CUDA' : false }, () => {
  assertOneLineError(cli('train', ['--dry-run', 'trainer.device=cuda']), /^error: trainer\.device=cuda: this build of the native addon is CPU-only/);
  assertOneLineError(cli('train', ['--dry-run'], { GPTOSS_DEVICE: 'cuda' }), /^error: GPTOSS_DEVICE=cuda: this build of the native addon is CPU-only/);
});

test('--dry-run refuses a model whose vocabulary cannot hold the task tokens', () => {
  assertOneLineError(
    cli('train', ['--dry-run', '--model', 'tiny:gpt-oss-tiny-256', ...small]),
    /trainer\.policy\.model\.path=tiny:gpt-oss-tiny-256: the model's vocabulary has 256 tokens but task 'gsm8k' uses token id \d+/,
  );
});

test("a model with a compact vocabulary from another task: one line, not 'outside the compact vocabulary' with a stack", () => {
  const dir = join(tmp, 'model-compact-other-task');
  mkdirSync(dir, { recursive: true });
  const m = randomModel('gpt-oss-tiny-256', { seed: 1 });
  m.weights.save(dir);
  // A vocabulary of the first 256 o200k ids: none of the harmony special tokens a GSM8K prompt uses.
  writeFileSync(join(dir, 'vocab.json'), JSON.stringify({ toOriginal: Array.from({ length: 256 }, (_, i) => i) }));
  assertOneLineError(
    cli('train', ['--dry-run', '--model', dir, ...small]),
    /the model's compact vocabulary \(vocab\.json, 256 tokens\) lacks \d+ token\(s\) task 'gsm8k' uses \(first: token \d+ in the stop tokens\)/,
  );
});

test('a config.json without a required field names it in words', () => {
  const dir = join(tmp, 'model-no-vocab');
  mkdirSync(dir, { recursive: true });
  const m = randomModel('gpt-oss-tiny-256', { seed: 1 });
  m.weights.save(dir);
  m.weights.dispose?.();
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  delete cfg.vocab_size;
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
  assertOneLineError(cli('train', ['--dry-run', '--model', dir, ...small]), /missing field 'vocab_size' \(the vocabulary size, a positive integer\)/);
});

test('a corrupt optimizer shard: as the only checkpoint, one line naming it (dry run and run alike); with an older intact one, that one is resumed', async () => {
  const model = randomModel('gpt-oss-tiny-256', { seed: 1 });
  const runArgs = (root: string) => ['--model', 'tiny:gpt-oss-tiny-256', 'data.compact_vocab=true', `trainer.ckpt_path=${root}`, 'trainer.resume_mode=latest', ...small];
  const configOf = (root: string) =>
    loadConfig({ config: 'tiny-cpu', model: 'tiny:gpt-oss-tiny-256', overrides: runArgs(root).filter((a) => a.includes('=')) });
  // A checkpoint as the run writes it (its config recorded), whose optimizer shard has the right size but a
  // header length of 2^63-1 when `corrupt`.
  const save = (root: string, step: number, corrupt: boolean) =>
    saveTrainingCheckpoint({
      root,
      state: { step, epoch: 0, dataPosition: 4 * step, rng: [1, 2, 3, 4], config: configOf(root) },
      writeModel: (dir) => {
        model.weights.save(dir);
        if (!corrupt) return;
        mkdirSync(join(dir, 'optimizer'));
        writeFileSync(join(dir, 'optimizer', 'optimizer.json'), JSON.stringify({ step, kind: 'adamw' }));
        writeFileSync(join(dir, 'optimizer', 'model.safetensors'), Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 2]));
      },
    });

  const only = join(tmp, 'ckpts-only-corrupt');
  await save(only, 3, true);
  const allDamaged = /no intact GRPO checkpoint to resume in .*ckpts-only-corrupt: .*global_step_3 \(optimizer\/model\.safetensors is unreadable \(safetensors: .*header length/;
  assert.throws(() => checkResume(configOf(only)), (e: unknown) => e instanceof CheckpointError && allDamaged.test(e.message));
  assertOneLineError(cli('train', ['--dry-run', ...runArgs(only)]), allDamaged);
  assertOneLineError(cli('train', runArgs(only)), allDamaged);

  // The newest is corrupt, an older one intact: the run (and so the dry run) falls back to the older one.
  const fallback = join(tmp, 'ckpts-fallback');
  await save(fallback, 2, false);
  await save(fallback, 3, true);
  assert.equal(checkResume(configOf(fallback))?.state.step, 2);
  const dry = cli('train', ['--dry-run', ...runArgs(fallback)], { GPTOSS_LOG_LEVEL: 'info' });
  assert.equal(dry.code, 0, dry.err);
  assert.match(dry.err, /would resume GRPO from step 2 \([^)]*global_step_2\)/);
});

test("the seed's preset: print-config works; nothing is refused, and without the checkpoint the run names the download command", () => {
  const p = cli('train', ['-c', 'gsm8k-gptoss-20b', '--print-config']);
  assert.equal(p.code, 0);
  assert.match(p.out, /policy_num_gpus_per_node: 8/);
  assert.match(p.out, /offload_after_step: true/);
  // One process (its keys, offload_after_step included, are the 8-process run's): the model is not in the cache here.
  const r = cli('train', ['-c', 'gsm8k-gptoss-20b', '--dry-run', 'trainer.placement.policy_num_gpus_per_node=1', 'generator.num_inference_engines=1', 'generator.inference_engine_tensor_parallel_size=1', 'trainer.placement.ref_num_gpus_per_node=1', 'trainer.device=cpu'], { HF_HUB_OFFLINE: '1' });
  assert.notEqual(r.code, 0);
  assert.doesNotMatch(r.err, /asks for what this version cannot do/);
  assert.match(r.err, /unsloth\/gpt-oss-20b-BF16.*npx gptoss download unsloth\/gpt-oss-20b-BF16/);
  assert.doesNotMatch(r.err, /\n\s+at /);
});

test('gptoss --version, gptoss-launch --help (exit 0) and a bad launcher flag (one line, exit 2)', () => {
  const v = cli('main', ['--version']);
  assert.equal(v.code, 0);
  assert.equal(v.out.trim(), VERSION);
  const h = cli('main', ['launch', '--help']);
  assert.equal(h.code, 0, h.err);
  assert.match(h.out, /^usage: gptoss-launch /);
  const bad = cli('launch', ['--nnode', '2', 'x.js']);
  assert.equal(bad.code, 2);
  assert.equal(bad.err.trim(), 'gptoss-launch: unknown launcher flag --nnode (did you mean --nnodes?) (see --help)');
  const typo = cli('main', ['trian']);
  assert.equal(typo.code, 2);
  assert.match(typo.err, /unknown command 'trian' \(did you mean 'train'\?\)/);
});

test('the compiled launcher bin runs as an executable (shebang) and launches 2 CPU workers', () => {
  // Compile the launcher's module graph into a folder inside the package (so node_modules and the addon resolve).
  const out = mkdtempSync(join(process.cwd(), '.tmp-launch-'));
  try {
    const tsc = spawnSync(
      process.execPath,
      ['node_modules/typescript/bin/tsc', 'src/cli/launch.ts', '--outDir', out, '--rootDir', '.', '--target', 'ES2022', '--module', 'NodeNext', '--moduleResolution', 'NodeNext', '--skipLibCheck', '--allowImportingTsExtensions', '--rewriteRelativeImportExtensions'],
      { encoding: 'utf8' },
    );
    assert.equal(tsc.status, 0, tsc.stdout + tsc.stderr);
    const bin = join(out, 'src', 'cli', 'launch.js');
    assert.match(readFileSync(bin, 'utf8'), /^#!\/usr\/bin\/env node\n/);
    chmodSync(bin, 0o755);
    const help = spawnSync(bin, ['--help'], { encoding: 'utf8' });
    assert.equal(help.status, 0, help.stderr);
    assert.match(help.stdout, /^usage: gptoss-launch/);
    const worker = join(out, 'worker.mjs');
    writeFileSync(worker, 'console.log(`rank ${process.env.RANK} of ${process.env.WORLD_SIZE}`);\n');
    const run = spawnSync(bin, ['--device', 'cpu', '--nproc-per-node', '2', worker], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(run.status, 0, run.stdout + run.stderr);
    assert.match(run.stdout, /rank 0 of 2/);
    assert.match(run.stdout, /rank 1 of 2/);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test.after(() => rmSync(tmp, { recursive: true, force: true }));
