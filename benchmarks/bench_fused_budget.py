"""End to end: the largest batch that fits in a fixed memory budget, with and without the fused output layer.

One LoRA training step (forward + backward, training mode) of SmolLM2-135M computed exactly as ``ual train``'s
``compute_loss`` does it: ``fused`` = final hidden states + ``fused_smoothed_cross_entropy`` (the logits never
exist beyond one chunk), ``logits`` = ``model(**inputs).logits`` + ``smoothed_cross_entropy``. Sequence length T is
fixed; the batch doubles until a step's extra peak memory (fresh process per probe, ``benchmarks.common``: the
resident memory the step adds on top of the loaded model) exceeds BUDGET_GIB. Reported per path: every probe and the
largest batch (and so batch x T tokens) that stayed within the budget.

Goal (issue 11): report the numbers; the fused path should fit at least as many tokens.
"""
from __future__ import annotations

from benchmarks.common import GiB, peak_memory

METHODS = ("logits", "fused")
FULL = {"model": "smollm2-135m", "T": 256, "budget_gib": 1.0, "max_B": 32}  # B = 64 would cost ~10 min per probe
QUICK = {"model": "tiny-random", "T": 64, "budget_gib": 0.0005, "max_B": 8}  # a smoke check of the search only


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


def run(quick: bool) -> dict:
    c = QUICK if quick else FULL
    rows, largest = [], {}
    for method in METHODS:
        B = 1
        while B <= c["max_B"]:
            peak = peak_memory("benchmarks.bench_fused_budget", method, model=c["model"], B=B, T=c["T"]) / GiB
            fits = peak <= c["budget_gib"]
            rows.append({"model": c["model"], "method": method, "B": B, "T": c["T"], "tokens": B * c["T"],
                         "peak_gib": round(peak, 3), "fits_budget": fits})
            print(f"  {method} B={B} T={c['T']}: {peak:.3f} GiB", flush=True)
            if not fits:
                break
            largest[method] = B
            B *= 2
    summary = [{"model": c["model"], "method": m, "budget_gib": c["budget_gib"], "T": c["T"],
                "largest_B": largest.get(m, 0), "largest_tokens": largest.get(m, 0) * c["T"],
                "search_capped": largest.get(m, 0) == c["max_B"]} for m in METHODS]
    goals = {"fused fits at least as many tokens as the logits path":
             largest.get("fused", 0) >= largest.get("logits", 0)}
    return {"rows": rows, "summary": summary, "goals": goals, "config": c,
            "columns": ["model", "method", "B", "T", "tokens", "peak_gib", "fits_budget"]}
