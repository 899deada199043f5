#!/usr/bin/env bash
# On the GPU machine (after `source .device/prelude.sh`): builds the addon with the CUDA backend.
set -euo pipefail
node node_modules/cmake-js/bin/cmake-js compile --parallel 16 --CDGPTOSS_CUDA=ON 2>&1 | grep -E "error|warning: |gptoss:|Linking" || true
test -f build/Release/gptoss.node
node -e "const a=require('./build/Release/gptoss.node'); if(!a.features.cuda) { console.error('addon has no CUDA'); process.exit(1) } console.log('addon: cuda', a.features, 'devices', a.ops.deviceCount())"
