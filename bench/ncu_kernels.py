#!/usr/bin/env python3
"""bench/ncu_kernels.py: per-kernel GPU times from an Nsight Compute CSV, as a table and JSON.

Why: a CUDA-graph replay of a batch-1 decode step is ~245 short kernels, and the decode profile's device marks
(bench/decode-profile.ts) add a gap around every op. Nsight Compute times each kernel alone (serialised, its own
start to end), so the table says which kernels of a step are far from their bytes' HBM time.

Usage (GPU machine, where ncu reads the counters):
  ncu --clock-control none --cache-control none --csv --print-units base --metrics gpu__time_duration.sum,dram__bytes_read.sum \
      node dist/bench/decode-profile.js --layers 4 --batches 1 --steps 4 --spin-ms 1 > ncu.csv
  python3 bench/ncu_kernels.py ncu.csv [--json out.json] [--steps N]
Rows group the kernels by (name, grid, block), most total time first; with --steps N it also prints each group's
total divided by N (decode-profile runs warm-up steps too: a per-layer decode kernel of --layers 4 --steps 4 counts
32, so pass the number of decode steps the run made, 8 there). A kernel timed alone carries ~2-3 us of launch that
a CUDA-graph replay hides: compare kernels with each other and across builds, not with a replay's step time.
"""
import csv
import json
import sys
from collections import defaultdict


def main() -> None:
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    path = args[0]
    opt = {args[i][2:]: args[i + 1] for i in range(1, len(args) - 1, 2) if args[i].startswith('--')}
    steps = int(opt.get('steps', '0'))
    kernels: dict[str, dict] = {}
    with open(path, newline='') as f:
        # ncu prints its own log lines (==PROF==) and the program's output before the CSV header.
        lines = [ln for ln in f if ln.startswith('"')]
    for row in csv.DictReader(lines):
        k = kernels.setdefault(row['ID'], {'name': row['Kernel Name'], 'grid': row['Grid Size'], 'block': row['Block Size']})
        value = float(row['Metric Value'].replace(',', '')) if row['Metric Value'] not in ('', 'n/a') else 0.0
        unit = row['Metric Unit']
        if row['Metric Name'] == 'gpu__time_duration.sum':
            k['us'] = value * {'nsecond': 1e-3, 'usecond': 1.0, 'msecond': 1e3}.get(unit, 1e-3)
        elif row['Metric Name'] == 'dram__bytes_read.sum':
            k['bytes'] = value * {'byte': 1, 'Kbyte': 1e3, 'Mbyte': 1e6, 'Gbyte': 1e9}.get(unit, 1)
    groups: dict[tuple, dict] = defaultdict(lambda: {'count': 0, 'us': 0.0, 'bytes': 0.0})
    for k in kernels.values():
        name = k['name'].replace('(anonymous namespace)::', '').replace('void ', '')
        short = name.split('(')[0].split('<')[0].strip()
        g = groups[(short, k['grid'], k['block'])]
        g['count'] += 1
        g['us'] += k.get('us', 0.0)
        g['bytes'] += k.get('bytes', 0.0)
    rows = sorted(({'kernel': n, 'grid': gr, 'block': bl, **v} for (n, gr, bl), v in groups.items()), key=lambda r: -r['us'])
    total = sum(r['us'] for r in rows)
    print(f"{'kernel':<44} {'grid':>16} {'block':>12} {'count':>6} {'mean us':>9} {'GB/s':>7} {'per step us':>11}")
    for r in rows:
        mean = r['us'] / r['count']
        gbs = r['bytes'] / (r['us'] * 1e-6) / 1e9 if r['us'] > 0 else 0.0
        per_step = r['us'] / steps if steps else float('nan')
        r.update(meanUs=mean, gbPerS=gbs, perStepUs=per_step)
        try:
            print(f"{r['kernel'][:44]:<44} {r['grid']:>16} {r['block']:>12} {r['count']:>6} {mean:9.2f} {gbs:7.0f} {per_step:11.1f}")
        except BrokenPipeError:  # piped into head: the JSON below is still written
            sys.stdout = open('/dev/null', 'w')
    print(f"kernels: {len(kernels)}, total {total:.1f} us")
    if 'json' in opt:
        with open(opt['json'], 'w') as f:
            json.dump({'source': path, 'steps': steps, 'kernels': len(kernels), 'totalUs': total, 'groups': rows}, f, indent=1)


if __name__ == '__main__':
    main()
