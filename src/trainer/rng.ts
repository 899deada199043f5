// rng.ts: a small seeded PRNG (xoshiro128**) whose state is saved in checkpoints, so a resumed run draws the same
// shuffles and sampling seeds as an uninterrupted one.

export class Rng {
  private s: Uint32Array;

  constructor(seed: number | number[] = 42) {
    this.s = new Uint32Array(4);
    if (Array.isArray(seed)) {
      if (seed.length !== 4) throw new Error(`Rng: a state has 4 words, got ${seed.length}`);
      this.s.set(seed.map((x) => x >>> 0));
    } else {
      // splitmix32 expands the seed into the state.
      let x = seed >>> 0;
      for (let i = 0; i < 4; i++) {
        x = (x + 0x9e3779b9) >>> 0;
        let z = x;
        z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
        z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
        this.s[i] = (z ^ (z >>> 16)) >>> 0;
      }
      if (this.s.every((v) => v === 0)) this.s[0] = 1;
    }
  }

  /** A uniform 32-bit unsigned integer. */
  nextU32(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1]!, 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1]! << 9) >>> 0;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return r;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.nextU32() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** A random permutation of 0..n-1 (Fisher-Yates). */
  permutation(n: number): number[] {
    const p = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [p[i], p[j]] = [p[j]!, p[i]!];
    }
    return p;
  }

  state(): number[] {
    return Array.from(this.s);
  }

  static fromState(state: number[]): Rng {
    return new Rng(state);
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** The order of the training prompts in an epoch: a seeded permutation (data.shuffle), or file order. */
export function epochOrder(seed: number, epoch: number, n: number, shuffle: boolean): number[] {
  return shuffle ? new Rng(seed + 1000003 * epoch).permutation(n) : Array.from({ length: n }, (_, i) => i);
}
