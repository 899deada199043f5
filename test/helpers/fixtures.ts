// Where the shared fixtures (transformers outputs, the gptoss-tiny checkpoint) are: one lookup for every test.
//
// GPTOSS_FIXTURES, when set, is the only place looked at (an explicit setting that is wrong should fail, not fall
// through to another copy). Otherwise `../shared/fixtures` beside the checkout: the repository root first, then a
// few of its parents (a git worktree or the compiled tests under dist/ sit one or more levels deeper).
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Parents of the repository root tried for a `shared/fixtures` sibling. */
const PARENT_LEVELS = 4;

/** The candidate folders, in the order they are tried. */
function candidates(): string[] {
  const env = process.env.GPTOSS_FIXTURES;
  if (env) return [resolve(env)];
  const c: string[] = [];
  // Two levels above this file: the root for test/helpers/fixtures.ts, dist/ for the compiled
  // dist/test/helpers/fixtures.js (the walk over parents then reaches the root one step later).
  let dir = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
  for (let i = 0; i < PARENT_LEVELS; i++) {
    c.push(join(dir, '..', 'shared', 'fixtures'));
    dir = resolve(dir, '..');
  }
  return [...new Set(c.map((p) => resolve(p)))];
}

/** The first fixtures folder that holds `entry` (any that exists when omitted); undefined when none (tests then skip). */
export function fixturesDir(entry = ''): string | undefined {
  return candidates().find((x) => existsSync(join(x, entry)));
}

/** One line naming what is missing, where it was looked for, and how to point at it. */
export function missingFixtureMessage(entry: string): string {
  const where = process.env.GPTOSS_FIXTURES ? ' (GPTOSS_FIXTURES)' : '';
  return (
    `test fixture '${entry}' not found; looked in ${candidates().join(', ')}${where}. ` +
    `Put the shared fixtures in ../shared/fixtures beside the checkout or set GPTOSS_FIXTURES to their folder`
  );
}

/** The path of `entry` in the shared fixtures; throws naming the folders tried when it is nowhere. */
export function fixturePath(entry: string): string {
  const d = fixturesDir(entry);
  if (d === undefined) throw new Error(missingFixtureMessage(entry));
  return join(d, entry);
}

/** The gptoss-tiny checkpoint folder (config.json, model.safetensors, reference.safetensors). */
export const FIXTURE_DIR = dirname(fixturePath(join('gptoss-tiny', 'config.json')));
