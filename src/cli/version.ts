// version.ts: the package's version for `--version` (read from the package.json above src/ or dist/src/).
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === '@skyrl/gptoss' && pkg.version) return pkg.version;
    } catch {
      /* not here: one folder up */
    }
    dir = resolve(dir, '..');
  }
  return 'unknown';
}
