// Builds the native addon from source (runs at `npm install`). cmake-js when cmake exists (CPU backend always,
// CUDA backend when GPTOSS_CUDA is on, or auto and nvcc + cuBLAS + NCCL are found); node-gyp (CPU backend only)
// when it does not. GPTOSS_CUDA=on|off|auto (default auto). Nothing is downloaded: the Node-API headers come
// from the node-api-headers package.
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);
const mode = (process.env.GPTOSS_CUDA ?? 'auto').toLowerCase();
if (!['on', 'off', 'auto'].includes(mode)) {
  console.error(`GPTOSS_CUDA must be on, off or auto (got '${process.env.GPTOSS_CUDA}')`);
  process.exit(1);
}

function run(cmd, args) {
  console.log(`> ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { stdio: 'inherit' });
  return r.status === 0;
}

// GPTOSS_BUILDER=cmake|gyp forces one builder (default: cmake when present).
const builder = (process.env.GPTOSS_BUILDER ?? '').toLowerCase();
const hasCmake = builder !== 'gyp' && spawnSync('cmake', ['--version'], { stdio: 'ignore' }).status === 0;
let ok;
if (hasCmake) {
  const cmakeJs = join(dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js');
  const jobs = String(Math.max(1, Math.min(availableParallelism(), 16)));
  ok = run(process.execPath, [cmakeJs, 'compile', '--parallel', jobs, `--CDGPTOSS_CUDA=${mode.toUpperCase()}`]);
} else {
  if (mode === 'on') {
    console.error('GPTOSS_CUDA=on needs cmake (the CUDA backend is built by CMake only)');
    process.exit(1);
  }
  const nodeGyp = require.resolve('node-gyp/bin/node-gyp.js');
  ok = run(process.execPath, [nodeGyp, 'rebuild']);
}
process.exit(ok ? 0 : 1);
