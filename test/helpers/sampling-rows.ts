// sampling-rows.ts: per-row sampling parameters for sampleRows tests (CPU reference and CUDA parity), one
// description per row turned into the [B] tensors sampleRows takes.
import { Tensor } from '../../src/tensor.ts';

/** One batch row's sampling parameters and noise key (seed, counter). */
export interface SamplingRow {
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
  counter: number;
}

/**
 * sampleRows' per-row tensors on `device`: f32 temperature/topP, i32 topK/seeds/counters, all [B]. Seeds of 2^31 and
 * above wrap to negative i32 (the op reads the bits as u32).
 */
export function samplingRowTensors(rows: readonly SamplingRow[], device: string) {
  const B = rows.length;
  return {
    temperature: Tensor.from(rows.map((r) => r.temperature), [B], { device }),
    topP: Tensor.from(rows.map((r) => r.topP), [B], { device }),
    topK: Tensor.from(Int32Array.from(rows.map((r) => r.topK)), [B], { device }),
    seeds: Tensor.from(Int32Array.from(rows.map((r) => r.seed)), [B], { device }),
    counters: Tensor.from(Int32Array.from(rows.map((r) => r.counter)), [B], { device }),
  };
}
