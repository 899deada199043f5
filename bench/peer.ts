// peer.ts: where a benchmark's Python peer script is. The benches run from the sources (bench/x.ts through tsx)
// or compiled (dist/bench/x.js, as on the GPU machine); the .py files stay in bench/, so both places are tried.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

/** The path of bench/<name> (e.g. 'moe_peer.py'), or undefined when neither the source nor the dist layout has it. */
export function peerScript(name: string): string | undefined {
  return [join(here, name), resolve(here, '..', '..', 'bench', name)].find((p) => existsSync(p));
}
