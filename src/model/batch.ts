// batch.ts: a batch of token sequences packed token-major for the model's varlen kernels.
//
// T tokens back to back (no padding), cuSeqlens [nSeq+1] delimiting the sequences, positions restarting at 0 in
// each sequence, targets = the next token of the same sequence. A right-padded [B, S] batch is packed by
// packPadded; unpackToPadded lays per-token results back out as [nSeq, S].
import { Tensor } from '../tensor.ts';

/** A packed batch on a device, plus its host-side bookkeeping. */
export interface PackedBatch {
  /** i32 [T] token ids. */
  ids: Tensor;
  /** i32 [T] position of each token within its sequence. */
  positions: Tensor;
  /** i32 [T] next token of the same sequence (0 at each sequence's last token, whose log-prob is meaningless). */
  targets: Tensor;
  /** i32 [nSeq+1]. */
  cuSeqlens: Tensor;
  maxSeqlen: number;
  /** Host copies. */
  lengths: number[];
  offsets: number[];
  numTokens: number;
}

/** Packs token sequences into one batch (each sequence needs at least one token). */
export function packSequences(seqs: readonly (readonly number[])[], device: string): PackedBatch {
  if (seqs.length === 0) throw new Error('packSequences: no sequences');
  const lengths = seqs.map((s) => s.length);
  const bad = lengths.findIndex((l) => l < 1);
  if (bad >= 0) throw new Error(`packSequences: sequence ${bad} is empty`);
  const T = lengths.reduce((a, b) => a + b, 0);
  const ids = new Int32Array(T);
  const pos = new Int32Array(T);
  const tgt = new Int32Array(T);
  const cu = new Int32Array(seqs.length + 1);
  const offsets: number[] = [];
  let o = 0;
  seqs.forEach((s, i) => {
    offsets.push(o);
    for (let j = 0; j < s.length; j++) {
      ids[o + j] = s[j]!;
      pos[o + j] = j;
      tgt[o + j] = j + 1 < s.length ? s[j + 1]! : 0;
    }
    o += s.length;
    cu[i + 1] = o;
  });
  return {
    ids: Tensor.from(ids, [T], { device }),
    positions: Tensor.from(pos, [T], { device }),
    targets: Tensor.from(tgt, [T], { device }),
    cuSeqlens: Tensor.from(cu, [seqs.length + 1], { device }),
    maxSeqlen: Math.max(...lengths),
    lengths,
    offsets,
    numTokens: T,
  };
}

/** Packs a right-padded [B, S] id matrix with per-row lengths (padding is dropped). */
export function packPadded(ids: Int32Array | number[], batch: number, seqLen: number, lengths: readonly number[], device: string): PackedBatch {
  if (ids.length !== batch * seqLen) throw new Error(`packPadded: ${ids.length} ids do not fill [${batch}, ${seqLen}]`);
  if (lengths.length !== batch) throw new Error(`packPadded: ${lengths.length} lengths for batch ${batch}`);
  const seqs: number[][] = [];
  for (let b = 0; b < batch; b++) {
    const l = lengths[b]!;
    if (l < 1 || l > seqLen) throw new Error(`packPadded: length ${l} of row ${b} not in 1..${seqLen}`);
    seqs.push(Array.from(ids.slice(b * seqLen, b * seqLen + l)));
  }
  return packSequences(seqs, device);
}

/**
 * Per-token values of a packed batch (e.g. forward's logprobs.toFloat32()) laid out as a right-padded [nSeq, S]
 * matrix, `fill` in the padding.
 */
export function unpackToPadded(b: PackedBatch, values: Float32Array, seqLen = b.maxSeqlen, fill = 0): Float32Array {
  if (values.length !== b.numTokens) throw new Error(`unpackToPadded: ${values.length} values for ${b.numTokens} tokens`);
  const out = new Float32Array(b.lengths.length * seqLen).fill(fill);
  b.lengths.forEach((len, i) => {
    if (len > seqLen) throw new Error(`unpackToPadded: sequence ${i} has ${len} tokens > ${seqLen}`);
    out.set(values.subarray(b.offsets[i]!, b.offsets[i]! + len), i * seqLen);
  });
  return out;
}

/** Frees the batch's tensors (those already freed are skipped). */
export function disposeBatch(b: PackedBatch): void {
  for (const t of [b.ids, b.positions, b.targets, b.cuSeqlens]) if (!t.disposed) t.dispose();
}
