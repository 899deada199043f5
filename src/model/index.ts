// model/index.ts: the model's public API. loadModel(source, { device }) resolves a local directory or a hub id
// (HF cache, download where a network exists), reads config.json, streams the weights to the device and returns
// a GptOssModel (tokenLogprobs, forward/backward over a packed batch, its decoder layers, dispose). Generation from
// a model is src/inference/.
import { join } from 'node:path';
import { defaultDevice } from '../native.ts';
import { childLogger } from '../log/logger.ts';
import { readConfigFile, presetConfig, type GptOssConfig, type PresetName } from './config.ts';
import { Checkpoint } from './safetensors.ts';
import { resolveModelSource, type ResolveOptions } from './hub.ts';
import { GptOssWeights, type RandomInitOptions } from './weights.ts';
import { GptOssModel, type ModelOptions } from './gptoss.ts';

export * from './config.ts';
export * from './safetensors.ts';
export * from './hub.ts';
export * from './weights.ts';
export * from './batch.ts';
export * from './layer.ts';
export * from './gptoss.ts';
export * from './tensor-parallel.ts';
export * from './lora.ts';
export * from './param-source.ts';

export interface LoadModelOptions extends ModelOptions, Omit<ResolveOptions, 'onProgress'> {
  /** 'cpu' or 'cuda:N' (default: the process's default device). */
  device?: string;
  /** Download progress (bytes); loading progress goes to the log. */
  onDownloadProgress?: ResolveOptions['onProgress'];
  /** Called after each tensor is on the device. */
  onTensor?: (name: string, index: number, count: number) => void;
}

const log = childLogger('model');

/**
 * Loads a GPT-OSS checkpoint: `source` is a directory with config.json + safetensors (BF16 or MXFP4 experts),
 * or a hub id such as 'unsloth/gpt-oss-20b-BF16' (optionally '@revision').
 */
export async function loadModel(source: string, opts: LoadModelOptions = {}): Promise<GptOssModel> {
  const device = opts.device ?? defaultDevice();
  const dir = await resolveModelSource(source, { ...opts, onProgress: opts.onDownloadProgress });
  const config = readConfigFile(join(dir, 'config.json'));
  const ck = Checkpoint.open(dir);
  const t0 = Date.now();
  try {
    const weights = GptOssWeights.fromCheckpoint(config, ck, device, opts.onTensor);
    log.info({ source, dir, device, params: weights.numParameters(), ms: Date.now() - t0 }, 'model loaded');
    return new GptOssModel(weights, opts);
  } finally {
    ck.close();
  }
}

/** A model with seeded random weights for a config or preset (tests, tiny models, benchmarks). */
export function randomModel(
  config: GptOssConfig | PresetName,
  opts: { device?: string } & RandomInitOptions & ModelOptions = {},
): GptOssModel {
  const cfg = typeof config === 'string' ? presetConfig(config) : config;
  return GptOssModel.random(cfg, opts.device ?? defaultDevice(), opts, opts);
}
