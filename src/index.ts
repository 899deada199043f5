// @skyrl/gptoss public API (other areas add their exports here).
export { Tensor } from './tensor.ts';
export * from './model/index.ts';
export * from './config/index.ts';
export * from './rl/index.ts';
export * from './trainer/index.ts';
export { MetricsLogger, Progress, parseMetricsJsonl, type Metrics } from './log/metrics.ts';
export { plotMetrics, renderSvg, svgToPng } from './cli/plot.ts';
