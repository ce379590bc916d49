"""Batch size 1 against batched inference for the three model-bound loops of the pipeline (issue 7 item 3):
elicitation with the ``likelihood`` backend, elicitation with the ``local`` backend, and greedy evaluation
generation (``ual.evaluate.generate.generate``, fixed ``max_new_tokens``).

Each task runs in a fresh subprocess with ``OMP_NUM_THREADS=1`` (2 shared cores; see bench_train). Inside it the
model is loaded once, one untimed warm-up call runs, then batch size 1 and the batched size alternate ``reps``
times on the same records (order swapped each repetition) and the ratio of samples/s is taken per repetition, then
the median. Elicitation time is the ``seconds`` ``ual.elicit`` reports (model loading excluded); generation time is
the wall time of ``generate`` on an already loaded model. A fresh output file per call, so nothing resumes.

Goal: batching gives at least 3x samples/s on this CPU.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_train import run_child

GSM8K = Path("/work/shared/data/gsm8k/train.jsonl")
FULL = {"model": "smollm2-135m", "batch": 8, "reps": 2, "max_new_tokens": 64,
        "n": {"likelihood": 16, "local": 8, "generate": 16}}
QUICK = {"model": "tiny-random", "batch": 8, "reps": 1, "max_new_tokens": 8,
         "n": {"likelihood": 8, "local": 4, "generate": 8}}
TASKS = ("likelihood", "local", "generate")


def _records(n: int):
    if GSM8K.exists():
        from ual.data.records import load_file

        return load_file(GSM8K)[:n]
    from ual.data.controlled import make_dataset

    return make_dataset(n, 0, 1, 1)[0][:n]


def _timer(task: str, c: dict, records, tmp: Path):
    """A function ``(batch_size) -> seconds`` for ``task`` on ``records``, model loaded once."""
    counter = iter(range(10 ** 6))
    if task in ("likelihood", "local"):
        from ual.elicit import ElicitConfig, elicit
        from ual.elicit import backends

        loaded = {}
        orig = backends.make_backend

        def cached_backend(cfg):
            # Reuse the loaded model across calls: elicit() builds a backend per call and would reload it.
            b = orig(cfg)
            if "lm" in loaded:
                b._lm, b._tok = loaded["lm"], loaded["tok"]
            else:
                loaded["lm"], loaded["tok"] = b._load()
            return b

        import ual.elicit.scoring as er

        er.make_backend = cached_backend

        def timed(bs: int) -> float:
            cfg = ElicitConfig(backend=task, model=c["model"], batch_size=bs, progress=False)
            out = elicit(cfg, records, tmp / f"scores_{next(counter)}.jsonl")
            assert out["scored"] == len(records), out
            return out["seconds"]

        return timed
    from ual.evaluate.generate import generate
    from ual.common.models import load_model, load_tokenizer

    pair = (load_model(c["model"]), load_tokenizer(c["model"]))

    def timed(bs: int) -> float:
        t0 = time.perf_counter()
        generate(pair, records, tmp / f"gen_{next(counter)}.jsonl", batch_size=bs, max_new_tokens=c["max_new_tokens"],
                 progress=False)
        return time.perf_counter() - t0

    return timed


def _child(spec: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    task, c = spec["task"], spec["case"]
    records = _records(c["n"][task])
    with tempfile.TemporaryDirectory(prefix="bench_batching_") as d:
        timed = _timer(task, c, records, Path(d))
        timed(c["batch"])  # warm-up (thread pools, lazy state)
        times = {1: [], c["batch"]: []}
        for r in range(c["reps"]):
            for bs in ((1, c["batch"]) if r % 2 == 0 else (c["batch"], 1)):
                times[bs].append(timed(bs))
    n = len(records)
    speedups = [t1 / tb for t1, tb in zip(times[1], times[c["batch"]])]
    return {"n": n, "seconds_bs1": times[1], "seconds_batched": times[c["batch"]],
            "sps_bs1": n / statistics.median(times[1]), "sps_batched": n / statistics.median(times[c["batch"]]),
            "speedup": statistics.median(speedups), "threads": torch.get_num_threads()}


def run(quick: bool) -> dict:
    c = QUICK if quick else FULL
    rows = []
    for task in TASKS:
        r = run_child("benchmarks.bench_batching", {"task": task, "case": c})
        rows.append({"task": task, "model": c["model"], "samples": r["n"], "batch": c["batch"],
                     "max_new_tokens": c["max_new_tokens"] if task == "generate" else None,
                     "samples_per_s_bs1": round(r["sps_bs1"], 3), "samples_per_s_batched": round(r["sps_batched"], 3),
                     "speedup": round(r["speedup"], 2), "seconds_bs1": [round(t, 2) for t in r["seconds_bs1"]],
                     "seconds_batched": [round(t, 2) for t in r["seconds_batched"]]})
    goals = {f"{r['task']}: batch {r['batch']} >= 3x samples/s of batch 1": r["speedup"] >= 3 for r in rows}
    return {"rows": rows, "goals": goals, "case": c, "threads": "OMP_NUM_THREADS=1 in every measured subprocess",
            "columns": ["task", "model", "samples", "batch", "max_new_tokens", "samples_per_s_bs1",
                        "samples_per_s_batched", "speedup", "seconds_bs1", "seconds_batched"]}


def plot(result: dict, out: str) -> None:
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["samples_per_s_bs1"] for r in rows], 0.4, label="batch 1")
    ax.bar([i + 0.2 for i in x], [r["samples_per_s_batched"] for r in rows], 0.4,
           label=f"batch {rows[0]['batch']}")
    ax.set_xticks(list(x), [f"{r['task']}\n{r['speedup']}x" for r in rows])
    ax.set_ylabel("samples / s (1 thread)")
    ax.set_title(f"batching, {rows[0]['model']}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
