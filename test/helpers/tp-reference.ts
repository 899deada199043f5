// tp-reference.ts: the fixture model's inputs and fp32 reference logits, and the checks that a tensor-parallel
// run must pass against them; shared by test/cpu/tensor-parallel.test.ts (ranks simulated in one process) and
// test/helpers/tp-worker.ts (one process per rank).
import { join } from 'node:path';
import { Checkpoint } from '../../src/model/safetensors.ts';
import { FIXTURE_DIR } from './fixtures.ts';
import { compare, type ParityReport } from './model-parity.ts';

/** The fixture's two 40-token sequences and transformers' fp32 logits [2*40, 256] for them. */
export function fixtureReference(): { seqs: number[][]; logits: Float32Array } {
  const ref = Checkpoint.open(join(FIXTURE_DIR, 'reference.safetensors'));
  try {
    const f32 = (n: string): Float32Array => {
      const t = ref.load(n, { device: 'cpu', dtype: 'f32' });
      const v = t.toFloat32();
      t.dispose();
      return v;
    };
    const [B, S] = ref.info('input_ids')!.shape as [number, number];
    const ids = Array.from(f32('input_ids'), Math.round);
    return { seqs: Array.from({ length: B }, (_, b) => ids.slice(b * S, (b + 1) * S)), logits: f32('logits') };
  } finally {
    ref.close();
  }
}

/**
 * A tensor-parallel model's logits must be as close to the fp32 truth as the single-device model's: both are BF16
 * computations of the same math, rounded at different points (measured at tp=2: relative L2 0.0105 against 0.0115
 * for one device). Allowed: 1.25x the single-device error. Returns the reports for the message.
 */
export function tpWithinBf16Noise(tpLogits: Float32Array, oneLogits: Float32Array, truth: Float32Array): { ok: boolean; tp: ParityReport; one: ParityReport } {
  const tp = compare('tensor-parallel logits vs fp32 truth', tpLogits, truth);
  const one = compare('single-device logits vs fp32 truth', oneLogits, truth);
  return { ok: tp.relL2 <= 1.25 * one.relL2, tp, one };
}

/** Argmax of each row of [rows, V] logits (ties to the lowest id) and its margin over the runner-up. */
export function argmaxRows(logits: Float32Array, V: number): { token: number; margin: number }[] {
  const out: { token: number; margin: number }[] = [];
  for (let r = 0; r < logits.length / V; r++) {
    let best = 0;
    let second = -Infinity;
    for (let v = 1; v < V; v++) {
      const z = logits[r * V + v]!;
      if (z > logits[r * V + best]!) {
        second = logits[r * V + best]!;
        best = v;
      } else if (z > second) second = z;
    }
    out.push({ token: best, margin: logits[r * V + best]! - second });
  }
  return out;
}
