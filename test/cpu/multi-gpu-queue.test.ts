// scripts/multi-gpu-queue.sh and scripts/mgpu-checks.sh (the multi-GPU runs of issues 25 and 26, for a machine that
// is rarely lent): they parse, every compiled file they run has its source, every --flag given to a bench or CLI
// is one that program reads, and every config key they override exists in the seed's config. A wrong name found
// here costs nothing; found on the device it costs a call. (The commands themselves were rehearsed on CPU
// processes with MGPU_SMOKE=1, docs/training.md.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../../src/config/load.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SCRIPTS = ['scripts/multi-gpu-queue.sh', 'scripts/mgpu-checks.sh'];
const text = (p: string): string => readFileSync(join(ROOT, p), 'utf8');
/** Logical lines: continuations joined, comments dropped. */
const lines = (p: string): string[] =>
  text(p)
    .replace(/\\\n/g, ' ')
    .split('\n')
    .filter((l) => !/^\s*#/.test(l));

test('the multi-GPU scripts parse (bash -n)', () => {
  for (const s of SCRIPTS) {
    const r = spawnSync('bash', ['-n', join(ROOT, s)], { encoding: 'utf8' });
    assert.equal(r.status, 0, `${s}: ${r.stderr}`);
  }
});

test('every dist/ file the scripts run has its TypeScript source', () => {
  const seen = new Set<string>();
  for (const s of SCRIPTS) {
    for (const m of text(s).matchAll(/dist\/((?:bench|test|src)\/[\w./-]+)\.js/g)) seen.add(m[1]!);
  }
  assert.ok(seen.has('src/cli/train') && seen.has('bench/generate') && seen.has('bench/train-step') && seen.has('bench/nccl'), [...seen].join(', '));
  for (const f of seen) assert.ok(existsSync(join(ROOT, `${f}.ts`)), `${f}.ts (run as dist/${f}.js) does not exist`);
});

// Which sources read the flags of a line: the programs the line (or the arrays it expands) runs.
const TARGETS: [RegExp, string[]][] = [
  [/generate\.js|gen-pool|GEN_/, ['bench/generate.ts']],
  [/train-step\.js|TS_SHAPE/, ['bench/train-step.ts']],
  [/nccl\.js/, ['bench/nccl.ts']],
  [/\$CHECKS plan|plan\.js/, ['src/cli/plan.ts']],
  [/\$TRAIN|train\.js|kill-rank|ctrl-c/, ['src/cli/train.ts', 'src/cli/args.ts', 'src/cli/common.ts']],
  [/\$LAUNCH|launch\.js/, ['src/cli/launch.ts']],
];

test('every --flag in the scripts is read by the program it is given to', () => {
  let checked = 0;
  for (const s of SCRIPTS) {
    for (const line of lines(s)) {
      const flags = [...line.matchAll(/(?<![\w-])--([a-z][a-z0-9-]*)/g)].map((m) => m[1]!).filter((f) => !/^test(-|$)/.test(f) && f !== 'input-type'); // node's own
      if (flags.length === 0 || /^\s*(tar|grep|seq|mktemp|nvidia-smi)\b/.test(line)) continue;
      const files = TARGETS.filter(([re]) => re.test(line)).flatMap(([, f]) => f);
      // Lines that run none of the programs (nvidia-smi queries, node --input-type) hold only those tools' flags.
      const foreign = flags.filter((f) => !['query-gpu', 'format', 'no-deps'].includes(f));
      if (files.length === 0) {
        assert.deepEqual(foreign, [], `${s}: flags ${foreign.join(', ')} on a line that runs none of the known programs: ${line.trim()}`);
        continue;
      }
      const src = files.map(text).join('\n');
      for (const f of foreign) {
        assert.ok(src.includes(`'${f}'`) || src.includes(`"${f}"`) || src.includes(`--${f}`), `${s}: --${f} is read by none of ${files.join(', ')}: ${line.trim()}`);
        checked++;
      }
    }
  }
  assert.ok(checked >= 20, `only ${checked} flags checked`);
});

test('every config key the scripts override exists in the seed config (gsm8k-gptoss-20b)', () => {
  const c = loadConfig({ config: 'gsm8k-gptoss-20b', overrides: [] }) as unknown as Record<string, unknown>;
  const keys = new Set<string>();
  for (const s of SCRIPTS) {
    for (const m of text(s).matchAll(/(?<![\w.$/-])\+?((?:trainer|generator|data|environment)\.[\w.]+)=/g)) keys.add(m[1]!);
  }
  assert.ok(keys.size >= 15, [...keys].join(', '));
  for (const k of keys) {
    let o: unknown = c;
    for (const part of k.split('.')) {
      // `+generator.chat_template_kwargs=...` adds a key (Hydra's +): its parent must exist.
      if (o && typeof o === 'object' && part in o) o = (o as Record<string, unknown>)[part];
      else if (k === 'generator.chat_template_kwargs') o = undefined;
      else assert.fail(`config key ${k}: '${part}' is not in the config`);
    }
  }
});
