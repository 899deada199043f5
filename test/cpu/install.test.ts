// The install script (scripts/build-native.mjs) with the CMake build forced to fail: a fake `cmake` first on PATH
// answers `--version` (so the script takes the CMake route) and fails every other call. Each case runs in a
// temporary copy of what install needs (package.json, CMakeLists.txt, binding.gyp, the two scripts, native/),
// never in the repository's build/.
//   - GPTOSS_CUDA=auto: the script says why it falls back, builds the CPU-only addon with node-gyp, loads it once
//     and reports success; the addon loads and registers every op of NativeOps.
//   - GPTOSS_CUDA=on over a build/ configured with AUTO: the cached mode is not reused (CMake configures afresh
//     with -DGPTOSS_CUDA=ON) and a failed CUDA build is an error, not a silent CPU-only fallback.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NATIVE_OP_NAMES } from '../../src/native.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

interface Sandbox {
  dir: string;
  cmakeLog: string;
  env: NodeJS.ProcessEnv;
}

function sandbox(name: string): Sandbox {
  const dir = mkdtempSync(join(tmpdir(), `gptoss-install-${name}-`));
  for (const f of ['package.json', 'CMakeLists.txt', 'binding.gyp', 'native']) cpSync(join(ROOT, f), join(dir, f), { recursive: true });
  mkdirSync(join(dir, 'scripts'));
  for (const f of ['build-native.mjs', 'sources.mjs']) cpSync(join(ROOT, 'scripts', f), join(dir, 'scripts', f));
  // The build tools (cmake-js, node-gyp, node-addon-api, node-api-headers) come from the checkout's install.
  symlinkSync(realpathSync(join(ROOT, 'node_modules')), join(dir, 'node_modules'), 'dir');
  const bin = join(dir, 'fake-bin');
  mkdirSync(bin);
  const cmakeLog = join(dir, 'cmake-calls.log');
  writeFileSync(
    join(bin, 'cmake'),
    [
      '#!/bin/sh',
      `echo "cmake $*" >> "${cmakeLog}"`,
      'if [ "$1" = "--version" ]; then echo "cmake version 3.99.0 (fake)"; exit 0; fi',
      'echo "CMake Error: forced failure (the fake cmake of test/cpu/install.test.ts)" >&2',
      'exit 1',
      '',
    ].join('\n'),
  );
  chmodSync(join(bin, 'cmake'), 0o755);
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}${delimiter}${process.env.PATH ?? ''}` };
  delete env.GPTOSS_CUDA;
  delete env.GPTOSS_BUILDER;
  return { dir, cmakeLog, env };
}

function install(s: Sandbox, extraEnv: NodeJS.ProcessEnv, timeoutMs: number) {
  return spawnSync(process.execPath, [join(s.dir, 'scripts', 'build-native.mjs')], {
    cwd: s.dir,
    env: { ...s.env, ...extraEnv },
    encoding: 'utf8',
    timeout: timeoutMs,
  });
}

test('GPTOSS_CUDA=on over a build/ configured with AUTO configures afresh and fails without a CPU fallback', { timeout: 120_000 }, () => {
  const s = sandbox('cuda-on');
  try {
    mkdirSync(join(s.dir, 'build'));
    writeFileSync(join(s.dir, 'build', 'CMakeCache.txt'), '# fake cache of an earlier auto configure\nGPTOSS_CUDA:STRING=AUTO\n');
    const r = install(s, { GPTOSS_CUDA: 'on' }, 100_000);
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(r.stdout, /build\/ was configured with GPTOSS_CUDA=AUTO; configuring afresh for GPTOSS_CUDA=ON/);
    const calls = readFileSync(s.cmakeLog, 'utf8');
    assert.match(calls, /-DGPTOSS_CUDA=ON/, `cmake was not configured with the requested mode:\n${calls}`);
    assert.match(r.stderr, /gptoss: GPTOSS_CUDA=on and the CMake build failed \(CMake Error: forced failure.*\); not falling back/);
    assert.doesNotMatch(r.stdout, /node-gyp/);
    assert.equal(existsSync(join(s.dir, 'build', 'Release', 'gptoss.node')), false);
  } finally {
    rmSync(s.dir, { recursive: true, force: true });
  }
});

test('a failed CMake build falls back to the CPU-only node-gyp build, which loads', { timeout: 900_000 }, () => {
  const s = sandbox('fallback');
  try {
    // node-gyp compiles every CPU source: about 1-2 minutes on 2 cores.
    const r = install(s, {}, 840_000);
    assert.equal(r.status, 0, `install failed:\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-3000)}`);
    const lines = r.stdout.split('\n');
    const fallback = lines.filter((l) => l.includes('falling back'));
    assert.deepEqual(fallback, [
      'gptoss: the CMake build failed (CMake Error: forced failure (the fake cmake of test/cpu/install.test.ts); exit status 1); ' +
        'falling back to the CPU-only node-gyp build (CUDA backend off)',
    ]);
    const addon = join(s.dir, 'build', 'Release', 'gptoss.node');
    assert.ok(lines.includes(`gptoss: built and loaded ${addon} (cuda: false, nccl: false, blas: false)`), r.stdout.slice(-2000));
    // The binary works from a fresh process: its features and every op of the typed table.
    const probe = spawnSync(
      process.execPath,
      ['-e', `const a = require(${JSON.stringify(addon)}); console.log(JSON.stringify({ features: a.features, ops: Object.keys(a.ops).sort() }))`],
      { encoding: 'utf8' },
    );
    assert.equal(probe.status, 0, probe.stderr);
    const got = JSON.parse(probe.stdout) as { features: { cuda: boolean }; ops: string[] };
    assert.equal(got.features.cuda, false);
    assert.deepEqual(got.ops, [...NATIVE_OP_NAMES].sort());
  } finally {
    rmSync(s.dir, { recursive: true, force: true });
  }
});
