// Builds the native addon from source (runs at `npm install` and `npm rebuild @skyrl/gptoss`), then loads the
// built binary once in a child process before reporting success.
//
// Builders: cmake-js when cmake exists (CPU backend always; CUDA backend when GPTOSS_CUDA is on, or auto and nvcc
// + cuBLAS + NCCL are found); node-gyp with binding.gyp (CPU backend only) when cmake is absent, or as the
// fallback when the CMake build fails (said in one line; not with GPTOSS_CUDA=on, which then fails instead).
//   GPTOSS_CUDA=on|off|auto      the CUDA backend (default auto)
//   GPTOSS_BUILDER=cmake|gyp     force one builder (default: cmake when present, node-gyp otherwise)
// Nothing is downloaded: cmake-js takes the Node-API headers from the node-api-headers package, and node-gyp is
// pointed at the running Node's own headers when they are installed beside it.
//
// build/CMakeCache.txt keeps the GPTOSS_CUDA of the first configure, and `cmake-js compile` only configures when
// there is no cache, so a later GPTOSS_CUDA=on would be ignored: when the requested mode differs from the cached
// one, the cache is removed and CMake configures afresh (detection included; object files stay for an
// incremental build).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const buildDir = join(root, 'build');
const addonPath = join(buildDir, 'Release', 'gptoss.node');
const require = createRequire(import.meta.url);

function fail(message) {
  console.error(`gptoss: ${message}`);
  process.exit(1);
}

/** Runs a command in the package root, streaming its output, and resolves to its exit status and last lines. */
function run(cmd, args) {
  console.log(`> ${[cmd, ...args].join(' ')}`);
  return new Promise((resolvePromise) => {
    const child = spawn(cmd, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    const tail = [];
    const keep = (chunk, out) => {
      out.write(chunk);
      for (const line of String(chunk).split('\n')) {
        if (line.trim() === '') continue;
        tail.push(line);
        if (tail.length > 200) tail.shift();
      }
    };
    child.stdout.on('data', (c) => keep(c, process.stdout));
    child.stderr.on('data', (c) => keep(c, process.stderr));
    child.on('error', (e) => resolvePromise({ status: -1, tail: [String(e.message)] }));
    child.on('close', (status, signal) => resolvePromise({ status: status ?? (signal ? `signal ${signal}` : -1), tail }));
  });
}

/** Why a build failed, in a few words: its first error line (with CMake's indented message), else its exit status. */
function reasonOf(result) {
  const status = `exit status ${result.status}`;
  const cmakeError = result.tail.findIndex((l) => l.includes('CMake Error'));
  const i = cmakeError >= 0 ? cmakeError : result.tail.findIndex((l) => /\berror\b/i.test(l));
  if (i < 0) return status;
  const parts = [result.tail[i].trim()];
  // "CMake Error at CMakeLists.txt:52 (message):" is followed by the message itself, indented.
  if (parts[0].endsWith(':')) {
    for (let j = i + 1; j < result.tail.length && /^\s+\S/.test(result.tail[j]) && parts.length < 4; j++) parts.push(result.tail[j].trim());
  }
  return `${parts.join(' ').slice(0, 300)}; ${status}`;
}

/** GPTOSS_CUDA of an existing CMake configure (ON, OFF, AUTO), or undefined when build/ has none. */
function cachedCudaMode(dir = buildDir) {
  const cache = join(dir, 'CMakeCache.txt');
  if (!existsSync(cache)) return undefined;
  const m = /^GPTOSS_CUDA:STRING=(\w+)$/m.exec(readFileSync(cache, 'utf8'));
  return m ? m[1].toUpperCase() : undefined;
}

async function cmakeBuild(mode) {
  const wanted = mode.toUpperCase();
  const cached = cachedCudaMode();
  if (cached !== undefined && cached !== wanted) {
    console.log(`gptoss: build/ was configured with GPTOSS_CUDA=${cached}; configuring afresh for GPTOSS_CUDA=${wanted}`);
    rmSync(join(buildDir, 'CMakeCache.txt'), { force: true });
  }
  const cmakeJs = join(dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js');
  const jobs = String(Math.max(1, Math.min(availableParallelism(), 16)));
  return run(process.execPath, [cmakeJs, 'compile', '--parallel', jobs, `--CDGPTOSS_CUDA=${wanted}`]);
}

/** The running Node's headers when installed beside it (<prefix>/include/node) and of the same version. */
function localNodeDir() {
  const prefix = resolve(dirname(process.execPath), '..');
  const header = join(prefix, 'include', 'node', 'node_version.h');
  if (!existsSync(header)) return undefined;
  const text = readFileSync(header, 'utf8');
  const part = (name) => new RegExp(`#define NODE_${name}_VERSION (\\d+)`).exec(text)?.[1];
  return `v${part('MAJOR')}.${part('MINOR')}.${part('PATCH')}` === process.version ? prefix : undefined;
}

function gypBuild() {
  // npm hands install scripts its own node-gyp (npm_config_node_gyp); a checkout has the devDependency.
  let nodeGyp = process.env.npm_config_node_gyp;
  if (!nodeGyp) {
    try {
      nodeGyp = require.resolve('node-gyp/bin/node-gyp.js');
    } catch {
      fail('node-gyp was not found (run this through npm, e.g. `npm rebuild @skyrl/gptoss`, which provides it, or install cmake)');
    }
  }
  const jobs = String(Math.max(1, Math.min(availableParallelism(), 16)));
  const args = [nodeGyp, 'rebuild', `--jobs=${jobs}`];
  const nodedir = process.env.npm_config_nodedir ? undefined : localNodeDir();
  if (nodedir) args.push(`--nodedir=${nodedir}`);
  return run(process.execPath, args);
}

/** Loads the built addon in a child process (a crash there cannot take this script down) and returns its features. */
function loadBuilt() {
  if (!existsSync(addonPath)) fail(`the build reported success but ${addonPath} does not exist`);
  const probe = `const a = require(${JSON.stringify(addonPath)}); process.stdout.write(JSON.stringify(a.features));`;
  const r = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8' });
  if (r.status !== 0) {
    const why = (r.stderr || '').split('\n').find((l) => /Error/.test(l)) ?? `exit status ${r.status}`;
    fail(`the built addon ${addonPath} does not load: ${why.trim()}`);
  }
  return JSON.parse(r.stdout);
}

async function main() {
  const mode = (process.env.GPTOSS_CUDA ?? 'auto').toLowerCase();
  if (!['on', 'off', 'auto'].includes(mode)) fail(`GPTOSS_CUDA must be on, off or auto (got '${process.env.GPTOSS_CUDA}')`);
  const builder = (process.env.GPTOSS_BUILDER ?? '').toLowerCase();
  if (!['', 'cmake', 'gyp'].includes(builder)) fail(`GPTOSS_BUILDER must be cmake or gyp (got '${process.env.GPTOSS_BUILDER}')`);
  const hasCmake = builder !== 'gyp' && spawnSync('cmake', ['--version'], { stdio: 'ignore' }).status === 0;
  if (builder === 'cmake' && !hasCmake) fail('GPTOSS_BUILDER=cmake but no working cmake was found on PATH');

  let result;
  if (hasCmake) {
    result = await cmakeBuild(mode);
    if (result.status !== 0) {
      if (mode === 'on') fail(`GPTOSS_CUDA=on and the CMake build failed (${reasonOf(result)}); not falling back to the CPU-only build`);
      if (builder === 'cmake') fail(`the CMake build failed (${reasonOf(result)}) and GPTOSS_BUILDER=cmake rules out the node-gyp fallback`);
      console.log(`gptoss: the CMake build failed (${reasonOf(result)}); falling back to the CPU-only node-gyp build (CUDA backend off)`);
      result = await gypBuild();
    }
  } else {
    if (mode === 'on') fail('GPTOSS_CUDA=on needs cmake (the CUDA backend is built by CMake only)');
    result = await gypBuild();
  }
  if (result.status !== 0) fail(`the node-gyp build failed (${reasonOf(result)})`);

  const features = loadBuilt();
  if (mode === 'on' && !features.cuda) fail(`GPTOSS_CUDA=on but the built addon ${addonPath} has no CUDA backend`);
  console.log(`gptoss: built and loaded ${addonPath} (cuda: ${features.cuda}, nccl: ${features.nccl}, blas: ${features.blas})`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
