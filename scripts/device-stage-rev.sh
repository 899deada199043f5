#!/usr/bin/env bash
# Stages a commit as a second checkout for a same-call A/B on the GPU machine (the figures of different calls are
# not comparable: docs/inference.md, "Batch 1"):
#   bash scripts/device-stage-rev.sh REV NAME     (from the main checkout)
# makes a detached worktree of REV at ../wt-NAME (node_modules linked to this checkout's: the symlink is ignored by
# .gitignore, never commit it), stages it with scripts/device-prep.sh NAME as .stage-NAME, and drops what an A/B of
# benches does not need (the fixtures copy and the compiled tests), so that it fits beside .stage-main in the
# device tool's 64 MiB. Then carry [".device", ".devnm", ".stage-main", ".stage-NAME"] and run its steps from
# .stage-main with `(cd ../.stage-NAME && step ...)` (scripts/device-queue.sh shows the pattern).
set -euo pipefail
rev=${1:?usage: device-stage-rev.sh REV NAME}
name=${2:?usage: device-stage-rev.sh REV NAME}
main=$(git rev-parse --show-toplevel)
wt="$main/../wt-$name"
git -C "$main" rev-parse --verify --quiet "$rev^{commit}" >/dev/null || { echo "device-stage-rev: no commit '$rev'" >&2; exit 1; }
if [ -d "$wt" ]; then git -C "$main" worktree remove --force "$wt"; fi
git -C "$main" worktree add -q --detach "$wt" "$rev"
ln -s "$main/node_modules" "$wt/node_modules"
(cd "$wt" && bash scripts/device-prep.sh "$name")
rm -rf "$main/.stage-$name/shared" "$main/.stage-$name/dist/test"
du -s --block-size=1K "$main/.device" "$main/.devnm" "$main/.stage-"* 2>/dev/null | awk '{ t += $1; print } END { printf "total %.1f MiB (64 MiB with the working tree)\n", t / 1024 }'
