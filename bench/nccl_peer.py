"""All-reduce bus bandwidth with torch.distributed (NCCL): the peer of bench/nccl.ts.

python3 bench/nccl_peer.py --nprocs N --dtypes bf16,f32 --sizes B1,B2,.. --iters I1,I2,.. --warmup W --json OUT

Same method as bench/nccl.ts: one process per GPU, one preallocated buffer per dtype, in-place sum all-reduce of a
prefix view per size, `warmup` untimed iterations, then iters back to back between two device synchronisations
(host wall clock), the slowest rank's time; busbw = 2 (n - 1) / n * bytes / time.
"""
import argparse
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, args, port):
    n = args.nprocs
    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=n, device_id=dev)
    sizes = [int(s) for s in args.sizes.split(",")]
    iters = [int(s) for s in args.iters.split(",")]
    points = []
    slowest = torch.zeros(1, device=dev)
    for name in args.dtypes.split(","):
        dt = DTYPES[name]
        esize = torch.empty(0, dtype=dt).element_size()
        buf = torch.zeros(max(sizes) // esize, dtype=dt, device=dev)
        for nbytes, it in zip(sizes, iters):
            t = buf[: nbytes // esize]
            for _ in range(args.warmup):
                dist.all_reduce(t)
            torch.cuda.synchronize()
            dist.barrier()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(it):
                dist.all_reduce(t)
            torch.cuda.synchronize()
            sec = (time.perf_counter() - t0) / it
            slowest.fill_(sec)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            s = slowest.item()
            algbw = nbytes / s / 1e9
            points.append(
                {
                    "bytes": nbytes,
                    "dtype": name,
                    "iters": it,
                    "timeUs": s * 1e6,
                    "algbwGBs": algbw,
                    "busbwGBs": algbw * 2 * (n - 1) / n,
                }
            )
        del buf
    if rank == 0:
        v = torch.cuda.nccl.version()
        with open(args.json, "w") as f:
            json.dump({"worldSize": n, "torch": torch.__version__, "nccl": ".".join(map(str, v)) if isinstance(v, tuple) else str(v), "points": points}, f)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nprocs", type=int, required=True)
    p.add_argument("--dtypes", default="bf16,f32")
    p.add_argument("--sizes", required=True)
    p.add_argument("--iters", required=True)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    mp.spawn(worker, args=(args, free_port()), nprocs=args.nprocs, join=True)


if __name__ == "__main__":
    main()
