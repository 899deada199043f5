// cuda.ts: whether the GPU tests can run here (a CUDA build of the addon and a visible GPU), for their `skip`.
import { native } from '../../src/native.ts';
import { cudaDeviceCount } from '../../src/tensor.ts';

export const hasCuda = ((): boolean => {
  try {
    return native().features.cuda && cudaDeviceCount() > 0;
  } catch {
    return false;
  }
})();
