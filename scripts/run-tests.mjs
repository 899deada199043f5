// Runs every *.test.ts below the given folders with node's test runner (TypeScript through tsx).
// Usage: node scripts/run-tests.mjs test/cpu [more folders or files...]
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

function collect(p) {
  if (statSync(p).isFile()) return [p];
  return readdirSync(p)
    .sort()
    .flatMap((f) => collect(join(p, f)))
    .filter((f) => f.endsWith('.test.ts'));
}
const args = process.argv.slice(2);
const files = (args.length ? args : ['test/cpu']).flatMap(collect);
if (files.length === 0) {
  console.error(`no *.test.ts files under ${args.join(', ')}`);
  process.exit(1);
}
const r = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=spec', ...files],
  { stdio: 'inherit' },
);
process.exit(r.status ?? 1);
