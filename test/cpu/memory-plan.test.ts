// The memory planner (src/trainer/memory-plan.ts) and `gptoss plan` (src/cli/plan.ts): parameter counts against
// the real tensors, activation counts against what the model's forward actually keeps, the gpt-oss-20b plans of
// the seed config (8 x 80 GB fits, 1 x 80 GB is refused naming what overflows), cpu_offload, the CLI's exit codes
// and its config.json-only model resolution.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FIXTURE_DIR } from '../helpers/fixtures.ts';
import { loadConfig } from '../../src/config/load.ts';
import { parameterCount, presetConfig, readConfigFile, toHfConfig, PRESET_NAMES } from '../../src/model/config.ts';
import { paramSpecs } from '../../src/model/weights.ts';
import { SafetensorsFile } from '../../src/model/safetensors.ts';
import { packSequences, disposeBatch } from '../../src/model/batch.ts';
import { randomModel } from '../../src/model/index.ts';
import type { Tensor } from '../../src/tensor.ts';
import {
  activationTerms,
  formatPlan,
  kvBytesPerSequence,
  kvLayout,
  layerParams,
  paramUnits,
  planFromConfig,
  planInputFromConfig,
  planMemory,
  planToJson,
  shardSize,
  trainingActivations,
} from '../../src/trainer/memory-plan.ts';

const numel = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);
const seedConfig = () => loadConfig({ config: 'gsm8k-gptoss-20b' });
const g20 = presetConfig('gpt-oss-20b');

test('parameter units equal the sum of the tensors weights.ts makes (every preset)', () => {
  for (const name of PRESET_NAMES) {
    const c = presetConfig(name);
    const specs = paramSpecs(c);
    const u = paramUnits(c);
    assert.equal(u.total, specs.reduce((s, p) => s + numel(p.shape), 0), name);
    assert.equal(u.total, parameterCount(c), name);
    const layer0 = specs.filter((p) => p.name.startsWith('model.layers.0.')).reduce((s, p) => s + numel(p.shape), 0);
    assert.equal(layerParams(c).total, layer0, name);
    const head = specs.filter((p) => p.name === 'lm_head.weight' || p.name === 'model.norm.weight').reduce((s, p) => s + numel(p.shape), 0);
    assert.equal(u.head, head, name);
  }
});

test('gpt-oss-20b: 20.9B parameters, embedding + LM head 1.16B, one layer 0.82B = 1.65 GB bf16', () => {
  const u = paramUnits(g20);
  assert.ok(Math.abs(u.total / 1e9 - 20.91) < 0.01, `${u.total}`);
  assert.ok(Math.abs((u.embedding + u.head) / 1e9 - 1.158) < 0.001, `${u.embedding + u.head}`);
  assert.equal(u.layers.length, 24);
  assert.ok(Math.abs((2 * u.layers[0]!) / 1e9 - 1.646) < 0.001, `${u.layers[0]}`);
});

test('the fixture checkpoint: units from its config.json equal the tensors in its safetensors headers', () => {
  const c = readConfigFile(join(FIXTURE_DIR, 'config.json'));
  let total = 0;
  for (const f of ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']) {
    const st = SafetensorsFile.open(join(FIXTURE_DIR, f));
    for (const t of st.tensors.values()) total += numel(t.shape);
    st.close();
  }
  assert.equal(paramUnits(c).total, total);
});

const BYTES: Record<string, number> = { bf16: 2, f32: 4, i32: 4, u8: 1 };

test("activation terms equal the bytes of the tensors a layer's forward keeps (LayerSaved + MoeContext, CPU)", () => {
  // The CPU keeps no padding rows and no xp (the CUDA cuBLAS paths' gathered rows): padding 1, minus k·2H.
  const c = presetConfig('gpt-oss-tiny-256');
  const model = randomModel(c, { device: 'cpu', seed: 3 });
  const seqs = [Array.from({ length: 37 }, (_, i) => (i * 7) % 250), Array.from({ length: 21 }, (_, i) => (i * 11) % 250)];
  const b = packSequences(seqs, 'cpu');
  const r = model.forward(b, { train: true });
  try {
    const s = r.state!.saved[0]!;
    const storages: Tensor[] = [];
    const add = (t: Tensor | undefined): void => {
      if (t && !storages.some((o) => o.native.sameStorage(t.native))) storages.push(t);
    };
    for (const t of [s.x, s.a1, s.rstd1, s.qr, s.kr, s.v, s.attn, s.lse, s.h, s.a2, s.rstd2]) add(t);
    const m = s.moe;
    for (const t of [m.x, m.topkIdx, m.topkW, m.countsTensor, m.offsets, m.permTok, m.slotPos, m.gu, m.h, m.yp, m.xp]) add(t);
    assert.equal(m.xp, undefined, 'the CPU keeps no xp');
    const kept = storages.reduce((sum, t) => sum + numel(t.shape) * BYTES[t.dtype]!, 0);
    const terms = activationTerms(c, 1);
    const T = b.numTokens;
    const perLayerConstant = 4 * c.numExperts + 4 * (c.numExperts + 1); // counts, offsets
    assert.equal(kept, T * (terms.layerSavedDense + terms.layerSavedMoe - c.topK * 2 * c.hiddenSize) + perLayerConstant);
  } finally {
    r.state!.dispose();
    r.logprobs.dispose();
    r.entropy.dispose();
    disposeBatch(b);
    model.dispose();
  }
});

test('recompute keeps layer inputs only (plus, by default, each layer\'s attention); the LM head chunk follows the fused op', () => {
  const plain = trainingActivations(g20, 16384, true, 1.5, false);
  const on = trainingActivations(g20, 16384, true, 1.5); // keepAttention: the models' default under recompute
  const off = trainingActivations(g20, 16384, false, 1.5);
  assert.equal(plain.storedBytes, 16384 * 24 * 2 * 2880);
  assert.equal(plain.keptAttentionBytes, 0);
  assert.equal(on.keepAttention, true);
  assert.equal(off.keepAttention, false);
  // Per layer: out bf16 [T, Hq·D = 4096] + lse f32 [Hq = 64, T].
  assert.equal(on.keptAttentionBytes, 24 * 16384 * (2 * 4096 + 4 * 64));
  assert.equal(on.storedBytes, plain.storedBytes + on.keptAttentionBytes);
  // The LM head backward holds all 24 kept attentions on top; the last layer's backward 23 (its own are the attn
  // and lse of the saved set its recompute rebuilds, which the plain recompute holds there too).
  assert.equal(on.headBackwardPeakBytes - plain.headBackwardPeakBytes, on.keptAttentionBytes);
  assert.equal(on.layerBackwardPeakBytes - plain.layerBackwardPeakBytes, (23 / 24) * on.keptAttentionBytes);
  assert.ok(off.peakBytes > 6 * on.peakBytes, `${off.peakBytes} vs ${on.peakBytes}`);
  // lmHeadChunk: 16384 tokens -> 16384 vocabulary rows (fp32 logits + bf16 dlogits = 1.5 GiB).
  assert.equal(on.logprobChunk, 16384);
  assert.equal(on.logprobChunkBytes, 16384 * 16384 * 6);
  assert.equal(trainingActivations(g20, 32768, true, 1.5).logprobChunk, 8192);
  assert.equal(trainingActivations(g20, 2048, true, 1.5).logprobChunk, 32768);
});

test('gpt-oss-20b at 16k tokens: the plan\'s kept-attention and LM-head chunk rows, by hand', () => {
  // The recomputing LM-head backward's vocabulary chunks (trainer.fused_lm_head_backward=false); the default's
  // token chunk is checked at the end.
  const input = (keep: boolean) => ({
    ...planInputFromConfig(g20, seedConfig(), { gpus: 8, gpuMemoryBytes: 80e9, modelName: 'gpt-oss-20b', microBatchTokens: 16384 }),
    keepAttention: keep,
    fusedLmHead: false,
  });
  const p = planMemory(input(true));
  const row = (q: typeof p, k: string) => q.train.rows.find((r) => r.key === k);
  // 24 layers x 16384 tokens x (2 B x 4096 + 4 B x 64) = 3,321,888,768 B; 16384 x 16384 x (4 + 2) = 1,610,612,736 B.
  assert.equal(row(p, 'keptAttention')!.bytes, 3_321_888_768);
  assert.equal(row(p, 'lmHeadChunk')!.bytes, 1_610_612_736);
  assert.equal(row(p, 'keptAttention')!.partOf, 'activations');
  assert.equal(row(p, 'lmHeadChunk')!.partOf, 'activations');
  // Breakdown rows are inside the activations row, not added again to the total.
  const sum = p.train.rows.filter((r) => !r.partOf).reduce((s, r) => s + r.bytes, 0);
  assert.equal(p.train.totalBytes, sum);
  const plain = planMemory(input(false));
  assert.equal(row(plain, 'keptAttention'), undefined);
  assert.equal(row(plain, 'lmHeadChunk')!.bytes, 1_610_612_736);
  // The peak is the last layer's backward here: the activations grow by 23 layers' kept attention (the last
  // layer's own is its recompute's attn and lse either way), and the slack by 10% of that (rounded up to bytes).
  const grow = 23 * 16384 * (2 * 4096 + 4 * 64);
  assert.equal(row(p, 'activations')!.bytes - row(plain, 'activations')!.bytes, grow);
  assert.ok(Math.abs(p.train.totalBytes - plain.train.totalBytes - 1.1 * grow) <= 1, `${p.train.totalBytes - plain.train.totalBytes}`);
  assert.equal(p.fits, true, p.overflows.join('; '));
  const table = formatPlan(p);
  assert.match(table, /\n {4}incl\. kept attention \(24 layers\) +3\.32 {3}24 x 16,384 tok x \(2 B x Hq·D 4096 \+ 4 B x Hq 64\)/);
  assert.match(table, /\n {4}incl\. LM head chunk buffers \(chunk 16,384\) +1\.61 {3}16,384 tok x 16,384 x \(4 \+ 2\) B/);
  // The default (fused LM-head backward, 'auto'): one token chunk's fp32 logits + bf16 dlogits, 3559 x 201,088 x 6 B.
  const fused = planMemory(planInputFromConfig(g20, seedConfig(), { gpus: 8, gpuMemoryBytes: 80e9, modelName: 'gpt-oss-20b', microBatchTokens: 16384 }));
  assert.equal(row(fused, 'lmHeadChunk')!.bytes, 4_294_033_152);
  assert.equal(fused.fits, true, fused.overflows.join('; '));
  assert.match(formatPlan(fused), /\n {4}incl\. LM head token-chunk buffers \(3,559 tokens, fused backward\) +4\.29 /);
});

test('KV layout: full layers hold every position, sliding layers 128, kv heads split over TP', () => {
  const kv1 = kvLayout(g20, 1);
  assert.equal(kv1.fullBytesPerToken, 12 * 2 * 8 * 64 * 2);
  assert.equal(kv1.slidingBytesPerToken, 12 * 2 * 8 * 64 * 2);
  assert.equal(kvBytesPerSequence(kv1, 4608), 24576 * 4608 + 24576 * 128);
  assert.equal(kvBytesPerSequence(kv1, 100), 2 * 24576 * 100);
  assert.equal(kvLayout(g20, 4).fullBytesPerToken, 6144);
});

test('gpt-oss-20b on 8 x 80 GB with the seed config fits, with room for the colocated KV cache', () => {
  const p = planFromConfig(g20, seedConfig(), { gpus: 8, gpuMemoryBytes: 80e9, modelName: 'gpt-oss-20b' });
  assert.equal(p.fits, true, p.overflows.join('; '));
  const u = paramUnits(g20);
  const S = [u.embedding, ...u.layers, u.head].reduce((s, x) => s + shardSize(x, 8), 0);
  assert.equal(p.params.perRank, S);
  const row = (k: string) => p.train.rows.find((r) => r.key === k)!.bytes;
  assert.equal(row('weights'), 2 * S);
  assert.equal(row('masters'), 4 * S);
  assert.equal(row('moments'), 8 * S);
  assert.equal(row('grads'), 4 * S);
  assert.equal(row('ref'), 2 * S);
  assert.equal(row('gathered'), 2 * 2 * shardSize(u.layers[0]!, 8) * 8);
  // 18 B/param over 8 ranks is ~47 GB; the whole step stays under the GPU.
  assert.ok(Math.abs((18 * S) / 1e9 - 47.06) < 0.01);
  assert.ok(p.train.totalBytes < 80e9 && p.train.totalBytes > 60e9, `${p.train.totalBytes}`);
  assert.ok(p.generate && p.generate.fullSequences >= 32, `${p.generate?.fullSequences}`);
  assert.ok(p.generate!.kvTokens > 1e6);
  const table = formatPlan(p);
  assert.match(table, /verdict: fits/);
  assert.match(table, /KV cache pool/);
  const json = planToJson(p) as { fits: boolean; train: { rows: unknown[] } };
  assert.equal(json.fits, true);
  assert.equal(json.train.rows.length, p.train.rows.length);
});

test('gpt-oss-20b on 1 x 80 GB is refused, naming what overflows', () => {
  const p = planFromConfig(g20, seedConfig(), { gpus: 1, gpuMemoryBytes: 80e9, modelName: 'gpt-oss-20b' });
  assert.equal(p.fits, false);
  assert.match(p.overflows[0]!, /^training: \d+\.\d+ GB per GPU > 80\.00 GB \(AdamW moments \(m, v\) 167\.3\d GB, fp32 master shard 83\.66 GB/);
  assert.match(p.overflows[0]!, /cpu_offload=true/);
  assert.match(p.overflows[0]!, /trainer\.gradient_checkpointing_keep_attention=false/);
  assert.ok(p.train.rows.some((r) => r.key === 'keptAttention'), 'the seed config keeps the attention (the default)');
  // One process: no gathers, no unsharded gradient buffers, no NCCL.
  assert.equal(p.train.rows.find((r) => r.key === 'gathered'), undefined);
  assert.match(formatPlan(p), /verdict: does not fit\n {2}- training:/);
});

test('cpu_offload moves the masters and moments to host memory', () => {
  const base = planFromConfig(g20, seedConfig(), { gpus: 4, gpuMemoryBytes: 80e9 });
  const off = planFromConfig(g20, loadConfig({ config: 'gsm8k-gptoss-20b', overrides: ['trainer.policy.fsdp_config.cpu_offload=true'] }), { gpus: 4, gpuMemoryBytes: 80e9 });
  const S = off.params.perRank;
  assert.equal(base.fits, false);
  assert.ok(base.train.rows.some((r) => r.key === 'masters'));
  assert.ok(!off.train.rows.some((r) => r.key === 'masters' || r.key === 'moments'));
  assert.equal(off.host.rows.find((r) => r.key === 'masters')!.bytes, 4 * S);
  assert.equal(off.host.rows.find((r) => r.key === 'moments')!.bytes, 8 * S);
  // AdamW on the host: nothing of it on the GPU; two pinned staging slots of the largest unit's shard on the host.
  assert.equal(off.train.rows.find((r) => r.key === 'offloadStaging'), undefined);
  assert.equal(base.train.totalBytes - off.train.totalBytes, 12 * S);
  const staging = off.host.rows.find((r) => r.key === 'offloadStaging')!;
  assert.equal(staging.bytes, 2 * 6 * (off.params.largestUnit / 4));
  assert.equal(off.fits, true, off.overflows.join('; '));
  // A host that cannot hold 4 ranks' state is refused.
  const small = planFromConfig(g20, loadConfig({ config: 'gsm8k-gptoss-20b', overrides: ['trainer.policy.fsdp_config.cpu_offload=true'] }), { gpus: 4, gpuMemoryBytes: 80e9, hostMemoryBytes: 100e9 });
  assert.equal(small.fits, false);
  assert.match(small.overflows.join('\n'), /^host: 4 ranks x/m);
});

test('colocated generation: refused without room for one sequence; offload_after_step frees the optimizer state', () => {
  const cfg = (o: string[]) => loadConfig({ config: 'gsm8k-gptoss-20b', overrides: o });
  const tight = planFromConfig(g20, cfg(['generator.gpu_memory_utilization=0.3']), { gpus: 8, gpuMemoryBytes: 80e9 });
  assert.equal(tight.fits, false);
  assert.match(tight.overflows.join('\n'), /^colocated generation: trainer state kept \+ engine need/m);
  const base = planFromConfig(g20, seedConfig(), { gpus: 8, gpuMemoryBytes: 80e9 });
  const keep = planFromConfig(g20, cfg(['trainer.policy.optimizer_config.offload_after_step=false']), { gpus: 8, gpuMemoryBytes: 80e9 });
  const S = base.params.perRank;
  assert.equal(base.host.rows.find((r) => r.key === 'optimizerWhileGenerating')!.bytes, 12 * S);
  assert.equal(keep.generate.rows.find((r) => r.key === 'optimizer')!.bytes, 12 * S);
  assert.equal(base.generate.kvPoolBytes - keep.generate.kvPoolBytes, 12 * S);
  assert.equal(keep.host.totalBytes, 0);
});

test('not colocated: the engine GPU holds no trainer state and the engine can size its pool from the same plan', () => {
  const apart = planFromConfig(g20, loadConfig({ config: 'gsm8k-gptoss-20b', overrides: ['trainer.placement.colocate_all=false'] }), { gpus: 8, gpuMemoryBytes: 80e9 });
  assert.equal(apart.fits, true, apart.overflows.join('; '));
  assert.deepEqual(apart.generate.rows.map((r) => r.key), ['engineWeights', 'engineWorkspace', 'overhead', 'kvPool']);
  const g = apart.generate;
  assert.equal(g.kvPoolBytes, 0.8 * 80e9 - g.usedBytes);
  assert.equal(g.fullSequences, Math.floor(g.kvPoolBytes / kvBytesPerSequence(kvLayout(g20, 4), 4608)));
  assert.match(formatPlan(apart), /engine GPU \(not colocated\)/);
});

// ---- the CLI ----------------------------------------------------------------------------------------------------
const planCli = (args: string[], env: NodeJS.ProcessEnv = {}) =>
  spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/plan.ts', ...args], { encoding: 'utf8', env: { ...process.env, ...env } });

test('gptoss plan: exit 0 when it fits, 3 with the table and a reason when not, 2 on bad input', () => {
  const ok = planCli(['--model', 'gpt-oss-20b', '--gpus', '8', '--gpu-memory-gb', '80']);
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /memory plan: gpt-oss-20b .* on 8 GPUs x 80\.00 GB/);
  assert.match(ok.stdout, /verdict: fits/);
  const no = planCli(['--model', 'gpt-oss-20b', '--gpus', '1', '--gpu-memory-gb', '80']);
  assert.equal(no.status, 3);
  assert.match(no.stdout, /fp32 master shard/);
  assert.match(no.stderr, /^error: does not fit: training: .* > 80\.00 GB/);
  assert.equal(no.stderr.trim().split('\n').length, 1);
  const bad = planCli(['--model', 'gpt-oss-20b', '--gpus', '8']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--gpu-memory-gb is required/);
  const badKey = planCli(['--model', 'gpt-oss-20b', '--gpus', '8', '--gpu-memory-gb', '80', 'trainer.policy.fsdp_config.cpu_ofload=true']);
  assert.equal(badKey.status, 2);
  assert.match(badKey.stderr, /cpu_ofload/);
});

test('gptoss plan reads only config.json of a directory or a cached hub id (no weights present)', () => {
  const root = mkdtempSync(join(tmpdir(), 'plan-'));
  try {
    const dir = join(root, 'model');
    mkdirSync(dir);
    copyFileSync(join(FIXTURE_DIR, 'config.json'), join(dir, 'config.json'));
    const fromDir = planCli(['--model', dir, '--gpus', '2', '--gpu-memory-gb', '4', '--json']);
    assert.equal(fromDir.status, 0, fromDir.stderr);
    const j = JSON.parse(fromDir.stdout) as { fits: boolean; params: { total: number } };
    assert.equal(j.params.total, paramUnits(readConfigFile(join(FIXTURE_DIR, 'config.json'))).total);
    // A hub id whose cached snapshot holds config.json only (the 20b shape).
    const commit = 'b'.repeat(40);
    const repo = join(root, 'hub', 'models--unsloth--gpt-oss-20b-BF16');
    mkdirSync(join(repo, 'refs'), { recursive: true });
    mkdirSync(join(repo, 'snapshots', commit), { recursive: true });
    writeFileSync(join(repo, 'refs', 'main'), commit);
    writeFileSync(join(repo, 'snapshots', commit, 'config.json'), JSON.stringify(toHfConfig(g20)));
    const env = { HF_HUB_CACHE: join(root, 'hub'), HF_HUB_OFFLINE: '1' };
    const fromHub = planCli(['--gpus', '8', '--gpu-memory-gb', '80'], env); // the seed config's model path
    assert.equal(fromHub.status, 0, fromHub.stderr);
    assert.match(fromHub.stdout, /memory plan: unsloth\/gpt-oss-20b-BF16 \(20\.91B parameters/);
    const missing = planCli(['--model', 'openai/gpt-oss-120b', '--gpus', '8', '--gpu-memory-gb', '80'], env);
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /no config\.json in the Hugging Face cache/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
