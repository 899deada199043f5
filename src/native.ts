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
  ExpertGemmsRun,
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
  StreamName,
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

/** A device that cannot be had (CUDA asked of a CPU-only build, a GPU index beyond those visible): one line for the user. */
export class DeviceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DeviceError';
  }
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
    if (!m) throw new DeviceError(`GPTOSS_DEVICE must be cpu, cuda or cuda:N (got '${override}')`);
    checkCudaDevice(`GPTOSS_DEVICE=${override}`, m[1] ? Number(m[1]) : 0);
    const idx = m[1] ? Number(m[1]) : 0;
    return { device: `cuda:${idx}`, reason: `GPTOSS_DEVICE=${override}` };
  }
  if (!a.features.cuda) return { device: 'cpu', reason: 'addon built without the CUDA backend' };
  if (count === 0) return { device: 'cpu', reason: 'CUDA backend present but no GPU is visible' };
  return { device: 'cuda:0', reason: `CUDA backend and ${count} GPU(s) visible` };
}

/**
 * Throws a DeviceError naming `what` (the setting that asked, e.g. `trainer.device=cuda`) when CUDA device `index`
 * cannot be used: the addon was built without CUDA, or fewer GPUs are visible.
 */
export function checkCudaDevice(what: string, index: number): void {
  const a = native();
  if (!a.features.cuda) {
    throw new DeviceError(
      `${what}: this build of the native addon is CPU-only (no CUDA backend: nvcc, cuBLAS or NCCL were not found when it was built); use cpu or auto, or rebuild the addon (npm run build:native) on a machine with nvcc, cuBLAS and NCCL`,
    );
  }
  const count = a.ops.deviceCount() as number;
  if (count === 0) throw new DeviceError(`${what}: no CUDA device is visible (check CUDA_VISIBLE_DEVICES and the driver)`);
  if (index >= count) throw new DeviceError(`${what}: only ${count} CUDA device(s) are visible (cuda:0${count > 1 ? `..cuda:${count - 1}` : ''})`);
}

/** 'cpu' -> -1, 'cuda' -> 0, 'cuda:N' -> N. */
export function deviceIndex(device: string): number {
  if (device === 'cpu') return -1;
  const m = /^cuda(?::(\d+))?$/.exec(device);
  if (!m) throw new Error(`unknown device '${device}' (expected cpu or cuda:N)`);
  return m[1] ? Number(m[1]) : 0;
}
