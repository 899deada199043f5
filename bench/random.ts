// random.ts: random bf16 benchmark data, fast enough for full-size weights (~0.8 G values): uniform values with a
// given std from a xorshift stream, as bf16 bits. Benchmarks only (timings do not depend on the exact values).
import { f32ToBf16Bits } from '../src/tensor.ts';

export function randBits(n: number, std: number, seed: number): Uint16Array {
  const f = new Float32Array(n);
  let s = seed >>> 0 || 1;
  const a = std * Math.sqrt(3);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    f[i] = ((s >>> 0) / 4294967296 * 2 - 1) * a;
  }
  return f32ToBf16Bits(f);
}
