// Model source resolution: local dirs, hub ids in a fake HF cache (refs/main -> snapshots/<commit>), offline errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, writeFileSync, symlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveModelSource, hfCacheDir, findCachedSnapshot } from '../../src/model/hub.ts';

const COMMIT = 'a'.repeat(40);

function fakeCache(): string {
  const cache = mkdtempSync(join(tmpdir(), 'hfcache-'));
  const repo = join(cache, 'models--unsloth--gpt-oss-20b-BF16');
  mkdirSync(join(repo, 'refs'), { recursive: true });
  mkdirSync(join(repo, 'blobs'));
  mkdirSync(join(repo, 'snapshots', COMMIT), { recursive: true });
  writeFileSync(join(repo, 'refs', 'main'), COMMIT + '\n');
  // Files are symlinks into blobs/, as huggingface_hub makes them.
  const files: Record<string, string> = {
    'config.json': '{}',
    'model.safetensors.index.json': JSON.stringify({ weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } }),
    'model-00001-of-00002.safetensors': 'x',
    'model-00002-of-00002.safetensors': 'y',
  };
  let i = 0;
  for (const [f, text] of Object.entries(files)) {
    const blob = join(repo, 'blobs', `blob${i++}`);
    writeFileSync(blob, text);
    symlinkSync(join('..', '..', 'blobs', `blob${i - 1}`), join(repo, 'snapshots', COMMIT, f));
  }
  return cache;
}

test('HF cache dir from HF_HUB_CACHE, HF_HOME, or ~/.cache', () => {
  assert.equal(hfCacheDir({ HF_HUB_CACHE: '/x/hub' }), '/x/hub');
  assert.equal(hfCacheDir({ HF_HOME: '/y' }), '/y/hub');
  assert.match(hfCacheDir({ HOME: '/home/u' }), /\.cache\/huggingface\/hub$/);
});

test('resolves a hub id via refs/main to the snapshot directory', async () => {
  const cache = fakeCache();
  const dir = await resolveModelSource('unsloth/gpt-oss-20b-BF16', { cacheDir: cache, download: false });
  assert.equal(dir, join(cache, 'models--unsloth--gpt-oss-20b-BF16', 'snapshots', COMMIT));
  // an explicit commit works too; an unknown branch does not
  assert.equal(await resolveModelSource(`unsloth/gpt-oss-20b-BF16@${COMMIT}`, { cacheDir: cache, download: false }), dir);
  assert.equal(findCachedSnapshot('unsloth/gpt-oss-20b-BF16', 'dev', cache), null);
  // HF_HUB_CACHE from the environment
  const old = process.env.HF_HUB_CACHE;
  process.env.HF_HUB_CACHE = cache;
  try {
    assert.equal(await resolveModelSource('unsloth/gpt-oss-20b-BF16', { download: false }), dir);
  } finally {
    if (old === undefined) delete process.env.HF_HUB_CACHE;
    else process.env.HF_HUB_CACHE = old;
  }
  rmSync(cache, { recursive: true });
});

test('incomplete snapshot or unknown repo offline: error says where it looked', async () => {
  const cache = fakeCache();
  rmSync(join(cache, 'models--unsloth--gpt-oss-20b-BF16', 'snapshots', COMMIT, 'model-00002-of-00002.safetensors'));
  await assert.rejects(resolveModelSource('unsloth/gpt-oss-20b-BF16', { cacheDir: cache, download: false }), /lacks model-00002-of-00002\.safetensors.*downloads are off/s);
  await assert.rejects(resolveModelSource('openai/gpt-oss-120b', { cacheDir: cache, download: false }), /not in the Hugging Face cache at .*models--openai--gpt-oss-120b/);
  // With downloads on but no network (a fetch that fails): a clear error, not a crash.
  const noNet = (async () => {
    throw new TypeError('fetch failed');
  }) as unknown as typeof fetch;
  await assert.rejects(
    resolveModelSource('openai/gpt-oss-120b', { cacheDir: cache, fetch: noNet }),
    /hub could not be reached.*Offline\?/s,
  );
  rmSync(cache, { recursive: true });
});

test('local directories: used as is, incomplete ones rejected, junk rejected', async () => {
  const d = mkdtempSync(join(tmpdir(), 'local-'));
  await assert.rejects(resolveModelSource(d), /incomplete: missing config\.json/);
  writeFileSync(join(d, 'config.json'), '{}');
  writeFileSync(join(d, 'model.safetensors'), '');
  assert.equal(await resolveModelSource(d), d);
  await assert.rejects(resolveModelSource('not a model'), /neither an existing directory nor a hub id/);
  rmSync(d, { recursive: true });
});
