// overrides.ts: Hydra-style command-line overrides over a plain config object.
//
//   a.b=v     set a key the schema knows (it may be absent from the file: then it is added)
//   +a.b=v    add a key that is not set yet (an error if it is: use ++ to force)
//   ++a.b=v   set or add
//   ~a.b      delete (back to the schema's default); ~a.b=v deletes only if the current value is v
// Values are parsed as YAML, so `x=1e-6` is a number, `x=null` is null, `x=[a, b]` a list and
// `+generator.chat_template_kwargs={reasoning_effort: low}` a map. Keys are checked against the schema so a typo
// fails with its path and the nearest known key.
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { editDistance } from '../cli/suggest.ts';

export type OverrideOp = 'set' | 'add' | 'force' | 'delete';

export interface Override {
  op: OverrideOp;
  path: string[];
  /** Present for set/add/force, and for delete with a value to match. */
  value?: unknown;
  /** The text as given (for messages). */
  text: string;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

const KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/;

/**
 * Hydra writes flow maps without a space after the colon (`{reasoning_effort:'low'}`), which YAML reads as a
 * single key; insert the space after each `key:` that follows `{` or `,` (outside quotes).
 */
export function hydraFlow(raw: string): string {
  const t = raw.trim();
  if (!t.startsWith('{')) return raw;
  let out = '';
  let quote: string | null = null;
  let keyStart = true;
  for (let i = 0; i < t.length; i++) {
    const c = t[i]!;
    out += c;
    if (quote) {
      if (c === quote) quote = null;
      continue;
    }
    if (c === '"' || c === "'") quote = c;
    else if (c === '{' || c === ',') keyStart = true;
    else if (c === ':' && keyStart) {
      if (t[i + 1] !== ' ') out += ' ';
      keyStart = false;
    } else if (c === '[' || c === '}') keyStart = false;
  }
  return out;
}

export function parseOverride(text: string): Override {
  let rest = text.trim();
  let op: OverrideOp = 'set';
  if (rest.startsWith('++')) {
    op = 'force';
    rest = rest.slice(2);
  } else if (rest.startsWith('+')) {
    op = 'add';
    rest = rest.slice(1);
  } else if (rest.startsWith('~')) {
    op = 'delete';
    rest = rest.slice(1);
  }
  const eq = rest.indexOf('=');
  const key = (eq < 0 ? rest : rest.slice(0, eq)).trim();
  if (!KEY_RE.test(key)) {
    throw new ConfigError(`override '${text}': '${key}' is not a key path (expected something like trainer.policy.optimizer_config.lr=1e-6)`);
  }
  if (eq < 0) {
    if (op !== 'delete') throw new ConfigError(`override '${text}': missing '=value' (use ~${key} to delete a key)`);
    return { op, path: key.split('.'), text };
  }
  const raw = rest.slice(eq + 1);
  let value: unknown;
  try {
    value = raw.trim() === '' ? '' : parseYaml(hydraFlow(raw));
  } catch (e) {
    throw new ConfigError(`override '${text}': the value '${raw}' is not valid YAML (${(e as Error).message.split('\n')[0]})`);
  }
  return { op, path: key.split('.'), value, text };
}

// ---- the schema's key tree ----------------------------------------------------------------------------------------
type AnyZod = z.ZodType;
interface ZodDefLike {
  type: string;
  innerType?: AnyZod;
  shape?: Record<string, AnyZod>;
  options?: AnyZod[];
  in?: AnyZod;
  valueType?: AnyZod;
}
function defOf(s: AnyZod): ZodDefLike {
  return (s as unknown as { _zod: { def: ZodDefLike } })._zod.def;
}

/** Strips default/optional/nullable/pipe wrappers. */
function unwrap(s: AnyZod): AnyZod {
  for (;;) {
    const d = defOf(s);
    if (d.innerType && ['default', 'prefault', 'optional', 'nullable', 'readonly', 'catch', 'nonoptional'].includes(d.type)) s = d.innerType;
    else if (d.type === 'pipe' && d.in) s = d.in;
    else return s;
  }
}

export type KeyLookup =
  | { kind: 'known'; schema: AnyZod }
  | { kind: 'free' } // inside a record/unknown: any key is fine
  | { kind: 'unknown'; at: string[]; known: string[] };

/** Whether `path` names a key of the schema; for an unknown key, the known keys at the level where it failed. */
export function lookupKey(root: AnyZod, path: string[]): KeyLookup {
  let s = root;
  for (let i = 0; i < path.length; i++) {
    const u = unwrap(s);
    const d = defOf(u);
    if (d.type === 'object' && d.shape) {
      const next = d.shape[path[i]!];
      if (!next) return { kind: 'unknown', at: path.slice(0, i + 1), known: Object.keys(d.shape) };
      s = next;
    } else if (d.type === 'record' || d.type === 'unknown' || d.type === 'any') {
      return { kind: 'free' };
    } else if (d.type === 'union' && d.options) {
      const obj = d.options.map(unwrap).find((o) => defOf(o).type === 'object' || defOf(o).type === 'record');
      if (!obj) return { kind: 'unknown', at: path.slice(0, i + 1), known: [] };
      s = obj;
      i--;
    } else {
      return { kind: 'unknown', at: path.slice(0, i + 1), known: [] };
    }
  }
  return { kind: 'known', schema: s };
}

/** Every leaf key path of the schema (for suggestions and docs). */
export function allKeys(root: AnyZod, prefix: string[] = []): string[] {
  const u = unwrap(root);
  const d = defOf(u);
  if (d.type === 'object' && d.shape) {
    return Object.entries(d.shape).flatMap(([k, v]) => {
      const sub = allKeys(v, [...prefix, k]);
      return sub.length ? sub : [[...prefix, k].join('.')];
    });
  }
  return prefix.length ? [prefix.join('.')] : [];
}

/** The nearest known full key to `key`, if one is reasonably close. */
export function suggestKey(root: AnyZod, key: string): string | undefined {
  const keys = allKeys(root);
  const leaf = key.split('.').pop()!;
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of keys) {
    const d = Math.min(editDistance(k, key), editDistance(k.split('.').pop()!, leaf) + 1);
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  return bestD <= Math.max(3, Math.floor(key.length / 4)) ? best : undefined;
}

export function unknownKeyMessage(root: AnyZod, key: string, lookup: Extract<KeyLookup, { kind: 'unknown' }>): string {
  const s = suggestKey(root, key);
  const where = lookup.at.length > 1 ? lookup.at.slice(0, -1).join('.') : 'the top level';
  const known = lookup.known.length ? ` Keys under ${where}: ${lookup.known.join(', ')}.` : ` ${lookup.at.slice(0, -1).join('.')} is not a map.`;
  return `unknown config key '${key}'${s ? ` (did you mean '${s}'?)` : ''}.${known}`;
}

// ---- applying -----------------------------------------------------------------------------------------------------
function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function getAt(obj: Record<string, unknown>, path: string[]): { found: boolean; value?: unknown } {
  let cur: unknown = obj;
  for (const k of path) {
    if (!isPlainObject(cur) || !(k in cur)) return { found: false };
    cur = cur[k];
  }
  return { found: true, value: cur };
}

function setAt(obj: Record<string, unknown>, path: string[], value: unknown): void {
  let cur = obj;
  for (const k of path.slice(0, -1)) {
    if (!isPlainObject(cur[k])) cur[k] = {};
    cur = cur[k] as Record<string, unknown>;
  }
  cur[path[path.length - 1]!] = value;
}

function deleteAt(obj: Record<string, unknown>, path: string[]): void {
  let cur: unknown = obj;
  for (const k of path.slice(0, -1)) {
    if (!isPlainObject(cur)) return;
    cur = cur[k];
  }
  if (isPlainObject(cur)) delete cur[path[path.length - 1]!];
}

/**
 * Applies overrides to a copy of `raw` (a config object as read from YAML, before defaults). `present` tells
 * whether a key is set in the effective config (file + defaults): `+` refuses keys that are, as Hydra does.
 */
export function applyOverrides(
  schema: AnyZod,
  raw: Record<string, unknown>,
  overrides: Array<string | Override>,
  present: (path: string[]) => boolean,
): Record<string, unknown> {
  const out = structuredClone(raw);
  for (const o of overrides) {
    const ov = typeof o === 'string' ? parseOverride(o) : o;
    const key = ov.path.join('.');
    const lookup = lookupKey(schema, ov.path);
    if (lookup.kind === 'unknown') throw new ConfigError(`override '${ov.text}': ${unknownKeyMessage(schema, key, lookup)}`);
    switch (ov.op) {
      case 'set':
        setAt(out, ov.path, ov.value);
        break;
      case 'add':
        if (present(ov.path) || getAt(out, ov.path).found) {
          throw new ConfigError(`override '${ov.text}': '${key}' is already set; use ${key}=... to change it or ++${key}=... to force`);
        }
        setAt(out, ov.path, ov.value);
        break;
      case 'force':
        setAt(out, ov.path, ov.value);
        break;
      case 'delete': {
        if (ov.value !== undefined) {
          const cur = getAt(out, ov.path);
          if (cur.found && JSON.stringify(cur.value) !== JSON.stringify(ov.value)) {
            throw new ConfigError(`override '${ov.text}': '${key}' is ${JSON.stringify(cur.value)}, not ${JSON.stringify(ov.value)}; not deleted`);
          }
        }
        deleteAt(out, ov.path);
        break;
      }
    }
  }
  return out;
}
