// tcp-group.ts: the rendezvous and host-side transport of a process group, over TCP (node:net).
//
// One Hub listens at MASTER_ADDR:MASTER_PORT (the launcher on node 0 hosts it, or rank 0 itself when no
// launcher is in use). Every rank connects with a TcpGroup and says hello; once all `worldSize` ranks are in,
// the hub welcomes them (the rendezvous). Afterwards:
//   - collectives: every rank sends its contribution (a JSON header naming the op, dtype and shape, and the
//     tensor's raw bytes); when all ranks' next collective has arrived the hub checks that they agree (same op,
//     dtype, element count, reduction, root), computes the result and answers each rank. A disagreement is
//     answered with an error on every rank, naming the collective and every rank's tensor.
//   - point to point: the hub forwards a send to its target at once (eager); the target queues it per source.
//   - failure: a rank whose connection drops before it said goodbye aborts the group: every other rank's
//     pending and future calls fail with a message naming that rank.
import { createServer, connect, type Server, type Socket } from 'node:net';
import { bf16BitsToF32, f32ToBf16Bits } from '../tensor.ts';
import type { DType } from '../native.ts';
import type { ReduceOp } from './collectives.ts';
import { FrameReader, writeFrame, type Frame, type Header } from './wire.ts';

export type CollOp = 'allReduce' | 'allGather' | 'reduceScatter' | 'broadcast' | 'barrier' | 'bcastBytes' | 'gatherBytes';

export interface CollFields {
  op: CollOp;
  dtype?: DType;
  shape?: number[];
  reduce?: ReduceOp;
  root?: number;
}
type CollHeader = Header & CollFields & { t: 'coll'; seq: number };

const ELEMENT_BYTES: Record<DType, number> = { bf16: 2, f32: 4, i32: 4, u8: 1 };

function numelOf(shape: readonly number[] | undefined): number {
  return (shape ?? []).reduce((a, b) => a * b, 1);
}
function tensorDesc(h: CollHeader): string {
  return `${h.dtype}[${(h.shape ?? []).join(', ')}]`;
}

// ---- the hub ----------------------------------------------------------------------------------------------------
export interface HubOptions {
  worldSize: number;
  port: number; // 0: any free port
  host?: string; // default: all interfaces
  /** Called once when a rank's connection drops before it said goodbye (the group is aborted). */
  onAbort?: (message: string, rank: number) => void;
}

export class Hub {
  readonly worldSize: number;
  private readonly clients: (Socket | undefined)[];
  private readonly done: boolean[];
  private readonly queues: Frame[][];
  private welcomed = false;
  private aborted: string | undefined;
  private closeResolve!: () => void;
  /** Resolves when every rank has said goodbye and disconnected, or after an abort. */
  readonly closed: Promise<void>;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly opts: HubOptions,
  ) {
    this.worldSize = opts.worldSize;
    this.clients = new Array(this.worldSize).fill(undefined);
    this.done = new Array(this.worldSize).fill(false);
    this.queues = Array.from({ length: this.worldSize }, () => []);
    this.closed = new Promise((r) => (this.closeResolve = r));
    server.on('connection', (s) => this.accept(s));
  }

  static listen(opts: HubOptions): Promise<Hub> {
    return new Promise((resolve, reject) => {
      const server = createServer();
      server.once('error', (e: NodeJS.ErrnoException) => {
        reject(
          new Error(
            `rendezvous: cannot listen on port ${opts.port}${e.code === 'EADDRINUSE' ? ' (already in use: pick another MASTER_PORT)' : ''}: ${e.message}`,
          ),
        );
      });
      server.listen({ port: opts.port, host: opts.host }, () => {
        const addr = server.address();
        const port = typeof addr === 'object' && addr ? addr.port : opts.port;
        resolve(new Hub(server, port, opts));
      });
    });
  }

  /** Stops at once: every connected rank is told that the group was aborted with `message`. */
  abort(message: string, rank = -1): void {
    if (this.aborted) return;
    this.aborted = message;
    for (const s of this.clients) {
      if (!s || s.destroyed) continue;
      writeFrame(s, { t: 'abort', message });
      s.end();
    }
    this.opts.onAbort?.(message, rank);
    this.server.close();
    this.closeResolve();
  }

  /** Stops quietly (the launcher is done with it). */
  close(): void {
    if (this.aborted) return;
    this.aborted = 'the process group was closed';
    for (const s of this.clients) s?.destroy();
    this.server.close();
    this.closeResolve();
  }

  private accept(s: Socket): void {
    s.setNoDelay(true);
    const reader = new FrameReader();
    let rank = -1;
    s.on('data', (chunk: Buffer) => {
      for (const f of reader.push(chunk)) {
        if (rank < 0) {
          rank = this.hello(s, f);
          if (rank < 0) return;
        } else {
          this.message(rank, f);
        }
      }
    });
    s.on('error', () => {}); // 'close' follows and decides
    s.on('close', () => {
      if (rank < 0 || this.clients[rank] !== s) return;
      if (!this.done[rank]) {
        this.abort(`rank ${rank} disconnected from the process group without leaving it (it exited or crashed)`, rank);
        return;
      }
      this.clients[rank] = undefined;
      if (this.done.every((d) => d) && this.clients.every((c) => !c)) {
        this.server.close();
        this.closeResolve();
      }
    });
  }

  private hello(s: Socket, f: Frame): number {
    const h = f.header;
    const reject = (message: string) => {
      writeFrame(s, { t: 'error', message });
      s.end();
      return -1;
    };
    if (h.t !== 'hello') return reject(`rendezvous: expected hello, got '${h.t}'`);
    const rank = Number(h.rank);
    const ws = Number(h.worldSize);
    if (this.aborted) return reject(`rendezvous: the group was aborted: ${this.aborted}`);
    if (ws !== this.worldSize) return reject(`rendezvous: rank ${rank} says WORLD_SIZE=${ws} but the group has ${this.worldSize}`);
    if (!Number.isInteger(rank) || rank < 0 || rank >= this.worldSize) {
      return reject(`rendezvous: rank ${rank} is not in [0, ${this.worldSize})`);
    }
    if (this.clients[rank] || this.welcomed) return reject(`rendezvous: rank ${rank} joined twice`);
    this.clients[rank] = s;
    if (this.clients.every((c) => c)) {
      this.welcomed = true;
      for (const c of this.clients) writeFrame(c!, { t: 'welcome', worldSize: this.worldSize });
    }
    return rank;
  }

  private message(rank: number, f: Frame): void {
    if (this.aborted) return;
    const h = f.header;
    switch (h.t) {
      case 'coll':
        this.queues[rank]!.push(f);
        this.collect();
        return;
      case 'send': {
        const to = Number(h.to);
        const target = this.clients[to];
        if (!target || this.done[to]) {
          writeFrame(this.clients[rank]!, { t: 'abort', message: `send: rank ${to} is not in the group (any more)` });
          return;
        }
        writeFrame(target, { t: 'p2p', from: rank, dtype: h.dtype, shape: h.shape }, f.payload);
        return;
      }
      case 'bye':
        this.done[rank] = true;
        return;
      default:
        this.abort(`rank ${rank} sent an unknown message '${h.t}'`, rank);
    }
  }

  private collect(): void {
    while (this.queues.every((q) => q.length > 0)) {
      const frames = this.queues.map((q) => q.shift()!);
      const seq = (frames[0]!.header as CollHeader).seq;
      let replies: { header?: Record<string, unknown>; payload?: Uint8Array }[];
      try {
        replies = this.compute(frames);
      } catch (e) {
        const message = e instanceof Error ? e.message : String(e);
        frames.forEach((_, r) => writeFrame(this.clients[r]!, { t: 'result', seq, error: message }));
        continue;
      }
      replies.forEach((rep, r) => writeFrame(this.clients[r]!, { t: 'result', seq, ...rep.header }, rep.payload));
    }
  }

  private compute(frames: Frame[]): { header?: Record<string, unknown>; payload?: Uint8Array }[] {
    const hs = frames.map((f) => f.header as CollHeader);
    const h0 = hs[0]!;
    const n = this.worldSize;
    const every = (payload?: Uint8Array, header?: Record<string, unknown>) => hs.map(() => ({ payload, header }));
    const list = (pick: (h: CollHeader, r: number) => string) => hs.map((h, r) => `rank ${r} ${pick(h, r)}`).join(', ');
    if (hs.some((h) => h.op !== h0.op)) throw new Error(`collective mismatch: ${list((h) => `called ${h.op}`)}`);
    const op = h0.op;
    if (op === 'barrier') return every();
    if (op === 'bcastBytes') {
      const root = h0.root ?? 0;
      if (hs.some((h) => h.root !== root)) throw new Error(`broadcastBytes: ranks disagree on the root: ${list((h) => `root ${h.root}`)}`);
      return every(frames[root]!.payload);
    }
    if (op === 'gatherBytes') {
      return every(Buffer.concat(frames.map((f) => f.payload)), { lengths: frames.map((f) => f.payload.length) });
    }
    // Tensor collectives: same dtype and element count everywhere, payloads of the advertised size.
    if (hs.some((h) => h.dtype !== h0.dtype || numelOf(h.shape) !== numelOf(h0.shape))) {
      throw new Error(`${op}: ranks disagree on the tensor: ${list(tensorDesc)}`);
    }
    frames.forEach((f, r) => {
      if (op === 'broadcast' && r !== (h0.root ?? 0)) return; // only the root's bytes travel
      const want = numelOf(hs[r]!.shape) * ELEMENT_BYTES[hs[r]!.dtype!];
      if (f.payload.length !== want) throw new Error(`${op}: rank ${r} sent ${f.payload.length} bytes for ${tensorDesc(hs[r]!)}`);
    });
    if (op === 'allReduce' || op === 'reduceScatter') {
      if (hs.some((h) => h.reduce !== h0.reduce)) throw new Error(`${op}: ranks disagree on the reduction: ${list((h) => `${h.reduce}`)}`);
    }
    switch (op) {
      case 'allReduce':
        return every(reduceBuffers(h0.dtype!, h0.reduce!, frames.map((f) => f.payload)));
      case 'allGather':
        return every(Buffer.concat(frames.map((f) => f.payload)));
      case 'reduceScatter': {
        const total = numelOf(h0.shape);
        if (total % n !== 0) throw new Error(`reduceScatter: input ${tensorDesc(h0)} does not split into ${n} equal chunks`);
        const red = reduceBuffers(h0.dtype!, h0.reduce!, frames.map((f) => f.payload));
        const chunk = (total / n) * ELEMENT_BYTES[h0.dtype!];
        return hs.map((_, r) => ({ payload: red.subarray(r * chunk, (r + 1) * chunk) }));
      }
      case 'broadcast': {
        const root = h0.root ?? 0;
        if (hs.some((h) => h.root !== root)) throw new Error(`broadcast: ranks disagree on the root: ${list((h) => `root ${h.root}`)}`);
        return every(frames[root]!.payload);
      }
    }
  }
}

// ---- reductions on raw bytes (rank order, fp64 accumulation for floats) ------------------------------------
function aligned(b: Uint8Array): ArrayBuffer {
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
}

function toNumbers(dtype: DType, b: Uint8Array): ArrayLike<number> {
  switch (dtype) {
    case 'f32':
      return new Float32Array(aligned(b));
    case 'bf16':
      return bf16BitsToF32(new Uint16Array(aligned(b)));
    case 'i32':
      return new Int32Array(aligned(b));
    case 'u8':
      return b;
  }
}

export function reduceBuffers(dtype: DType, op: ReduceOp, bufs: readonly Uint8Array[]): Buffer {
  const parts = bufs.map((b) => toNumbers(dtype, b));
  const len = parts[0]!.length;
  const acc = new Float64Array(len);
  const first = parts[0]!;
  for (let i = 0; i < len; i++) acc[i] = first[i]!;
  for (let p = 1; p < parts.length; p++) {
    const x = parts[p]!;
    if (op === 'sum' || op === 'avg') for (let i = 0; i < len; i++) acc[i] += x[i]!;
    else if (op === 'max') for (let i = 0; i < len; i++) acc[i] = Math.max(acc[i]!, x[i]!);
    else for (let i = 0; i < len; i++) acc[i] = Math.min(acc[i]!, x[i]!);
  }
  if (op === 'avg') {
    const n = parts.length;
    const integer = dtype === 'i32' || dtype === 'u8';
    for (let i = 0; i < len; i++) acc[i] = integer ? Math.trunc(acc[i]! / n) : acc[i]! / n;
  }
  switch (dtype) {
    case 'f32':
      return Buffer.from(Float32Array.from(acc).buffer);
    case 'bf16':
      return Buffer.from(f32ToBf16Bits(Float32Array.from(acc)).buffer);
    case 'i32':
      return Buffer.from(Int32Array.from(acc, (v) => v | 0).buffer); // wraps like int32 arithmetic
    case 'u8':
      return Buffer.from(Uint8Array.from(acc, (v) => v & 0xff));
  }
}

// ---- a rank's connection ------------------------------------------------------------------------------------------
export interface ConnectOptions {
  addr: string;
  port: number;
  rank: number;
  worldSize: number;
  /** Milliseconds to reach the hub and for all ranks to join (default 5 minutes). */
  timeoutMs?: number;
}

interface Waiter {
  seq: number;
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function connectWithRetry(addr: string, port: number, deadline: number, timeoutMs: number): Promise<Socket> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = connect({ host: addr, port });
        s.once('connect', () => {
          s.off('error', reject);
          resolve(s);
        });
        s.once('error', reject);
      });
    } catch (e) {
      if (Date.now() > deadline) {
        throw new Error(`rendezvous: could not reach ${addr}:${port} within ${timeoutMs} ms: ${(e as Error).message}`);
      }
      await sleep(Math.min(1000, 20 * 2 ** attempt));
    }
  }
}

export class TcpGroup {
  private readonly reader = new FrameReader();
  private readonly waiting: Waiter[] = [];
  private readonly mailbox = new Map<number, Frame[]>();
  private readonly recvWaiters = new Map<number, Waiter[]>();
  private seq = 0;
  private broken: Error | undefined;
  private leaving = false;
  private closedPromise: Promise<void>;

  private constructor(
    private readonly socket: Socket,
    readonly rank: number,
    readonly worldSize: number,
    readonly where: string,
  ) {
    this.closedPromise = new Promise((r) => socket.once('close', () => r()));
    socket.on('data', (chunk: Buffer) => {
      for (const f of this.reader.push(chunk)) this.dispatch(f);
    });
    socket.on('error', (e) => this.fail(new Error(`process group: connection to the hub at ${where} failed: ${e.message}`)));
    socket.on('close', () => {
      if (!this.leaving) this.fail(new Error(`process group: lost the connection to the hub at ${where} (the launcher or rank 0 exited)`));
    });
  }

  /** Joins the group: connects (retrying until the hub is up), says hello, waits until every rank has joined. */
  static async connect(opts: ConnectOptions): Promise<TcpGroup> {
    const timeoutMs = opts.timeoutMs ?? 300_000;
    const deadline = Date.now() + timeoutMs;
    const where = `${opts.addr}:${opts.port}`;
    const socket = await connectWithRetry(opts.addr, opts.port, deadline, timeoutMs);
    socket.setNoDelay(true);
    const reader = new FrameReader();
    const first = await new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`rendezvous: rank ${opts.rank}: not all ${opts.worldSize} ranks joined at ${where} within ${timeoutMs} ms`));
      }, Math.max(0, deadline - Date.now()));
      const onData = (chunk: Buffer) => {
        const frames = reader.push(chunk);
        if (frames.length === 0) return;
        clearTimeout(timer);
        socket.off('data', onData);
        socket.off('close', onClose);
        if (frames.length > 1) reject(new Error('rendezvous: unexpected messages before the welcome'));
        resolve(frames[0]!);
      };
      const onClose = () => {
        clearTimeout(timer);
        reject(new Error(`rendezvous: the hub at ${where} closed the connection`));
      };
      socket.on('data', onData);
      socket.on('close', onClose);
      socket.on('error', () => {});
      writeFrame(socket, { t: 'hello', rank: opts.rank, worldSize: opts.worldSize });
    });
    if (first.header.t !== 'welcome') {
      socket.destroy();
      throw new Error(String(first.header.message ?? `rendezvous: unexpected '${first.header.t}'`));
    }
    return new TcpGroup(socket, opts.rank, opts.worldSize, where);
  }

  private fail(e: Error): void {
    if (this.broken) return;
    this.broken = e;
    for (const w of this.waiting.splice(0)) w.reject(e);
    for (const ws of this.recvWaiters.values()) for (const w of ws.splice(0)) w.reject(e);
    this.socket.destroy();
  }

  private dispatch(f: Frame): void {
    const h = f.header;
    if (h.t === 'result') {
      const w = this.waiting.shift();
      if (!w || w.seq !== h.seq) {
        this.fail(new Error(`process group: out-of-order reply ${String(h.seq)} (expected ${w?.seq})`));
        return;
      }
      if (typeof h.error === 'string') w.reject(new Error(h.error));
      else w.resolve(f);
    } else if (h.t === 'p2p') {
      const from = Number(h.from);
      const ws = this.recvWaiters.get(from);
      if (ws && ws.length) ws.shift()!.resolve(f);
      else {
        const box = this.mailbox.get(from) ?? [];
        box.push(f);
        this.mailbox.set(from, box);
      }
    } else if (h.t === 'abort') {
      this.fail(new Error(`process group aborted: ${String(h.message)}`));
    } else {
      this.fail(new Error(`process group: unexpected message '${h.t}' from the hub`));
    }
  }

  private check(what: string): void {
    if (this.broken) throw new Error(`${what}: ${this.broken.message}`);
    if (this.leaving) throw new Error(`${what}: rank ${this.rank} already left the process group`);
  }

  /** One collective: this rank's contribution in, this rank's share of the result out. */
  collective(header: CollFields, payload?: Uint8Array): Promise<Frame> {
    this.check(header.op);
    const seq = this.seq++;
    return new Promise<Frame>((resolve, reject) => {
      this.waiting.push({ seq, resolve, reject });
      writeFrame(this.socket, { t: 'coll', seq, ...header }, payload);
    });
  }

  /** Eager send (returns once queued on the socket). */
  sendTo(peer: number, header: Record<string, unknown>, payload: Uint8Array): void {
    this.check('send');
    writeFrame(this.socket, { ...header, t: 'send', to: peer }, payload);
  }

  /** The next message `peer` sent to this rank. */
  recvFrom(peer: number): Promise<Frame> {
    this.check('recv');
    const box = this.mailbox.get(peer);
    if (box && box.length) return Promise.resolve(box.shift()!);
    return new Promise<Frame>((resolve, reject) => {
      const ws = this.recvWaiters.get(peer) ?? [];
      ws.push({ seq: -1, resolve, reject });
      this.recvWaiters.set(peer, ws);
    });
  }

  async barrier(): Promise<void> {
    await this.collective({ op: 'barrier' });
  }

  /** Root's bytes on every rank (others pass null). */
  async broadcastBytes(data: Uint8Array | null, root = 0): Promise<Buffer> {
    if (this.rank === root && !data) throw new Error(`broadcastBytes: the root (rank ${root}) must pass the data`);
    const f = await this.collective({ op: 'bcastBytes', root }, this.rank === root ? data! : undefined);
    return f.payload;
  }

  /** Every rank's bytes, in rank order. */
  async allGatherBytes(data: Uint8Array): Promise<Buffer[]> {
    const f = await this.collective({ op: 'gatherBytes' }, data);
    const lengths = f.header.lengths as number[];
    const out: Buffer[] = [];
    let off = 0;
    for (const len of lengths) {
      out.push(f.payload.subarray(off, off + len));
      off += len;
    }
    return out;
  }

  /** JSON values from every rank, in rank order. */
  async allGatherObject<T>(value: T): Promise<T[]> {
    const parts = await this.allGatherBytes(Buffer.from(JSON.stringify(value), 'utf8'));
    return parts.map((p) => JSON.parse(p.toString('utf8')) as T);
  }

  /** Leaves the group (collective: a barrier first, so no rank leaves while others still need the hub). */
  async destroy(): Promise<void> {
    if (this.leaving) return;
    if (!this.broken) await this.barrier();
    this.leaving = true;
    if (!this.broken) {
      writeFrame(this.socket, { t: 'bye' });
      this.socket.end();
    }
    await this.closedPromise;
  }
}
