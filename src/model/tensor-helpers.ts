// tensor-helpers.ts: tensor lifetime and gradient-map helpers shared by the model, its layers and generation.
//
// Views share storage but each handle holds a reference until disposed (or garbage-collected, which may be late
// for device memory), so every view and temporary made by the model is released explicitly with these.
import type { Tensor } from '../tensor.ts';
import { addInPlace } from '../ops/elementwise.ts';

/** Disposes every tensor given that is not null and not already disposed. */
export function disposeAll(...ts: (Tensor | null | undefined)[]): void {
  for (const t of ts) if (t && !t.disposed) t.dispose();
}

/** t viewed as `shape`; the original handle is released (the view now owns the storage reference). */
export function reshape(t: Tensor, shape: readonly number[]): Tensor {
  const v = t.view(shape);
  t.dispose();
  return v;
}

/** Runs fn on a temporary view of t (t stays as it is). */
export function withView<R>(t: Tensor, shape: readonly number[], fn: (v: Tensor) => R): R {
  const v = t.view(shape);
  try {
    return fn(v);
  } finally {
    v.dispose();
  }
}

/**
 * grads[name] += t (t is consumed), or grads[name] = t when there is no buffer yet. Nothing happens when t already
 * is grads[name] (an op that accumulated into the buffer in place returns it).
 */
export function accumulateGrad(grads: Map<string, Tensor>, name: string, t: Tensor): void {
  const g = grads.get(name);
  if (g === t) return;
  if (g) {
    addInPlace(g, t);
    t.dispose();
  } else grads.set(name, t);
}
