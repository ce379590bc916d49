"""Time of one LoRA training step (forward + backward with ual's loss, the fused path ``ual.train.fit`` uses by
default) as the sequence length doubles at a fixed batch, and as the batch doubles at a fixed length (issue 7 item
4, the training part), so that a user can extrapolate from one measured step.

One fresh subprocess with ``OMP_NUM_THREADS=1`` (2 shared cores; see bench_train). The LoRA model (r 8, alpha 16,
dropout 0.1 on q_proj and v_proj, as ``ual.train.fit``) is in train mode; inputs are random token ids, every token a
target, eps per sample uniform in [0, 0.2]. Each shape runs once as a warm-up, then all shapes run ``reps`` times
in a rotating order; ``seconds`` is the median and ``ratio_to_previous`` the median over repetitions of this
shape's time over the previous (half-size) shape's time in the same repetition. The optimizer step is left out.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

from benchmarks.bench_train import LORA, run_child

FULL = {"model": "smollm2-135m", "reps": 3, "fixed_B": 2, "fixed_T": 128, "T": [64, 128, 256, 512],
        "B": [1, 2, 4, 8]}
QUICK = {"model": "tiny-random", "reps": 2, "fixed_B": 2, "fixed_T": 32, "T": [16, 32, 64], "B": [1, 2, 4]}


def _child(c: dict) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from ual.loss import final_hidden_states, fused_loss_supported, fused_smoothed_cross_entropy, lm_head_weight
    from ual.common.models import load_model

    torch.set_num_threads(1)
    model = get_peft_model(load_model(c["model"], dtype="float32"), LoraConfig(task_type="CAUSAL_LM", bias="none",
                                                                                 **LORA))
    model.train()
    ok, why = fused_loss_supported(model)
    assert ok, why
    V = model.config.vocab_size
    shapes = [("T", c["fixed_B"], t) for t in c["T"]] + [("B", b, c["fixed_T"]) for b in c["B"]]
    g = torch.Generator().manual_seed(0)
    inputs = {}
    for _, B, T in shapes:
        ids = torch.randint(0, V, (B, T), generator=g)
        inputs[(B, T)] = (ids, torch.rand(B, generator=g) * 0.2)

    def step(B, T):
        ids, eps = inputs[(B, T)]
        hidden = final_hidden_states(model, ids, torch.ones_like(ids))
        w, b = lm_head_weight(model)
        fused_smoothed_cross_entropy(hidden, w, ids, eps, bias=b).backward()
        model.zero_grad(set_to_none=True)

    for _, B, T in shapes:
        step(B, T)
    times = {s: [] for s in shapes}
    for r in range(c["reps"]):
        k = r * 3 % len(shapes)
        for s in shapes[k:] + shapes[:k]:
            t0 = time.perf_counter()
            step(s[1], s[2])
            times[s].append(time.perf_counter() - t0)
    rows = []
    for sweep in ("T", "B"):
        prev = None
        for s in [s for s in shapes if s[0] == sweep]:
            ratio = None if prev is None else statistics.median(a / b for a, b in zip(times[s], times[prev]))
            rows.append({"sweep": sweep, "B": s[1], "T": s[2], "tokens": s[1] * s[2],
                         "seconds": statistics.median(times[s]), "seconds_all": times[s], "ratio_to_previous": ratio})
            prev = s
    return {"rows": rows, "threads": torch.get_num_threads()}


def run(quick: bool) -> dict:
    c = QUICK if quick else FULL
    res = run_child("benchmarks.bench_step_scaling", c, timeout=1200)
    rows = []
    for r in res["rows"]:
        rows.append({"sweep": "length" if r["sweep"] == "T" else "batch", "model": c["model"], "B": r["B"],
                     "T": r["T"], "tokens": r["tokens"], "seconds": round(r["seconds"], 3),
                     "ms_per_token": round(1000 * r["seconds"] / r["tokens"], 2),
                     "ratio_to_previous": None if r["ratio_to_previous"] is None else round(r["ratio_to_previous"], 2),
                     "seconds_all": [round(t, 3) for t in r["seconds_all"]]})
    return {"rows": rows, "case": c, "threads": "OMP_NUM_THREADS=1 in the measured subprocess",
            "columns": ["sweep", "model", "B", "T", "tokens", "seconds", "ms_per_token", "ratio_to_previous",
                        "seconds_all"]}


def plot(result: dict, out: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for sweep, marker in (("length", "o"), ("batch", "s")):
        rows = [r for r in result["rows"] if r["sweep"] == sweep]
        ax.loglog([r["tokens"] for r in rows], [r["seconds"] for r in rows], marker=marker, base=2,
                  label=f"{sweep} doubles" + (f" (B={rows[0]['B']})" if sweep == "length" else f" (T={rows[0]['T']})"))
    ax.set_xlabel("tokens per step (B x T)")
    ax.set_ylabel("seconds per forward + backward (1 thread)")
    ax.set_title(f"LoRA step time, {result['case']['model']}, ual fused loss", fontsize=10)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
