// paged-kv-cache.ts: the engine's KV memory on one device and the layers' view of it for one step.
//
// The layers are grouped into KV spaces by attention window (kvSpaces: the full-attention layers, and gpt-oss's
// sliding layers with window 128), each space with its own block pool and block ids (the scheduler's KvSpace):
// a sliding layer needs only the blocks of its window, so its pool is much smaller. Per layer, k and v pools
// bf16 [numBlocks of its space, blockSize, Hkv, D] (Hkv: this device's kv heads: all of them, or a
// tensor-parallel rank's share). A step's metadata (setStep) says where its N query rows go and what they read:
//   slots[space]        i32 [N]            flat slot block*blockSize + offset of each row's token (k/v written there)
//   blockTables[space]  i32 [B, maxBlocks] per sequence of the step, its block ids in position order
//   contextLens         i32 [B]            tokens cached for the sequence including this step's rows
//   queryStarts         i32 [B+1]          the sequence's rows are queryStarts[b] .. queryStarts[b+1]-1 (its last positions)
import { Tensor } from '../tensor.ts';
import type { GptOssConfig } from '../model/config.ts';
import type { LayerKvCache } from '../model/layer.ts';
import { disposeAll } from '../model/tensor-helpers.ts';
import { scatterRows } from '../ops/kvcache.ts';
import { pagedAttention } from '../ops/paged-attention.ts';

/** The device tensors of one step's layout (see the file comment). */
export interface PagedStepMeta {
  slots: Tensor[];
  blockTables: Tensor[];
  contextLens: Tensor;
  queryStarts: Tensor;
}

/** Layers grouped by attention window (0 = all positions first); the engine and every runner use this order. */
export function kvSpaces(c: GptOssConfig): { window: number; layers: number[] }[] {
  const byWindow = new Map<number, number[]>();
  for (let l = 0; l < c.numLayers; l++) {
    const w = c.layerTypes[l] === 'sliding_attention' ? c.slidingWindow : 0;
    if (!byWindow.has(w)) byWindow.set(w, []);
    byWindow.get(w)!.push(l);
  }
  return [...byWindow.entries()].sort((a, b) => a[0] - b[0]).map(([window, layers]) => ({ window, layers }));
}

export class PagedKvCache {
  private k: Tensor[] = [];
  private v: Tensor[] = [];
  /** Flat [numBlocks*blockSize, Hkv, D] views of the pools, the rows scatterRows writes. */
  private kFlat: Tensor[] = [];
  private vFlat: Tensor[] = [];
  private meta: PagedStepMeta | null = null;
  /** The KV space of each layer (an index into kvSpaces(config)). */
  private readonly spaceOf: number[];
  /** One LayerKvCache per layer over the current step's metadata. */
  readonly layers: LayerKvCache[];

  constructor(
    readonly spaces: readonly { window: number; layers: readonly number[] }[],
    readonly numKvHeads: number,
    readonly headDim: number,
    readonly device: string,
  ) {
    const numLayers = spaces.reduce((n, sp) => n + sp.layers.length, 0);
    this.spaceOf = new Array<number>(numLayers);
    spaces.forEach((sp, i) => sp.layers.forEach((l) => (this.spaceOf[l] = i)));
    this.layers = Array.from({ length: numLayers }, (_, l) => ({
      write: (k: Tensor, v: Tensor): void => {
        const m = this.stepMeta();
        const slots = m.slots[this.spaceOf[l]!]!;
        scatterRows(this.pool(this.kFlat, l), k, slots);
        scatterRows(this.pool(this.vFlat, l), v, slots);
      },
      writeTarget: () => ({
        k: this.pool(this.kFlat, l),
        v: this.pool(this.vFlat, l),
        slots: this.stepMeta().slots[this.spaceOf[l]!]!,
      }),
      attend: (q: Tensor, _k: Tensor, _v: Tensor, o: { window: number; sinks: Tensor }): Tensor => {
        const m = this.stepMeta();
        const meta = { blockTables: m.blockTables[this.spaceOf[l]!]!, contextLens: m.contextLens, queryStarts: m.queryStarts };
        return pagedAttention(q, this.pool(this.k, l), this.pool(this.v, l), meta, { window: o.window, sinks: o.sinks });
      },
    }));
  }

  /** Bytes of one block of each space (its layers' k and v, bf16). */
  bytesPerBlock(blockSize: number): number[] {
    return this.spaces.map((sp) => sp.layers.length * 2 * blockSize * this.numKvHeads * this.headDim * 2);
  }

  get allocated(): boolean {
    return this.k.length > 0;
  }

  /**
   * Allocates the pools, numBlocks[i] blocks for space i. On CUDA zeroed: a kernel tile may load slots it then
   * masks (past a sequence's end, before a sliding window), and zeros keep those finite. The CPU kernels read only
   * the slots they use, so the CPU pools stay untouched until written (a large default pool costs nothing).
   */
  allocate(numBlocks: readonly number[], blockSize: number): void {
    if (this.allocated) throw new Error('PagedKvCache.allocate: the pools are already allocated (free() first)');
    if (numBlocks.length !== this.spaces.length) throw new Error(`PagedKvCache.allocate: ${numBlocks.length} pool sizes for ${this.spaces.length} KV spaces`);
    for (let l = 0; l < this.spaceOf.length; l++) {
      const n = numBlocks[this.spaceOf[l]!]!;
      for (const [pools, flat] of [
        [this.k, this.kFlat],
        [this.v, this.vFlat],
      ] as const) {
        const shape = [n, blockSize, this.numKvHeads, this.headDim];
        const opts = { dtype: 'bf16', device: this.device } as const;
        const t = this.device === 'cpu' ? Tensor.empty(shape, opts) : Tensor.zeros(shape, opts);
        pools.push(t);
        flat.push(t.view([n * blockSize, this.numKvHeads, this.headDim]));
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
