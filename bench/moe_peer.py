# moe_peer.py: the GPT-OSS MoE block in PyTorch with torch._grouped_mm (bf16, offsets from the routing), timed
# the same way as bench/moe.ts. Usage: python3 bench/moe_peer.py --json OUT [--tokens 1,64,4096,16384] [--fwd-only]
import argparse, json, sys
import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--json", required=True)
p.add_argument("--tokens", default="1,64,4096,16384")
p.add_argument("--experts", type=int, default=32)
p.add_argument("--topk", type=int, default=4)
p.add_argument("--hidden", type=int, default=2880)
p.add_argument("--inter", type=int, default=2880)
p.add_argument("--limit", type=float, default=7.0)
p.add_argument("--fwd-only", action="store_true", help="time the forward only (bench/moe.ts --decode)")
a = p.parse_args()
E, K, H, I = a.experts, a.topk, a.hidden, a.inter
dev = "cuda"
torch.manual_seed(0)


def param(*shape, std):
    return (torch.randn(*shape, device=dev) * std).to(torch.bfloat16).requires_grad_(True)


Wr, br = param(E, H, std=H ** -0.5), param(E, std=0.5)
Wgu, bgu = param(E, H, 2 * I, std=H ** -0.5), param(E, 2 * I, std=0.5)
Wd, bd = param(E, I, H, std=I ** -0.5), param(E, H, std=0.5)


def moe(x):
    T = x.shape[0]
    logits = F.linear(x, Wr, br)
    top_v, top_i = torch.topk(logits.float(), K, dim=-1)
    w = torch.softmax(top_v, dim=-1)
    flat = top_i.reshape(-1)
    order = torch.argsort(flat, stable=True)
    eid = flat[order]
    tok = order // K
    offs = torch.cumsum(torch.bincount(flat, minlength=E), 0).to(torch.int32)
    xp = x[tok]
    gu = torch._grouped_mm(xp, Wgu, offs=offs) + bgu[eid]
    gate = gu[:, 0::2].clamp(max=a.limit)
    up = gu[:, 1::2].clamp(min=-a.limit, max=a.limit)
    h = (up + 1) * gate * torch.sigmoid(gate * 1.702)
    out = torch._grouped_mm(h, Wd, offs=offs) + bd[eid]
    out = out * w.reshape(-1)[order].unsqueeze(1).to(out.dtype)
    y = torch.zeros(T, H, device=dev, dtype=out.dtype).index_add_(0, tok, out)
    return y


def timeit(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / iters


results = []
for T in [int(t) for t in a.tokens.split(",")]:
    x = torch.randn(T, H, device=dev).to(torch.bfloat16)
    dy = torch.randn(T, H, device=dev).to(torch.bfloat16)
    iters = 20 if T >= 4096 else (200 if a.fwd_only else 50)

    def fwd():
        with torch.no_grad():
            moe(x)

    xg = x.clone().requires_grad_(True)
    params = [Wr, br, Wgu, bgu, Wd, bd, xg]

    def fwdbwd():
        for q in params:
            q.grad = None
        moe(xg).backward(dy)

    r = {"T": T}
    try:
        r["fwd_ms"] = timeit(fwd, iters)
        if not a.fwd_only:
            r["fwdbwd_ms"] = timeit(fwdbwd, max(5, iters // 2))
    except Exception as ex:  # report, keep going
        r["error"] = str(ex)[:300]
    results.append(r)
    print(json.dumps(r), file=sys.stderr)

json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "results": results}, open(a.json, "w"), indent=1)
