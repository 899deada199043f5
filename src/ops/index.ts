// ops/index.ts: every op family's typed wrapper (forward and backward, CPU and CUDA through the addon).
export * from './attention.ts';
export * from './elementwise.ts';
export * from './embedding.ts';
export * from './gemm.ts';
export * from './kvcache.ts';
export * from './logprob.ts';
export * from './moe.ts';
export * from './optim.ts';
export * from './paged-attention.ts';
export * from './rmsnorm.ts';
export * from './rope.ts';
export * from './sampling.ts';
export * from './swiglu.ts';
