// native.ts: loads the addon and decides the default backend.
//
// The addon (build/Release/gptoss.node) always has the CPU backend; it has the CUDA backend when it was built
// where nvcc, cuBLAS and NCCL were found. The default device is cuda:0 when the addon has CUDA and a GPU is
// visible, else cpu. GPTOSS_DEVICE=cpu|cuda|cuda:N overrides (asking for cuda without it is an error).
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { childLogger } from './log/logger.ts';
import { NATIVE_OP_NAMES, type NativeAddon } from './native-ops.ts';

export type {
  DType,
  FloatDType,
  NativeAddon,
  NativeEvent,
  NativeFeatures,
  NativeMemoryStats,
  NativeMoeForward,
  NativeMoeGrads,
  NativeOps,
  NativeTensor,
  NcclComm,
  NcclReduceOp,
  TensorArg,
} from './native-ops.ts';
export { NATIVE_OP_NAMES } from './native-ops.ts';

const here = dirname(fileURLToPath(import.meta.url));

function findRoot(): string {
  // src/native.ts and dist/src/native.js both sit below the package root.
  let dir = here;
  for (let i = 0; i < 4; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'native'))) return dir;
    dir = resolve(dir, '..');
  }
  return resolve(here, '..');
}

let addon: NativeAddon | undefined;

export function native(): NativeAddon {
  if (addon) return addon;
  const root = findRoot();
  const candidates = [
    process.env.GPTOSS_ADDON,
    join(root, 'build', 'Release', 'gptoss.node'),
    join(root, 'build', 'Debug', 'gptoss.node'),
  ].filter((p): p is string => !!p);
  const path = candidates.find((p) => existsSync(p));
  if (!path) {
    throw new Error(
      `the native addon is not built (looked for ${candidates.join(', ')}); build it with \`npm rebuild @skyrl/gptoss\` ` +
        `(in a checkout of the repository: \`npm run build:native\`)`,
    );
  }
  const require = createRequire(import.meta.url);
  const loaded = require(path) as NativeAddon;
  // An addon built from other sources than this TypeScript (a stale build/ after an update) would fail later
  // with "ops.x is not a function": name what is missing now.
  const missing = NATIVE_OP_NAMES.filter((name) => typeof loaded.ops?.[name] !== 'function');
  if (missing.length > 0) {
    throw new Error(
      `the native addon at ${path} lacks op(s) ${missing.join(', ')}: it was built from other sources; rebuild it ` +
        `with \`npm rebuild @skyrl/gptoss\` (in a checkout of the repository: \`npm run build:native\`)`,
    );
  }
  addon = loaded;
  return addon;
}

export interface BackendChoice {
  device: string; // 'cpu' or 'cuda:N'
  reason: string;
}

let chosen: BackendChoice | undefined;

/** The default device for this process, chosen once and logged with the reason. */
export function defaultDevice(): string {
  if (chosen) return chosen.device;
  chosen = chooseBackend(process.env.GPTOSS_DEVICE);
  childLogger('native').info({ device: chosen.device }, `backend: ${chosen.device} (${chosen.reason})`);
  return chosen.device;
}

export function chooseBackend(override: string | undefined): BackendChoice {
  const a = native();
  const count = a.features.cuda ? a.ops.deviceCount() : 0;
  if (override !== undefined && override !== '') {
    const o = override.trim().toLowerCase();
    if (o === 'cpu') return { device: 'cpu', reason: 'GPTOSS_DEVICE=cpu' };
    const m = /^cuda(?::(\d+))?$/.exec(o);
    if (!m) throw new Error(`GPTOSS_DEVICE must be cpu, cuda or cuda:N (got '${override}')`);
    if (!a.features.cuda) throw new Error(`GPTOSS_DEVICE=${override} but the addon was built without CUDA`);
    const idx = m[1] ? Number(m[1]) : 0;
    if (idx >= count) throw new Error(`GPTOSS_DEVICE=${override} but only ${count} CUDA device(s) are visible`);
    return { device: `cuda:${idx}`, reason: `GPTOSS_DEVICE=${override}` };
  }
  if (!a.features.cuda) return { device: 'cpu', reason: 'addon built without the CUDA backend' };
  if (count === 0) return { device: 'cpu', reason: 'CUDA backend present but no GPU is visible' };
  return { device: 'cuda:0', reason: `CUDA backend and ${count} GPU(s) visible` };
}

/** 'cpu' -> -1, 'cuda' -> 0, 'cuda:N' -> N. */
export function deviceIndex(device: string): number {
  if (device === 'cpu') return -1;
  const m = /^cuda(?::(\d+))?$/.exec(device);
  if (!m) throw new Error(`unknown device '${device}' (expected cpu or cuda:N)`);
  return m[1] ? Number(m[1]) : 0;
}
