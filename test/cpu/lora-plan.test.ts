// The memory planner's LoRA form (planLoraTraining in src/trainer/memory-plan.ts): gpt-oss-20b LoRA GRPO with the
// seed's lengths (prompt 512, generation 4,096, 16 prompts x 4 samples) fits one 80 GB H100 (the preset
// configs/gsm8k-gptoss-20b-lora.yaml), with one copy of the base shared by the trainer, the engine and the KL
// reference; what cannot run is refused with the reason (several GPUs or engines, a GPU too small).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { loadConfig } from '../../src/config/load.ts';
import { presetConfig } from '../../src/model/config.ts';
import { LoraAdapters, type LoraTarget } from '../../src/model/index.ts';
import { formatPlan, loraParams, paramUnits, planFromConfig } from '../../src/trainer/memory-plan.ts';

const g20 = presetConfig('gpt-oss-20b');
const loraConfig = (over: string[] = []) => loadConfig({ config: 'gsm8k-gptoss-20b-lora', overrides: over });
const planCli = (args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/plan.ts', ...args], { encoding: 'utf8' });

test('adapter parameter counts equal the tensors LoraAdapters makes', () => {
  const tiny = presetConfig('gpt-oss-tiny-256');
  const targets: LoraTarget[] = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'router', 'gate_up_proj', 'down_proj', 'lm_head', 'embed_tokens'];
  const a = LoraAdapters.init(tiny, { rank: 3, alpha: 6, dropout: 0, targets }, 'cpu');
  assert.equal(loraParams(tiny, 3, targets), a.numParameters());
  a.dispose();
  // gpt-oss-20b, rank 16 on q/k/v/o: per layer 16·(2880 + 4096) + 2·16·(2880 + 512) + 16·(4096 + 2880) = 331,776.
  assert.equal(loraParams(g20, 16, ['q_proj', 'k_proj', 'v_proj', 'o_proj']), 24 * 331_776);
  // lm_head and embed_tokens once each (not per layer): 16·(2880 + 201,088) apiece.
  assert.equal(loraParams(g20, 16, ['lm_head', 'embed_tokens']), 2 * 16 * (2880 + 201_088));
});

test('an lm_head adapter plans its merged head and that head\'s f32 gradient; the counts include its adapter state', () => {
  const p = planFromConfig(g20, loraConfig(['trainer.policy.model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj,lm_head,embed_tokens]']), { gpus: 1, gpuMemoryBytes: 80e9 });
  const A = loraParams(g20, 16, ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'lm_head', 'embed_tokens']);
  assert.equal(p.lora!.adapterParams, A);
  const row = (k: string) => p.train.rows.find((r) => r.key === k)?.bytes;
  assert.equal(row('adapters'), 4 * A);
  assert.equal(row('moments'), 8 * A);
  const VH = 201_088 * 2880;
  assert.equal(row('lm_head_adapter'), 6 * VH);
  assert.equal(p.generate.rows.find((r) => r.key === 'lm_head_adapter'), undefined);
  assert.match(p.notes.join('\n'), /merged bf16 head made per forward .*generation adds it in factor form/);
  assert.equal(p.fits, true, p.overflows.join('; '));
});

test('gpt-oss-20b LoRA GRPO with the seed lengths fits one 80 GB GPU: one base, adapter state only', () => {
  const c = loraConfig();
  assert.equal(c.trainer.train_batch_size * c.generator.n_samples_per_prompt, 64);
  assert.equal(c.trainer.max_prompt_length + c.generator.sampling_params.max_generate_length, 512 + 4096);
  const p = planFromConfig(g20, c, { gpus: 1, gpuMemoryBytes: 80e9, modelName: 'gpt-oss-20b' });
  assert.equal(p.fits, true, p.overflows.join('; '));
  const P = paramUnits(g20).total;
  // The config's targets: q/k/v/o and the LM head (its merged head and that head's f32 gradient are planned too).
  const A = loraParams(g20, 16, ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'lm_head']);
  const row = (k: string) => p.train.rows.find((r) => r.key === k)?.bytes;
  assert.equal(row('weights'), 2 * P);
  assert.equal(row('lm_head_adapter'), 6 * 201_088 * 2880);
  assert.equal(row('adapters'), 4 * A);
  assert.equal(row('moments'), 8 * A);
  assert.equal(row('grads'), 4 * A);
  // No fp32 master, no base gradient, no second copy for the KL reference.
  assert.equal(row('masters'), undefined);
  assert.equal(row('ref'), undefined);
  assert.ok(p.train.totalBytes < 60e9, `${p.train.totalBytes}`);
  // Generation: the engine runs the trainer's base (0 extra bytes), and the KV pool holds the 64 rollouts at once.
  assert.equal(p.generate.rows.find((r) => r.key === 'engineWeights')!.bytes, 0);
  assert.ok(p.generate.fullSequences >= 64, `${p.generate.fullSequences} sequences`);
  const t = formatPlan(p);
  assert.match(t, /LoRA: rank 16 on q_proj, k_proj, v_proj, o_proj, lm_head: 11\.2M trainable parameters/);
  assert.match(t, /verdict: fits/);
});

test('what LoRA cannot run is refused, saying why', () => {
  // The seed's 8-GPU layout with a rank: LoRA runs on one GPU.
  const eight = planFromConfig(g20, loadConfig({ config: 'gsm8k-gptoss-20b', overrides: ['trainer.policy.model.lora.rank=16'] }), { gpus: 8, gpuMemoryBytes: 80e9 });
  assert.equal(eight.fits, false);
  assert.match(eight.overflows.join('\n'), /runs on one GPU .*planned on 8 GPUs/);
  assert.match(eight.overflows.join('\n'), /one engine of TP 1/);
  // Expert adapters fit (4.4M + 2.9M parameters per layer at rank 16) and are noted for their slower MoE path.
  const experts = planFromConfig(g20, loraConfig(['trainer.policy.model.lora.target_modules=[q_proj,gate_up_proj,down_proj]']), { gpus: 1, gpuMemoryBytes: 80e9 });
  assert.equal(experts.fits, true, experts.overflows.join('; '));
  assert.equal(experts.lora!.adapterParams, loraParams(g20, 16, ['q_proj', 'gate_up_proj', 'down_proj']));
  assert.match(experts.notes.join('\n'), /adapters on the experts \(gate_up_proj, down_proj\) run the MoE's per-expert cuBLAS path/);
  // A 48 GB GPU cannot hold the 41.8 GB base and a step's activations.
  const small = planFromConfig(g20, loraConfig(), { gpus: 1, gpuMemoryBytes: 48e9 });
  assert.equal(small.fits, false);
  assert.match(small.overflows.join('\n'), /training: \d+\.\d+ GB > 48\.00 GB \(bf16 base \(frozen, shared\) 41\.83 GB/);
  assert.match(small.overflows.join('\n'), /colocated generation: .* > gpu_memory_utilization 0\.8 x 48\.00 GB/);
});

test('gptoss plan -c gsm8k-gptoss-20b-lora: exit 0 on 80 GB, 3 on 48 GB', () => {
  const ok = planCli(['-c', 'gsm8k-gptoss-20b-lora', '--model', 'gpt-oss-20b', '--gpu-memory-gb', '80']);
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /bf16 base \(frozen, shared\)\s+41\.83/);
  const no = planCli(['-c', 'gsm8k-gptoss-20b-lora', '--model', 'gpt-oss-20b', '--gpu-memory-gb', '48']);
  assert.equal(no.status, 3);
  assert.match(no.stderr, /^error: does not fit: training: /);
});

test('a LoRA run over several processes is refused before it starts, naming the key', async () => {
  const { unsupportedSettings } = await import('../../src/config/load.ts');
  assert.deepEqual(unsupportedSettings(loraConfig()), []);
  const msgs = unsupportedSettings(loraConfig(['trainer.placement.policy_num_gpus_per_node=2', 'generator.num_inference_engines=2']));
  assert.deepEqual(msgs, ['trainer.policy.model.lora.rank=16 with 2 processes: LoRA is not supported by the sharded trainer yet; it runs on one process (one GPU or the CPU: set trainer.placement.policy_num_gpus_per_node=1)']);
});
