// @skyrl/gptoss public API (other areas add their exports here).
export { Tensor } from './tensor.ts';
export * from './model/index.ts';
