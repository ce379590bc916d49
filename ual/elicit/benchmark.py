"""Elicitation benchmark: which uncertainty measure should drive UAL? (``python -m ual elicit-bench``; issue 20.)

Every measure ``ual.elicit`` offers is computed once per item by one model (default SmolLM2-135M) and judged two ways:

1. **What UAL needs** (data uncertainty, "how many good answers"): AUROC for telling high-entropy items from
   low-entropy ones, on the controlled benchmark (``ual.data.controlled``: open prompts vs arithmetic, labels known)
   and on real mixed data (GPTeacher role-play vs GSM8K), and the Spearman correlation with the known per-item
   answer entropy on the controlled benchmark (0 for arithmetic, the category's entropy for open prompts).
2. **What UQ papers measure** (mostly model uncertainty): AUROC, AUPRC and the accuracy-rejection curve of the
   measure against the greedy answer being wrong (flexible rule: last number), on controlled arithmetic and GSM8K.
3. **Cost**: seconds per sample of each measure on this machine (the model passes it needs, timed per batch).

Measures (higher = more uncertain; nats unless said): ``ref_mean_nll`` / ``ref_mean_entropy`` (the reference
response under the model), ``gnll`` / ``gnll_mean`` (greedy reply), ``sampling_entropy`` (predictive entropy over
answer classes of K samples), ``lca_{full,pointwise,v1}_{greedy,reference}`` (our LCA reconstruction: variant and
label source, ``ual.elicit.lca``), ``token_sar`` / ``sentence_sar`` / ``sar`` (``ual.elicit.sar``) and
``local_rating`` (the 0-99 need-for-diversity rating answered by the same model).

Files (``out``): ``items.jsonl`` (one row per item, appended as each batch finishes; a rerun skips finished ids, so a
killed run resumes), ``table.csv`` / ``table.md`` / ``summary.json`` (metrics with bootstrap intervals) and the ROC
figure in ``figures``. Items are processed in an interleaved order over the four sets (the items with every
measure first), so a partial run already covers every task in proportion.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ual.common.config import setting as _f
from ual.common.errors import InputError
from ual.data.records import Record

BENCH_VERSION = 1  # bump when items, measures or row fields change meaning
SETS = ("arith", "open", "gsm8k", "roleplay")  # controlled low / controlled high / real low / real high
# measure -> the timed parts it needs (its cost per sample is their sum)
MEASURES: dict[str, tuple[str, ...]] = {
    "ref_mean_nll": ("reference",), "ref_mean_entropy": ("reference",),
    "gnll": ("greedy",), "gnll_mean": ("greedy",),
    "sampling_entropy": ("sampling",),
    **{f"lca_{v}_{src}": ("sampling", {"greedy": "greedy", "reference": "reference"}[src])
       for v in ("full", "pointwise", "v1") for src in ("greedy", "reference")},
    "token_sar": ("sampling", "sar_token_relevance"), "sentence_sar": ("sampling", "sar_pairwise"),
    "sar": ("sampling", "sar_token_relevance", "sar_pairwise"),
    "local_rating": ("local",),
}
# task -> (sets, label, positive class description)
TASKS: dict[str, dict] = {
    "controlled: high vs low entropy": {"sets": ("arith", "open"), "label": "high_entropy", "kind": "ual"},
    "real: role-play vs GSM8K": {"sets": ("gsm8k", "roleplay"), "label": "high_entropy", "kind": "ual"},
    "controlled arithmetic: wrong greedy answer": {"sets": ("arith",), "label": "wrong", "kind": "uq"},
    "GSM8K: wrong greedy answer": {"sets": ("gsm8k",), "label": "wrong", "kind": "uq"},
}


@dataclass
class BenchConfig:
    """Settings of the elicitation benchmark (``benchmarks/elicit_bench.yaml`` holds the reported run's)."""

    model: str = _f("smollm2-135m", "the model every measure uses (a built-in name, folder or hub id).")
    n_arith: int = _f(1000, "controlled arithmetic items (low-entropy family; the correctness task needs >= 1000, "
                      "issue 20).")
    n_open: int = _f(200, "controlled open-prompt items (high-entropy family, known answer distribution).")
    n_gsm8k: int = _f(200, "GSM8K train problems (seeded sample): real low-entropy set and correctness task.")
    n_roleplay: int = _f(200, "GPTeacher role-play instructions (seeded sample): real high-entropy set.")
    n_full: int = _f(60, "items per set (the first in each set's seeded order) that also get the sampling-based "
                     "measures (sampling entropy, LCA, SAR) and the local rating; the others get the single-pass "
                     "measures only (reference NLL/entropy, G-NLL). Set from the cost measured on a slice: "
                     "about 26 s per controlled item for all measures against 3 s for the single-pass ones (wall "
                     "clock on the shared 2-core machine).")
    gsm8k_file: str = _f("gsm8k/train.jsonl", "GSM8K file, resolved under the data root (UAL_DATA_DIR).")
    roleplay_file: str = _f("gpteacher/roleplay-instruct.json", "GPTeacher role-play file, under the data root.")
    seed: int = _f(1337, "seed of the item samples, the controlled generator and the K samples (authors' seed).")
    num_samples: int = _f(5, "K sampled replies per item. Default 5 (SAR's K).")
    sample_temperature: float = _f(1.0, "temperature of the K samples. Default 1 (the model's own distribution).")
    max_new_tokens: dict = _f({"arith": 96, "open": 48, "gsm8k": 128, "roleplay": 64},
                              "longest greedy/sampled reply per set, tokens. Our choices: arith 96 (on a slice, 7 of 8 "
                              "greedy answers were unfinished at 48), open 48 (answers are a few words), gsm8k 128 "
                              "(the evaluate stage's budget), roleplay 64 (study-real's sampling elicitation); "
                              "token-SAR's cost grows with the square of it.")
    max_length: int = _f(512, "longest prompt + reply in tokens (GPTeacher prompts are the longest). Our choice.")
    batch_size: int = _f(8, "items per generate/forward call. Our choice for a CPU.")
    template: str = _f("chat", "prompt format (ual.common.formatting); SmolLM2's ChatML.")
    sar_similarity: str = _f("all-minilm-l6-v2", "SAR similarity model (ual.elicit.sar.Similarity).")
    sar_temperature: float = _f(0.001, "sentence-SAR temperature t. Default 0.001 (Duan et al. 2024).")
    local_rating: bool = _f(True, "also run the 0-99 rating prompt (local backend) on every item.")
    threads: int = _f(2, "torch CPU threads. Default 2: this machine's cores.")
    n_boot: int = _f(1000, "bootstrap resamples for the intervals.")


# ----------------------------------------------------------------------------------------------- items

def build_items(cfg: BenchConfig) -> list[dict]:
    """The benchmark's items: ``{"set", "record", "known_entropy", "high_entropy", "full"}``, ids prefixed by set
    (``full``: the item gets every measure, see ``BenchConfig.n_full``)."""
    from ual.common.paths import resolve_data_path
    from ual.data.controlled import HIGH_SOURCE, make_dataset
    from ual.data.records import load_file

    train, _, spec = make_dataset(cfg.n_arith, cfg.n_open, 0, 0, seed=cfg.seed)
    items = []
    seen = {"arith": 0, "open": 0}
    for r in train:
        high = r.source == HIGH_SOURCE
        name = "open" if high else "arith"
        items.append({"set": name, "record": r, "high_entropy": int(high), "full": seen[name] < cfg.n_full,
                      "known_entropy": spec["categories"][r.category]["entropy_nats"] if high else 0.0})
        seen[name] += 1
    for name, file, n, high in (("gsm8k", cfg.gsm8k_file, cfg.n_gsm8k, 0), ("roleplay", cfg.roleplay_file,
                                                                            cfg.n_roleplay, 1)):
        if n == 0:
            continue
        path = resolve_data_path(file)
        if path is None:
            raise InputError(None, None, f"{name}_file", f"{file!r} not found under the data root (set UAL_DATA_DIR)")
        recs = load_file(path, source=name)
        if n > len(recs):
            raise InputError(path, None, f"n_{name}", f"asks for {n} items, the file has {len(recs)}")
        for i, r in enumerate(random.Random(f"{cfg.seed}-bench-{name}").sample(recs, n)):
            items.append({"set": name, "record": dataclasses.replace(r, id=f"{name}-{r.id}"), "high_entropy": high,
                          "known_entropy": None, "full": i < cfg.n_full})
    return items


def schedule(items: Sequence[dict], batch_size: int, shard: tuple[int, int] = (0, 1)) -> list[list[dict]]:
    """Batches of one set and tier each: first every ``full`` batch, then the single-pass ones; within a tier the
    sets are interleaved by progress fraction (batch i of n sits at (i + 0.5)/n). So a run stopped early has every
    measure on a proportional share of every set first (the UAL question), and the correctness tasks grow after.

    ``shard=(k, n)``: only the batches of shard k, batch i of a set's tier going to shard (i + the set's index in
    :data:`SETS`) mod n, so that every set is split evenly between the shards and small sets do not all land on one
    (the split depends on the items only, not on progress)."""
    k_shard, n_shard = shard
    keyed = []
    for g, (s, full) in enumerate((s, f) for s in SETS for f in (True, False)):
        xs = [it for it in items if it["set"] == s and it["full"] == full]
        batches = [xs[i: i + batch_size] for i in range(0, len(xs), batch_size)]
        keyed += [(not full, (i + 0.5) / len(batches), g, b) for i, b in enumerate(batches)
                  if (i + SETS.index(s)) % n_shard == k_shard]
    return [t[-1] for t in sorted(keyed, key=lambda t: t[:3])]


# ----------------------------------------------------------------------------------------------- measuring

class Measurer:
    """Computes every measure for a batch of items with one loaded model (shared by the backends it drives)."""

    def __init__(self, cfg: BenchConfig):
        from ual.elicit.backends.lm import LocalBackend, SarBackend
        from ual.elicit.config import ElicitConfig

        self.cfg = cfg
        base = ElicitConfig(backend="sar", model=cfg.model, template=cfg.template, max_length=cfg.max_length,
                            batch_size=cfg.batch_size, num_samples=cfg.num_samples,
                            sample_temperature=cfg.sample_temperature, seed=cfg.seed,
                            sar_similarity=cfg.sar_similarity, sar_temperature=cfg.sar_temperature, progress=False)
        missing = set(SETS) - set(cfg.max_new_tokens)
        if missing:
            raise InputError(None, None, "max_new_tokens", f"needs a value for every set; missing {sorted(missing)}")
        self.sar = {s: SarBackend(dataclasses.replace(base, max_new_tokens=int(cfg.max_new_tokens[s]))) for s in SETS}
        self.local = LocalBackend(dataclasses.replace(base, backend="local")) if cfg.local_rating else None
        lm, tok = self.sar[SETS[0]]._load()
        self.similarity = self.sar[SETS[0]].similarity()
        for b in (*self.sar.values(), self.local):
            if b is not None:
                b._lm, b._tok = lm, tok  # one model and one embedder in memory
                b._sim = self.similarity
        self.tok = tok

    def settings(self) -> dict:
        """Everything that changes a row (a resumed run with other settings is refused)."""
        c = self.cfg
        return {"bench_version": BENCH_VERSION, "model": c.model, "seed": c.seed, "num_samples": c.num_samples,
                "sample_temperature": c.sample_temperature, "max_new_tokens": dict(c.max_new_tokens),
                "max_length": c.max_length, "template": c.template,
                "batch_size": c.batch_size, "sar_similarity": self.similarity.describe(),
                "sar_temperature": c.sar_temperature, "local_rating": c.local_rating,
                "lca": "reconstruction-v2 (full, pointwise) and reconstruction-v1"}

    def measure(self, batch: Sequence[dict]) -> list[dict]:
        """One row per item: the correctness of the greedy answer, the single-pass measures, and for a ``full``
        batch every other measure (else None); per-part seconds per sample."""
        from ual.elicit.backends.lm import lca_row, sar_row

        recs = [it["record"] for it in batch]
        backend = self.sar[batch[0]["set"]]
        n = len(batch)
        secs: dict[str, float] = {}  # wall-clock seconds per sample, per part
        cpu: dict[str, float] = {}  # CPU seconds (all threads of this process) per sample: robust to other load

        def timed(part, fn):
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            secs[part] = secs.get(part, 0.0) + (time.perf_counter() - t0) / n
            cpu[part] = cpu.get(part, 0.0) + (time.process_time() - c0) / n
            return out

        ref = timed("reference", lambda: backend.reference_labels(recs))
        greedy = timed("greedy", lambda: backend.greedy_labels(recs))
        if not batch[0]["full"]:
            rows = [self._row(it, g, rf, None, None, None) for it, g, rf in zip(batch, greedy, ref)]
            for row in rows:
                row.update(seconds=dict(secs), cpu_seconds=dict(cpu))
            return rows
        samples = timed("sampling", lambda: backend.sample(recs))
        ratings = timed("local", lambda: list(self.local.run(recs, False))) if self.local else [None] * n
        rows = []
        for k, (it, r) in enumerate(zip(batch, recs)):
            texts = [self.tok.decode(x["ids"], skip_special_tokens=True) for x in samples[k]]
            by_src = {src: lca_row(r, texts, samples[k], lab, "full") for src, lab in
                      (("greedy", greedy[k]), ("reference", ref[k]))}
            sar = sar_row(self.similarity, self.tok, r.prompt, samples[k], self.cfg.sar_temperature)
            for part in ("token_relevance", "pairwise"):
                secs[f"sar_{part}"] = secs.get(f"sar_{part}", 0.0) + sar.pop(f"seconds_{part}") / n
                cpu[f"sar_{part}"] = cpu.get(f"sar_{part}", 0.0) + sar.pop(f"cpu_seconds_{part}") / n
            rows.append(self._row(it, greedy[k], ref[k], by_src, sar, ratings[k], texts, samples[k]))
        for row in rows:
            row.update(seconds=dict(secs), cpu_seconds=dict(cpu))
        return rows

    def _row(self, it: dict, g: dict, rf: dict, by_src: dict | None, sar: dict | None, rating: dict | None,
             texts: Sequence[str] = (), samples: Sequence[dict] = ()) -> dict:
        from ual.evaluate.metrics.answers import is_correct

        r = it["record"]
        row = {"id": r.id, "set": it["set"], "full": it["full"], "source": r.source, "category": r.category,
               "high_entropy": it["high_entropy"], "known_entropy": it["known_entropy"], "gold": r.answer,
               "correct": None if r.answer is None else int(is_correct(g["text"], r.answer, "flexible")),
               "ref_mean_nll": rf["nll"] / rf["len"], "ref_mean_entropy": sum(rf["token_entropy"]) / rf["len"],
               "ref_len": rf["len"], "ref_truncated": rf["truncated"],
               "gnll": g["nll"], "gnll_mean": g["nll"] / g["len"], "greedy_len": g["len"],
               "greedy_finished": g["finished"], "greedy_text": g["text"]}
        row.update({m: None for m in MEASURES if m not in row})
        if by_src is not None:
            row.update({"sampling_entropy": by_src["greedy"]["predictive_entropy"],
                        **{f"lca_{v}_{src}": by_src[src][f"lca_{v}"] for v in ("full", "pointwise", "v1")
                           for src in ("greedy", "reference")},
                        **{f"label_confidence_{src}": by_src[src]["label_confidence"] for src in by_src},
                        **{f"label_agreement_{src}": by_src[src]["label_agreement"] for src in by_src},
                        "samples": [{"text": t, "class": c, "nll": x["nll"], "len": x["len"]}
                                    for t, c, x in zip(texts, by_src["greedy"]["classes"], samples)]})
        if sar is not None:
            row.update(token_sar=sar["token_sar"], sentence_sar=sar["sentence_sar"], sar=sar["sar"],
                       sar_similarity_model=sar["sar_similarity_model"])
        if rating is not None:
            row.update(local_rating=rating["score"], local_number_mass=rating["number_mass"])
        row["method"] = ("LCA reconstruction-v2 (full, pointwise) and reconstruction-v1; SAR with a bi-encoder "
                         "cosine stand-in" if it["full"] else "single-pass measures only")
        return row


def _item_files(out: Path) -> list[Path]:
    return sorted(out.glob("items*.jsonl"))


def run_items(cfg: BenchConfig, out: str | Path, *, progress: bool = True, items: Sequence[dict] | None = None,
              shard: tuple[int, int] = (0, 1)) -> dict:
    """Measure every item not yet in ``out/items*.jsonl`` (appended per item as each batch finishes; resumable).

    ``shard=(i, n)``: this process takes shard i of n of the schedule (:func:`schedule`) and appends to
    ``items.shard<i>of<n>.jsonl`` (``items.jsonl`` when n = 1), so n processes can share the work (one per core);
    finished ids are read from every ``items*.jsonl``, so any mix of sharded and plain runs resumes. Returns
    counts."""
    import torch

    from ual.common.io import JsonlAppender, check_writable, iter_jsonl
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_writable(out)
    items = build_items(cfg) if items is None else items
    i_shard, n_shard = shard
    if not 0 <= i_shard < n_shard:
        raise InputError(None, None, "shard", f"expected i/n with 0 <= i < n, got {i_shard}/{n_shard}")
    path = out / ("items.jsonl" if n_shard == 1 else f"items.shard{i_shard}of{n_shard}.jsonl")
    done: dict[str, bool] = {}  # id -> the row has every measure
    old_settings = None
    for p in _item_files(out):
        for line, row in iter_jsonl(p, tolerate_torn=True):
            done[row["id"]] = done.get(row["id"], False) or bool(row.get("full"))
            old_settings = old_settings or (p, line, row.get("settings"))
    # an item is done when a row of at least its tier exists (raising n_full re-measures the promoted items). The
    # shard split is taken on ALL items, so it does not move as other shards finish items.
    todo = [[it for it in b if not (it["record"].id in done and (done[it["record"].id] or not it["full"]))]
            for b in schedule(items, cfg.batch_size, shard)]
    todo = [b for b in todo if b]
    summary = {"items": len(items), "done_before": sum(1 for it in items if it["record"].id in done),
               "measured": 0, "seconds": 0.0}
    if not todo:
        return summary
    torch.set_num_threads(cfg.threads)
    m = Measurer(cfg)
    settings = m.settings()
    if old_settings and old_settings[2] != settings:
        raise InputError(old_settings[0], old_settings[1], "settings", f"rows made with {old_settings[2]!r}; this "
                         f"run uses {settings!r}. Use another --out folder rather than mixing.")
    t0 = time.perf_counter()
    with JsonlAppender(path) as f, tqdm(total=len(items), initial=summary["done_before"], unit="item",
                                        desc="elicit-bench", disable=not progress, dynamic_ncols=True,
                                        mininterval=30, file=sys.stderr) as bar:
        for batch in todo:
            for row in m.measure(batch):
                f.write({**row, "settings": settings})
            summary["measured"] += len(batch)
            bar.update(len(batch))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


# ----------------------------------------------------------------------------------------------- analysis

def read_items(path: str | Path) -> list[dict]:
    """The latest row per id of an ``items.jsonl``, or of every ``items*.jsonl`` when ``path`` is a folder (a torn
    line from a kill is skipped; a row with every measure is never replaced by a single-pass one)."""
    from ual.common.io import iter_jsonl

    path = Path(path)
    rows: dict[str, dict] = {}
    for _, row in (x for p in (_item_files(path) if path.is_dir() else [path]) for x in iter_jsonl(p, tolerate_torn=True)):
        if not (rows.get(row["id"], {}).get("full") and not row.get("full")):  # never replace a full row
            rows[row["id"]] = row
    return list(rows.values())


def task_rows(rows: Sequence[dict], task: str) -> tuple[list[dict], list[int]]:
    """The rows of a task and their labels (1 = the event the score should flag)."""
    spec = TASKS[task]
    sel = [r for r in rows if r["set"] in spec["sets"]]
    if spec["label"] == "wrong":
        sel = [r for r in sel if r.get("correct") is not None]
        return sel, [1 - int(r["correct"]) for r in sel]
    return sel, [int(r["high_entropy"]) for r in sel]


def analyse(rows: Sequence[dict], *, n_boot: int = 1000, seed: int = 1337) -> list[dict]:
    """One record per (task, measure): ``n``, ``positives``, AUROC / AUPRC / AUARC with intervals (AUPRC and AUARC
    for the correctness tasks), ``spearman_known_entropy`` with its interval (controlled family task), the base
    rate, and the measure's mean seconds per sample. Items whose measure is missing are left out of that row."""
    import numpy as np

    from ual.evaluate.metrics.uq import auarc, auprc, auroc, bootstrap_ci, spearman

    out = []
    for task, spec in TASKS.items():
        sel, y = task_rows(rows, task)
        for measure in MEASURES:
            keep = [i for i, r in enumerate(sel) if r.get(measure) is not None]
            if len(keep) < 2:
                continue
            yy = np.array([y[i] for i in keep])
            ss = np.array([float(sel[i][measure]) for i in keep])
            rec = {"task": task, "kind": spec["kind"], "measure": measure, "n": len(keep), "positives": int(yy.sum()),
                   **{f"{key}_per_sample": float(np.mean([sum(sel[i][key].get(p, 0.0) for p in MEASURES[measure])
                                                           for i in keep if key in sel[i]] or [math.nan]))
                      for key in ("seconds", "cpu_seconds")}}
            rec["auroc"], rec["auroc_lo"], rec["auroc_hi"] = bootstrap_ci(auroc, yy, ss, n_boot=n_boot, seed=seed)
            if spec["kind"] == "uq":
                rec["accuracy"] = float(1 - yy.mean())
                rec["auprc"], rec["auprc_lo"], rec["auprc_hi"] = bootstrap_ci(auprc, yy, ss, n_boot=n_boot, seed=seed)
                rec["auarc"], rec["auarc_lo"], rec["auarc_hi"] = bootstrap_ci(
                    lambda a, b: auarc(1 - a, b), yy, ss, n_boot=n_boot, seed=seed)
            if spec["sets"] == ("arith", "open"):
                ent = np.array([float(sel[i]["known_entropy"]) for i in keep])
                est, lo, hi = bootstrap_ci(lambda e, s: spearman(s, e), ent, ss, n_boot=n_boot, seed=seed)
                rec.update(spearman_known_entropy=est, spearman_lo=lo, spearman_hi=hi)
            out.append(rec)
    return out


def cost_table(rows: Sequence[dict], key: str = "cpu_seconds") -> dict[str, dict]:
    """Mean seconds per sample of each measure (the sum of the timed parts it needs) over the rows that have it,
    per set (``all`` = every row). ``key``: ``cpu_seconds`` (CPU time of all threads: what the measure costs,
    whatever else runs) or ``seconds`` (wall clock under the load of the run)."""
    import numpy as np

    groups = {"all": list(rows), **{s: [r for r in rows if r["set"] == s] for s in SETS}}
    out = {}
    for g, rs in groups.items():
        if not rs:
            continue
        # rows without this timing (made before it was recorded) are left out, not counted as free
        out[g] = {m: float(np.mean([sum(r[key].get(p, 0.0) for p in parts) for r in rs
                                    if r.get(m) is not None and key in r]))
                  for m, parts in MEASURES.items() if any(r.get(m) is not None and key in r for r in rs)}
    return out


def _fmt(v, lo=None, hi=None, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    s = f"{v:.{digits}f}"
    return s if lo is None or math.isnan(lo) else f"{s} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown_table(records: Sequence[dict], costs: dict[str, dict]) -> str:
    """The results table: one row per measure, a column per task (AUROC [95 % CI]), Spearman, AUPRC/AUARC of the
    correctness tasks, and CPU seconds per sample (``costs``: :func:`cost_table`)."""
    by = {(r["task"], r["measure"]): r for r in records}
    tasks = list(TASKS)
    head = ["measure", *[f"AUROC {t}" for t in tasks], "Spearman with known entropy (controlled)",
            *[f"AUPRC {t}" for t in tasks if TASKS[t]["kind"] == "uq"],
            *[f"AUARC {t}" for t in tasks if TASKS[t]["kind"] == "uq"], "CPU s/sample"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in MEASURES:
        cells = [f"`{m}`"]
        cells += [_fmt(by[(t, m)]["auroc"], by[(t, m)]["auroc_lo"], by[(t, m)]["auroc_hi"]) if (t, m) in by else "n/a"
                  for t in tasks]
        fam = by.get((tasks[0], m))
        cells.append(_fmt(fam["spearman_known_entropy"], fam["spearman_lo"], fam["spearman_hi"]) if fam else "n/a")
        for key in ("auprc", "auarc"):
            cells += [_fmt(by[(t, m)][key], by[(t, m)][f"{key}_lo"], by[(t, m)][f"{key}_hi"]) if (t, m) in by else
                      "n/a" for t in tasks if TASKS[t]["kind"] == "uq"]
        cells.append(_fmt(costs.get("all", {}).get(m), digits=2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def roc_figure(rows: Sequence[dict], path: str | Path, measures: Sequence[str] | None = None) -> Path:
    """ROC curves per task (one panel each, one curve per measure) saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    measures = list(measures or MEASURES)
    fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 5.4), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, task in zip(axes[0], TASKS):
        sel, y = task_rows(rows, task)
        for j, m in enumerate(measures):
            keep = [i for i, r in enumerate(sel) if r.get(m) is not None]
            yy = [y[i] for i in keep]
            if len(set(yy)) < 2:
                continue
            fpr, tpr, _ = roc_curve(yy, [float(sel[i][m]) for i in keep])
            ax.plot(fpr, tpr, color=cmap(j % 20), lw=1.2, ls="-" if j < 10 else "--", label=m)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        pos = sum(y)
        ax.set_title(f"{task}\n(n {len(y)}, positives {pos})", fontsize=9)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(out: str | Path, figures: str | Path | None, *, n_boot: int = 1000, seed: int = 1337) -> dict:
    """Analyse ``out/items.jsonl`` into ``table.csv``, ``table.md``, ``summary.json`` (and the ROC figure)."""
    import pandas as pd

    from ual.common.io import atomic_write_json, atomic_write_text

    out = Path(out)
    rows = read_items(out)
    if not rows:
        raise InputError(out, None, "id", "no measured items yet (no items*.jsonl rows)")
    records = analyse(rows, n_boot=n_boot, seed=seed)
    costs = cost_table(rows)
    pd.DataFrame(records).to_csv(out / "table.csv", index=False)
    n_by = {t: {m: next((r["n"] for r in records if r["task"] == t and r["measure"] == m), 0) for m in MEASURES}
            for t in TASKS}
    counts = {s: sum(r["set"] == s for r in rows) for s in SETS}
    md = markdown_table(records, costs) + "\n\nItems per task (single-pass measures / sampling-based measures): " + \
        "; ".join(f"{t}: {n_by[t]['gnll']} / {n_by[t]['sar']}" for t in TASKS) + "."
    atomic_write_text(out / "table.md", md + "\n")
    acc = {s: (sum(r["correct"] for r in rows if r["set"] == s and r["correct"] is not None),
               sum(1 for r in rows if r["set"] == s and r["correct"] is not None)) for s in ("arith", "gsm8k")}
    summary = {"bench_version": BENCH_VERSION, "items": counts, "settings": rows[0].get("settings"),
               "greedy_accuracy": {s: {"correct": c, "n": n} for s, (c, n) in acc.items()},
               "n_boot": n_boot, "seed": seed, "metrics": records, "cpu_seconds_per_sample": costs,
               "wall_seconds_per_sample": cost_table(rows, "seconds")}
    atomic_write_json(out / "summary.json", summary)
    if figures:
        summary["figure"] = str(roc_figure(rows, Path(figures) / "roc.png"))
    return summary


def rescore_lca(path: str | Path, positive_prefix: str = "roleplay", *, n_boot: int = 1000, seed: int = 1337) -> dict:
    """Every LCA reconstruction recomputed from a saved ``sampling`` scores file (its samples' classes, NLLs and
    lengths and the label's class and confidence; no model runs), and each one's AUROC [95 % CI] for telling ids
    starting with ``positive_prefix`` from the rest. Also the v1 parts (H(P), KL) and the predictive entropy."""
    import numpy as np

    from ual.elicit.lca import lca_reconstruction
    from ual.elicit.scoring import latest_rows
    from ual.evaluate.metrics.uq import auroc, bootstrap_ci

    cols: dict[str, list[float]] = {k: [] for k in ("lca_full", "lca_pointwise", "lca_v1", "lca_entropy", "lca_kl",
                                                    "predictive_entropy")}
    y = []
    for i, (line, row) in latest_rows(path).items():
        if row.get("score") is None or "samples" not in row:
            continue
        smp = row["samples"]
        q = row["label_confidence"]  # = exp(-NLL(g) / len(g)); len 1 and NLL -log q give the same confidence
        out = lca_reconstruction([x["class"] for x in smp], [x["nll"] for x in smp], [x["len"] for x in smp],
                                 row["label_class"], -math.log(q), 1)
        for k in cols:
            cols[k].append(row["predictive_entropy"] if k == "predictive_entropy" else out[k])
        y.append(int(i.startswith(positive_prefix)))
    res = {"file": str(path), "n": len(y), "positives": int(sum(y)), "n_boot": n_boot, "auroc": {}}
    for k, v in cols.items():
        est, lo, hi = bootstrap_ci(auroc, np.array(y), np.array(v), n_boot=n_boot, seed=seed)
        res["auroc"][k] = {"estimate": est, "lo": lo, "hi": hi}
    return res


# ----------------------------------------------------------------------------------------------- CLI

def load_bench_config(path: str | Path | None, overrides: Sequence[str] = ()) -> BenchConfig:
    """Defaults < the YAML file (its ``elicit_bench`` section if it has one) < ``key=value`` overrides."""
    from ual.common.config import build_config, load_yaml, parse_override

    values: dict = {}
    if path:
        data = load_yaml(path)
        values.update(data.get("elicit_bench", data))
    for o in overrides:
        k, v = parse_override(o)
        values[k] = v
    return build_config(BenchConfig, values, source=path or "command line")


def configure_elicit_bench(p) -> None:
    p.add_argument("--config", default="benchmarks/elicit_bench.yaml",
                   help="YAML with BenchConfig fields (default: the reported run's, benchmarks/elicit_bench.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one field")
    p.add_argument("--out", default="results/elicit-bench", help="items.jsonl and the tables (resumes here)")
    p.add_argument("--figures", default="figures/elicit-bench", help="where the ROC figure goes ('' = none)")
    p.add_argument("--analyse-only", action="store_true", help="only rebuild tables and figure from items.jsonl")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--rescore-lca", metavar="SCORES", help="instead: recompute every LCA variant from a saved sampling "
                   "scores file (no model) and write its AUROC for role-play vs the rest to <out>/lca_rescore.json")
    p.add_argument("--shard", default="0/1", metavar="I/N", help="take shard I of N of the batches, every set split "
                   "evenly (run N processes, one per core; each appends to its own items.shard<I>of<N>.jsonl); "
                   "0/1 = all")


def run_elicit_bench(args) -> int:
    cfg = load_bench_config(args.config, args.set)
    if args.rescore_lca:
        from ual.common.io import atomic_write_json

        res = rescore_lca(args.rescore_lca, n_boot=cfg.n_boot, seed=cfg.seed)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.out) / "lca_rescore.json", res)
        print(json.dumps(res, indent=1))
        return 0
    if not args.analyse_only:
        try:
            shard = tuple(int(x) for x in args.shard.split("/"))
            assert len(shard) == 2
        except (ValueError, AssertionError):
            raise InputError(None, None, "--shard", f"expected I/N, e.g. 0/2, got {args.shard!r}") from None
        s = run_items(cfg, args.out, progress=not args.no_progress, shard=shard)
        print(f"elicit-bench: {s['items']} items, {s['done_before']} done before, {s['measured']} measured now "
              f"in {s['seconds']} s", file=sys.stderr)
    summary = write_results(args.out, args.figures or None, n_boot=cfg.n_boot, seed=cfg.seed)
    print((Path(args.out) / "table.md").read_text())
    print(json.dumps({"items": summary["items"], "greedy_accuracy": summary["greedy_accuracy"]}))
    return 0

