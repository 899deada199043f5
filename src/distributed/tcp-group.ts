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
//   - sub-groups: a collective may name its members (global ranks); the hub matches it only among them, in their
//     own order, so disjoint sub-groups (e.g. the ranks of one tensor-parallel engine) run theirs independently.
//     A rank's view of a sub-group is a SubGroup (TcpGroup.subGroup): ranks and roots in the sub-group's numbering.
//   - hangs: with a collective timeout, a collective that some members have entered and others have not reached
//     for that long aborts the group, naming the missing ranks, what the others wait in, and each rank's phase
//     (the label a rank last set with setPhase, e.g. 'train').
import { createServer, connect, type Server, type Socket } from 'node:net';
import { bf16BitsToF32, f32ToBf16Bits } from '../tensor.ts';
import type { DType } from '../native.ts';
import type { ReduceOp } from './collectives.ts';
import { FrameReader, packValue, unpackValue, writeFrame, type Frame, type Header } from './wire.ts';

export type CollOp = 'allReduce' | 'allGather' | 'reduceScatter' | 'broadcast' | 'barrier' | 'bcastBytes' | 'gatherBytes';

export interface CollFields {
  op: CollOp;
  dtype?: DType;
  shape?: number[];
  reduce?: ReduceOp;
  root?: number;
  /** The sub-group's global ranks in sub-rank order (absent: every rank); root is a sub-rank. */
  members?: number[];
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
  /**
   * Milliseconds a collective may wait for its missing members once one member has entered it (default: no limit).
   * Past it the group is aborted with a message naming the missing ranks and their phases (trainer.nccl_timeout_s).
   */
  collectiveTimeoutMs?: number;
}

/** The pending collectives of one group of ranks (the world, or a sub-group): one FIFO per member. */
interface Pending {
  members: number[];
  queues: { frame: Frame; at: number }[][];
}

export class Hub {
  readonly worldSize: number;
  private readonly clients: (Socket | undefined)[];
  private readonly done: boolean[];
  /** By group key (the members joined by ','; '*' for the world). */
  private readonly pending = new Map<string, Pending>();
  /** Each rank's phase label (setPhase) and since when. */
  private readonly phases: { phase: string; since: number }[];
  private watchdog: NodeJS.Timeout | undefined;
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
    this.phases = Array.from({ length: this.worldSize }, () => ({ phase: 'startup', since: Date.now() }));
    this.closed = new Promise((r) => (this.closeResolve = r));
    server.on('connection', (s) => this.accept(s));
    const limit = opts.collectiveTimeoutMs;
    if (limit !== undefined && limit > 0) {
      this.watchdog = setInterval(() => this.checkHangs(limit), Math.max(10, Math.min(1000, limit / 4)));
      this.watchdog.unref();
    }
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
    clearInterval(this.watchdog);
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
    clearInterval(this.watchdog);
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
        clearInterval(this.watchdog);
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
      case 'coll': {
        const members = (h as CollHeader).members;
        let key = '*';
        if (members !== undefined) {
          const ok = Array.isArray(members) && members.length > 0 && members.every((m, i) => Number.isInteger(m) && m >= 0 && m < this.worldSize && (i === 0 || m > members[i - 1]!));
          if (!ok || !members.includes(rank)) {
            this.abort(`rank ${rank} called ${String(h.op)} on the sub-group [${String(members)}], which is not a sorted list of distinct ranks in [0, ${this.worldSize}) holding rank ${rank}`, rank);
            return;
          }
          key = members.join(',');
        }
        let p = this.pending.get(key);
        if (!p) {
          const m = members ?? Array.from({ length: this.worldSize }, (_, i) => i);
          p = { members: m, queues: m.map(() => []) };
          this.pending.set(key, p);
        }
        p.queues[p.members.indexOf(rank)]!.push({ frame: f, at: Date.now() });
        this.collect(p);
        return;
      }
      case 'phase':
        this.phases[rank] = { phase: String(h.phase), since: Date.now() };
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

  private collect(p: Pending): void {
    while (p.queues.every((q) => q.length > 0)) {
      const frames = p.queues.map((q) => q.shift()!.frame);
      // Each member's reply carries its own sequence number (ranks number their collectives independently).
      const seqs = frames.map((f) => (f.header as CollHeader).seq);
      let replies: { header?: Record<string, unknown>; payload?: Uint8Array }[];
      try {
        replies = this.compute(frames, p.members);
      } catch (e) {
        const message = e instanceof Error ? e.message : String(e);
        p.members.forEach((g, i) => writeFrame(this.clients[g]!, { t: 'result', seq: seqs[i], error: message }));
        continue;
      }
      replies.forEach((rep, i) => writeFrame(this.clients[p.members[i]!]!, { t: 'result', seq: seqs[i], ...rep.header }, rep.payload));
    }
  }

  /** Aborts the group when a collective has waited longer than `limit` ms for members that have not entered it. */
  private checkHangs(limit: number): void {
    const now = Date.now();
    for (const p of this.pending.values()) {
      const waiting = p.members.filter((_, i) => p.queues[i]!.length > 0);
      if (waiting.length === 0 || waiting.length === p.members.length) continue;
      const first = p.queues.find((q) => q.length > 0)![0]!;
      const since = Math.min(...p.queues.filter((q) => q.length > 0).map((q) => q[0]!.at));
      if (now - since <= limit) continue;
      const missing = p.members.filter((_, i) => p.queues[i]!.length === 0);
      const h = first.frame.header as CollHeader;
      const phaseOf = (r: number) => `rank ${r} in phase '${this.phases[r]!.phase}' for ${((now - this.phases[r]!.since) / 1000).toFixed(1)} s`;
      const group = p.members.length === this.worldSize ? 'the group' : `the sub-group of ranks ${p.members.join(', ')}`;
      this.abort(
        `rank ${missing.join(', rank ')} did not reach a collective of ${group} within ${(limit / 1000).toFixed(1)} s ` +
          `(trainer.nccl_timeout_s): rank ${waiting.join(', ')} ${waiting.length > 1 ? 'wait' : 'waits'} in ${h.op} ` +
          `(${phaseOf(waiting[0]!)}); ${missing.map(phaseOf).join('; ')}`,
        missing[0]!,
      );
      return;
    }
  }

  /** One collective's replies, in member order. members: the global ranks (sub-rank i = members[i]). */
  private compute(frames: Frame[], members: readonly number[]): { header?: Record<string, unknown>; payload?: Uint8Array }[] {
    const hs = frames.map((f) => f.header as CollHeader);
    const h0 = hs[0]!;
    const n = members.length;
    const every = (payload?: Uint8Array, header?: Record<string, unknown>) => hs.map(() => ({ payload, header }));
    const list = (pick: (h: CollHeader, r: number) => string) => hs.map((h, r) => `rank ${members[r]} ${pick(h, r)}`).join(', ');
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
      if (f.payload.length !== want) throw new Error(`${op}: rank ${members[r]} sent ${f.payload.length} bytes for ${tensorDesc(hs[r]!)}`);
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

/**
 * What the collectives and command channels need of a group of ranks: its rank and size, one collective through the
 * hub, point-to-point messages, and the byte-level collectives built on them. The world (TcpGroup) and its
 * sub-groups (SubGroup) are both one.
 */
export abstract class GroupChannel {
  abstract readonly rank: number;
  abstract readonly worldSize: number;
  /** The members' global ranks in this group's rank order (the world: 0 .. worldSize-1). */
  abstract readonly members: readonly number[];
  /** One collective: this rank's contribution in, this rank's share of the result out. */
  abstract collective(header: CollFields, payload?: Uint8Array): Promise<Frame>;
  /** Eager send to `peer` (this group's numbering); returns once queued on the socket. */
  abstract sendTo(peer: number, header: Record<string, unknown>, payload: Uint8Array): void;
  /** The next message `peer` (this group's numbering) sent to this rank. */
  abstract recvFrom(peer: number): Promise<Frame>;
  /** Labels what this rank is doing (e.g. 'train'), for the hub's hang messages. */
  abstract setPhase(phase: string): void;
  /** Collective: leaves the group. */
  abstract destroy(): Promise<void>;

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

  /** Every rank's value, in rank order (MessagePack, packValue: typed arrays travel as their raw bytes). */
  async allGatherObject<T>(value: T): Promise<T[]> {
    const parts = await this.allGatherBytes(packValue(value));
    return parts.map((p) => unpackValue<T>(p));
  }

  /** Root's value on every rank (others pass null; MessagePack as allGatherObject). */
  async broadcastObject<T>(value: T | null, root = 0): Promise<T> {
    return unpackValue<T>(await this.broadcastBytes(this.rank === root ? packValue(value) : null, root));
  }

  /**
   * The sub-group of `ranks` (this group's numbering, ascending; this rank among them). Only its members call it,
   * and nothing travels: its collectives are matched by the hub among those ranks alone, independently of the
   * group's other collectives, with ranks and roots in the sub-group's numbering (sub-rank i = ranks[i]).
   */
  subGroup(ranks: readonly number[]): SubGroup {
    const me = ranks.indexOf(this.rank);
    const ascending = ranks.every((r, i) => Number.isInteger(r) && r >= 0 && r < this.worldSize && (i === 0 || r > ranks[i - 1]!));
    if (ranks.length === 0 || !ascending) {
      throw new Error(`subGroup: ranks [${ranks.join(', ')}] must be ascending distinct ranks in [0, ${this.worldSize})`);
    }
    if (me < 0) throw new Error(`subGroup: rank ${this.rank} is not among the ranks [${ranks.join(', ')}] (only members create a sub-group)`);
    return new SubGroup(this.root(), ranks.map((r) => this.members[r]!), me);
  }

  /** The connection to the hub that carries this group's traffic. */
  protected abstract root(): TcpGroup;
}

/** A rank's view of a sub-group of the world (GroupChannel.subGroup). */
export class SubGroup extends GroupChannel {
  readonly worldSize: number;

  constructor(
    private readonly world: TcpGroup,
    readonly members: readonly number[],
    readonly rank: number,
  ) {
    super();
    this.worldSize = members.length;
  }

  collective(header: CollFields, payload?: Uint8Array): Promise<Frame> {
    return this.world.collective({ ...header, members: [...this.members] }, payload);
  }

  sendTo(peer: number, header: Record<string, unknown>, payload: Uint8Array): void {
    this.world.sendTo(this.global('send', peer), header, payload);
  }

  recvFrom(peer: number): Promise<Frame> {
    return this.world.recvFrom(this.global('recv', peer));
  }

  setPhase(phase: string): void {
    this.world.setPhase(phase);
  }

  /** Leaving a sub-group is a barrier among its members (the connection is the world's). */
  async destroy(): Promise<void> {
    await this.barrier();
  }

  protected root(): TcpGroup {
    return this.world;
  }

  private global(what: string, peer: number): number {
    const g = this.members[peer];
    if (!Number.isInteger(peer) || g === undefined) throw new Error(`${what}: peer ${peer} is not a rank of the sub-group [0, ${this.worldSize})`);
    return g;
  }
}

export class TcpGroup extends GroupChannel {
  private readonly reader = new FrameReader();
  /** Pending collectives by sequence number (sub-groups' replies may come back in any order). */
  private readonly waiting = new Map<number, Waiter>();
  private readonly mailbox = new Map<number, Frame[]>();
  private readonly recvWaiters = new Map<number, Waiter[]>();
  private seq = 0;
  private phase = '';
  readonly members: readonly number[];
  private broken: Error | undefined;
  private leaving = false;
  private closedPromise: Promise<void>;

  private constructor(
    private readonly socket: Socket,
    readonly rank: number,
    readonly worldSize: number,
    readonly where: string,
  ) {
    super();
    this.members = Array.from({ length: worldSize }, (_, i) => i);
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
    for (const w of this.waiting.values()) w.reject(e);
    this.waiting.clear();
    for (const ws of this.recvWaiters.values()) for (const w of ws.splice(0)) w.reject(e);
    this.socket.destroy();
  }

  private dispatch(f: Frame): void {
    const h = f.header;
    if (h.t === 'result') {
      const w = this.waiting.get(Number(h.seq));
      if (!w) {
        this.fail(new Error(`process group: a reply to collective ${String(h.seq)}, which this rank is not waiting for`));
        return;
      }
      this.waiting.delete(w.seq);
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
      this.waiting.set(seq, { seq, resolve, reject });
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

  setPhase(phase: string): void {
    if (phase === this.phase || this.broken || this.leaving) return;
    this.phase = phase;
    writeFrame(this.socket, { t: 'phase', phase });
  }

  protected root(): TcpGroup {
    return this;
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
