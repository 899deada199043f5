// weights.ts: the parameter set of a GptOssModel, by checkpoint name.
//
// Names and layouts are the Hugging Face ones (design.md), so a checkpoint loads without renaming:
//   model.embed_tokens.weight [V, H]                     lm_head.weight [V, H]          model.norm.weight [H]
//   model.layers.N.input_layernorm.weight [H]             model.layers.N.post_attention_layernorm.weight [H]
//   model.layers.N.self_attn.q_proj.{weight [Hq*D, H], bias [Hq*D]}   k_proj/v_proj: [Hkv*D, H], [Hkv*D]
//   model.layers.N.self_attn.o_proj.{weight [H, Hq*D], bias [H]}      model.layers.N.self_attn.sinks [Hq]
//   model.layers.N.mlp.router.{weight [E, H], bias [E]}
//   model.layers.N.mlp.experts.gate_up_proj [E, H, 2I] (x·W form, gate/up interleaved), gate_up_proj_bias [E, 2I]
//   model.layers.N.mlp.experts.down_proj [E, I, H], down_proj_bias [E, H]
// Every parameter is held in BF16 on one device (the trainer keeps fp32 masters separately).
//
// The q/k/v projections of a layer live in one fused buffer, qkvW [Hq*D + 2*Hkv*D, H] (q rows, then k, then v)
// and qkvB [Hq*D + 2*Hkv*D], so the model runs one GEMM for the three (gpt-oss-20b: [5120, 2880]). The
// checkpoint names q_proj/k_proj/v_proj.{weight,bias} stay the parameters: params maps them to row slices of the
// fused buffers (views: an in-place update of a slice, as the optimizer and load() do, updates the fused buffer).
import { mkdirSync } from 'node:fs';
import { Tensor, f32ToBf16Bits } from '../tensor.ts';
import { childLogger } from '../log/logger.ts';
import { toHfConfig, type GptOssConfig } from './config.ts';
import { Checkpoint, saveCheckpoint, tensorToSave, type TensorToSave } from './safetensors.ts';

export interface ParamSpec {
  name: string;
  shape: number[];
  /** What random init draws: 'matrix' N(0, std) style, 'bias' (small), 'norm' (ones), 'sink'. */
  kind: 'matrix' | 'bias' | 'norm' | 'sink' | 'embedding';
  /** Fan-in for scaled init (input width of the product). */
  fanIn: number;
}

export const layerPrefix = (i: number): string => `model.layers.${i}`;

/** Every parameter of a config in checkpoint order (embedding, layers, final norm, lm_head). */
export function paramSpecs(c: GptOssConfig): ParamSpec[] {
  const H = c.hiddenSize;
  const qd = c.numHeads * c.headDim;
  const kvd = c.numKvHeads * c.headDim;
  const E = c.numExperts;
  const I = c.intermediateSize;
  const s: ParamSpec[] = [{ name: 'model.embed_tokens.weight', shape: [c.vocabSize, H], kind: 'embedding', fanIn: H }];
  for (let l = 0; l < c.numLayers; l++) {
    const p = layerPrefix(l);
    s.push(
      { name: `${p}.input_layernorm.weight`, shape: [H], kind: 'norm', fanIn: H },
      { name: `${p}.self_attn.q_proj.weight`, shape: [qd, H], kind: 'matrix', fanIn: H },
      { name: `${p}.self_attn.q_proj.bias`, shape: [qd], kind: 'bias', fanIn: H },
      { name: `${p}.self_attn.k_proj.weight`, shape: [kvd, H], kind: 'matrix', fanIn: H },
      { name: `${p}.self_attn.k_proj.bias`, shape: [kvd], kind: 'bias', fanIn: H },
      { name: `${p}.self_attn.v_proj.weight`, shape: [kvd, H], kind: 'matrix', fanIn: H },
      { name: `${p}.self_attn.v_proj.bias`, shape: [kvd], kind: 'bias', fanIn: H },
      { name: `${p}.self_attn.o_proj.weight`, shape: [H, qd], kind: 'matrix', fanIn: qd },
      { name: `${p}.self_attn.o_proj.bias`, shape: [H], kind: 'bias', fanIn: qd },
      { name: `${p}.self_attn.sinks`, shape: [c.numHeads], kind: 'sink', fanIn: 1 },
      { name: `${p}.post_attention_layernorm.weight`, shape: [H], kind: 'norm', fanIn: H },
      { name: `${p}.mlp.router.weight`, shape: [E, H], kind: 'matrix', fanIn: H },
      { name: `${p}.mlp.router.bias`, shape: [E], kind: 'bias', fanIn: H },
      { name: `${p}.mlp.experts.gate_up_proj`, shape: [E, H, 2 * I], kind: 'matrix', fanIn: H },
      { name: `${p}.mlp.experts.gate_up_proj_bias`, shape: [E, 2 * I], kind: 'bias', fanIn: H },
      { name: `${p}.mlp.experts.down_proj`, shape: [E, I, H], kind: 'matrix', fanIn: I },
      { name: `${p}.mlp.experts.down_proj_bias`, shape: [E, H], kind: 'bias', fanIn: I },
    );
  }
  s.push({ name: 'model.norm.weight', shape: [H], kind: 'norm', fanIn: H });
  if (!c.tieWordEmbeddings) s.push({ name: 'lm_head.weight', shape: [c.vocabSize, H], kind: 'matrix', fanIn: H });
  return s;
}

/** Rows of q, k and v in the fused q/k/v projection ([Hq*D, Hkv*D, Hkv*D]; they sum to its output width). */
export function qkvRows(c: GptOssConfig): [number, number, number] {
  const kvd = c.numKvHeads * c.headDim;
  return [c.numHeads * c.headDim, kvd, kvd];
}

/** Checkpoint-name suffixes of the three projections stored in a layer's fused q/k/v buffers, in row order. */
export const QKV_PROJ = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'] as const;

/** The typed view of one decoder layer's parameters (the same Tensors as in GptOssWeights.params). */
export interface LayerWeights {
  inputNorm: Tensor;
  /** [Hq*D + 2*Hkv*D, H]: q, k, v weights stacked as rows (qW, kW, vW are its row slices). */
  qkvW: Tensor;
  /** [Hq*D + 2*Hkv*D]: q, k, v biases (qB, kB, vB are its slices). */
  qkvB: Tensor;
  qW: Tensor;
  qB: Tensor;
  kW: Tensor;
  kB: Tensor;
  vW: Tensor;
  vB: Tensor;
  oW: Tensor;
  oB: Tensor;
  sinks: Tensor;
  postNorm: Tensor;
  routerW: Tensor;
  routerB: Tensor;
  gateUpW: Tensor;
  gateUpB: Tensor;
  downW: Tensor;
  downB: Tensor;
}

export function layerWeights(params: ReadonlyMap<string, Tensor>, l: number, qkv: { w: Tensor; b: Tensor }): LayerWeights {
  const p = layerPrefix(l);
  const g = (n: string): Tensor => {
    const t = params.get(`${p}.${n}`);
    if (!t) throw new Error(`GptOss weights: missing parameter ${p}.${n}`);
    return t;
  };
  return {
    inputNorm: g('input_layernorm.weight'),
    qkvW: qkv.w,
    qkvB: qkv.b,
    qW: g('self_attn.q_proj.weight'),
    qB: g('self_attn.q_proj.bias'),
    kW: g('self_attn.k_proj.weight'),
    kB: g('self_attn.k_proj.bias'),
    vW: g('self_attn.v_proj.weight'),
    vB: g('self_attn.v_proj.bias'),
    oW: g('self_attn.o_proj.weight'),
    oB: g('self_attn.o_proj.bias'),
    sinks: g('self_attn.sinks'),
    postNorm: g('post_attention_layernorm.weight'),
    routerW: g('mlp.router.weight'),
    routerB: g('mlp.router.bias'),
    gateUpW: g('mlp.experts.gate_up_proj'),
    gateUpB: g('mlp.experts.gate_up_proj_bias'),
    downW: g('mlp.experts.down_proj'),
    downB: g('mlp.experts.down_proj_bias'),
  };
}

export interface RandomInitOptions {
  seed?: number;
  /** Std of matrices (default: config-style 0.02). 'fanIn' scales each matrix by 1/sqrt(fan-in) instead. */
  std?: number | 'fanIn';
  /** Std of biases (default 0: zeros as HF init does). */
  biasStd?: number;
  /** Std of the norm weights around 1 (default 0: exactly ones). */
  normStd?: number;
  /** Std of the sink logits (default 0.02: HF draws them like matrices). */
  sinkStd?: number;
  /**
   * Std of the MoE router weights (default: the matrices' std). Larger values spread the router logits, so that
   * bf16-level differences between two forwards of the same tokens rarely flip an expert choice: with the default,
   * a random model's near-tied routers amplify such differences layer by layer (docs/inference.md, log-prob gap).
   */
  routerStd?: number;
  /**
   * Std of the matrices that write into the residual stream (o_proj, the experts' down_proj; default: the matrices'
   * std). GPT-2's scaled init uses std / sqrt(2 · layers), so that each layer adds a small part to the stream.
   */
  residualStd?: number;
  /** Std of the embedding (default: the matrices' std). */
  embedStd?: number;
  /**
   * Benchmarks only: matrices are cut from one shared pool of 16M random values at per-tensor offsets (memcpy
   * speed instead of ~20 ns per value, which matters for billions of parameters). Values repeat across tensors.
   */
  fast?: boolean;
}

/** A 32-bit hash of a string (FNV-1a), mixed with the seed so each tensor has its own stream. */
function hash32(s: string, seed: number): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h || 0x9e3779b9;
}

/**
 * Fills `out` with approximately normal(mean, std) values (sum of two uniforms, triangular, variance matched)
 * from a xorshift32 stream: fast enough to initialise billions of parameters from JS.
 */
function fillRandom(out: Float32Array, state: { s: number }, mean: number, std: number): void {
  let s = state.s;
  // Triangular distribution on [-a, a] has variance a^2/6.
  const a = std * Math.sqrt(6);
  const k = a / 4294967296;
  for (let i = 0; i < out.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const u1 = s >>> 0;
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const u2 = s >>> 0;
    out[i] = mean + (u1 + u2 - 4294967296) * k;
  }
  state.s = s;
}

const POOL = 1 << 24;
let pool: { seed: number; bits: Uint16Array } | null = null;

/** A seeded random BF16 tensor whose values are windows of a shared unit-variance pool, scaled on the host. */
function pooledRandomTensor(name: string, shape: readonly number[], mean: number, std: number, seed: number, device: string): Tensor {
  if (!pool || pool.seed !== seed) {
    const f = new Float32Array(POOL);
    fillRandom(f, { s: hash32('pool', seed) }, 0, 1);
    pool = { seed, bits: f32ToBf16Bits(f) };
  }
  const t = Tensor.empty(shape, { dtype: 'bf16', device });
  const n = t.numel;
  const rows = shape[0] ?? 1;
  const rowElems = n / rows;
  // Scaling by a power of two is exact on bf16 bits (exponent add); other stds go through f32.
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  const scaled = new Uint16Array(POOL);
  for (let i = 0; i < POOL; i++) {
    u[0] = pool.bits[i]! << 16;
    f[0] = mean + f[0]! * std;
    scaled[i] = (u[0]! + 0x7fff + ((u[0]! >>> 16) & 1)) >>> 16;
  }
  const start = hash32(name, seed) % POOL;
  const chunkRows = Math.max(1, Math.floor((POOL >> 1) / Math.max(1, rowElems)));
  let cursor = start;
  for (let r0 = 0; r0 < rows; r0 += chunkRows) {
    const r1 = Math.min(rows, r0 + chunkRows);
    const len = (r1 - r0) * rowElems;
    let src: Uint16Array;
    if (len <= POOL - cursor) src = scaled.subarray(cursor, cursor + len);
    else {
      src = new Uint16Array(len);
      let o = 0;
      while (o < len) {
        const take = Math.min(len - o, POOL - cursor);
        src.set(scaled.subarray(cursor, cursor + take), o);
        o += take;
        cursor = (cursor + take) % POOL;
      }
    }
    cursor = (cursor + len) % POOL;
    if (r0 === 0 && r1 === rows) t.copyFrom(src);
    else {
      const d = t.slice(r0, r1);
      d.copyFrom(src);
      d.dispose();
    }
  }
  return t;
}

/** A seeded random BF16 tensor, generated in chunks on the host and copied to the device. */
export function randomTensor(name: string, shape: readonly number[], mean: number, std: number, seed: number, device: string): Tensor {
  const t = Tensor.empty(shape, { dtype: 'bf16', device });
  const rows = shape[0] ?? 1;
  const rowElems = shape.slice(1).reduce((a, b) => a * b, 1);
  const chunkRows = Math.max(1, Math.floor((8 << 20) / Math.max(1, rowElems)));
  const state = { s: hash32(name, seed) };
  const buf = new Float32Array(Math.min(rows, chunkRows) * rowElems);
  for (let r0 = 0; r0 < rows; r0 += chunkRows) {
    const r1 = Math.min(rows, r0 + chunkRows);
    const f = buf.subarray(0, (r1 - r0) * rowElems);
    if (std === 0) f.fill(mean);
    else fillRandom(f, state, mean, std);
    const bits = f32ToBf16Bits(f);
    if (r0 === 0 && r1 === rows) t.copyFrom(bits);
    else {
      const d = t.slice(r0, r1);
      d.copyFrom(bits);
      d.dispose();
    }
  }
  return t;
}

/**
 * One parameter of GptOssWeights.random: its values depend only on (name, shape, kind, seed, opts), drawn from a
 * stream seeded per tensor, so a process that builds only some tensors (or cuts a slice of one: a sharded trainer
 * rank, a tensor-parallel engine rank) gets exactly the values the whole model has. bf16 `spec.shape` on `device`.
 */
export function randomParam(s: ParamSpec, device: string, opts: RandomInitOptions = {}): Tensor {
  const seed = opts.seed ?? 0;
  let mean = 0;
  let std: number;
  switch (s.kind) {
    case 'norm':
      mean = 1;
      std = opts.normStd ?? 0;
      break;
    case 'bias':
      std = opts.biasStd ?? 0;
      break;
    case 'sink':
      std = opts.sinkStd ?? 0.02;
      break;
    default:
      std = opts.std === 'fanIn' ? 1 / Math.sqrt(s.fanIn) : (opts.std ?? 0.02);
      if (opts.routerStd !== undefined && s.name.endsWith('.mlp.router.weight')) std = opts.routerStd;
      if (opts.residualStd !== undefined && (s.name.endsWith('.self_attn.o_proj.weight') || s.name.endsWith('.mlp.experts.down_proj'))) std = opts.residualStd;
      if (opts.embedStd !== undefined && s.kind === 'embedding') std = opts.embedStd;
  }
  const big = s.shape.reduce((a, b) => a * b, 1) > 1 << 20;
  return (opts.fast && big && std > 0 ? pooledRandomTensor : randomTensor)(s.name, s.shape, mean, std, seed, device);
}

const log = childLogger('weights');

/**
 * Stacks layer l's q/k/v weights and biases into fused buffers: the separate tensors in `params` are copied in,
 * disposed, and replaced by row slices of the fused ones (so every holder of a name sees the fused memory).
 */
function fuseQkv(params: Map<string, Tensor>, l: number, device: string): { w: Tensor; b: Tensor } {
  const p = layerPrefix(l);
  const fuse = (suffix: 'weight' | 'bias'): Tensor => {
    const names = QKV_PROJ.map((n) => `${p}.${n}.${suffix}`);
    const parts = names.map((n) => params.get(n)!);
    const rows = parts.reduce((a, t) => a + t.shape[0]!, 0);
    const fused = Tensor.empty([rows, ...parts[0]!.shape.slice(1)], { dtype: parts[0]!.dtype, device });
    let r = 0;
    parts.forEach((t, i) => {
      const rs = fused.slice(r, r + t.shape[0]!);
      rs.copyFrom(t);
      t.dispose();
      params.set(names[i]!, rs);
      r += t.shape[0]!;
    });
    return fused;
  };
  return { w: fuse('weight'), b: fuse('bias') };
}

/** The parameters of one GPT-OSS model on one device. */
export class GptOssWeights {
  readonly config: GptOssConfig;
  readonly device: string;
  /** Checkpoint name -> BF16 tensor, in paramSpecs order (q/k/v: row slices of the layer's fused buffers). */
  readonly params: Map<string, Tensor>;
  readonly layers: LayerWeights[];
  /** Per layer, the fused q/k/v buffers (also held by layers[l].qkvW/qkvB). */
  private readonly qkv: { w: Tensor; b: Tensor }[] = [];

  /** Takes `params` over: its q/k/v tensors are fused per layer (copied, disposed and replaced by slices). */
  constructor(config: GptOssConfig, device: string, params: Map<string, Tensor>) {
    this.config = config;
    this.device = device;
    this.params = params;
    for (const s of paramSpecs(config)) {
      const t = params.get(s.name);
      if (!t) throw new Error(`GptOssWeights: missing parameter '${s.name}'`);
      if (t.shape.length !== s.shape.length || t.shape.some((d, i) => d !== s.shape[i])) {
        throw new Error(`GptOssWeights: '${s.name}' has shape [${t.shape.join(', ')}], expected [${s.shape.join(', ')}]`);
      }
    }
    for (let l = 0; l < config.numLayers; l++) this.qkv.push(fuseQkv(params, l, device));
    this.layers = Array.from({ length: config.numLayers }, (_, l) => layerWeights(params, l, this.qkv[l]!));
  }

  get embedding(): Tensor {
    return this.params.get('model.embed_tokens.weight')!;
  }
  get finalNorm(): Tensor {
    return this.params.get('model.norm.weight')!;
  }
  get lmHead(): Tensor {
    return this.params.get(this.config.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight')!;
  }

  /** Names in checkpoint order. */
  names(): string[] {
    return paramSpecs(this.config).map((s) => s.name);
  }

  numParameters(): number {
    let n = 0;
    for (const t of this.params.values()) n += t.numel;
    return n;
  }

  /** Seeded random weights for any config (tests, tiny models, full-size benchmarks). */
  static random(config: GptOssConfig, device: string, opts: RandomInitOptions = {}): GptOssWeights {
    const params = new Map<string, Tensor>();
    try {
      for (const s of paramSpecs(config)) params.set(s.name, randomParam(s, device, opts));
    } catch (e) {
      for (const t of params.values()) t.dispose();
      throw e;
    }
    return new GptOssWeights(config, device, params);
  }

  /** Loads every parameter from a checkpoint (BF16 or MXFP4 experts), streaming tensor by tensor. */
  static fromCheckpoint(config: GptOssConfig, ck: Checkpoint, device: string, onTensor?: (name: string, i: number, n: number) => void): GptOssWeights {
    const specs = paramSpecs(config);
    const params = new Map<string, Tensor>();
    try {
      const missing = specs.filter((s) => !ck.has(s.name)).map((s) => s.name);
      if (missing.length) {
        const more = missing.length > 5 ? ` and ${missing.length - 5} more` : '';
        throw new Error(`checkpoint ${ck.dir} lacks ${missing.slice(0, 5).join(', ')}${more}`);
      }
      specs.forEach((s, i) => {
        params.set(s.name, ck.load(s.name, { device, dtype: 'bf16', shape: s.shape }));
        onTensor?.(s.name, i + 1, specs.length);
      });
      const known = new Set(specs.flatMap((s) => [s.name, `${s.name}_blocks`, `${s.name}_scales`]));
      const extra = ck.names().filter((n) => !known.has(n));
      if (extra.length) log.warn({ extra: extra.slice(0, 10), count: extra.length }, 'checkpoint has tensors the model does not use');
    } catch (e) {
      for (const t of params.values()) t.dispose();
      throw e;
    }
    return new GptOssWeights(config, device, params);
  }

  /** Saves as a HF-style checkpoint (BF16, sharded, atomic) with config.json beside it. */
  save(dir: string, opts: { maxShardBytes?: number } = {}): string[] {
    mkdirSync(dir, { recursive: true });
    const tensors: TensorToSave[] = this.names().map((n) => tensorToSave(n, this.params.get(n)!, 'BF16'));
    return saveCheckpoint(dir, tensors, {
      maxShardBytes: opts.maxShardBytes,
      extraFiles: { 'config.json': JSON.stringify(toHfConfig(this.config), null, 2) + '\n' },
    });
  }

  /** A copy on another device. */
  to(device: string): GptOssWeights {
    const params = new Map<string, Tensor>();
    for (const [n, t] of this.params) params.set(n, t.to(device));
    return new GptOssWeights(this.config, device, params);
  }

  dispose(): void {
    for (const t of this.params.values()) t.dispose();
    for (const f of this.qkv) [f.w, f.b].forEach((t) => t.dispose());
  }
}
