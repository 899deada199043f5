// inference/: generation from a GptOssModel. generate() is static-batch prefill + dense-KV-cache decode;
// LocalGenerator is the trainer's single-process Generator over it.
export { generate, sampleNext, type GenerateOptions, type GenerateResult } from './generate.ts';
export { LocalGenerator } from './local-generator.ts';
