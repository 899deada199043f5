#!/usr/bin/env bash
# Stages the reverted GPU candidates for one same-call A/B (scripts/device-queue.sh, "The two candidates"): the tree
# without them (HEAD) as .stage-base, and HEAD with the candidates' commits applied as .stage-main, built from a
# detached worktree (../wt-cand) so that the main checkout's history and working tree stay as they are.
#   bash scripts/device-stage-candidates.sh 5e47e99 c752c58     (from the main checkout)
# Then carry [".device", ".devnm", ".stage-main", ".stage-base"] and run the queue from .stage-main:
#   cd .stage-main && source ../.device/prelude.sh && source scripts/device-steps.sh 560 && build && source scripts/device-queue.sh
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: device-stage-candidates.sh COMMIT..." >&2; exit 1; }
main=$(git rev-parse --show-toplevel)
for c in "$@"; do
  git -C "$main" rev-parse --verify --quiet "$c^{commit}" >/dev/null || { echo "device-stage-candidates: no commit '$c'" >&2; exit 1; }
done
bash "$main/scripts/device-stage-rev.sh" HEAD base
wt="$main/../wt-cand"
if [ -d "$wt" ]; then git -C "$main" worktree remove --force "$wt"; fi
git -C "$main" worktree add -q --detach "$wt" HEAD
git -C "$wt" -c user.name=stage -c user.email=stage@localhost cherry-pick "$@" >/dev/null ||
  { echo "device-stage-candidates: the candidates do not apply cleanly on HEAD (resolve in $wt)" >&2; exit 1; }
ln -s "$main/node_modules" "$wt/node_modules"
(cd "$wt" && bash scripts/device-prep.sh main)
# The attention fixtures (8 MB) would push the upload past 64 MiB, and no test the queue runs reads them (a whole
# test:gpu run does: stage with device-prep.sh alone for that).
rm -f "$main/.stage-main/shared/fixtures/"*.safetensors
# What the device tool uploads (apparent bytes): the carried folders plus the main checkout's working tree.
tree=$(cd "$main" && git ls-files -co --exclude-standard | grep -v '^\.stage-\|^\.dev' | tr '\n' '\0' | du -cb --apparent-size --files0-from=- | tail -1 | cut -f1)
carried=$(du -sb --apparent-size "$main/.device" "$main/.devnm" "$main/.stage-main" "$main/.stage-base" | awk '{ t += $1 } END { print t }')
awk -v c="$carried" -v t="$tree" 'BEGIN { printf "upload %.1f MiB (carried %.1f + working tree %.1f; the limit is 64)\n", (c + t) / 1048576, c / 1048576, t / 1048576 }'
