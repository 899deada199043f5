// parquet-writer.ts: a minimal Parquet writer for tests (no npm package here writes Parquet): one row group,
// REQUIRED UTF-8 string columns, PLAIN encoding, uncompressed data pages, Thrift compact protocol metadata.
// Enough to produce files shaped like the Hugging Face hub's GSM8K shards for the reader under test.
import { writeFileSync } from 'node:fs';

const enum CT {
  I32 = 5,
  I64 = 6,
  BINARY = 8,
  LIST = 9,
  STRUCT = 12,
}

/** A tiny Thrift compact-protocol encoder. */
class Compact {
  readonly bytes: number[] = [];
  private lastField: number[] = [0];

  private varint(n: bigint): void {
    let v = n;
    do {
      let b = Number(v & 0x7fn);
      v >>= 7n;
      if (v !== 0n) b |= 0x80;
      this.bytes.push(b);
    } while (v !== 0n);
  }
  private zigzag(n: number | bigint): void {
    const v = BigInt(n);
    this.varint(v >= 0n ? v << 1n : ((-v) << 1n) - 1n);
  }
  private header(id: number, type: number): void {
    const last = this.lastField[this.lastField.length - 1]!;
    const delta = id - last;
    if (delta > 0 && delta <= 15) this.bytes.push((delta << 4) | type);
    else {
      this.bytes.push(type);
      this.zigzag(id);
    }
    this.lastField[this.lastField.length - 1] = id;
  }
  i32(id: number, v: number): this {
    this.header(id, CT.I32);
    this.zigzag(v);
    return this;
  }
  i64(id: number, v: number): this {
    this.header(id, CT.I64);
    this.zigzag(v);
    return this;
  }
  private rawBinary(b: Uint8Array): void {
    this.varint(BigInt(b.length));
    this.bytes.push(...b);
  }
  string(id: number, s: string): this {
    this.header(id, CT.BINARY);
    this.rawBinary(new TextEncoder().encode(s));
    return this;
  }
  struct(id: number, body: (c: Compact) => void): this {
    this.header(id, CT.STRUCT);
    this.lastField.push(0);
    body(this);
    this.bytes.push(0);
    this.lastField.pop();
    return this;
  }
  private listHeader(id: number, n: number, elem: number): void {
    this.header(id, CT.LIST);
    if (n < 15) this.bytes.push((n << 4) | elem);
    else {
      this.bytes.push(0xf0 | elem);
      this.varint(BigInt(n));
    }
  }
  listI32(id: number, xs: number[]): this {
    this.listHeader(id, xs.length, CT.I32);
    for (const x of xs) this.zigzag(x);
    return this;
  }
  listString(id: number, xs: string[]): this {
    this.listHeader(id, xs.length, CT.BINARY);
    for (const x of xs) this.rawBinary(new TextEncoder().encode(x));
    return this;
  }
  listStruct(id: number, n: number, body: (c: Compact, i: number) => void): this {
    this.listHeader(id, n, CT.STRUCT);
    for (let i = 0; i < n; i++) {
      this.lastField.push(0);
      body(this, i);
      this.bytes.push(0);
      this.lastField.pop();
    }
    return this;
  }
  end(): Uint8Array {
    this.bytes.push(0);
    return Uint8Array.from(this.bytes);
  }
}

/** Writes rows of string columns as a Parquet file. */
export function writeStringParquet(path: string, columns: string[], rows: Array<Record<string, string>>): void {
  const enc = new TextEncoder();
  const chunks: Uint8Array[] = [new TextEncoder().encode('PAR1')];
  let offset = 4;
  const meta: Array<{ name: string; offset: number; size: number }> = [];
  for (const col of columns) {
    const values = rows.map((r) => enc.encode(r[col] ?? ''));
    const data = new Uint8Array(values.reduce((s, v) => s + 4 + v.length, 0));
    const dv = new DataView(data.buffer);
    let o = 0;
    for (const v of values) {
      dv.setUint32(o, v.length, true);
      data.set(v, o + 4);
      o += 4 + v.length;
    }
    const header = new Compact()
      .i32(1, 0) // DATA_PAGE
      .i32(2, data.length)
      .i32(3, data.length)
      .struct(5, (c) => c.i32(1, rows.length).i32(2, 0).i32(3, 3).i32(4, 3)) // PLAIN values, RLE levels
      .end();
    meta.push({ name: col, offset, size: header.length + data.length });
    chunks.push(header, data);
    offset += header.length + data.length;
  }
  const footer = new Compact()
    .i32(1, 1)
    .listStruct(2, columns.length + 1, (c, i) => {
      if (i === 0) c.i32(3, 0).string(4, 'schema').i32(5, columns.length);
      else c.i32(1, 6).i32(3, 0).string(4, columns[i - 1]!).i32(6, 0); // BYTE_ARRAY, REQUIRED, UTF8
    })
    .i64(3, rows.length)
    .listStruct(4, 1, (c) => {
      c.listStruct(1, columns.length, (cc, i) => {
        const m = meta[i]!;
        cc.i64(2, m.offset).struct(3, (md) =>
          md
            .i32(1, 6)
            .listI32(2, [0, 3])
            .listString(3, [m.name])
            .i32(4, 0)
            .i64(5, rows.length)
            .i64(6, m.size)
            .i64(7, m.size)
            .i64(9, m.offset),
        );
      });
      c.i64(2, meta.reduce((s, m) => s + m.size, 0)).i64(3, rows.length);
    })
    .end();
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, footer.length, true);
  chunks.push(footer, len, new TextEncoder().encode('PAR1'));
  const total = chunks.reduce((s, c) => s + c.length, 0);
  const out = new Uint8Array(total);
  let p = 0;
  for (const c of chunks) {
    out.set(c, p);
    p += c.length;
  }
  writeFileSync(path, out);
}
