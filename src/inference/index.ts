// inference/: generation from a GptOssModel. The engine (createEngine: paged KV cache, continuous batching, shared
// prompts, per-sequence sampling; docs/inference.md) is what the trainer's Generator runs on; generate() is the
// static-batch baseline (dense KV cache) the engine is tested and benchmarked against.
export {
  createEngine,
  Engine,
  type EngineOptions,
  type EngineStats,
  type GenerateRequest,
  type GenerateResponse,
  type GeneratedSample,
  type GenerateCallOptions,
} from './engine.ts';
export { LocalModelRunner, type ModelRunner, type StepInput, type StepOutput, type WeightUpdate } from './model-runner.ts';
export {
  createTensorParallelEngine,
  serveTensorParallelRank,
  TensorParallelModelRunner,
  type TensorParallelContext,
  type CommandChannel,
} from './tensor-parallel-runner.ts';
export { PagedKvCache, type PagedStepMeta } from './paged-kv-cache.ts';
export { GRAPH_BUCKETS, type DecodeGraphStats } from './cuda-graphs.ts';
export { BlockManager, type BlockManagerOptions, type BlockTable } from './block-manager.ts';
export { Scheduler, Sequence, type ScheduledChunk, type SchedulerOptions, type SequenceSampling, type FinishReason } from './scheduler.ts';
export { generate, sampleNext, type GenerateOptions, type GenerateResult } from './generate.ts';
export { LocalGenerator } from './local-generator.ts';
