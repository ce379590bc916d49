"""This CPU's measured fp32 matmul throughput (FLOP/s): the denominator of a model-FLOPs-utilisation figure."""
from __future__ import annotations

import time

import torch

SIZES_FULL = (1024, 2048, 4096)
SIZES_QUICK = (1024, 2048)


def measure(n: int, reps: int, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> float:
    """Best-of-``reps`` FLOP/s of an ``n x n`` matmul (2 n^3 FLOP) in ``dtype`` on ``device`` (CPU: torch's current
    thread count; CUDA: synchronised around each product, random operands, three warm-ups)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(1 if torch.device(device).type == "cpu" else 3):
        torch.mm(a, b, out=out)  # warm-up
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def run(quick: bool) -> dict:
    rows = []
    for n in SIZES_QUICK if quick else SIZES_FULL:
        flops = measure(n, 5 if quick else 10)
        rows.append({"n": n, "threads": torch.get_num_threads(), "gflops": round(flops / 1e9, 1)})
    return {"rows": rows, "peak_fp32_flops": max(r["gflops"] for r in rows) * 1e9,
            "note": "best of several repetitions: the machine's attainable peak when not disturbed by other load"}
