// wire.ts: length-prefixed frames on a TCP stream. A frame is
//   u32 LE header length | u64 LE payload length | header (UTF-8 JSON) | payload (raw bytes, e.g. a tensor)
// so tensors travel as their raw bytes, never as JSON; and the MessagePack codec of the values a payload carries
// between ranks (packValue / unpackValue).
import type { Socket } from 'node:net';
import { Packr } from 'msgpackr';

export type Header = { t: string } & Record<string, unknown>;
export interface Frame {
  header: Header;
  payload: Buffer;
}

const PREFIX = 12;
const EMPTY = Buffer.alloc(0);

export function writeFrame(socket: Socket, header: Header, payload?: Uint8Array): boolean {
  const h = Buffer.from(JSON.stringify(header), 'utf8');
  const p = payload ?? EMPTY;
  const pre = Buffer.allocUnsafe(PREFIX);
  pre.writeUInt32LE(h.length, 0);
  pre.writeBigUInt64LE(BigInt(p.byteLength), 4);
  socket.cork();
  socket.write(pre);
  socket.write(h);
  let ok = true;
  if (p.byteLength) ok = socket.write(p);
  socket.uncork();
  return ok;
}

/** Turns stream chunks back into frames. */
export class FrameReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private need: { h: number; p: number } | undefined;

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.have += chunk.length;
    const out: Frame[] = [];
    for (;;) {
      if (!this.need) {
        if (this.have < PREFIX) break;
        const pre = this.take(PREFIX);
        this.need = { h: pre.readUInt32LE(0), p: Number(pre.readBigUInt64LE(4)) };
      }
      if (this.have < this.need.h + this.need.p) break;
      const header = JSON.parse(this.take(this.need.h).toString('utf8')) as Header;
      const payload = this.need.p ? this.take(this.need.p) : EMPTY;
      this.need = undefined;
      out.push({ header, payload });
    }
    return out;
  }

  private take(n: number): Buffer {
    this.have -= n;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }
}

// ---- values in a payload -------------------------------------------------------------------------------------------
// What the host channel carries between ranks beyond tensors (commands, token batches, completions, per-sequence
// f32 rows) as MessagePack: numbers, strings and objects compactly, and typed arrays (Int32Array, Float32Array, ...)
// as their raw bytes, restored as the same typed array: exact, NaN/Infinity/-0 kept, no text encoding of numbers.
const packr = new Packr({ moreTypes: true, useRecords: false });

/** A value (plain objects, arrays, numbers, strings, null, typed arrays) as MessagePack bytes. */
export function packValue(value: unknown): Buffer {
  return packr.pack(value);
}

/** The value packValue packed (typed arrays come back as fresh typed arrays of the same kind). */
export function unpackValue<T>(bytes: Uint8Array): T {
  return packr.unpack(bytes) as T;
}
