// Where the shared fixtures (transformers outputs, the gptoss-tiny checkpoint) are: one lookup for every test.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const DEFAULT_DIR = '/work/shared/fixtures';

/**
 * Candidate folders, in order: $GPTOSS_FIXTURES, `../shared/fixtures` beside the checkout (worktrees sit one or
 * more levels deeper, so a few parents are tried), `shared/fixtures` below the working directory, /work/shared.
 */
function candidates(): string[] {
  const c: string[] = [];
  if (process.env.GPTOSS_FIXTURES) c.push(process.env.GPTOSS_FIXTURES);
  let dir = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
  for (let i = 0; i < 4; i++) {
    c.push(join(dir, '..', 'shared', 'fixtures'));
    dir = resolve(dir, '..');
  }
  c.push(resolve('../shared/fixtures'), resolve('shared/fixtures'), DEFAULT_DIR);
  return c;
}

/** The first shared fixtures folder that holds `entry` (any that exists when omitted); undefined when none (tests then skip). */
export function fixturesDir(entry = ''): string | undefined {
  const d = candidates().find((x) => existsSync(join(x, entry)));
  return d === undefined ? undefined : resolve(d);
}

/** The path of `entry` in the shared fixtures; where it is nowhere, its path below /work/shared/fixtures (reading it then fails naming it). */
export function fixturePath(entry: string): string {
  return join(fixturesDir(entry) ?? DEFAULT_DIR, entry);
}

/** The gptoss-tiny checkpoint folder (config.json, model.safetensors, reference.safetensors). */
export const FIXTURE_DIR = join(fixturesDir(join('gptoss-tiny', 'config.json')) ?? DEFAULT_DIR, 'gptoss-tiny');
