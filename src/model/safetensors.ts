// safetensors.ts: reading and writing safetensors checkpoints without holding them in host memory.
//
// File layout: u64 little-endian header length N, N bytes of JSON header
// `{ name: { dtype, shape, data_offsets: [begin, end] }, __metadata__?: {...} }`, then the data section; offsets are
// relative to the data section. The reader validates everything before any tensor is used (header length bounds,
// JSON shape, known dtypes, byte lengths that match the shapes, offsets inside the file, no overlaps, no holes)
// so a truncated or hostile file fails with a message that names the file and the tensor.
//
// Sharded checkpoints (`model.safetensors.index.json` + `model-0000k-of-0000n.safetensors`) open lazily: each
// shard's header is read once; tensor bytes are read with positioned reads (fs.readSync at an offset), in
// row chunks, straight into the destination tensor, so peak host memory is one chunk (default 64 MiB).
//
// MXFP4: the original gpt-oss release stores expert matrices as `<name>_blocks` (u8 [E, out, in/32, 16]: two FP4
// E2M1 codes per byte, low nibble first, 32 values per block along the input dim) and `<name>_scales`
// (u8 [E, out, in/32], value = LUT[code] * 2^(scale-127)). Loading `<name>` from such a pair dequantises to BF16
// and transposes to the [E, in, out] layout that transformers' GptOssExperts (and our MoE op) use.
import { closeSync, existsSync, fstatSync, fsyncSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, writeSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { Tensor, f32ToBf16Bits } from '../tensor.ts';
import type { DType } from '../native.ts';

export type StDType = 'BOOL' | 'U8' | 'I8' | 'U16' | 'I16' | 'F16' | 'BF16' | 'U32' | 'I32' | 'F32' | 'U64' | 'I64' | 'F64' | 'F8_E4M3' | 'F8_E5M2';

export const ST_DTYPE_BYTES: Record<StDType, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1, U16: 2, I16: 2, F16: 2, BF16: 2, U32: 4, I32: 4, F32: 4, U64: 8, I64: 8, F64: 8,
};

/** Largest header we accept (the safetensors library uses 100 MB too). */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface TensorInfo {
  name: string;
  dtype: StDType;
  shape: number[];
  /** Absolute byte offset in the file. */
  offset: number;
  byteLength: number;
  file: string;
}

function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** One .safetensors file: the validated header; bytes are read on demand. */
export class SafetensorsFile {
  readonly path: string;
  readonly tensors = new Map<string, TensorInfo>();
  readonly metadata: Record<string, string> = {};
  readonly fileSize: number;
  private fd: number | null;

  private constructor(path: string, fd: number) {
    this.path = path;
    this.fd = fd;
    this.fileSize = fstatSync(fd).size;
  }

  static open(path: string): SafetensorsFile {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (e) {
      throw new Error(`safetensors: cannot open ${path}: ${(e as Error).message}`);
    }
    const f = new SafetensorsFile(path, fd);
    try {
      f.parseHeader();
    } catch (e) {
      f.close();
      throw e;
    }
    return f;
  }

  private fail(msg: string): never {
    throw new Error(`safetensors: ${this.path}: ${msg}`);
  }

  private parseHeader(): void {
    if (this.fileSize < 8) this.fail(`file is ${this.fileSize} bytes, too short for the 8-byte header length (truncated?)`);
    const lenBuf = Buffer.alloc(8);
    this.readAt(lenBuf, 0);
    const n = lenBuf.readBigUInt64LE(0);
    if (n > BigInt(MAX_HEADER_BYTES)) this.fail(`header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit (corrupt or hostile file)`);
    const hlen = Number(n);
    if (hlen < 2) this.fail(`header length ${hlen} is too small`);
    if (8 + hlen > this.fileSize) this.fail(`header length ${hlen} runs past the end of the ${this.fileSize}-byte file (truncated?)`);
    const hbuf = Buffer.alloc(hlen);
    this.readAt(hbuf, 8);
    let header: unknown;
    try {
      header = JSON.parse(hbuf.toString('utf8'));
    } catch (e) {
      this.fail(`header is not valid JSON: ${(e as Error).message}`);
    }
    if (header === null || typeof header !== 'object' || Array.isArray(header)) this.fail('header is not a JSON object');
    const dataStart = 8 + hlen;
    const dataLen = this.fileSize - dataStart;
    const spans: { b: number; e: number; name: string }[] = [];
    for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) this.fail('__metadata__ is not an object');
        for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
          if (typeof v !== 'string') this.fail(`__metadata__.${k} is not a string`);
          this.metadata[k] = v as string;
        }
        continue;
      }
      if (raw === null || typeof raw !== 'object') this.fail(`tensor '${name}': entry is not an object`);
      const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (typeof e.dtype !== 'string' || !(e.dtype in ST_DTYPE_BYTES)) this.fail(`tensor '${name}': unknown dtype ${JSON.stringify(e.dtype)}`);
      const dtype = e.dtype as StDType;
      if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
        this.fail(`tensor '${name}': bad shape ${JSON.stringify(e.shape)}`);
      }
      const shape = e.shape as number[];
      const off = e.data_offsets;
      if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
        this.fail(`tensor '${name}': bad data_offsets ${JSON.stringify(off)}`);
      }
      const [b, end] = off as [number, number];
      if (end < b) this.fail(`tensor '${name}': data_offsets [${b}, ${end}] end before begin`);
      const want = numelOf(shape) * ST_DTYPE_BYTES[dtype];
      if (end - b !== want) {
        this.fail(`tensor '${name}': ${dtype}[${shape.join(', ')}] needs ${want} bytes but data_offsets [${b}, ${end}] span ${end - b}`);
      }
      if (end > dataLen) {
        this.fail(`tensor '${name}': data_offsets [${b}, ${end}] run past the ${dataLen}-byte data section (truncated file?)`);
      }
      spans.push({ b, e: end, name });
      this.tensors.set(name, { name, dtype, shape: [...shape], offset: dataStart + b, byteLength: want, file: this.path });
    }
    spans.sort((x, y) => x.b - y.b || x.e - y.e);
    let cursor = 0;
    for (const s of spans) {
      if (s.b < cursor) this.fail(`tensor '${s.name}' overlaps the previous tensor (offset ${s.b} < ${cursor})`);
      if (s.b > cursor) this.fail(`hole in the data section before tensor '${s.name}' (bytes ${cursor}..${s.b} unindexed)`);
      cursor = s.e;
    }
    if (cursor !== dataLen) this.fail(`data section is ${dataLen} bytes but the tensors cover ${cursor} (trailing garbage)`);
  }

  /** Fills `buf` from absolute file offset `pos`; a short read means the file shrank under us. */
  readAt(buf: Uint8Array, pos: number): void {
    if (this.fd === null) this.fail('file is closed');
    let done = 0;
    while (done < buf.byteLength) {
      const n = readSync(this.fd!, buf, done, buf.byteLength - done, pos + done);
      if (n === 0) this.fail(`unexpected end of file at byte ${pos + done} (truncated?)`);
      done += n;
    }
  }

  /** All bytes of one tensor (small tensors; large ones go through Checkpoint.load in chunks). */
  readBytes(name: string): Buffer {
    const t = this.tensors.get(name);
    if (!t) this.fail(`no tensor '${name}'`);
    const buf = Buffer.alloc(t!.byteLength);
    this.readAt(buf, t!.offset);
    return buf;
  }

  close(): void {
    if (this.fd !== null) {
      closeSync(this.fd);
      this.fd = null;
    }
  }
}

// ---- conversion helpers --------------------------------------------------------------------------------------------
function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Converts raw little-endian bytes of `from` into the host array a `to` tensor wants. */
function convertBytes(bytes: Uint8Array, from: StDType, to: DType, what: string): NodeJS.TypedArray {
  const ab = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const same =
    (from === 'BF16' && to === 'bf16') || (from === 'F32' && to === 'f32') || (from === 'I32' && to === 'i32') || (from === 'U8' && to === 'u8');
  if (same) return new Uint8Array(ab);
  let f: Float32Array | null = null;
  if (from === 'F32') f = new Float32Array(ab);
  else if (from === 'BF16') {
    const u = new Uint16Array(ab);
    f = new Float32Array(u.length);
    const o = new Uint32Array(f.buffer);
    for (let i = 0; i < u.length; i++) o[i] = u[i]! << 16;
  } else if (from === 'F16') {
    const u = new Uint16Array(ab);
    f = new Float32Array(u.length);
    for (let i = 0; i < u.length; i++) f[i] = f16ToF32(u[i]!);
  } else if (from === 'F64') f = Float32Array.from(new Float64Array(ab));
  if (f) {
    if (to === 'bf16') return f32ToBf16Bits(f);
    if (to === 'f32') return f;
  }
  if ((from === 'I64' || from === 'I32' || from === 'U8' || from === 'I8' || from === 'I16' || from === 'U16' || from === 'U32' || from === 'BOOL') && to !== 'u8') {
    const src =
      from === 'I64' ? Array.from(new BigInt64Array(ab), Number) :
      from === 'U8' || from === 'BOOL' ? new Uint8Array(ab) : from === 'I8' ? new Int8Array(ab) : from === 'I16' ? new Int16Array(ab) :
      from === 'U16' ? new Uint16Array(ab) : from === 'U32' ? new Uint32Array(ab) : new Int32Array(ab);
    if (to === 'i32') return Int32Array.from(src as ArrayLike<number>);
    const fl = Float32Array.from(src as ArrayLike<number>);
    return to === 'bf16' ? f32ToBf16Bits(fl) : fl;
  }
  throw new Error(`safetensors: cannot convert ${what} from ${from} to ${to}`);
}

// ---- MXFP4 -------------------------------------------------------------------------------------------------------
/** FP4 E2M1 code -> value (code bit 3 is the sign). */
export const FP4_E2M1_VALUES = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6] as const;

let mxfp4Table: Uint16Array | null = null;
/** bf16 bits of LUT[code] * 2^(scale-127) for every (scale, code): index scale*16 + code. */
function mxfp4Bf16Table(): Uint16Array {
  if (mxfp4Table) return mxfp4Table;
  const f = new Float32Array(256 * 16);
  for (let s = 0; s < 256; s++) for (let c = 0; c < 16; c++) f[s * 16 + c] = FP4_E2M1_VALUES[c]! * 2 ** (s - 127);
  mxfp4Table = f32ToBf16Bits(f);
  return mxfp4Table;
}

/**
 * Dequantises one expert's MXFP4 matrix. blocks: u8 [out, G, 16], scales: u8 [out, G]; returns bf16 bits laid out
 * [in = G*32, out] (transposed, x·W form). Element (o, g*32 + 2j) is the low nibble of blocks[o, g, j], (o, g*32+2j+1)
 * the high nibble, each times 2^(scales[o, g] - 127).
 */
export function dequantMxfp4Expert(blocks: Uint8Array, scales: Uint8Array, outDim: number, groups: number): Uint16Array {
  const tbl = mxfp4Bf16Table();
  const inDim = groups * 32;
  if (blocks.length !== outDim * groups * 16 || scales.length !== outDim * groups) {
    throw new Error(`dequantMxfp4Expert: blocks ${blocks.length} / scales ${scales.length} bytes do not match out ${outDim} x groups ${groups}`);
  }
  const out = new Uint16Array(inDim * outDim);
  for (let o = 0; o < outDim; o++) {
    for (let g = 0; g < groups; g++) {
      const base = scales[o * groups + g]! * 16;
      const bo = (o * groups + g) * 16;
      let row = g * 32 * outDim + o;
      for (let j = 0; j < 16; j++) {
        const byte = blocks[bo + j]!;
        out[row] = tbl[base + (byte & 15)]!;
        row += outDim;
        out[row] = tbl[base + (byte >> 4)]!;
        row += outDim;
      }
    }
  }
  return out;
}

// ---- checkpoints ---------------------------------------------------------------------------------------------------
export interface LoadOptions {
  device: string;
  /** Target dtype (default: bf16 for float tensors, i32 for integer ones). */
  dtype?: DType;
  /** Expected shape; a mismatch is an error that names the tensor. */
  shape?: readonly number[];
  /** Host bytes per positioned read (default 64 MiB). */
  chunkBytes?: number;
}

/**
 * A checkpoint directory (or a single .safetensors file): a single `model.safetensors`, or shards listed by
 * `model.safetensors.index.json`. Shard headers are validated when the checkpoint opens.
 */
export class Checkpoint {
  readonly dir: string;
  private readonly files = new Map<string, SafetensorsFile>();
  private readonly where = new Map<string, SafetensorsFile>();

  private constructor(dir: string) {
    this.dir = dir;
  }

  static open(path: string): Checkpoint {
    if (path.endsWith('.safetensors')) {
      const ck = new Checkpoint(dirname(path));
      ck.addFile(path, null);
      return ck;
    }
    const ck = new Checkpoint(path);
    const indexPath = join(path, 'model.safetensors.index.json');
    const single = join(path, 'model.safetensors');
    try {
      if (existsSync(indexPath)) {
        let index: { weight_map?: Record<string, string> };
        try {
          index = JSON.parse(readFileSync(indexPath, 'utf8')) as typeof index;
        } catch (e) {
          throw new Error(`checkpoint ${path}: model.safetensors.index.json is not valid JSON: ${(e as Error).message}`);
        }
        const wm = index.weight_map;
        if (!wm || typeof wm !== 'object') throw new Error(`checkpoint ${path}: model.safetensors.index.json has no weight_map`);
        const byShard = new Map<string, string[]>();
        for (const [name, shard] of Object.entries(wm)) {
          if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\') || shard.startsWith('.')) {
            throw new Error(`checkpoint ${path}: weight_map['${name}'] = ${JSON.stringify(shard)} is not a shard file name`);
          }
          (byShard.get(shard) ?? byShard.set(shard, []).get(shard)!).push(name);
        }
        const missing = [...byShard.keys()].filter((s) => !existsSync(join(path, s)));
        if (missing.length) {
          throw new Error(`checkpoint ${path}: missing shard file(s) ${missing.join(', ')} listed in model.safetensors.index.json`);
        }
        for (const [shard, names] of byShard) ck.addFile(join(path, shard), names);
      } else if (existsSync(single)) {
        ck.addFile(single, null);
      } else {
        throw new Error(`checkpoint ${path}: neither model.safetensors.index.json nor model.safetensors found`);
      }
    } catch (e) {
      ck.close();
      throw e;
    }
    return ck;
  }

  private addFile(path: string, expected: string[] | null): void {
    const f = SafetensorsFile.open(path);
    this.files.set(path, f);
    if (expected) {
      for (const n of expected) {
        if (!f.tensors.has(n)) throw new Error(`checkpoint ${this.dir}: index says '${n}' is in ${basename(path)} but it is not there`);
      }
    }
    for (const name of f.tensors.keys()) {
      if (this.where.has(name)) throw new Error(`checkpoint ${this.dir}: tensor '${name}' appears in two shards`);
      this.where.set(name, f);
    }
  }

  names(): string[] {
    return [...this.where.keys()];
  }

  has(name: string): boolean {
    return this.where.has(name) || (this.where.has(`${name}_blocks`) && this.where.has(`${name}_scales`));
  }

  info(name: string): TensorInfo | undefined {
    return this.where.get(name)?.tensors.get(name);
  }

  /** True when `name` is stored as an MXFP4 `_blocks`/`_scales` pair instead of a plain tensor. */
  isMxfp4(name: string): boolean {
    return !this.where.has(name) && this.where.has(`${name}_blocks`) && this.where.has(`${name}_scales`);
  }

  /** The logical shape of a tensor (for an MXFP4 pair: the dequantised [E, in, out]). */
  shapeOf(name: string): number[] | undefined {
    const i = this.info(name);
    if (i) return i.shape;
    if (this.isMxfp4(name)) {
      const b = this.info(`${name}_blocks`)!.shape;
      return [b[0]!, b[2]! * 32, b[1]!];
    }
    return undefined;
  }

  /** Streams one tensor to a device tensor, converting dtype on the host chunk by chunk. */
  load(name: string, opts: LoadOptions): Tensor {
    if (this.isMxfp4(name)) return this.loadMxfp4(name, opts);
    const f = this.where.get(name);
    if (!f) throw new Error(`checkpoint ${this.dir}: tensor '${name}' not found`);
    const info = f.tensors.get(name)!;
    if (opts.shape && (opts.shape.length !== info.shape.length || opts.shape.some((d, i) => d !== info.shape[i]))) {
      throw new Error(`checkpoint ${this.dir}: tensor '${name}' has shape [${info.shape.join(', ')}], expected [${opts.shape.join(', ')}]`);
    }
    const shape = info.shape.length === 0 ? [1] : info.shape;
    const flat = this.readElements(name, 0, numelOf(shape), opts);
    const out = flat.view(shape);
    flat.dispose();
    return out;
  }

  /**
   * Elements [lo, hi) of one tensor, flattened (row-major), as a 1-D tensor [hi - lo] on opts.device: only those
   * bytes are read (positioned reads of at most chunkBytes), so a rank that keeps a slice of a tensor never holds
   * the rest (a sharded trainer's shard, a resharded optimizer state). An MXFP4 pair is dequantised on the host one
   * expert at a time, only the experts the range touches (its blocks do not split on element boundaries).
   */
  loadRange(name: string, lo: number, hi: number, opts: Omit<LoadOptions, 'shape'>): Tensor {
    const numel = numelOf(this.shapeOf(name) ?? []);
    if (!this.has(name)) throw new Error(`checkpoint ${this.dir}: tensor '${name}' not found`);
    if (!(Number.isSafeInteger(lo) && Number.isSafeInteger(hi) && lo >= 0 && lo <= hi && hi <= numel)) {
      throw new Error(`checkpoint ${this.dir}: range [${lo}, ${hi}) of tensor '${name}' is outside its ${numel} elements`);
    }
    if (this.isMxfp4(name)) return this.loadMxfp4Range(name, lo, hi, opts);
    return this.readElements(name, lo, hi, opts);
  }

  /**
   * Elements [lo, hi) of a plain (not MXFP4) tensor as a 1-D tensor on opts.device, read with positioned reads of
   * at most chunkBytes and converted on the host chunk by chunk (load and loadRange).
   */
  private readElements(name: string, lo: number, hi: number, opts: Omit<LoadOptions, 'shape'>): Tensor {
    const f = this.where.get(name)!;
    const info = f.tensors.get(name)!;
    const isInt = /^(U|I|BOOL)/.test(info.dtype);
    const dtype: DType = opts.dtype ?? (info.dtype === 'U8' ? 'u8' : isInt ? 'i32' : 'bf16');
    const el = ST_DTYPE_BYTES[info.dtype];
    const out = Tensor.empty([hi - lo], { dtype, device: opts.device });
    try {
      const chunk = Math.max(1, Math.floor((opts.chunkBytes ?? 64 << 20) / el));
      for (let a = lo; a < hi; a += chunk) {
        const b = Math.min(hi, a + chunk);
        const buf = Buffer.alloc((b - a) * el);
        f.readAt(buf, info.offset + a * el);
        const host = convertBytes(buf, info.dtype, dtype, `'${name}'`);
        if (a === lo && b === hi) out.copyFrom(host);
        else {
          const dst = out.slice(a - lo, b - lo);
          dst.copyFrom(host);
          dst.dispose();
        }
      }
    } catch (e) {
      out.dispose();
      throw e;
    }
    return out;
  }

  /**
   * Elements [lo, hi) of a dequantised MXFP4 tensor [E, in, out] flattened: each expert it touches is read and
   * dequantised alone (bf16 [in, out] on the host), its overlap copied into the result [hi - lo] on opts.device.
   */
  private loadMxfp4Range(name: string, lo: number, hi: number, opts: Omit<LoadOptions, 'shape'>): Tensor {
    const bi = this.info(`${name}_blocks`)!;
    const si = this.info(`${name}_scales`)!;
    const where = `checkpoint ${this.dir}: MXFP4 tensor '${name}'`;
    if (bi.dtype !== 'U8' || si.dtype !== 'U8') throw new Error(`${where}: _blocks/_scales must be U8, got ${bi.dtype}/${si.dtype}`);
    if (bi.shape.length !== 4 || bi.shape[3] !== 16) throw new Error(`${where}: _blocks shape [${bi.shape.join(', ')}] is not [E, out, groups, 16]`);
    const [E, outDim, G] = bi.shape as [number, number, number, number];
    if (si.shape.length !== 3 || si.shape[0] !== E || si.shape[1] !== outDim || si.shape[2] !== G) {
      throw new Error(`${where}: _scales shape [${si.shape.join(', ')}] does not match _blocks [${bi.shape.join(', ')}]`);
    }
    const per = G * 32 * outDim;
    const dtype = opts.dtype ?? 'bf16';
    const out = Tensor.empty([hi - lo], { dtype, device: opts.device });
    const bf = this.where.get(`${name}_blocks`)!;
    const sf = this.where.get(`${name}_scales`)!;
    try {
      const blocks = Buffer.alloc(outDim * G * 16);
      const scales = Buffer.alloc(outDim * G);
      for (let e = Math.floor(lo / per); e < E && e * per < hi; e++) {
        bf.readAt(blocks, bi.offset + e * blocks.length);
        sf.readAt(scales, si.offset + e * scales.length);
        const bits = dequantMxfp4Expert(blocks, scales, outDim, G);
        const a = Math.max(lo, e * per);
        const b = Math.min(hi, (e + 1) * per);
        const part = bits.subarray(a - e * per, b - e * per);
        const dst = out.slice(a - lo, b - lo);
        dst.copyFrom(dtype === 'bf16' ? part : convertBytes(new Uint8Array(part.buffer, part.byteOffset, part.byteLength), 'BF16', dtype, `'${name}'`));
        dst.dispose();
      }
    } catch (err) {
      out.dispose();
      throw err;
    }
    return out;
  }

  private loadMxfp4(name: string, opts: LoadOptions): Tensor {
    const bi = this.info(`${name}_blocks`)!;
    const si = this.info(`${name}_scales`)!;
    const where = `checkpoint ${this.dir}: MXFP4 tensor '${name}'`;
    if (bi.dtype !== 'U8' || si.dtype !== 'U8') throw new Error(`${where}: _blocks/_scales must be U8, got ${bi.dtype}/${si.dtype}`);
    if (bi.shape.length !== 4 || bi.shape[3] !== 16) throw new Error(`${where}: _blocks shape [${bi.shape.join(', ')}] is not [E, out, groups, 16]`);
    const [E, outDim, G] = bi.shape as [number, number, number, number];
    if (si.shape.length !== 3 || si.shape[0] !== E || si.shape[1] !== outDim || si.shape[2] !== G) {
      throw new Error(`${where}: _scales shape [${si.shape.join(', ')}] does not match _blocks [${bi.shape.join(', ')}]`);
    }
    const shape = [E, G * 32, outDim];
    if (opts.shape && opts.shape.some((d, i) => d !== shape[i])) {
      throw new Error(`${where}: dequantised shape [${shape.join(', ')}], expected [${opts.shape.join(', ')}]`);
    }
    const dtype = opts.dtype ?? 'bf16';
    const out = Tensor.empty(shape, { dtype, device: opts.device });
    const bf = this.where.get(`${name}_blocks`)!;
    const sf = this.where.get(`${name}_scales`)!;
    try {
      const blocks = Buffer.alloc(outDim * G * 16);
      const scales = Buffer.alloc(outDim * G);
      for (let e = 0; e < E; e++) {
        bf.readAt(blocks, bi.offset + e * blocks.length);
        sf.readAt(scales, si.offset + e * scales.length);
        const bits = dequantMxfp4Expert(blocks, scales, outDim, G);
        const dst = out.slice(e, e + 1);
        dst.copyFrom(dtype === 'bf16' ? bits : convertBytes(new Uint8Array(bits.buffer), 'BF16', dtype, `'${name}'`));
        dst.dispose();
      }
    } catch (err) {
      out.dispose();
      throw err;
    }
    return out;
  }

  close(): void {
    for (const f of this.files.values()) f.close();
    this.files.clear();
    this.where.clear();
  }
}

// ---- writing -------------------------------------------------------------------------------------------------------
export interface TensorToSave {
  name: string;
  dtype: StDType;
  shape: readonly number[];
  /** Produces the bytes when the writer reaches this tensor (so only one tensor is on the host at a time). */
  data: Uint8Array | (() => Uint8Array);
}

/** Host bytes of a Tensor in safetensors form (bf16 -> BF16 bits, f32 -> F32, i32 -> I32, u8 -> U8). */
export function tensorToSave(name: string, t: Tensor, as?: 'BF16' | 'F32'): TensorToSave {
  const dt: StDType = as ?? ({ bf16: 'BF16', f32: 'F32', i32: 'I32', u8: 'U8' } as const)[t.dtype];
  return {
    name,
    dtype: dt,
    shape: t.shape,
    data: () => {
      if ((dt === 'BF16' && t.dtype === 'bf16') || (dt === 'F32' && t.dtype === 'f32') || dt === 'I32' || dt === 'U8') return new Uint8Array(t.toBuffer());
      const f = t.toFloat32();
      return dt === 'F32' ? new Uint8Array(f.buffer) : new Uint8Array(f32ToBf16Bits(f).buffer);
    },
  };
}

function headerFor(tensors: readonly TensorToSave[], metadata?: Record<string, string>): { header: Buffer; dataBytes: number } {
  const h: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) h.__metadata__ = metadata;
  let off = 0;
  for (const t of tensors) {
    if (!(t.dtype in ST_DTYPE_BYTES)) throw new Error(`safetensors write: '${t.name}' has unknown dtype ${t.dtype}`);
    if (t.name === '__metadata__' || t.name in h) throw new Error(`safetensors write: duplicate or reserved tensor name '${t.name}'`);
    const n = numelOf(t.shape) * ST_DTYPE_BYTES[t.dtype];
    h[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [off, off + n] };
    off += n;
  }
  let json = JSON.stringify(h);
  // Pad the header with spaces to a multiple of 8 so the data section is aligned (as the reference writer does).
  json += ' '.repeat((8 - ((Buffer.byteLength(json) + 8) % 8)) % 8);
  return { header: Buffer.from(json, 'utf8'), dataBytes: off };
}

function tmpName(path: string): string {
  return `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
}

/** Writes one safetensors file at `path` (written to a temp file, fsynced, then renamed into place). */
export function writeSafetensors(path: string, tensors: readonly TensorToSave[], metadata?: Record<string, string>): void {
  const tmp = tmpName(path);
  writeSafetensorsTo(tmp, tensors, metadata);
  renameSync(tmp, path);
}

function writeSafetensorsTo(path: string, tensors: readonly TensorToSave[], metadata?: Record<string, string>): number {
  const { header, dataBytes } = headerFor(tensors, metadata);
  const fd = openSync(path, 'w');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    writeAll(fd, len);
    writeAll(fd, header);
    for (const t of tensors) {
      const bytes = typeof t.data === 'function' ? t.data() : t.data;
      const want = numelOf(t.shape) * ST_DTYPE_BYTES[t.dtype];
      if (bytes.byteLength !== want) {
        throw new Error(`safetensors write: '${t.name}' ${t.dtype}[${t.shape.join(', ')}] needs ${want} bytes, got ${bytes.byteLength}`);
      }
      writeAll(fd, bytes);
    }
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(path, { force: true });
    throw e;
  }
  closeSync(fd);
  return dataBytes;
}

function writeAll(fd: number, buf: Uint8Array): void {
  let done = 0;
  while (done < buf.byteLength) done += writeSync(fd, buf, done, buf.byteLength - done);
}

export interface SaveCheckpointOptions {
  /** Shard size limit in bytes (default 4 GiB; a tensor larger than the limit gets a shard of its own). */
  maxShardBytes?: number;
  metadata?: Record<string, string>;
  /** Extra small files written atomically beside the weights (e.g. { 'config.json': '...' }). */
  extraFiles?: Record<string, string>;
}

/**
 * Saves tensors as a HF-style sharded checkpoint in `dir`: model-0000k-of-0000n.safetensors +
 * model.safetensors.index.json (a single model.safetensors when everything fits in one shard). Every file is
 * first written to a temp name; only when all are complete are they renamed into place (index last), so a failure
 * while writing leaves the previous checkpoint's files untouched.
 */
export function saveCheckpoint(dir: string, tensors: readonly TensorToSave[], opts: SaveCheckpointOptions = {}): string[] {
  const limit = opts.maxShardBytes ?? 4 * 1024 ** 3;
  const shards: TensorToSave[][] = [];
  let cur: TensorToSave[] = [];
  let curBytes = 0;
  for (const t of tensors) {
    const n = numelOf(t.shape) * ST_DTYPE_BYTES[t.dtype];
    if (cur.length && curBytes + n > limit) {
      shards.push(cur);
      cur = [];
      curBytes = 0;
    }
    cur.push(t);
    curBytes += n;
  }
  if (cur.length || shards.length === 0) shards.push(cur);
  const total = shards.length;
  const names =
    total === 1 ? ['model.safetensors'] : shards.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(total).padStart(5, '0')}.safetensors`);
  const pending: { tmp: string; final: string }[] = [];
  try {
    let totalSize = 0;
    const weightMap: Record<string, string> = {};
    shards.forEach((s, i) => {
      const final = join(dir, names[i]!);
      const tmp = tmpName(final);
      pending.push({ tmp, final });
      totalSize += writeSafetensorsTo(tmp, s, { format: 'pt', ...(opts.metadata ?? {}) });
      for (const t of s) weightMap[t.name] = names[i]!;
    });
    for (const [file, text] of Object.entries(opts.extraFiles ?? {})) {
      const final = join(dir, file);
      const tmp = tmpName(final);
      pending.push({ tmp, final });
      writeFileSync(tmp, text);
    }
    if (total > 1) {
      const final = join(dir, 'model.safetensors.index.json');
      const tmp = tmpName(final);
      writeFileSync(tmp, JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2));
      pending.push({ tmp, final });
    }
  } catch (e) {
    for (const p of pending) rmSync(p.tmp, { force: true });
    throw e;
  }
  // Commit: shards first, then extras and the index. A single-file save removes a stale index so readers do not
  // follow it to old shards; a sharded save removes a stale single model.safetensors.
  for (const p of pending) renameSync(p.tmp, p.final);
  if (total === 1) rmSync(join(dir, 'model.safetensors.index.json'), { force: true });
  else rmSync(join(dir, 'model.safetensors'), { force: true });
  for (const f of readdirSync(dir)) {
    if (/^model-\d+-of-\d+\.safetensors$/.test(f) && !names.includes(f)) rmSync(join(dir, f), { force: true });
  }
  return names.map((n) => join(dir, n));
}
