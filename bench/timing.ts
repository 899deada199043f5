// timing.ts: milliseconds per call of a benchmarked function, the same way in every bench: two warm-up calls, then
// CUDA events around `iters` calls on a GPU (no host sync inside the loop), wall time on the CPU.
import { CudaEvent, synchronize } from '../src/tensor.ts';

export function msPerCall(device: string, iters: number, fn: () => void): number {
  for (let i = 0; i < 2; i++) fn();
  synchronize(device);
  if (device === 'cpu') {
    const t0 = performance.now();
    for (let i = 0; i < iters; i++) fn();
    return (performance.now() - t0) / iters;
  }
  const a = new CudaEvent(device, true).record();
  for (let i = 0; i < iters; i++) fn();
  const b = new CudaEvent(device, true).record();
  b.synchronize();
  return a.elapsedMs(b) / iters;
}
