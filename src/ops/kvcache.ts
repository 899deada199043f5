// kvcache.ts: writes rows into a KV cache (or any row table) in one op: the generation loop's cache update.
import { native } from '../native.ts';
import type { Tensor } from '../tensor.ts';

/**
 * dst.view([M, R])[index[n]] = src.view([N, R])[n] for every n (in place). dst [M, ...] and src [N, ...] share a
 * dtype and a row size; index i32 [N] on the same device. Index -1 skips the row on both backends (the padding rows
 * of a CUDA-graph decode bucket write no KV). CPU: other indices are range-checked. CUDA: no host sync; any
 * out-of-range row is skipped. Duplicate indices: CPU keeps the last, CUDA is unspecified.
 * A KV cache [B, Smax, Hkv, D] viewed as [B*Smax, Hkv, D] takes new k rows at index b*Smax + position.
 */
export function scatterRows(dst: Tensor, src: Tensor, index: Tensor): void {
  native().ops.scatterRows(dst.native, src.native, index.native);
}
