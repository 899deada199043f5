"""Peer for bench/flex-attn.ts: torch.nn.attention.flex_attention (compiled) with GPT-OSS sinks.

Sinks through the returned log-sum-exp: out_sink = out * sigmoid(lse - sink), the backward flows through that
(into q, k, v and the sinks). Usage: python3 flex_attn_peer.py CASES.json OUT.json (cases written by the TS bench).
Writes {case name: {"ms": float, "note"?: str, "cudnnMs"?: float, "cudnnNote"?: str}}.

Besides the peer, causal cases also time a reference point that is not the peer: cuDNN's fused attention through
torch SDPA (SDPBackend.CUDNN_ATTENTION), without sinks (SDPA has none, nor sliding windows), GQA by enable_gqa or,
where that backend refuses it, K/V expanded to the query heads beforehand (outside the timing). It shows how fast
the vendor's own kernel runs the same causal shapes, which calibrates the issue's ratio targets against flex.
"""
import json
import sys
import time
import traceback

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

torch._dynamo.config.cache_size_limit = 64


def timed(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    a = torch.cuda.Event(enable_timing=True)
    b = torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / iters


def attn_sinks(q, k, v, sinks, block_mask):
    out, lse = flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True, return_lse=True)
    w = torch.sigmoid(lse - sinks.view(1, -1, 1)).unsqueeze(-1)
    return (out.float() * w).to(q.dtype)


compiled = torch.compile(attn_sinks, dynamic=False)


def run_case(c):
    dev = "cuda"
    B, S, W, Hq, Hkv, D = c["B"], c["S"], c["window"], c["Hq"], c["Hkv"], c["D"]
    if c["kind"] == "decode":
        q = torch.randn(B, Hq, 1, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(B, Hkv, S, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(B, Hkv, S, D, device=dev, dtype=torch.bfloat16)
        sinks = torch.full((Hq,), 0.5, device=dev)

        def dmask(b, h, qi, kv):
            # the new token sits at position S-1
            ok = kv < S
            if W:
                ok = ok & (S - 1 - kv < W)
            return ok

        bm = create_block_mask(dmask, B=None, H=None, Q_LEN=1, KV_LEN=S, device=dev)
        return timed(lambda: compiled(q, k, v, sinks, bm), 50), None
    need = c["kind"] == "fwdbwd"
    q = torch.randn(B, Hq, S, D, device=dev, dtype=torch.bfloat16, requires_grad=need)
    k = torch.randn(B, Hkv, S, D, device=dev, dtype=torch.bfloat16, requires_grad=need)
    v = torch.randn(B, Hkv, S, D, device=dev, dtype=torch.bfloat16, requires_grad=need)
    sinks = torch.full((Hq,), 0.5, device=dev, requires_grad=need)
    dout = torch.randn(B, Hq, S, D, device=dev, dtype=torch.bfloat16) * 0.1

    def mask(b, h, qi, kv):
        ok = qi >= kv
        if W:
            ok = ok & (qi - kv < W)
        return ok

    bm = create_block_mask(mask, B=None, H=None, Q_LEN=S, KV_LEN=S, device=dev)
    if not need:
        with torch.no_grad():
            return timed(lambda: compiled(q, k, v, sinks, bm), 20), None

    def step():
        for t in (q, k, v, sinks):
            t.grad = None
        compiled(q, k, v, sinks, bm).backward(dout)

    return timed(step, 20), None


def run_cudnn_reference(c):
    """cuDNN SDPA, causal, no sinks: (ms, note or None)."""
    dev = "cuda"
    B, S, Hq, Hkv, D = c["B"], c["S"], c["Hq"], c["Hkv"], c["D"]
    need = c["kind"] == "fwdbwd"
    q = torch.randn(B, Hq, S, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(B, Hkv, S, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(B, Hkv, S, D, device=dev, dtype=torch.bfloat16)
    dout = torch.randn(B, Hq, S, D, device=dev, dtype=torch.bfloat16) * 0.1

    def attempt(q, k, v, gqa):
        leaves = [t.detach().requires_grad_(need) for t in (q, k, v)]

        def fwd():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return torch.nn.functional.scaled_dot_product_attention(*leaves, is_causal=True, enable_gqa=gqa)

        if not need:
            with torch.no_grad():
                return timed(fwd, 20)

        def step():
            for t in leaves:
                t.grad = None
            fwd().backward(dout)

        return timed(step, 20)

    try:
        return attempt(q, k, v, True), None
    except RuntimeError:
        rep = Hq // Hkv
        return attempt(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), False), "kv expanded to Hq"


def priority(c):
    # The target cases first (fwd+bwd, then decode), so a time budget cuts the least important ones.
    order = {"fwdbwd": 0, "decode": 1, "fwd": 2}[c["kind"]]
    return (order, c["S"] != 4096, c["window"] == 0)


def main():
    cases = json.load(open(sys.argv[1]))
    budget = float(sys.argv[3]) if len(sys.argv) > 3 else 1e9
    t0 = time.time()
    res = {}
    print(f"peer: torch {torch.__version__} on {torch.cuda.get_device_name(0)}", file=sys.stderr)
    for c in sorted(cases, key=priority):
        if time.time() - t0 > budget:
            res[c["name"]] = {"ms": -1, "note": "peer skipped: time budget"}
            continue
        try:
            ms, note = run_case(c)
            res[c["name"]] = {"ms": ms} if note is None else {"ms": ms, "note": note}
            print(f"peer {c['name']}: {ms:.3f} ms", file=sys.stderr)
        except Exception as e:  # report and continue with the other cases
            traceback.print_exc()
            res[c["name"]] = {"ms": -1, "note": f"peer error: {type(e).__name__}"}
        if c["kind"] != "decode" and c["window"] == 0:
            try:
                ms, note = run_cudnn_reference(c)
                res[c["name"]]["cudnnMs"] = ms
                if note:
                    res[c["name"]]["cudnnNote"] = note
                print(f"cudnn reference {c['name']}: {ms:.3f} ms", file=sys.stderr)
            except Exception as e:
                traceback.print_exc()
                res[c["name"]]["cudnnNote"] = f"cudnn error: {type(e).__name__}: {str(e)[:120]}"
        torch.cuda.empty_cache()
        json.dump(res, open(sys.argv[2], "w"), indent=1)  # after every case: a killed run keeps its results
    json.dump(res, open(sys.argv[2], "w"), indent=1)


if __name__ == "__main__":
    main()
