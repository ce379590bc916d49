"""Data stage: build a run's training set and evaluation sets into ``<run_dir>/data/``.

Two kinds:
- ``controlled``: the generated mixed-entropy benchmark (``ual.data.controlled``; known answer distributions, no
  download): ``train.jsonl``, ``eval_controlled.jsonl``, ``controlled_spec.json``.
- ``mix``: real sources mixed with per-source sizes (``ual.data.mix``) into ``train.jsonl``, plus evaluation sets
  ``eval_<name>.jsonl`` drawn from files (or hub ids) with training ids excluded, so nothing is evaluated on a
  sample it was trained on, and probe sets ``probe_<name>.jsonl`` (texts for the clustering analysis only). With
  ``select: deita`` one training source is cut down by the Deita selection (``ual.data.select``) before mixing;
  its scores, walk and kept ids go to ``data/select/`` (or ``select_dir``).
"""
from __future__ import annotations

import random
from pathlib import Path

from ual.common.errors import InputError
from ual.data.config import DataConfig


def run(cfg: DataConfig, run_dir: str | Path, *, progress: bool = True) -> dict:
    """Write the data files for ``cfg`` under ``run_dir/data`` and return ``{name: path}`` plus counts."""
    from ual.data.records import mix, save_records
    from ual.common.io import atomic_write_json, check_writable

    data_dir = Path(run_dir) / "data"
    check_writable(data_dir)
    out: dict = {"files": {}, "counts": {}}
    files: dict = {}
    if cfg.kind == "controlled":
        from ual.data.controlled import make_dataset

        train, evalset, spec = make_dataset(cfg.n_train_low, cfg.n_train_high, cfg.n_eval_low, cfg.n_eval_high,
                                            seed=cfg.seed, distribution=cfg.distribution)
        files = {"train": data_dir / "train.jsonl", "eval_controlled": data_dir / "eval_controlled.jsonl",
                 "controlled_spec": data_dir / "controlled_spec.json"}
        save_records(files["train"], train)
        save_records(files["eval_controlled"], evalset)
        atomic_write_json(files["controlled_spec"], spec)
        out["counts"] = {"train": len(train), "eval_controlled": len(evalset)}
    else:
        if not cfg.train_sources:
            raise InputError(None, None, "data.train_sources", "kind 'mix' needs at least one training source")
        selector = None
        if cfg.select == "deita":
            from ual.data.select import select, select_folder

            folder = select_folder(cfg, run_dir)

            def selector(spec, recs):
                return select(recs, cfg, folder, progress=progress) if _name(spec) == cfg.select_source else recs

            files["select"] = folder / "selection.json"
        train = mix([_source_spec(s) for s in cfg.train_sources], seed=cfg.seed, select=selector)
        files["train"] = data_dir / "train.jsonl"
        save_records(files["train"], train)
        out["counts"]["train"] = len(train)
        seen_prompts = {r.prompt for r in train}
        for kind, sets in (("eval", cfg.eval_sets), ("probe", cfg.probe_sets)):
            for k, es in enumerate(sets):
                name, recs, removed = _draw_set(es, f"data.{kind}_sets[{k}]", seen_prompts, cfg.seed, kind)
                files[f"{kind}_{name}"] = data_dir / f"{kind}_{name}.jsonl"
                save_records(files[f"{kind}_{name}"], recs)
                out["counts"][f"{kind}_{name}"] = len(recs)
                if removed:
                    out.setdefault("removed_training_prompts", {})[f"{kind}_{name}"] = removed
    out["files"] = {k: str(v) for k, v in files.items()}
    return out


def _name(spec) -> str:
    """A training source's name: its ``source``, else its path (as DataConfig's select_source check reads it)."""
    return spec.source or spec.path


def _source_spec(s: dict, where: str = "data.train_sources"):
    from ual.data.records import SourceSpec

    try:
        return SourceSpec(**s)
    except TypeError:
        bad = sorted(set(s) - set(SourceSpec.__dataclass_fields__))
        raise InputError(None, None, f"{where}.{bad[0] if bad else ''}", "unknown key; known: "
                         f"{', '.join(SourceSpec.__dataclass_fields__)}") from None


def _draw_set(es: dict, where: str, seen_prompts: set, seed: int, kind: str) -> tuple[str, list, int]:
    """An evaluation or probe set: its records minus any whose prompt is a training prompt, then ``n`` drawn
    (seeded by set name). Returns (name, records, how many were removed as training prompts)."""
    es = dict(es)
    name = es.pop("name", None)
    if not name:
        raise InputError(None, None, f"{where}.name", "is missing")
    n = es.pop("n", None)
    spec = _source_spec({**es, "source": es.get("source") or name}, where)
    every = spec.load()
    recs = [r for r in every if r.prompt not in seen_prompts]
    removed = len(every) - len(recs)
    if n is not None:
        if n > len(recs):
            raise InputError(spec.path, None, f"{where}.n",
                             f"asks for {n} samples but {len(recs)} are left after removing training prompts")
        rng = random.Random(f"{seed}-eval-{name}" if kind == "eval" else f"{seed}-{kind}-{name}")
        recs = [recs[i] for i in sorted(rng.sample(range(len(recs)), n))]
    return name, recs, removed


# Rows of the hub sources the paper profiles name, from their dataset cards, so that a dry run (which downloads
# nothing) can say what it will build. Keyed by (hub id, split or data file).
HUB_ROWS = {("meta-math/MetaMathQA", "train"): 395_000, ("hkust-nlp/deita-6k-v0", "train"): 6_000,
            ("openai/gsm8k", "test"): 1_319, ("openai/gsm8k", "train"): 7_473,
            ("tatsu-lab/alpaca_eval", "eval"): 805, ("GAIR/lima", "test.jsonl"): 300,
            ("GAIR/lima", "train.jsonl"): 1_030}


def source_rows(spec) -> tuple[int | None, str]:
    """How many rows a source spec selects (its ``rows`` slice applied, ``n`` not drawn) and where that number
    comes from; (None, reason) when it is unknown without downloading. Counts a local file's rows."""
    from ual.common.paths import resolve_data_path
    from ual.data.records import read_rows, row_range

    local = resolve_data_path(spec.path)
    if local is not None:
        total, origin = sum(1 for _ in read_rows(local)), f"local file {local}"
    elif str(spec.path).endswith((".json", ".jsonl")) or str(spec.path).startswith((".", "/")) \
            or str(spec.path).count("/") > 1:  # what ual.data.load takes for a file, not a hub id
        from ual.common.paths import data_root

        raise InputError(spec.path, None, "path", f"file not found (looked in the working directory and the data "
                         f"root {data_root()}; set UAL_DATA_DIR)")
    else:
        total = HUB_ROWS.get((spec.path, spec.data_files or spec.split))
        if total is None:
            return None, f"hub id {spec.path} (needs network; size unknown here)"
        origin = f"hub id {spec.path} (needs network; {total} rows per its dataset card)"
    return len(row_range(spec.rows, total, where=spec.path)), origin


def plan(cfg: DataConfig) -> dict:
    """What the data stage will build for ``cfg``, without loading a model or downloading: each training source
    (pool, draw, selection, final count), the evaluation and probe sets, and the training-set size (None when a
    hub source's size is not known here)."""
    from ual.data.select import plan as select_plan

    if cfg.kind == "controlled":
        return {"kind": "controlled", "train": cfg.n_train_low + cfg.n_train_high,
                "eval_controlled": cfg.n_eval_low + cfg.n_eval_high}
    out: dict = {"kind": "mix", "train_sources": [], "eval_sets": [], "probe_sets": []}
    total: int | None = 0
    for s in cfg.train_sources:
        spec = _source_spec(s)
        rows, origin = source_rows(spec)
        pool = spec.n if spec.n is not None else rows
        entry = {"source": spec.source or spec.path, "from": origin, "rows": spec.rows, "pool": pool}
        count = pool
        if cfg.select == "deita" and _name(spec) == cfg.select_source:
            entry["selection"] = select_plan(cfg, pool)
            count = cfg.select_target if pool is None else min(pool, cfg.select_target)
        entry["samples"] = count
        total = None if total is None or count is None else total + count
        out["train_sources"].append(entry)
    out["train"] = total
    for kind, sets in (("eval", cfg.eval_sets), ("probe", cfg.probe_sets)):
        for es in sets:
            es = dict(es)
            name, n = es.pop("name", None), es.pop("n", None)
            rows, origin = source_rows(_source_spec({**es, "source": es.get("source") or name}))
            out[f"{kind}_sets"].append({"name": name, "file": f"data/{kind}_{name}.jsonl", "from": origin,
                                        "rows": es.get("rows"), "samples": n if n is not None else rows,
                                        "note": "minus any sample whose prompt is a training prompt"})
    return out


def data_summary(run_dir: str | Path):
    """A table (pandas DataFrame) of the run's data files: samples per file and source, mean response length."""
    import pandas as pd

    from ual.data.records import load_records

    rows = []
    for p in sorted((Path(run_dir) / "data").glob("*.jsonl")):
        for r in load_records(p):
            rows.append({"file": p.stem, "source": r.source, "category": r.category or "",
                         "response_chars": len(r.response or "")})
    if not rows:
        return pd.DataFrame(columns=["file", "source", "n", "mean_response_chars"])
    df = pd.DataFrame(rows)
    return (df.groupby(["file", "source"]).agg(n=("source", "size"), mean_response_chars=("response_chars", "mean"))
            .reset_index())
