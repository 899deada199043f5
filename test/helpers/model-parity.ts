// Shared by test/cpu/model-parity.test.ts and test/gpu/model.test.ts: the gptoss-tiny fixture (transformers'
// logits, log-probs, hidden states and gradients) against our model on a device.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Tensor } from '../../src/tensor.ts';
import { Checkpoint } from '../../src/model/safetensors.ts';
import { loadModel } from '../../src/model/index.ts';
import { packSequences, disposeBatch } from '../../src/model/batch.ts';
import { FIXTURE_DIR } from './fixtures.ts';

export interface ParityReport {
  name: string;
  relL2: number;
  maxAbs: number;
  refMaxAbs: number;
}

/** ||a-b|| / ||b|| and max |a-b|. */
export function compare(name: string, ours: Float32Array, ref: Float32Array): ParityReport {
  assert.equal(ours.length, ref.length, `${name}: ${ours.length} values vs ${ref.length}`);
  let num = 0;
  let den = 0;
  let maxAbs = 0;
  let refMax = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = ours[i]! - ref[i]!;
    num += d * d;
    den += ref[i]! * ref[i]!;
    maxAbs = Math.max(maxAbs, Math.abs(d));
    refMax = Math.max(refMax, Math.abs(ref[i]!));
  }
  if (!Number.isFinite(num)) return { name, relL2: Infinity, maxAbs: Infinity, refMaxAbs: refMax };
  return { name, relL2: Math.sqrt(num / Math.max(den, 1e-30)), maxAbs, refMaxAbs: refMax };
}

export interface FixtureRun {
  reports: ParityReport[];
  lossOurs: number;
  lossRef: number;
}

/** Runs the fixture through loadModel + forward(train) + backward on `device` and compares everything. */
export async function runFixtureParity(device: string, opts: { recompute?: boolean } = {}): Promise<FixtureRun> {
  const model = await loadModel(FIXTURE_DIR, { device, recompute: opts.recompute });
  const ref = Checkpoint.open(join(FIXTURE_DIR, 'reference.safetensors'));
  const f32 = (n: string): Float32Array => {
    const t = ref.load(n, { device: 'cpu', dtype: 'f32' });
    const v = t.toFloat32();
    t.dispose();
    return v;
  };
  const idsInfo = ref.info('input_ids')!;
  const [B, S] = idsInfo.shape as [number, number];
  const ids = Array.from(f32('input_ids'), Math.round);
  const seqs = Array.from({ length: B }, (_, b) => ids.slice(b * S, (b + 1) * S));
  const batch = packSequences(seqs, device);
  const reports: ParityReport[] = [];
  try {
    const r = model.forward(batch, { train: true, collectHidden: true, returnLogits: true });
    reports.push(compare('logits', r.logits!.toFloat32(), f32('logits')));
    const lp = r.logprobs.toFloat32();
    const refLp = f32('token_logprobs');
    const w = f32('loss_weights');
    const ours = new Float32Array(B * (S - 1));
    const dLp = new Float32Array(B * S);
    let loss = 0;
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < S - 1; t++) {
        ours[b * (S - 1) + t] = lp[b * S + t]!;
        loss -= lp[b * S + t]! * w[b * (S - 1) + t]!;
        dLp[b * S + t] = -w[b * (S - 1) + t]! / (B * (S - 1));
      }
    }
    loss /= B * (S - 1);
    reports.push(compare('token_logprobs', ours, refLp));
    r.hidden!.forEach((h, i) => reports.push(compare(`hidden_states.${i}`, h, f32(`hidden_states.${i}`))));
    const dT = Tensor.from(dLp, [B * S], { device });
    const grads = model.backward(r.state!, dT);
    for (const name of model.weights.names()) {
      reports.push(compare(`grad.${name}`, grads.get(name)!.toFloat32(), f32(`grad.${name}`)));
    }
    for (const g of grads.values()) g.dispose();
    for (const t of [dT, r.logprobs, r.entropy, r.logits!]) t.dispose();
    return { reports, lossOurs: loss, lossRef: f32('loss')[0]! };
  } finally {
    disposeBatch(batch);
    ref.close();
    model.dispose();
  }
}

/**
 * BF16 noise bounds (relative L2 against the fp32 reference). Activations are bf16 (relative rounding 2^-9 per
 * store, a few stores per layer); gradients go through bf16 activations and bf16 attention gradients.
 */
export function checkParity(run: FixtureRun, log: (s: string) => void = console.log): void {
  const worst = [...run.reports].sort((a, b) => b.relL2 - a.relL2).slice(0, 8);
  log(`loss ours ${run.lossOurs} ref ${run.lossRef}`);
  for (const r of run.reports.filter((x) => !x.name.startsWith('grad.'))) {
    log(`  ${r.name}: relL2 ${r.relL2.toExponential(2)} maxAbs ${r.maxAbs.toExponential(2)} (ref max ${r.refMaxAbs.toExponential(2)})`);
  }
  log('  worst:');
  for (const r of worst) log(`  ${r.name}: relL2 ${r.relL2.toExponential(2)} maxAbs ${r.maxAbs.toExponential(2)} (ref max ${r.refMaxAbs.toExponential(2)})`);
  assert.ok(Math.abs(run.lossOurs - run.lossRef) < 2e-2 * Math.abs(run.lossRef) + 1e-3, `loss ${run.lossOurs} vs ${run.lossRef}`);
  for (const r of run.reports) {
    const bound = r.name.startsWith('grad.') ? 6e-2 : 2e-2;
    assert.ok(r.relL2 <= bound, `${r.name}: relative L2 error ${r.relL2} > ${bound} (max abs ${r.maxAbs})`);
  }
}
