// safetensors.ts: a minimal reader for tests (8-byte little-endian header length, JSON header, raw data).
// The model code has the full reader; this one only needs F32/I32/BF16 tensors from small fixture files.
import { readFileSync } from 'node:fs';

export interface StTensor {
  dtype: string;
  shape: number[];
  data: Float32Array | Int32Array;
}

export function readSafetensors(path: string): Map<string, StTensor> {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const base = 8 + n;
  const out = new Map<string, StTensor>();
  for (const [name, e] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [b, en] = e.data_offsets;
    const bytes = buf.subarray(base + b, base + en);
    const copy = new Uint8Array(bytes.length);
    copy.set(bytes);
    let data: Float32Array | Int32Array;
    if (e.dtype === 'F32') data = new Float32Array(copy.buffer);
    else if (e.dtype === 'I32') data = new Int32Array(copy.buffer);
    else if (e.dtype === 'BF16') {
      const u16 = new Uint16Array(copy.buffer);
      const u32 = new Uint32Array(u16.length);
      for (let i = 0; i < u16.length; i++) u32[i] = u16[i]! << 16;
      data = new Float32Array(u32.buffer);
    } else throw new Error(`readSafetensors: unsupported dtype ${e.dtype} for ${name} in ${path}`);
    out.set(name, { dtype: e.dtype, shape: e.shape, data });
  }
  return out;
}
