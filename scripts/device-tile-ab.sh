#!/usr/bin/env bash
# On the GPU machine, inside a staged checkout, after `source ../.device/prelude.sh && source scripts/device-steps.sh N`:
# tunes moe_gemm.cuh's DecodeTiles (the grouped expert GEMMs' small tiles: prefill of a prompt, decode at 5-256
# sequences) in one device call, and measures the end-to-end effect.
#   1. bench/moe_grouped_harness at T 32, 64, 128, 256: every candidate tile shape, timed, bitwise against the
#      product's;
#   2. picks the shape with the least total µs over those T among the bitwise-equal ones (the product's if none
#      beats it);
#   3. builds the addon as it is (saved as /tmp/base.node) and with that shape (/tmp/cand.node: DecodeTiles edited
#      in place and rebuilt, then restored);
#   4. test/gpu/moe.test.js on the candidate addon, then bench:generate batch 1 with CUDA graphs, base and candidate
#      interleaved (GPTOSS_ADDON picks the addon), and the prefill profile of each.
# Sourced (it uses step / build and returns early): no shell options set here, they would outlive it.
step grouped-harness 120 bash -c "nvcc -arch=sm_90a -std=c++17 -O3 --expt-relaxed-constexpr -Inative -Inative/cuda bench/moe_grouped_harness/harness.cu -o /tmp/moeg && /tmp/moeg 32 64 128 256 | tee /tmp/moeg.txt"
# "16x128x64 w1x4 s4 b3" -> BM BN BK WARPS_M WARPS_N STAGES MINB (the harness spells each row's name from its shape)
pick=$(python3 - <<'EOF'
import collections, re
shape = re.compile(r'(\d+)x(\d+)x(\d+) w(\d+)x(\d+) s(\d+) b(\d+)$')
rows = [l.split('|') for l in open('/tmp/moeg.txt') if re.match(r'^\| \d+ \|', l)]
total, exact = collections.defaultdict(float), collections.defaultdict(lambda: True)
for r in rows:
    name, us, dh, dy = r[3].strip(), float(r[4]), float(r[6]), float(r[7])
    total[name] += us
    exact[name] &= dh == 0 and dy == 0
prod = next(n for n in total if n.startswith('product '))
best = min((n for n in total if not n.startswith(('product ', 'large ')) and exact[n]), key=lambda n: total[n], default=None)
if best is None or total[best] >= total[prod]:
    print('none')
else:
    print(' '.join(shape.search(best).groups()) + f' {total[best]:.1f} {total[prod]:.1f}')
EOF
)
echo "tile pick (BM BN BK WARPS_M WARPS_N STAGES MINB, total µs, product's): $pick" >> "$DEVICE_LOG"
if [ "$pick" = none ] || [ -z "$pick" ]; then
  echo "== tile-ab: no shape beat the product's" >> "$DEVICE_LOG"
  return 0 2>/dev/null || exit 0
fi
read -r BM BN BK WM WN ST MB _ _ <<< "$pick"
build && cp build/Release/gptoss.node /tmp/base.node
cp native/cuda/moe_gemm.cuh /tmp/moe_gemm.cuh.orig
sed -i "/^struct DecodeTiles {/{n;s/static constexpr int BM = .*;/static constexpr int BM = $BM, BN = $BN, BK = $BK, WARPS_M = $WM, WARPS_N = $WN, STAGES = $ST, MINB = $MB;/}" native/cuda/moe_gemm.cuh
grep -n "BM = $BM, BN = $BN" native/cuda/moe_gemm.cuh >> "$DEVICE_LOG"
step build-cand 200 bash scripts/device-build.sh && cp build/Release/gptoss.node /tmp/cand.node
cp /tmp/moe_gemm.cuh.orig native/cuda/moe_gemm.cuh
T="node --test --test-reporter=tap --test-concurrency=1"
GPTOSS_ADDON=/tmp/cand.node step cand-moe-test 120 $T dist/test/gpu/moe.test.js
for i in 1 2; do
  GPTOSS_ADDON=/tmp/base.node step "base-gen-$i" 60 node dist/bench/generate.js --cuda-graphs --batches 1 --no-grpo --no-peer --no-static
  GPTOSS_ADDON=/tmp/cand.node step "cand-gen-$i" 60 node dist/bench/generate.js --cuda-graphs --batches 1 --no-grpo --no-peer --no-static
done
GPTOSS_ADDON=/tmp/base.node step base-prefill 60 node dist/bench/decode-profile.js --phase prefill --batches 1 --steps 4
GPTOSS_ADDON=/tmp/cand.node step cand-prefill 60 node dist/bench/decode-profile.js --phase prefill --batches 1 --steps 4
