// The typed op table (src/native-ops.ts) and the addon agree both ways: every name in NativeOps is registered,
// and every registered op is in NativeOps. Three views are compared: the TypeScript interface (through
// NATIVE_OP_NAMES, which a type-level assertion ties to `keyof NativeOps`), the ops of the built addon, and the
// GPTOSS_OP registrations in native/bindings/*.cc. The source scan covers what a CPU-only build cannot show at
// run time: the bindings register every op in every build (collectives.cc registers the same NCCL names as
// throwing stubs without NCCL; device_stub.cc backs the CUDA runtime ops), so a CUDA-only registration would be
// a new case this test makes visible.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NATIVE_OP_NAMES, native, type NativeOps } from '../../src/native.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bindingsDir = join(root, 'native', 'bindings');

// Type level: the runtime list has exactly the interface's keys (both directions; a one-sided `extends` would
// let a missing or extra name through).
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const listMatchesInterface: Equal<(typeof NATIVE_OP_NAMES)[number], keyof NativeOps> = true;

/** Source text without comments and with `#define` bodies removed (a macro's `GPTOSS_OP(name)` is not an op). */
function codeOf(file: string): string {
  const text = readFileSync(join(bindingsDir, file), 'utf8')
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/\/\/.*$/gm, '');
  const lines: string[] = [];
  let inDefine = false;
  for (const line of text.split('\n')) {
    const startsDefine = /^\s*#\s*define\b/.test(line);
    if (startsDefine || inDefine) {
      inDefine = line.trimEnd().endsWith('\\');
      continue;
    }
    lines.push(line);
  }
  return lines.join('\n');
}

/** Op names registered in one preprocessor branch or another: GPTOSS_OP(name) and collectives' stub macro. */
function registeredIn(code: string): string[] {
  return [...code.matchAll(/\bGPTOSS_(?:NO_NCCL_)?OP\((\w+)\)/g)].map((m) => m[1]!);
}

function sorted(names: Iterable<string>): string[] {
  return [...names].sort();
}

test('NATIVE_OP_NAMES has no duplicates and matches keyof NativeOps', () => {
  assert.equal(listMatchesInterface, true);
  assert.equal(new Set(NATIVE_OP_NAMES).size, NATIVE_OP_NAMES.length, 'a name is listed twice');
});

test('the built addon registers exactly the typed ops', () => {
  const registered = sorted(Object.keys(native().ops));
  const typed = sorted(NATIVE_OP_NAMES);
  const untyped = registered.filter((n) => !typed.includes(n));
  const unregistered = typed.filter((n) => !registered.includes(n));
  assert.deepEqual(untyped, [], `registered by the addon but missing from NativeOps: ${untyped.join(', ')}`);
  assert.deepEqual(unregistered, [], `in NativeOps but not registered by the addon: ${unregistered.join(', ')}`);
  for (const name of registered) assert.equal(typeof native().ops[name as keyof NativeOps], 'function', name);
});

test('the binding sources register exactly the typed ops, in every build configuration', () => {
  const files = readdirSync(bindingsDir).filter((f) => f.endsWith('.cc'));
  const all = new Set<string>();
  for (const f of files) for (const name of registeredIn(codeOf(f))) all.add(name);
  const typed = sorted(NATIVE_OP_NAMES);
  const untyped = sorted(all).filter((n) => !typed.includes(n));
  const unregistered = typed.filter((n) => !all.has(n));
  assert.deepEqual(untyped, [], `GPTOSS_OP in native/bindings but missing from NativeOps: ${untyped.join(', ')}`);
  assert.deepEqual(unregistered, [], `in NativeOps but no GPTOSS_OP in native/bindings: ${unregistered.join(', ')}`);

  // The only conditional registrations: collectives.cc's two branches (without NCCL: throwing stubs; with NCCL:
  // the real ops) must register the same names, so the table is the same in a CPU-only and a CUDA build.
  const collectives = codeOf('collectives.cc');
  const withoutNccl = /#ifndef GPTOSS_WITH_NCCL([\s\S]*?)#else([\s\S]*?)#endif/.exec(collectives);
  assert.ok(withoutNccl, 'collectives.cc: expected an #ifndef GPTOSS_WITH_NCCL / #else / #endif around the NCCL ops');
  assert.deepEqual(sorted(registeredIn(withoutNccl[1]!)), sorted(registeredIn(withoutNccl[2]!)));
  // No other file registers an op inside a preprocessor condition.
  for (const f of files.filter((f) => f !== 'collectives.cc')) {
    const code = codeOf(f);
    let depth = 0;
    for (const line of code.split('\n')) {
      if (/^\s*#\s*if/.test(line)) depth++;
      else if (/^\s*#\s*endif/.test(line)) depth--;
      else if (depth > 0 && registeredIn(line).length > 0) assert.fail(`${f}: ${line.trim()} is registered only in some builds`);
    }
  }
});

test('the stubs of a build without NCCL or CUDA throw a clear error', (t) => {
  const { ops, features } = native();
  if (features.nccl || features.cuda) {
    t.skip('this addon has the CUDA backend');
    return;
  }
  assert.equal(ops.cudaCompiled(), false);
  assert.equal(ops.deviceCount(), 0);
  assert.throws(() => ops.ncclVersion(), /ncclVersion: this addon was built without NCCL/);
  assert.throws(() => ops.deviceName(0), /built without the CUDA backend/);
});
