# PyTorch peer of tokenLogprobs/tokenLogprobsBackward: full bf16 logits -> fp32 log_softmax -> gather (+ entropy),
# the way HF-based trainers compute token log-probs. Prints one JSON line with fwd/bwd ms and peak extra memory.
import json
import sys

import torch

T, H, V = (int(x) for x in (sys.argv[1:4] if len(sys.argv) >= 4 else (4096, 2880, 201088)))
dev = "cuda"
g = torch.Generator(device=dev).manual_seed(0)
h = (torch.rand(T, H, device=dev, generator=g) * 2 - 1).bfloat16().requires_grad_()
w = ((torch.rand(V, H, device=dev, generator=g) * 2 - 1) * 0.05).bfloat16().requires_grad_()
t = torch.randint(0, V, (T,), device=dev, generator=g)


def step():
    logits = (h @ w.t()).float()
    logp = torch.log_softmax(logits, dim=-1)
    lp = logp.gather(-1, t[:, None])[:, 0]
    ent = -(logp.exp() * logp).sum(-1)
    return lp, ent


for _ in range(2):
    lp, ent = step()
    lp.sum().backward()
torch.cuda.synchronize()
base = torch.cuda.memory_allocated()
torch.cuda.reset_peak_memory_stats()
e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
e0.record()
lp, ent = step()
e1.record()
(lp.sum() / T).backward()
e2.record()
torch.cuda.synchronize()
print(json.dumps({"peer": "torch full logits", "T": T, "H": H, "V": V, "fwd_ms": e0.elapsed_time(e1),
                  "bwd_ms": e1.elapsed_time(e2), "extra_peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}))
