// The trainer's public API: the GRPO and SFT loops, the Policy/Generator/TaskEnv seams, checkpoints, setup.
export * from './policy.ts';
export * from './task.ts';
export * from './rng.ts';
export * from './checkpoint.ts';
export * from './vocab.ts';
export { trainGrpo, evaluate, learningRate, planGrpoSteps, yieldToEventLoop, type GrpoDeps, type GrpoResult, type EvalResult } from './grpo.ts';
export { runTraining, heldOutFromMetrics, type TrainingRunOptions, type TrainingRunResult, type HeldOut } from './run.ts';
export { trainSft, type SftDeps, type SftOptions, type SftResult } from './sft.ts';
export { GptOssPolicy, FrozenGptOss } from './gptoss-policy.ts';
export {
  ShardedPolicy,
  ShardedFrozen,
  shardLayout,
  shardSequences,
  rankMicroBatches,
  SHARDED_MANIFEST,
  type ShardUnit,
  type UnitEntry,
  type ShardedModelOptions,
  type ShardedManifest,
} from './sharded-policy.ts';
export { buildTaskEnv, gsm8kReasoning } from './env.ts';
export { setupRun, resolveDevice, createMetrics, metricsPath, sftMetricsPath, sftCheckpointRoot, interruptSignal, readVocabMap, writeVocabMap, SetupError, type RunPieces } from './setup.ts';
export * from './memory-plan.ts';
export { checkDevice, checkData, checkVocabularyFit, checkResume, describeResume, preflightRun, type ResumePlan } from './preflight.ts';
