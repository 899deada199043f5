// hub.ts: where a model's files are. A source is a local directory (config.json + safetensors), or a Hugging Face
// hub id (`ORG/NAME`, optionally `ORG/NAME@REVISION`) resolved in the HF cache layout that Python's
// huggingface_hub uses, so a model downloaded with Python is reused as is:
//   <cache>/models--ORG--NAME/refs/<branch>            (a file holding the commit hash)
//   <cache>/models--ORG--NAME/snapshots/<commit>/...   (files, usually symlinks into ../../blobs)
// <cache> is HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub. When the snapshot is missing or
// incomplete and a network exists, the files are downloaded with @huggingface/hub into the same cache (with a
// progress line); offline (HF_HUB_OFFLINE=1 or an unreachable hub) gives an error saying where we looked.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { Progress } from '../log/progress.ts';

export interface ResolveOptions {
  /** Cache root (default from the environment as above). */
  cacheDir?: string;
  /** Branch, tag or commit (default 'main'; `ORG/NAME@REV` in the source also sets it). */
  revision?: string;
  /** Allow downloads (default true unless HF_HUB_OFFLINE=1). */
  download?: boolean;
  /** Hub token (default HF_TOKEN). */
  token?: string;
  /** Progress callback while downloading: bytes so far / total bytes (total 0 when unknown). */
  onProgress?: (p: { file: string; bytes: number; totalBytes: number }) => void;
  /** Custom fetch (tests, proxies). */
  fetch?: typeof fetch;
}

/** The HF hub cache directory this process would use. */
export function hfCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return resolve(env.HF_HUB_CACHE);
  if (env.HUGGINGFACE_HUB_CACHE) return resolve(env.HUGGINGFACE_HUB_CACHE);
  if (env.HF_HOME) return join(resolve(env.HF_HOME), 'hub');
  const xdg = env.XDG_CACHE_HOME;
  return join(xdg ? resolve(xdg) : join(homedir(), '.cache'), 'huggingface', 'hub');
}

/** The commands that put `repo` into the cache this process reads (named in every "not in the cache" error). */
export function downloadCommands(repo: string, revision = 'main', cacheDir = hfCacheDir()): string {
  const rev = revision === 'main' ? '' : ` --revision ${revision}`;
  const cache = cacheDir === hfCacheDir() ? '' : ` --cache-dir ${cacheDir}`;
  return `\`npx gptoss download ${repo}${rev}${cache}\` (or \`huggingface-cli download ${repo}${rev}${cache}\`)`;
}

const HUB_ID = /^([A-Za-z0-9][\w.-]*)\/([A-Za-z0-9][\w.-]*)(?:@([\w./-]+))?$/;

export function isHubId(source: string): boolean {
  return HUB_ID.test(source) && !existsSync(source);
}

/** What a usable snapshot directory must hold; returns the missing files (empty when complete). */
export function missingModelFiles(dir: string): string[] {
  const missing: string[] = [];
  if (!existsSync(join(dir, 'config.json'))) missing.push('config.json');
  const index = join(dir, 'model.safetensors.index.json');
  if (existsSync(index)) {
    try {
      const wm = (JSON.parse(readFileSync(index, 'utf8')) as { weight_map?: Record<string, string> }).weight_map ?? {};
      for (const shard of new Set(Object.values(wm))) if (!existsSync(join(dir, shard))) missing.push(shard);
    } catch {
      missing.push('model.safetensors.index.json (unreadable)');
    }
  } else if (!existsSync(join(dir, 'model.safetensors'))) {
    missing.push('model.safetensors or model.safetensors.index.json');
  }
  return missing;
}

/** The snapshot dir for ORG/NAME at `revision` in `cacheDir`, or null when the cache does not have it. */
export function findCachedSnapshot(repo: string, revision: string, cacheDir: string): string | null {
  const repoDir = join(cacheDir, `models--${repo.replace('/', '--')}`);
  if (!existsSync(repoDir)) return null;
  let commit = revision;
  if (!/^[0-9a-f]{40}$/.test(revision)) {
    const ref = join(repoDir, 'refs', revision);
    if (!existsSync(ref)) return null;
    commit = readFileSync(ref, 'utf8').trim();
  }
  const snap = join(repoDir, 'snapshots', commit);
  return existsSync(snap) && statSync(snap).isDirectory() ? snap : null;
}

/** Files of a model repo worth fetching: weights, configs, tokenizer; not the original/ or metal/ copies. */
function wanted(path: string): boolean {
  if (path.includes('/')) return false;
  return /\.(safetensors|json|jinja|txt|model|tiktoken)$/.test(path) || path === 'LICENSE';
}

/**
 * Resolves a model source to a local directory holding config.json and the safetensors weights.
 * Local directories are returned as they are (after a completeness check); hub ids go through the cache.
 */
export async function resolveModelSource(source: string, opts: ResolveOptions = {}): Promise<string> {
  if (existsSync(source)) {
    const dir = resolve(source);
    if (!statSync(dir).isDirectory()) throw new Error(`model source ${source} is a file; give the directory holding config.json`);
    const missing = missingModelFiles(dir);
    if (missing.length) throw new Error(`model directory ${dir} is incomplete: missing ${missing.join(', ')}`);
    return dir;
  }
  const m = HUB_ID.exec(source);
  if (!m) {
    throw new Error(`model source '${source}' is neither an existing directory nor a hub id like 'unsloth/gpt-oss-20b-BF16'`);
  }
  const repo = `${m[1]}/${m[2]}`;
  const revision = m[3] ?? opts.revision ?? 'main';
  const cacheDir = opts.cacheDir ?? hfCacheDir();
  const cached = findCachedSnapshot(repo, revision, cacheDir);
  const missing = cached ? missingModelFiles(cached) : ['everything'];
  if (cached && missing.length === 0) return cached;
  const offline = process.env.HF_HUB_OFFLINE === '1' || process.env.HF_HUB_OFFLINE === 'true' || opts.download === false;
  const where = `${join(cacheDir, `models--${repo.replace('/', '--')}`)} (revision ${revision})`;
  if (offline) {
    throw new Error(
      `model '${repo}' is not in the Hugging Face cache at ${where}` +
        (cached ? `: snapshot ${cached} lacks ${missing.join(', ')}` : '') +
        ` and downloads are off (HF_HUB_OFFLINE or download: false). Download it where a network exists with ` +
        `${downloadCommands(repo, revision, cacheDir)}, point HF_HUB_CACHE/HF_HOME at that cache, or pass a local directory.`,
    );
  }
  return downloadSnapshot(repo, revision, cacheDir, opts, where);
}

async function downloadSnapshot(repo: string, revision: string, cacheDir: string, opts: ResolveOptions, where: string): Promise<string> {
  // Loaded lazily: the hub client is only needed where a download happens.
  const hub = await import('@huggingface/hub');
  const accessToken = opts.token ?? process.env.HF_TOKEN ?? process.env.HUGGING_FACE_HUB_TOKEN;
  const baseFetch = opts.fetch ?? globalThis.fetch;
  let current = '';
  let bytes = 0;
  let totalBytes = 0;
  const report = opts.onProgress ?? defaultProgress();
  // Wraps fetch so that every response body is counted as it streams (the hub client has no progress hook).
  const countingFetch: typeof fetch = async (input, init) => {
    const res = await baseFetch(input, init);
    if (!res.body) return res;
    const counted = res.body.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, ctl) {
          bytes += chunk.byteLength;
          report({ file: current, bytes, totalBytes });
          ctl.enqueue(chunk);
        },
      }),
    );
    return new Response(counted, { status: res.status, statusText: res.statusText, headers: res.headers });
  };
  let files: { path: string; size: number }[] = [];
  try {
    for await (const f of hub.listFiles({ repo, revision, recursive: false, accessToken, fetch: baseFetch })) {
      if (f.type === 'file' && wanted(f.path)) files.push({ path: f.path, size: f.lfs?.size ?? f.size });
    }
  } catch (e) {
    throw new Error(
      `model '${repo}' is not (completely) in the Hugging Face cache at ${where}, and the hub could not be reached ` +
        `to download it: ${(e as Error).message}. Offline? Download it where a network exists with ` +
        `${downloadCommands(repo, revision, cacheDir)} and set HF_HUB_CACHE to that cache, or pass a local directory.`,
    );
  }
  if (!files.some((f) => f.path === 'config.json')) throw new Error(`hub repo '${repo}' has no config.json at revision ${revision}`);
  // Small files first so a bad repo fails before gigabytes move.
  files = files.sort((a, b) => a.size - b.size);
  totalBytes = files.reduce((s, f) => s + f.size, 0);
  let first = '';
  for (const f of files) {
    current = f.path;
    const p = await hub.downloadFileToCacheDir({ repo, path: f.path, revision, cacheDir, accessToken, fetch: countingFetch });
    if (!first) first = p;
  }
  const snap = findCachedSnapshot(repo, revision, cacheDir) ?? (first ? resolve(first, '..') : null);
  if (!snap) throw new Error(`downloaded '${repo}' but cannot find its snapshot under ${cacheDir}`);
  const missing = missingModelFiles(snap);
  if (missing.length) throw new Error(`downloaded '${repo}' to ${snap} but it lacks ${missing.join(', ')}`);
  return snap;
}

/** Download progress through the shared progress display (one status line on a terminal, log lines elsewhere). */
function defaultProgress(): (p: { file: string; bytes: number; totalBytes: number }) => void {
  let current: { file: string; progress: Progress; mb: number } | null = null;
  return ({ file, bytes, totalBytes }) => {
    if (!current || current.file !== file) {
      current?.progress.finish();
      current = { file, progress: new Progress(`downloading ${file}`, Math.ceil(totalBytes / 1e6), { unit: 'MB' }), mb: 0 };
    }
    const mb = Math.floor(bytes / 1e6);
    current.progress.tick(mb - current.mb);
    current.mb = mb;
    if (totalBytes > 0 && bytes >= totalBytes) {
      current.progress.finish();
      current = null;
    }
  };
}

/** Lists the snapshot dirs present in a cache for a repo (diagnostics). */
export function cachedRevisions(repo: string, cacheDir = hfCacheDir()): string[] {
  const d = join(cacheDir, `models--${repo.replace('/', '--')}`, 'snapshots');
  return existsSync(d) ? readdirSync(d) : [];
}

/**
 * The config.json of a model source, without touching its weights (the memory planner runs before anything is
 * loaded): `<dir>/config.json` of a local directory, a config.json path itself, or for a hub id the snapshot's
 * config.json in the HF cache; where the cache lacks it and downloads are allowed, config.json alone is fetched
 * into the cache.
 */
export async function resolveModelConfigFile(source: string, opts: Omit<ResolveOptions, 'onProgress'> = {}): Promise<string> {
  if (existsSync(source)) {
    const p = resolve(source);
    if (statSync(p).isFile()) return p;
    const cfg = join(p, 'config.json');
    if (!existsSync(cfg)) throw new Error(`model directory ${p} has no config.json`);
    return cfg;
  }
  const m = HUB_ID.exec(source);
  if (!m) throw new Error(`model source '${source}' is neither an existing directory nor a hub id like 'unsloth/gpt-oss-20b-BF16'`);
  const repo = `${m[1]}/${m[2]}`;
  const revision = m[3] ?? opts.revision ?? 'main';
  const cacheDir = opts.cacheDir ?? hfCacheDir();
  const cached = findCachedSnapshot(repo, revision, cacheDir);
  if (cached && existsSync(join(cached, 'config.json'))) return join(cached, 'config.json');
  const where = `${join(cacheDir, `models--${repo.replace('/', '--')}`)} (revision ${revision})`;
  const offline = process.env.HF_HUB_OFFLINE === '1' || process.env.HF_HUB_OFFLINE === 'true' || opts.download === false;
  if (offline) {
    throw new Error(`model '${repo}': no config.json in the Hugging Face cache at ${where} and downloads are off (HF_HUB_OFFLINE or download: false); download it with ${downloadCommands(repo, revision, cacheDir)}`);
  }
  const hub = await import('@huggingface/hub');
  const accessToken = opts.token ?? process.env.HF_TOKEN ?? process.env.HUGGING_FACE_HUB_TOKEN;
  try {
    return await hub.downloadFileToCacheDir({ repo, path: 'config.json', revision, cacheDir, accessToken, fetch: opts.fetch });
  } catch (e) {
    throw new Error(`model '${repo}': no config.json in the Hugging Face cache at ${where}, and the hub could not be reached to fetch it: ${(e as Error).message}; download it where a network exists with ${downloadCommands(repo, revision, cacheDir)}`);
  }
}
