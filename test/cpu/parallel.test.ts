// The CPU thread pool under many back-to-back parallel regions of varying sizes: every element is written
// exactly once and no region deadlocks (a stale worker once mixed two calls' chunk counters and hung forever).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native.ts';
import { Tensor } from '../../src/tensor.ts';
import { addInPlace } from '../../src/ops/elementwise.ts';

test('thousands of parallel regions of varying sizes finish with exact results', { timeout: 120_000 }, () => {
  const ops = native().ops;
  const before = ops.numThreads();
  ops.setNumThreads(4);
  try {
    let seed = 7;
    for (let it = 0; it < 3000; it++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      const n = 1 + (seed % 50_000);
      const a = Tensor.zeros([n], { device: 'cpu' });
      const b = Tensor.from(new Float32Array(n).fill(1), [n], { device: 'cpu' });
      addInPlace(a, b);
      addInPlace(a, b);
      const v = a.toFloat32();
      assert.equal(v[0], 2);
      assert.equal(v[n - 1], 2);
      if (it % 100 === 0) assert.ok(v.every((x) => x === 2), `n=${n}`);
      a.dispose();
      b.dispose();
    }
  } finally {
    ops.setNumThreads(before);
  }
});
