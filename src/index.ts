// @skyrl/gptoss public API. Everything a user needs is importable from the package root; op families,
// tokenizer/harmony, data and rewards are also grouped as namespaces (`ops`, `tokenizer`, `data`, `reward`,
// `distributed`) so that generic names (Message, VOCAB_SIZE, ...) do not clash.
export {
  Tensor,
  f32ToBf16Bits,
  bf16BitsToF32,
  roundBf16,
  memoryStats,
  resetPeakMemory,
  emptyCache,
  synchronize,
  setBatchInvariant,
  batchInvariant,
  cudaDeviceCount,
  CudaEvent,
  type DType,
  type Shape,
  type TensorOptions,
  type MemoryStats,
} from './tensor.ts';
export { defaultDevice, chooseBackend, deviceIndex } from './native.ts';
export * as ops from './ops/index.ts';
export * as tokenizer from './tokenizer/index.ts';
export * as data from './data/index.ts';
export * as reward from './reward/index.ts';
export * as distributed from './distributed/index.ts';
export { getTokenizer, renderChatPrompt, parseTokens, finalText } from './tokenizer/index.ts';
export { loadGsm8k, generateSynthetic } from './data/index.ts';
export { getRewardFn, type RewardFn } from './reward/index.ts';
export { launch, initDistributed } from './distributed/index.ts';
export * from './model/index.ts';
export * from './inference/index.ts';
export * from './config/index.ts';
export * from './rl/index.ts';
export * from './trainer/index.ts';
export { MetricsLogger, parseMetricsJsonl, type Metrics, type MetricsKind } from './log/metrics.ts';
export { Progress, type ProgressOptions } from './log/progress.ts';
export { configureLogging, setLogger, childLogger, type LoggingOptions, type LogFormat, type LogDestination } from './log/logger.ts';
export { plotMetrics, renderSvg, svgToPng } from './cli/plot.ts';
