// paged-kv-cache.ts: the engine's KV memory on one device and the layers' view of it for one step.
//
// Per layer, k and v pools bf16 [numBlocks, blockSize, Hkv, D] (Hkv: this device's kv heads: all of them, or a
// tensor-parallel rank's share). The block ids are the BlockManager's, the same in every layer. A step's metadata
// (setStep) says where its N query rows go and what they read:
//   slots        i32 [N]          flat slot block*blockSize + offset of each row's token (its k/v are written there)
//   blockTables  i32 [B, maxBlocks] per sequence of the step, its block ids in position order
//   contextLens  i32 [B]          tokens cached for the sequence including this step's rows
//   queryStarts  i32 [B+1]        the sequence's rows are queryStarts[b] .. queryStarts[b+1]-1 (its last positions)
import { Tensor } from '../tensor.ts';
import type { LayerKvCache } from '../model/layer.ts';
import { disposeAll } from '../model/tensor-helpers.ts';
import { scatterRows } from '../ops/kvcache.ts';
import { pagedAttention } from '../ops/paged-attention.ts';

/** The device tensors of one step's layout (see the file comment). */
export interface PagedStepMeta {
  slots: Tensor;
  blockTables: Tensor;
  contextLens: Tensor;
  queryStarts: Tensor;
}

export class PagedKvCache {
  private k: Tensor[] = [];
  private v: Tensor[] = [];
  /** Flat [numBlocks*blockSize, Hkv, D] views of the pools, the rows scatterRows writes. */
  private kFlat: Tensor[] = [];
  private vFlat: Tensor[] = [];
  private meta: PagedStepMeta | null = null;
  /** One LayerKvCache per layer over the current step's metadata. */
  readonly layers: LayerKvCache[];

  constructor(
    readonly numLayers: number,
    readonly numKvHeads: number,
    readonly headDim: number,
    readonly device: string,
  ) {
    this.layers = Array.from({ length: numLayers }, (_, l) => ({
      write: (k: Tensor, v: Tensor): void => {
        const m = this.stepMeta();
        scatterRows(this.pool(this.kFlat, l), k, m.slots);
        scatterRows(this.pool(this.vFlat, l), v, m.slots);
      },
      attend: (q: Tensor, _k: Tensor, _v: Tensor, o: { window: number; sinks: Tensor }): Tensor => {
        const m = this.stepMeta();
        return pagedAttention(q, this.pool(this.k, l), this.pool(this.v, l), m, { window: o.window, sinks: o.sinks });
      },
    }));
  }

  /** Bytes of one block across all layers (k and v, bf16). */
  static bytesPerBlock(numLayers: number, blockSize: number, numKvHeads: number, headDim: number): number {
    return numLayers * 2 * blockSize * numKvHeads * headDim * 2;
  }

  get allocated(): boolean {
    return this.k.length > 0;
  }

  /** Allocates the pools (contents undefined: a slot is read only after its token was written). */
  allocate(numBlocks: number, blockSize: number): void {
    if (this.allocated) throw new Error('PagedKvCache.allocate: the pools are already allocated (free() first)');
    const shape = [numBlocks, blockSize, this.numKvHeads, this.headDim];
    for (let l = 0; l < this.numLayers; l++) {
      for (const [pools, flat] of [
        [this.k, this.kFlat],
        [this.v, this.vFlat],
      ] as const) {
        const t = Tensor.empty(shape, { dtype: 'bf16', device: this.device });
        pools.push(t);
        flat.push(t.view([numBlocks * blockSize, this.numKvHeads, this.headDim]));
      }
    }
  }

  /** Frees the pools (sleep). */
  free(): void {
    disposeAll(...this.kFlat, ...this.vFlat, ...this.k, ...this.v);
    this.k = [];
    this.v = [];
    this.kFlat = [];
    this.vFlat = [];
  }

  /** The next step's layout (the caller owns the tensors; clear with null before freeing them). */
  setStep(meta: PagedStepMeta | null): void {
    this.meta = meta;
  }

  private stepMeta(): PagedStepMeta {
    if (!this.meta) throw new Error('PagedKvCache: no step metadata (setStep first)');
    return this.meta;
  }

  private pool(list: Tensor[], l: number): Tensor {
    const t = list[l];
    if (!t) throw new Error('PagedKvCache: the KV pools are not allocated (the engine is asleep?)');
    return t;
  }

  dispose(): void {
    this.free();
  }
}
