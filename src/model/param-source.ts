// param-source.ts: where a model's parameters come from, read one tensor (or one slice of one) at a time, so a
// process builds only what it keeps. A sharded trainer rank reads the element ranges of its unit shards
// (ShardedPolicy.fromSource), a tensor-parallel engine rank reads its TP slice (shardForTensorParallel: chunks of
// whole rows when the source reads ranges, else one whole tensor at a time, cut), a tp=1 engine builds the whole
// model (weightsFromSource): never the whole model as an extra copy beside what the process keeps.
//   checkpointSource  a Hugging Face folder: positioned reads of just the requested bytes (Checkpoint.loadRange)
//   randomSource      seeded random weights: each tensor from its own seeded stream (randomParam), so every
//                     process's tensors and slices equal those of GptOssWeights.random(config, seed) built whole
//   weightsSource     weights already in this process (tests; a trainer's own copy)
import { Tensor } from '../tensor.ts';
import type { GptOssConfig } from './config.ts';
import { Checkpoint } from './safetensors.ts';
import { GptOssWeights, paramSpecs, randomParam, type ParamSpec, type RandomInitOptions } from './weights.ts';

export interface ParamSource {
  readonly config: GptOssConfig;
  /** For messages: the folder, or `random (seed N)`. */
  readonly where: string;
  /**
   * true: range() reads only the elements asked for (a checkpoint), so a slice is cheapest read as ranges; false:
   * range() draws or copies the whole tensor first (random weights, weights in memory), so read it once with full().
   */
  readonly partial: boolean;
  /** The whole parameter `name`, bf16 in its checkpoint shape, on `device` (the caller disposes it). */
  full(name: string, device: string): Tensor;
  /** Elements [lo, hi) of parameter `name` flattened row-major: bf16 [hi - lo] on `device` (the caller disposes it). */
  range(name: string, lo: number, hi: number, device: string): Tensor;
  close(): void;
}

function specsOf(config: GptOssConfig): Map<string, ParamSpec> {
  return new Map(paramSpecs(config).map((s) => [s.name, s]));
}

function specOf(specs: Map<string, ParamSpec>, name: string, where: string): ParamSpec {
  const s = specs.get(name);
  if (!s) throw new Error(`${where}: the model has no parameter '${name}'`);
  return s;
}

/** Cuts elements [lo, hi) of a host tensor into a fresh tensor on device (host is left to the caller). */
function cutRange(host: Tensor, lo: number, hi: number, device: string): Tensor {
  const flat = host.view([host.numel]);
  const part = flat.slice(lo, hi);
  try {
    return part.to(device);
  } finally {
    part.dispose();
    flat.dispose();
  }
}

/**
 * A checkpoint folder (its config is the caller's, read from config.json). Every parameter of the config must be
 * there (checked when it opens, naming the first missing ones).
 */
export function checkpointSource(config: GptOssConfig, dir: string | Checkpoint): ParamSource {
  // An open Checkpoint stays its owner's (close() leaves it open); a folder is opened here and closed by close().
  const own = typeof dir === 'string';
  const ck = own ? Checkpoint.open(dir) : dir;
  const specs = specsOf(config);
  const missing = [...specs.keys()].filter((n) => !ck.has(n));
  if (missing.length) {
    if (own) ck.close();
    throw new Error(`checkpoint ${ck.dir} lacks ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ` and ${missing.length - 5} more` : ''}`);
  }
  const where = ck.dir;
  return {
    config,
    where,
    partial: true,
    full: (name, device) => ck.load(name, { device, dtype: 'bf16', shape: specOf(specs, name, where).shape }),
    range: (name, lo, hi, device) => {
      specOf(specs, name, where);
      return ck.loadRange(name, lo, hi, { device, dtype: 'bf16' });
    },
    close: () => {
      if (own) ck.close();
    },
  };
}

/**
 * Seeded random weights (GptOssWeights.random's values). A range is cut from the whole tensor drawn on the host (the
 * stream is sequential): one parameter at a time, never the model.
 */
export function randomSource(config: GptOssConfig, init: RandomInitOptions = {}): ParamSource {
  const specs = specsOf(config);
  const where = `random weights (seed ${init.seed ?? 0})`;
  return {
    config,
    where,
    partial: false,
    full: (name, device) => randomParam(specOf(specs, name, where), device, init),
    range: (name, lo, hi, device) => {
      const host = randomParam(specOf(specs, name, where), 'cpu', init);
      try {
        return cutRange(host, lo, hi, device);
      } finally {
        host.dispose();
      }
    },
    close: () => {},
  };
}

/** Weights already in this process (they stay the caller's: every read is a copy). */
export function weightsSource(w: GptOssWeights): ParamSource {
  const get = (name: string): Tensor => {
    const t = w.params.get(name);
    if (!t) throw new Error(`weights on ${w.device}: the model has no parameter '${name}'`);
    return t;
  };
  return {
    config: w.config,
    where: `weights on ${w.device}`,
    partial: false,
    full: (name, device) => get(name).to(device),
    range: (name, lo, hi, device) => cutRange(get(name), lo, hi, device),
    close: () => {},
  };
}

/** The whole model from a source, one parameter at a time (a tp=1 engine's weights). */
export function weightsFromSource(src: ParamSource, device: string): GptOssWeights {
  const params = new Map<string, Tensor>();
  try {
    for (const s of paramSpecs(src.config)) params.set(s.name, src.full(s.name, device));
  } catch (e) {
    for (const t of params.values()) t.dispose();
    throw e;
  }
  return new GptOssWeights(src.config, device, params);
}
