// Compiles for sm_90a every CUDA kernel file that needs neither cuBLAS nor NCCL, and the bench harnesses, so that a
// kernel (or a header change) that does not compile never lands (CI has nvcc but no cuBLAS/NCCL and no GPU). Files
// that use cuBLAS/NCCL are the .cc files in native/cuda/ (and *_cublas.cu / *_nccl.cu, if any); they are compiled
// only where those libraries exist.
import { existsSync, readdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { spawn, spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';

const nvcc = process.env.CUDACXX || 'nvcc';
if (spawnSync(nvcc, ['--version'], { stdio: 'ignore' }).status !== 0) {
  if (process.env.CI) {
    console.error('check-cuda-kernels: nvcc not found, but CI is expected to have it');
    process.exit(1);
  }
  console.log('check-cuda-kernels: nvcc not found; skipping the sm_90a compile check');
  process.exit(0);
}
const dir = 'native/cuda';
// The kernels, then the standalone bench harnesses (bench/*_harness/harness.cu: they include the kernel headers, so
// a header change that breaks one shows here; compiled, not linked).
const files = [
  ...readdirSync(dir)
    .filter((f) => f.endsWith('.cu') && !/_(cublas|nccl)\.cu$/.test(f))
    .sort()
    .map((f) => join(dir, f)),
  ...readdirSync('bench')
    .map((d) => join('bench', d, 'harness.cu'))
    .filter((f) => existsSync(f))
    .sort(),
];
const out = mkdtempSync(join(tmpdir(), 'gptoss-nvcc-'));
// Compile in parallel, one nvcc per core; each file's output is printed when it finishes.
function compile(f) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const p = spawn(
      nvcc,
      ['-arch=sm_90a', '-std=c++17', '-O3', '--expt-relaxed-constexpr', '-Inative', '-Inative/cuda', '-c', f, '-o', join(out, `${f.replaceAll('/', '_')}.o`)],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let log = '';
    p.stdout.on('data', (d) => (log += d));
    p.stderr.on('data', (d) => (log += d));
    p.on('close', (code) => {
      if (log) process.stdout.write(log);
      console.log(`check-cuda-kernels: ${f} ${code === 0 ? 'ok' : 'FAILED'} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
      resolve(code === 0);
    });
  });
}
const queue = [...files];
let failed = 0;
await Promise.all(
  Array.from({ length: Math.max(1, Math.min(availableParallelism(), 8)) }, async () => {
    for (let f = queue.shift(); f; f = queue.shift()) if (!(await compile(f))) failed++;
  }),
);
rmSync(out, { recursive: true, force: true });
if (failed) {
  console.error(`check-cuda-kernels: ${failed} of ${files.length} kernel and harness files failed to compile for sm_90a`);
  process.exit(1);
}
console.log(`check-cuda-kernels: ${files.length} kernel and harness files compile for sm_90a`);
