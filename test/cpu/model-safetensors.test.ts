// safetensors reader/writer: validation against hostile headers, sharded checkpoints, streaming loads, MXFP4.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, readFileSync, readdirSync, rmSync, existsSync, truncateSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tensor, f32ToBf16Bits, bf16BitsToF32 } from '../../src/tensor.ts';
import {
  SafetensorsFile,
  Checkpoint,
  saveCheckpoint,
  writeSafetensors,
  dequantMxfp4Expert,
  type TensorToSave,
} from '../../src/model/safetensors.ts';
import { FIXTURE_DIR } from '../helpers/fixtures.ts';

const tmp = (): string => mkdtempSync(join(tmpdir(), 'st-'));

/** Builds a safetensors file by hand from a header object and a data buffer. */
function rawFile(path: string, header: unknown, data: Uint8Array, headerLen?: bigint): void {
  const h = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLen ?? BigInt(h.length));
  writeFileSync(path, Buffer.concat([len, h, data]));
}

test('reads a valid file and streams tensors (bf16, f32 -> bf16, chunked rows)', () => {
  const d = tmp();
  const a = new Float32Array([1, 2, 3, 4, 5, 6]);
  const b = f32ToBf16Bits(new Float32Array([0.5, -1.25, 3, 7, 9, 11, 13, 15]));
  writeSafetensors(join(d, 'model.safetensors'), [
    { name: 'a', dtype: 'F32', shape: [3, 2], data: new Uint8Array(a.buffer) },
    { name: 'b', dtype: 'BF16', shape: [4, 2], data: new Uint8Array(b.buffer) },
  ]);
  const ck = Checkpoint.open(d);
  assert.deepEqual(ck.names().sort(), ['a', 'b']);
  const ta = ck.load('a', { device: 'cpu', dtype: 'f32' });
  assert.deepEqual([...ta.toFloat32()], [...a]);
  const tab = ck.load('a', { device: 'cpu' });
  assert.equal(tab.dtype, 'bf16');
  // chunkBytes of one row forces 4 separate positioned reads.
  const tb = ck.load('b', { device: 'cpu', chunkBytes: 4 });
  assert.deepEqual([...tb.toFloat32()], [0.5, -1.25, 3, 7, 9, 11, 13, 15]);
  assert.throws(() => ck.load('b', { device: 'cpu', shape: [2, 4] }), /'b' has shape \[4, 2\], expected \[2, 4\]/);
  assert.throws(() => ck.load('zzz', { device: 'cpu' }), /'zzz' not found/);
  ck.close();
  rmSync(d, { recursive: true });
});

test('header attacks are rejected with clear errors', () => {
  const d = tmp();
  const p = join(d, 'x.safetensors');
  const data = new Uint8Array(16);
  const good = { t: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] } };
  // absurd header length
  rawFile(p, good, data, 1n << 62n);
  assert.throws(() => SafetensorsFile.open(p), /header length \d+ exceeds/);
  // header length beyond the file
  rawFile(p, good, data, 1000n);
  assert.throws(() => SafetensorsFile.open(p), /runs past the end/);
  // shorter than 8 bytes
  writeFileSync(p, Buffer.from([1, 2, 3]));
  assert.throws(() => SafetensorsFile.open(p), /too short/);
  // truncated data
  rawFile(p, good, data);
  truncateSync(p, readFileSync(p).length - 4);
  assert.throws(() => SafetensorsFile.open(p), /run past the 12-byte data section \(truncated/);
  // overlapping offsets
  rawFile(p, { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] }, c: { dtype: 'F32', shape: [1], data_offsets: [12, 16] } }, data);
  assert.throws(() => SafetensorsFile.open(p), /'b' overlaps/);
  // size that does not match the shape
  rawFile(p, { t: { dtype: 'F32', shape: [3, 2], data_offsets: [0, 16] } }, data);
  assert.throws(() => SafetensorsFile.open(p), /needs 24 bytes but data_offsets \[0, 16\] span 16/);
  // unknown dtype, bad shape, bad JSON, hole, trailing bytes
  rawFile(p, { t: { dtype: 'Q4', shape: [16], data_offsets: [0, 16] } }, data);
  assert.throws(() => SafetensorsFile.open(p), /unknown dtype "Q4"/);
  rawFile(p, { t: { dtype: 'U8', shape: [-16], data_offsets: [0, 16] } }, data);
  assert.throws(() => SafetensorsFile.open(p), /bad shape/);
  rawFile(p, { t: { dtype: 'U8', shape: [8], data_offsets: [8, 16] } }, data);
  assert.throws(() => SafetensorsFile.open(p), /hole/);
  rawFile(p, { t: { dtype: 'U8', shape: [8], data_offsets: [0, 8] } }, data);
  assert.throws(() => SafetensorsFile.open(p), /trailing/);
  const h = Buffer.from('{"t": nope');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  writeFileSync(p, Buffer.concat([len, h]));
  assert.throws(() => SafetensorsFile.open(p), /not valid JSON/);
  rmSync(d, { recursive: true });
});

function someTensors(n: number): TensorToSave[] {
  return Array.from({ length: n }, (_, i) => {
    const v = new Float32Array(100).map((_, j) => i * 1000 + j);
    return { name: `w${i}`, dtype: 'F32' as const, shape: [10, 10], data: () => new Uint8Array(v.buffer) };
  });
}

test('sharded save: index + shards, reload, atomic on failure, missing and broken shards', () => {
  const d = tmp();
  const names = saveCheckpoint(d, someTensors(5), { maxShardBytes: 900, extraFiles: { 'config.json': '{}' } });
  assert.equal(names.length, 3);
  assert.ok(existsSync(join(d, 'model.safetensors.index.json')));
  const ck = Checkpoint.open(d);
  assert.equal(ck.names().length, 5);
  assert.equal(ck.load('w3', { device: 'cpu', dtype: 'f32' }).toFloat32()[7], 3007);
  ck.close();
  const before = Object.fromEntries(readdirSync(d).map((f) => [f, readFileSync(join(d, f))]));
  // A tensor whose bytes fail mid-save: the previous files stay as they were, no temp files are left.
  const bad = someTensors(5);
  bad[3] = { name: 'w3', dtype: 'F32', shape: [10, 10], data: () => { throw new Error('disk full'); } };
  assert.throws(() => saveCheckpoint(d, bad, { maxShardBytes: 900 }), /disk full/);
  const after = Object.fromEntries(readdirSync(d).map((f) => [f, readFileSync(join(d, f))]));
  assert.deepEqual(Object.keys(after).sort(), Object.keys(before).sort());
  for (const k of Object.keys(before)) assert.ok(before[k]!.equals(after[k]!), k);
  // Broken shard: truncated -> error names the file; missing -> error names the shard.
  const d2 = tmp();
  for (const f of readdirSync(d)) copyFileSync(join(d, f), join(d2, f));
  truncateSync(join(d2, 'model-00002-of-00003.safetensors'), 100);
  assert.throws(() => Checkpoint.open(d2), /model-00002-of-00003\.safetensors.*(truncated|runs past)/);
  rmSync(join(d2, 'model-00002-of-00003.safetensors'));
  assert.throws(() => Checkpoint.open(d2), /missing shard file\(s\) model-00002-of-00003\.safetensors/);
  // Resaving unsharded removes the index and stale shards.
  saveCheckpoint(d, someTensors(2));
  assert.deepEqual(readdirSync(d).sort(), ['config.json', 'model.safetensors']);
  rmSync(d, { recursive: true });
  rmSync(d2, { recursive: true });
});

test('MXFP4 dequantisation matches hand-computed values and the [E, in, out] layout', () => {
  // One expert, out = 2 rows, in = 32 (one group). Row 0: bytes 0x21 -> low 1 (0.5), high 2 (1.0); scale 128 (x2).
  // Row 1: byte 0xF7 -> low 7 (6.0), high 15 (-6.0); scale 125 (x1/4).
  const blocks = new Uint8Array(2 * 16);
  blocks[0] = 0x21;
  blocks[1] = 0x9a; // low 0xa (-1.0), high 0x9 (-0.5)
  blocks[16] = 0xf7;
  blocks[31] = 0x3c; // low 0xc (-2.0), high 0x3 (1.5)
  const scales = new Uint8Array([128, 125]);
  const out = bf16BitsToF32(dequantMxfp4Expert(blocks, scales, 2, 1)); // [in 32, out 2]
  const at = (i: number, o: number): number => out[i * 2 + o]!;
  assert.equal(at(0, 0), 1.0);
  assert.equal(at(1, 0), 2.0);
  assert.equal(at(2, 0), -2.0);
  assert.equal(at(3, 0), -1.0);
  assert.equal(at(4, 0), 0);
  assert.equal(at(0, 1), 1.5);
  assert.equal(at(1, 1), -1.5);
  assert.equal(at(30, 1), -0.5);
  assert.equal(at(31, 1), 0.375);

  // Through a checkpoint: experts.down_proj from _blocks [E=2, out=2, G=1, 16] and _scales [2, 2, 1].
  const d = tmp();
  const b2 = new Uint8Array(64);
  b2.set(blocks, 0);
  b2.set(blocks, 32);
  const s2 = new Uint8Array([128, 125, 129, 126]);
  writeSafetensors(join(d, 'model.safetensors'), [
    { name: 'm.down_proj_blocks', dtype: 'U8', shape: [2, 2, 1, 16], data: b2 },
    { name: 'm.down_proj_scales', dtype: 'U8', shape: [2, 2, 1], data: s2 },
  ]);
  const ck = Checkpoint.open(d);
  assert.ok(ck.isMxfp4('m.down_proj'));
  assert.deepEqual(ck.shapeOf('m.down_proj'), [2, 32, 2]);
  const t = ck.load('m.down_proj', { device: 'cpu', shape: [2, 32, 2] });
  const v = t.toFloat32();
  assert.equal(v[0], 1.0); // expert 0, in 0, out 0
  assert.equal(v[64 + 0], 2.0); // expert 1 (scale 129: x4), in 0, out 0: 0.5 * 4
  assert.equal(v[64 + 1], 3.0); // expert 1, in 0, out 1: 6 * 2^-1
  // Element ranges (loadRange) dequantise only the experts they touch and equal the whole tensor's elements.
  for (const [lo, hi] of [[0, 128], [3, 61], [50, 100], [64, 128], [127, 128], [10, 10]] as const) {
    const r = ck.loadRange('m.down_proj', lo, hi, { device: 'cpu' });
    assert.deepEqual(Array.from(r.toFloat32()), Array.from(v.subarray(lo, hi)), `[${lo}, ${hi})`);
    r.dispose();
  }
  const f32 = ck.loadRange('m.down_proj', 60, 70, { device: 'cpu', dtype: 'f32' });
  assert.deepEqual(Array.from(f32.toFloat32()), Array.from(v.subarray(60, 70)));
  f32.dispose();
  ck.close();
  rmSync(d, { recursive: true });
});

test('reads the gptoss-tiny fixture shards', () => {
  const ck = Checkpoint.open(FIXTURE_DIR);
  assert.deepEqual(ck.shapeOf('model.layers.1.mlp.experts.gate_up_proj'), [4, 64, 64]);
  const t = ck.load('model.layers.0.self_attn.sinks', { device: 'cpu', dtype: 'f32' });
  assert.equal(t.numel, 4);
  assert.ok(t.toFloat32().every(Number.isFinite));
  ck.close();
  void Tensor;
});
