"""The training stage of a run: every variant of the grid (methods x mean_eps x seeds) into ``train/<variant>/``."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ual.train.config import AVA_METHODS, SCORED_METHODS, SHARED_FIELDS, TOKEN_WEIGHTED_METHODS, Config, TrainConfig


def _without_eps(method: str) -> bool:
    """Methods that smooth nothing (sft, the token-weighted peers, AVA and its Bradley-Terry baseline): one variant
    per seed, named without eps."""
    return method == "sft" or method in TOKEN_WEIGHTED_METHODS or method in AVA_METHODS


def variant_name(method: str, mean_eps: float, seed: int) -> str:
    """Folder name of one trained variant, e.g. ``ual_eps0.1_seed1337`` (``sft_seed1337`` for SFT, ``dft_seed1337``
    for the token-weighted methods)."""
    return f"{method}_seed{seed}" if _without_eps(method) else f"{method}_eps{mean_eps:g}_seed{seed}"


def variants(cfg: Config) -> list[TrainConfig]:
    """The TrainConfigs of a stage grid plus its ``extra_variants``, without paths (filled in by :func:`run`);
    a variant listed twice is trained once."""
    shared = {k: getattr(cfg, k) for k in SHARED_FIELDS}
    out, seen = [], set()
    wanted = [(seed, method, eps) for seed in cfg.seeds for method in cfg.methods
              for eps in ([0.0] if _without_eps(method) else cfg.mean_eps)]
    wanted += [(v["seed"], v["method"], 0.0 if _without_eps(v["method"]) else float(v["mean_eps"]))
               for v in cfg.extra_variants]
    for seed, method, eps in wanted:
        if variant_name(method, eps, seed) not in seen:
            seen.add(variant_name(method, eps, seed))
            out.append(TrainConfig(method=method, mean_eps=eps, seed=seed, **shared))
    return out


def variant_config(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """``cfg`` with the run directory's data, scores and output folder filled in."""
    name = variant_name(cfg.method, cfg.mean_eps, cfg.seed)
    return dataclasses.replace(cfg, data=str(run_dir / "data" / "train.jsonl"),
                               scores=str(run_dir / "elicit" / "scores.jsonl") if cfg.method in SCORED_METHODS
                               else None,
                               output_dir=str(run_dir / "train" / name))


def run(cfg: Config, run_dir: str | Path, *, progress: bool = True):
    """Train every variant of ``cfg`` on ``run_dir/data/train.jsonl`` (scores from ``run_dir/elicit``) into
    ``run_dir/train/<variant>/``; finished variants are skipped, interrupted ones resume. Returns a DataFrame with
    one row per variant (steps, final training loss, seconds, loss path)."""
    import pandas as pd

    from ual.common.io import read_json
    from ual.train.fitting import finished_result, fit

    run_dir = Path(run_dir)
    rows = []
    for v in variants(cfg):
        v = variant_config(v, run_dir)
        name = Path(v.output_dir).name
        manifest = Path(v.output_dir) / "manifest.json"
        if finished_result(v) is None:  # same settings and input contents: reused; anything changed: trained
            print(f"training {name}", flush=True)
            fit(v, progress=progress)
        m = read_json(manifest)
        rows.append({"variant": name, "method": v.method, "mean_eps": v.mean_eps, "seed": v.seed,
                     "steps": m.get("global_step"), "train_loss": m.get("metrics", {}).get("train_loss"),
                     "seconds": m.get("metrics", {}).get("train_runtime"), "loss_path": m.get("loss_path")})
    return pd.DataFrame(rows)
