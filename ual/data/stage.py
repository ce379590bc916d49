"""Data stage: build a run's training set and evaluation sets into ``<run_dir>/data/``.

Two kinds:
- ``controlled``: the generated mixed-entropy benchmark (``ual.data.controlled``; known answer distributions, no
  download): ``train.jsonl``, ``eval_controlled.jsonl``, ``controlled_spec.json``.
- ``mix``: real sources mixed with per-source sizes (``ual.data.mix``) into ``train.jsonl``, plus evaluation sets
  ``eval_<name>.jsonl`` drawn from files (or hub ids) with training ids excluded, so nothing is evaluated on a
  sample it was trained on.
"""
from __future__ import annotations

import random
from pathlib import Path

from ual.common.errors import InputError
from ual.data.config import DataConfig


def run(cfg: DataConfig, run_dir: str | Path) -> dict:
    """Write the data files for ``cfg`` under ``run_dir/data`` and return ``{name: path}`` plus counts."""
    from ual.data.records import SourceSpec, load, mix, save_records
    from ual.common.io import atomic_write_json, check_writable

    data_dir = Path(run_dir) / "data"
    check_writable(data_dir)
    out: dict = {"files": {}, "counts": {}}
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
        train = mix([SourceSpec(**s) for s in cfg.train_sources], seed=cfg.seed)
        files = {"train": data_dir / "train.jsonl"}
        save_records(files["train"], train)
        out["counts"]["train"] = len(train)
        seen_prompts = {r.prompt for r in train}
        for k, es in enumerate(cfg.eval_sets):
            es = dict(es)
            name = es.pop("name", None)
            if not name:
                raise InputError(None, None, f"data.eval_sets[{k}].name", "is missing")
            n = es.pop("n", None)
            spec = SourceSpec(**es)
            recs = [r for r in load(spec.path, fmt=spec.format, source=spec.source or name, split=spec.split,
                                    config=spec.config) if r.prompt not in seen_prompts]
            if n is not None:
                if n > len(recs):
                    raise InputError(spec.path, None, f"data.eval_sets[{k}].n",
                                     f"asks for {n} samples but {len(recs)} are left after removing training prompts")
                rng = random.Random(f"{cfg.seed}-eval-{name}")
                recs = [recs[i] for i in sorted(rng.sample(range(len(recs)), n))]
            files[f"eval_{name}"] = data_dir / f"eval_{name}.jsonl"
            save_records(files[f"eval_{name}"], recs)
            out["counts"][f"eval_{name}"] = len(recs)
    out["files"] = {k: str(v) for k, v in files.items()}
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
