// download.ts: `npx gptoss download ORG/NAME[@REV] [--revision R] [--cache-dir DIR]`: puts a Hugging Face model
// (config.json, tokenizer files, safetensors) into the HF cache that `--model ORG/NAME` reads (src/model/hub.ts:
// HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub), with a progress line; prints the snapshot
// directory. What a run's "model not in the cache" error tells the user to run.
import { fileURLToPath } from 'node:url';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { hfCacheDir, isHubId, resolveModelSource } from '../model/hub.ts';
import { endProgressDisplay } from '../log/progress.ts';

export async function downloadMain(argv: string[] = process.argv): Promise<number> {
  let usage = '';
  const a = await yargs(hideBin(argv))
    .scriptName('gptoss download')
    .usage('$0 ORG/NAME[@REVISION] [--revision R] [--cache-dir DIR]\n\nDownloads a model from the Hugging Face hub into the cache that `--model ORG/NAME` reads, and prints its directory.')
    .option('revision', { type: 'string', describe: 'branch, tag or commit (default main)' })
    .option('cache-dir', { type: 'string', describe: `cache root (default ${hfCacheDir()})` })
    .example('$0 unsloth/gpt-oss-20b-BF16', "the seed run's model (about 42 GB)")
    .strictOptions()
    .fail((msg, err) => {
      usage = err?.message ?? msg;
    })
    .help()
    .version(false)
    .parseAsync();
  const repos = a._.map(String);
  if (!usage && repos.length !== 1) usage = `expected one model id (ORG/NAME), got ${repos.length ? repos.join(' ') : 'none'}`;
  if (!usage && !isHubId(repos[0]!)) usage = `'${repos[0]}' is not a hub id like unsloth/gpt-oss-20b-BF16`;
  if (usage) {
    process.stderr.write(`gptoss download: ${usage}\n`);
    return 2;
  }
  try {
    const dir = await resolveModelSource(repos[0]!, { revision: a.revision, cacheDir: a['cache-dir'], download: true });
    endProgressDisplay();
    process.stdout.write(`${dir}\n`);
    return 0;
  } catch (e) {
    endProgressDisplay();
    process.stderr.write(`error: ${(e as Error).message}\n`);
    return 1;
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  downloadMain().then((code) => process.exit(code));
}
