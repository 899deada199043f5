// Datasets: GSM8K (bundled, HF cache, or a path), the prompt-dataset records the trainer reads, and a seeded
// synthetic arithmetic task in the same format (see docs/harmony.md).
export {
  GSM8K_SPLITS,
  GSM8K_INSTRUCTION,
  GSM8K_DATA_SOURCE,
  GSM8K_EXPECTED_ROWS,
  gsm8kPrompt,
  extractGsm8kAnswer,
  bundledGsm8kDir,
  hfHubCacheDir,
  findHfCachedGsm8k,
  readGsm8kRows,
  resolveGsm8kFiles,
  loadGsm8k,
  type Gsm8kSplit,
  type Gsm8kRow,
  type Gsm8kExample,
  type Gsm8kSource,
  type LoadGsm8kOptions,
} from './gsm8k.ts';
export { gsm8kRecord, writeFileAtomic, writeJsonl, readPromptDataset, type PromptRecord } from './dataset.ts';
export {
  SYNTHETIC_PRESETS,
  SYNTHETIC_DATA_SOURCE,
  mulberry32,
  generateSynthetic,
  syntheticCompletion,
  syntheticCompletionText,
  syntheticRecord,
  type SyntheticOp,
  type SyntheticDifficulty,
  type SyntheticOptions,
  type SyntheticExample,
} from './synthetic.ts';
