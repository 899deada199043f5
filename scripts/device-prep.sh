#!/usr/bin/env bash
# Stages a checkout (this one or a helper's worktree) for the GPU machine, which receives only the main
# checkout's working tree plus carried, git-ignored folders.
#   bash scripts/device-prep.sh NAME     (run from the checkout to stage)
# makes, in the main checkout: .devnm/node_modules (runtime deps only, shared), .stage-NAME/ (the checkout's
# files + dist/ compiled by tsc). Then call the device tool with
#   carry: [".device", ".devnm", ".stage-NAME"]
#   command: cd .stage-NAME && source ../.device/prelude.sh && bash scripts/device-build.sh && <tests/benches>
# The three plus the main working tree must stay under 64 MiB, so .devnm is slim: no dev or optional-at-runtime
# packages (tsx, W&B, hub, plots, jinja, parquet), no type declarations or source maps, and of gpt-tokenizer
# (55 MB installed; the harmony tokenizer needs it whenever text is encoded, e.g. the synthetic task) only the
# CommonJS files that our tokenizer actually loads (the o200k_base ranks and the encoder, about 2.3 MB).
# DEVICE_PREP_ROOT=DIR stages into DIR instead of the main checkout (a dry run that leaves the main checkout alone).
set -euo pipefail
name=${1:?usage: device-prep.sh NAME}
src=$(git rev-parse --show-toplevel)
main=${DEVICE_PREP_ROOT:-$(git -C "$src" worktree list --porcelain | awk '/^worktree /{print $2; exit}')}
excl="$main/.git/info/exclude"
if [ -d "$main/.git/info" ]; then
  for p in /.device/ /.devnm/ "/.stage-$name/"; do grep -qxF "$p" "$excl" 2>/dev/null || echo "$p" >> "$excl"; done
fi
[ -d "$main/.device" ] || (cd "$main" && bash ../shared/device/stage.sh >/dev/null)
(cd "$src" && npx tsc -p tsconfig.json)

# ---- .devnm: runtime node_modules -----------------------------------------------------------------------------------
# Rebuilt when package.json changes or this recipe does (the stamp holds the recipe version).
DEVNM_RECIPE=2
if [ ! -d "$main/.devnm/node_modules" ] || [ "$src/package.json" -nt "$main/.devnm/.stamp" ] || [ "$(cat "$main/.devnm/.stamp" 2>/dev/null)" != "$DEVNM_RECIPE" ]; then
  rm -rf "$main/.devnm" && mkdir -p "$main/.devnm"
  node -e '
    const p = require(process.argv[1]);
    for (const k of ["tsx", "@wandb/sdk", "@huggingface/hub", "@resvg/resvg-js", "gpt-tokenizer", "@huggingface/jinja", "hyparquet"]) delete p.dependencies[k];
    delete p.devDependencies; delete p.scripts;
    require("fs").writeFileSync(process.argv[2], JSON.stringify(p, null, 2));' "$src/package.json" "$main/.devnm/package.json"
  (cd "$main/.devnm" && npm install --omit=dev --ignore-scripts --no-package-lock --no-audit --no-fund >/dev/null)
  # Nothing at runtime reads type declarations, source maps or zod's TypeScript sources.
  find "$main/.devnm/node_modules" -type f \( -name '*.d.ts' -o -name '*.d.cts' -o -name '*.d.mts' -o -name '*.map' \) -delete
  rm -rf "$main/.devnm/node_modules/zod/src"

  # gpt-tokenizer: the files a tokenizer build + encode + decode loads (from this checkout's full install).
  gt=$(cd "$src" && node -p 'require("path").dirname(require.resolve("gpt-tokenizer/package.json"))')
  files=$(cd "$src" && node --input-type=module -e '
    import { createRequire } from "node:module";
    const { getTokenizer } = await import(process.cwd() + "/dist/src/tokenizer/index.js");
    const tok = getTokenizer();
    tok.decode(tok.encode("What is 3 + 4? Let us think step by step: 3 + 4 = 7.\n#### 7"));
    const req = createRequire(process.cwd() + "/");
    const out = Object.keys(req.cache).map((k) => k.split("/node_modules/gpt-tokenizer/")[1]).filter(Boolean);
    if (out.length === 0) throw new Error("gpt-tokenizer was not loaded through require");
    console.log(["package.json", "LICENSE", ...out].join("\n"));')
  mkdir -p "$main/.devnm/node_modules/gpt-tokenizer"
  (cd "$gt" && printf '%s\n' "$files" | sort -u | tar cf - -T -) | tar xf - -C "$main/.devnm/node_modules/gpt-tokenizer"
  echo "$DEVNM_RECIPE" > "$main/.devnm/.stamp"
fi

# ---- .stage-NAME: the checkout's files and dist/ ---------------------------------------------------------------------
rm -rf "$main/.stage-$name" && mkdir -p "$main/.stage-$name"
(cd "$src" && git ls-files -co --exclude-standard | grep -v '^\.stage-' | grep -v '^\.devnm' | tar cf - -T - dist) | tar xf - -C "$main/.stage-$name"
ln -sfn ../.devnm/node_modules "$main/.stage-$name/node_modules"
# The main working tree travels to the GPU machine anyway: a top-level folder the staged checkout has identical to
# the main checkout's becomes a link to it, so the upload carries it once (the 64 MiB limit).
for d in data docs native src test bench configs scripts; do
  [ -d "$main/.stage-$name/$d" ] && [ -d "$main/$d" ] || continue
  if [ "$src" = "$main" ] || diff -rq "$src/$d" "$main/$d" >/dev/null 2>&1; then
    rm -rf "$main/.stage-$name/$d" && ln -sfn "../$d" "$main/.stage-$name/$d"
  fi
done
# The GPU tests read the shared fixtures (transformers outputs, the gptoss-tiny checkpoint), and ../shared does not
# travel to the GPU machine: a copy goes into the stage, where test/helpers/fixtures.ts finds it (shared/ beside dist/).
mkdir -p "$main/.stage-$name/shared" && cp -r "$src/../shared/fixtures" "$main/.stage-$name/shared/fixtures"

# ---- check: the staged dist runs on the slim node_modules (config, task rendering + tokenizer, public API) -------
check='
  const { loadConfig } = await import(process.cwd() + "/dist/src/config/index.js");
  const { buildTaskEnv } = await import(process.cwd() + "/dist/src/trainer/env.js");
  await import(process.cwd() + "/dist/src/index.js");
  const env = await buildTaskEnv(loadConfig({ config: null, overrides: ["environment.env_class=synthetic", "data.synthetic.num_train=4", "data.synthetic.num_val=2"] }));
  console.log(JSON.stringify([...env.train, ...env.val].map((e) => [Array.from(e.prompt), Array.from(e.reference ?? [])])));'
want=$(cd "$src" && GPTOSS_LOG_LEVEL=warn node --input-type=module -e "$check" 2>/dev/null | tail -1)
got=$(cd "$main/.stage-$name" && GPTOSS_LOG_LEVEL=warn node --input-type=module -e "$check" | tail -1) || { echo "device-prep: the staged dist fails on .devnm/node_modules" >&2; exit 1; }
[ -n "$want" ] && [ "$want" = "$got" ] || { echo "device-prep: the staged synthetic task tokenizes differently on .devnm/node_modules" >&2; exit 1; }
du -sh "$main/.device" "$main/.devnm" "$main/.stage-$name" | tr '\n' ' '; echo
