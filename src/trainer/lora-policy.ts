// lora-policy.ts: the single-process Policy that trains LoRA adapters (src/model/lora.ts) on a frozen GPT-OSS base.
//
// The base stays bf16 and frozen: no fp32 master, no gradient, no optimizer state for it (backward computes the
// activations' chain and the adapters' gradients only, see DecoderLayer.backward). AdamW (m, v per adapter) updates
// the adapters in place: f32 adapters are their own fp32 masters; bf16 adapters (the CUDA default) get fp32 masters
// here and AdamW rewrites the bf16 copy from them (as GptOssPolicy does for full weights). The model, the engine of
// LocalGenerator (which runs the same GptOssModel) and the next forward all read the adapters from there, so the
// weight sync after a step moves nothing. The KL reference is the base itself: the model with its adapters switched off
// (GptOssModel.withoutAdapters), no second copy of the weights.
//
// Files: save() writes the adapters in the PEFT layout (adapter_config.json + adapter_model.safetensors, loadable
// by PEFT and by LoraAdapters.loadPeft) and the optimizer state (optimizer/: m, v per adapter name + optimizer.json);
// load() restores both. saveMergedCheckpoint (src/model/lora.ts) exports base + adapters as one bf16 HF checkpoint.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tensor } from '../tensor.ts';
import { Checkpoint, LoraAdapters, checkLoraSpec, saveCheckpoint as saveTensors, tensorToSave, type ForwardOptions, type GptOssModel } from '../model/index.ts';
import { adamwStep } from '../ops/optim.ts';
import { cast } from '../ops/elementwise.ts';
import { GptOssPolicy, modelLogprobs } from './gptoss-policy.ts';
import type { LogprobModel, LogprobOptions, LogprobOutput, OptimizerHyper, SequenceBatch } from './policy.ts';

/** The base model with the adapters off: the KL reference of a LoRA policy (shares the policy's weights). */
class BaseOfLora implements LogprobModel {
  constructor(private readonly model: GptOssModel) {}
  get device(): string {
    return this.model.device;
  }
  async logprobs(batch: SequenceBatch, opts?: LogprobOptions): Promise<LogprobOutput> {
    return this.model.withoutAdapters(() => modelLogprobs(this.model, batch, opts));
  }
  /** Nothing to free: the weights are the policy's. */
  dispose(): void {}
}

export interface LoraPolicyOptions {
  /** LoRA+: the B factors' lr = lr x this (A's: lr). Default 1 (plain LoRA). */
  loraplusLrRatio?: number;
  /** The run's seed (trainer.seed), mixed into every LoRA dropout seed (default 0). */
  dropoutSeed?: number;
}

/**
 * The LoRA dropout seed of a training forward: a hash of (the run's seed, the optimizer steps taken, the forward's
 * index since the last zeroGrad) into [0, 2^52), an integer dropoutForward takes exactly. A deterministic function
 * of the training position, so a resumed run draws the masks the uninterrupted one would have.
 */
export function loraDropoutSeed(runSeed: number, optimizerSteps: number, micro: number): number {
  let h = 0x811c9dc5;
  for (const v of [runSeed, optimizerSteps, micro]) {
    // Both 32-bit halves of each (safe integer) value, FNV-1a style with a murmur finaliser per word.
    for (const w of [v >>> 0, Math.floor(v / 4294967296) >>> 0]) {
      h = Math.imul(h ^ w, 0x01000193) >>> 0;
      h = (h ^ (h >>> 16)) >>> 0;
      h = Math.imul(h, 0x85ebca6b) >>> 0;
      h = (h ^ (h >>> 13)) >>> 0;
    }
  }
  // 32 hashed bits, then the micro index in the low 20 bits so forwards of one step never share a seed.
  return h * 1048576 + (micro % 1048576);
}

export class LoraPolicy extends GptOssPolicy {
  readonly adapters: LoraAdapters;
  readonly loraplusLrRatio: number;
  /** AdamW state per adapter name: moments, and for bf16 adapters their fp32 master (f32 adapters are their own). */
  private moments = new Map<string, { m: Tensor; v: Tensor; master?: Tensor }>();
  readonly dropoutRunSeed: number;
  /** Training forwards since the last zeroGrad (the micro-batch index of the dropout seed). */
  private micro = 0;

  /** Attaches `adapters` to `model` (model.lora) for training; the policy owns both. */
  constructor(model: GptOssModel, adapters: LoraAdapters, opts: LoraPolicyOptions = {}) {
    super(model);
    this.loraplusLrRatio = opts.loraplusLrRatio ?? 1;
    if (!(this.loraplusLrRatio > 0)) throw new Error(`LoraPolicy: loraplusLrRatio must be positive, got ${this.loraplusLrRatio}`);
    this.dropoutRunSeed = opts.dropoutSeed ?? 0;
    if (!Number.isSafeInteger(this.dropoutRunSeed)) throw new Error(`LoraPolicy: dropoutSeed must be an integer, got ${this.dropoutRunSeed}`);
    checkLoraSpec(adapters.spec);
    if (adapters.device !== model.device) throw new Error(`LoraPolicy: adapters on ${adapters.device}, model on ${model.device}`);
    if (adapters.config.numLayers !== model.config.numLayers || adapters.config.hiddenSize !== model.config.hiddenSize) {
      throw new Error('LoraPolicy: the adapters were made for another model shape');
    }
    this.adapters = adapters;
    model.lora = adapters;
  }

  /**
   * Runs f with the base model as a full-weight policy (the adapters detached: forward, backward and generation see
   * the plain model, and backward trains every base weight): a LoRA run's SFT warm start fine-tunes the base that
   * GRPO then adapts. The base policy's optimizer state is dropped afterwards; the adapters are attached again.
   * Nothing else may use the model while f runs.
   */
  async withBase<R>(f: (base: GptOssPolicy) => Promise<R>): Promise<R> {
    const base = new GptOssPolicy(this.model);
    this.model.lora = null;
    try {
      return await f(base);
    } finally {
      base.zeroGrad();
      base.resetOptimizer();
      this.model.lora = this.adapters;
    }
  }

  /**
   * Training forwards carry a dropout seed (adapters with dropout > 0): derived from the optimizer steps taken and
   * the forward's index since the last zeroGrad (the micro-batch within the mini-batch; GRPO and SFT zero the
   * gradients before each mini-batch), so a run's masks are reproducible and a resumed run's are the same.
   */
  protected override trainForwardOptions(): Partial<ForwardOptions> {
    if (this.adapters.spec.dropout === 0) return {};
    return { dropoutSeed: loraDropoutSeed(this.dropoutRunSeed, this.optimizerSteps, this.micro++) };
  }

  override zeroGrad(): void {
    super.zeroGrad();
    this.micro = 0;
  }

  override optimizerStep(h: OptimizerHyper, step: number): void {
    if (!this.grads) throw new Error('optimizerStep: no gradients (run forward + backward first)');
    for (const [name, p] of this.adapters.params) {
      let s = this.moments.get(name);
      if (!s) {
        s = { m: Tensor.zeros(p.shape, { dtype: 'f32', device: this.device }), v: Tensor.zeros(p.shape, { dtype: 'f32', device: this.device }) };
        if (p.dtype !== 'f32') s.master = cast(p, 'f32');
        this.moments.set(name, s);
      }
      let g = this.grads.get(name);
      if (!g) this.grads.set(name, (g = Tensor.zeros(p.shape, { dtype: 'f32', device: this.device })));
      const lr = name.endsWith('.lora_B') ? h.lr * this.loraplusLrRatio : h.lr;
      const hyper = { lr, beta1: h.beta1, beta2: h.beta2, eps: h.eps, weightDecay: h.weightDecay, step, gradScale: this.gradScale };
      adamwStep(s.master ? { master: s.master, grad: g, m: s.m, v: s.v, bf16: p } : { master: p, grad: g, m: s.m, v: s.v }, hyper);
    }
    this.optimizerSteps = step;
  }

  override resetOptimizer(): void {
    for (const s of this.moments.values()) [s.m, s.v, s.master].forEach((t) => t?.dispose());
    this.moments.clear();
    this.optimizerSteps = 0;
  }

  /** The KL reference: the base model (adapters off), sharing this policy's weights. */
  override async frozenCopy(): Promise<LogprobModel> {
    return new BaseOfLora(this.model);
  }

  override async save(dir: string): Promise<void> {
    // bf16 adapters with fp32 masters: the file holds the masters (what training resumes from).
    const masters = new Map<string, Tensor>();
    for (const [n, s] of this.moments) if (s.master) masters.set(n, s.master);
    this.adapters.savePeft(dir, { values: masters });
    if (this.moments.size) {
      const od = join(dir, 'optimizer');
      mkdirSync(od, { recursive: true });
      saveTensors(od, [...this.moments].flatMap(([n, s]) => [tensorToSave(`m.${n}`, s.m), tensorToSave(`v.${n}`, s.v)]));
      writeFileSync(join(od, 'optimizer.json'), JSON.stringify({ step: this.optimizerSteps, kind: 'adamw-lora', params: this.moments.size }));
    }
  }

  override async load(dir: string): Promise<void> {
    const loaded = LoraAdapters.loadPeft(dir, this.model.config, this.device, { dtype: 'f32' });
    let keepMasters = false;
    try {
      const a = loaded.spec, b = this.adapters.spec;
      if (a.rank !== b.rank || a.alpha !== b.alpha || a.targets.join() !== b.targets.join()) {
        throw new Error(
          `LoRA checkpoint ${dir} has rank ${a.rank}, alpha ${a.alpha}, targets ${a.targets.join(',')}; this run has rank ${b.rank}, ` +
            `alpha ${b.alpha}, targets ${b.targets.join(',')} (trainer.policy.model.lora)`,
        );
      }
      this.adapters.copyFrom(loaded);
      this.resetOptimizer();
      this.micro = 0;
      const od = join(dir, 'optimizer');
      if (existsSync(join(od, 'optimizer.json'))) {
        this.loadOptimizer(dir, od, loaded);
        keepMasters = this.adapters.dtype !== 'f32';
      }
    } finally {
      if (!keepMasters) loaded.dispose();
    }
  }

  /** Restores m, v (and, for bf16 adapters, the fp32 masters: the file's f32 values, taken over from `loaded`). */
  private loadOptimizer(dir: string, od: string, loaded: LoraAdapters): void {
    const meta = JSON.parse(readFileSync(join(od, 'optimizer.json'), 'utf8')) as { step: number; kind?: string };
    if (meta.kind !== 'adamw-lora') throw new Error(`checkpoint ${dir}: optimizer state of kind '${meta.kind}' is not a LoRA policy's`);
    const ock = Checkpoint.open(od);
    try {
      for (const [n, p] of this.adapters.params) {
        const load = (k: string) => ock.load(`${k}.${n}`, { device: this.device, dtype: 'f32', shape: p.shape });
        this.moments.set(n, { m: load('m'), v: load('v'), master: p.dtype !== 'f32' ? loaded.params.get(n)! : undefined });
      }
    } finally {
      ock.close();
    }
    this.optimizerSteps = meta.step;
  }

  /** Trainable parameters: the adapters' (the frozen base is model.weights.numParameters()). */
  override numParameters(): number {
    return this.adapters.numParameters();
  }

  override dispose(): void {
    this.resetOptimizer();
    this.model.lora = null;
    this.adapters.dispose();
    super.dispose();
  }
}
