#!/usr/bin/env bash
# moe-tune.sh OUT: on the GPU machine (after device-build.sh), tries the large-tile variants of the MoE grouped
# GEMM (GPTOSS_MOE_TILE=0..4): GPU tests and a profiled bench per variant, the fused-gather path, then the full
# bench with the PyTorch peer for the variant with the fastest forward+backward at T 16384.
set -u
out=${1:?usage: moe-tune.sh OUT}
for v in 0 1 2 3 4; do
  echo "=== variant $v"
  GPTOSS_MOE_TILE=$v timeout 60 node --test dist/test/gpu/moe.test.js 2>&1 | grep -aE "^# (pass|fail)|^not ok"
  GPTOSS_MOE_TILE=$v GPTOSS_MOE_PROFILE=1 timeout 60 node dist/bench/moe.js --tokens 4096,16384 --no-peer --iters 3 \
    --json "$out/v$v.json" 2>&1 | grep -aE "^\| (4096|16384)|moe profile"
done
echo "=== variant 0, fused gather"
GPTOSS_MOE_GATHER_FUSED=1 GPTOSS_MOE_PROFILE=1 timeout 60 node dist/bench/moe.js --tokens 16384 --no-peer --iters 3 \
  2>&1 | grep -aE "^\| 16384|moe profile"
best=$(node -e '
  const fs = require("fs"); let best = "0", ms = Infinity;
  for (const v of ["0", "1", "2", "3", "4"]) {
    try {
      const r = JSON.parse(fs.readFileSync(process.argv[1] + "/v" + v + ".json", "utf8")).rows.find((x) => x.T === 16384);
      if (r && r.fwdbwdMs < ms) { ms = r.fwdbwdMs; best = v; }
    } catch {}
  }
  console.log(best);' "$out")
echo "=== best variant $best: full bench with the peer"
GPTOSS_MOE_TILE=$best timeout 180 node dist/bench/moe.js --json "$out/moe.json"
