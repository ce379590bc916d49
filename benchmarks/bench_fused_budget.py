"""End to end: the largest batch that fits in a fixed memory budget, with and without the fused output layer.

One LoRA training step (forward + backward, training mode) of SmolLM2-135M computed exactly as ``ual train``'s
``compute_loss`` does it: ``fused`` = final hidden states + ``fused_smoothed_cross_entropy`` (the logits never
exist beyond one chunk), ``logits`` = ``model(**inputs).logits`` + ``smoothed_cross_entropy``. Sequence length T is
fixed; a step's extra peak memory (fresh process per probe, ``benchmarks.common``: the resident memory the step adds
on top of the loaded model) is probed at a few batch sizes, a line through them predicts the largest batch within
the budget, and a probe at that batch checks it (stepping down until it fits). Reported per path: every probe, the
fitted GiB per 1k tokens and the largest batch (and so batch x T tokens) measured within the budget.

Goal (issue 11): report the numbers; the fused path should fit at least as many tokens.
"""
from __future__ import annotations

from benchmarks.common import GiB, peak_memory

METHODS = ("logits", "fused")
FULL = {"model": "smollm2-135m", "T": 256, "budget_gib": 4.0, "probe_B": [1, 2, 4, 8]}
QUICK = {"model": "tiny-random", "T": 64, "budget_gib": 0.002, "probe_B": [1, 2]}  # a smoke check of the method


def make_step(method: str, model: str, B: int, T: int):
    """One training step of ``method`` at batch ``B`` x ``T`` tokens on a LoRA-wrapped ``model`` (no optimizer)."""
    import torch

    from benchmarks.bench_train import _load_lora_model
    from ual.loss import final_hidden_states, fused_smoothed_cross_entropy, lm_head_weight, smoothed_cross_entropy

    torch.manual_seed(0)
    m = _load_lora_model(model)
    m.train()
    vocab = m.get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (B, T))
    mask = torch.ones_like(ids)
    eps = torch.rand(B) * 0.2

    def step():
        if method == "fused":
            hidden = final_hidden_states(m, ids, mask)
            weight, bias = lm_head_weight(m)
            loss = fused_smoothed_cross_entropy(hidden, weight, ids, eps, bias=bias)
        else:
            loss = smoothed_cross_entropy(m(input_ids=ids, attention_mask=mask).logits, ids, eps)
        loss.backward()
        m.zero_grad(set_to_none=True)

    return step


def _fit(rows: list[dict]) -> tuple[float, float]:
    """Least-squares line peak_gib = a + b * tokens through the probes."""
    import numpy as np

    b, a = np.polyfit([r["tokens"] for r in rows], [r["peak_gib"] for r in rows], 1)
    return float(a), float(b)


def run(quick: bool) -> dict:
    c = QUICK if quick else FULL
    T, budget = c["T"], c["budget_gib"]
    rows, summary = [], []

    def probe(method: str, B: int, role: str) -> dict:
        peak = peak_memory("benchmarks.bench_fused_budget", method, model=c["model"], B=B, T=T) / GiB
        row = {"model": c["model"], "method": method, "B": B, "T": T, "tokens": B * T, "peak_gib": round(peak, 3),
               "fits_budget": peak <= budget, "role": role}
        print(f"  {method} B={B} T={T}: {peak:.3f} GiB ({role})", flush=True)
        rows.append(row)
        return row

    for method in METHODS:
        probes = [probe(method, B, "probe") for B in c["probe_B"]]
        a, b = _fit(probes)
        # Peak memory is linear in tokens at fixed T (activations and logits both are), so the line through the
        # probes predicts the largest batch; one more probe at that batch checks the prediction.
        B = max(1, int((budget - a) / b) // T) if b > 0 else c["probe_B"][-1]
        check = probe(method, B, "check")
        while not check["fits_budget"] and B > 1:
            B -= 1
            check = probe(method, B, "check")
        summary.append({"model": c["model"], "method": method, "budget_gib": budget, "T": T,
                        "fit_gib_per_1k_tokens": round(1000 * b, 4), "fit_intercept_gib": round(a, 3),
                        "largest_B": B if check["fits_budget"] else 0,
                        "largest_tokens": B * T if check["fits_budget"] else 0, "peak_gib_at_largest": check["peak_gib"]})
    by = {s["method"]: s for s in summary}
    goals = {"fused fits at least as many tokens as the logits path":
             by["fused"]["largest_tokens"] >= by["logits"]["largest_tokens"]}
    return {"rows": rows, "summary": summary, "goals": goals, "config": c,
            "columns": ["model", "method", "role", "B", "T", "tokens", "peak_gib", "fits_budget"]}
