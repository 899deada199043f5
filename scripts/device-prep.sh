#!/usr/bin/env bash
# Stages a checkout (this one or a helper's worktree) for the GPU machine, which receives only the main
# checkout's working tree plus carried, git-ignored folders.
#   bash scripts/device-prep.sh NAME     (run from the checkout to stage)
# makes, in the main checkout: .devnm/node_modules (runtime deps only, shared), .stage-NAME/ (the checkout's
# files + dist/ compiled by tsc). Then call the device tool with
#   carry: [".device", ".devnm", ".stage-NAME"]
#   command: cd .stage-NAME && source ../.device/prelude.sh && bash scripts/device-build.sh && <tests/benches>
set -euo pipefail
name=${1:?usage: device-prep.sh NAME}
src=$(git rev-parse --show-toplevel)
main=$(git -C "$src" worktree list --porcelain | awk '/^worktree /{print $2; exit}')
excl="$main/.git/info/exclude"
for p in /.device/ /.devnm/ "/.stage-$name/"; do grep -qxF "$p" "$excl" 2>/dev/null || echo "$p" >> "$excl"; done
[ -d "$main/.device" ] || (cd "$main" && bash ../shared/device/stage.sh >/dev/null)
if [ ! -d "$main/.devnm/node_modules" ] || [ "$src/package.json" -nt "$main/.devnm/.stamp" ]; then
  rm -rf "$main/.devnm" && mkdir -p "$main/.devnm"
  node -e '
    const p = require(process.argv[1]);
    for (const k of ["tsx", "@wandb/sdk", "@huggingface/hub", "@resvg/resvg-js", "gpt-tokenizer", "@huggingface/jinja", "hyparquet"]) delete p.dependencies[k];
    delete p.devDependencies; delete p.scripts;
    require("fs").writeFileSync(process.argv[2], JSON.stringify(p, null, 2));' "$src/package.json" "$main/.devnm/package.json"
  (cd "$main/.devnm" && npm install --omit=dev --ignore-scripts --no-package-lock --no-audit --no-fund >/dev/null)
  touch "$main/.devnm/.stamp"
fi
(cd "$src" && npx tsc -p tsconfig.json)
rm -rf "$main/.stage-$name" && mkdir -p "$main/.stage-$name"
(cd "$src" && git ls-files -co --exclude-standard | grep -v '^\.stage-' | grep -v '^\.devnm' | tar cf - -T - dist) | tar xf - -C "$main/.stage-$name"
ln -sfn ../.devnm/node_modules "$main/.stage-$name/node_modules"
du -sh "$main/.device" "$main/.devnm" "$main/.stage-$name" | tr '\n' ' '; echo
