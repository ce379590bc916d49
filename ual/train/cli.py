"""``python -m ual train``: one training run from a YAML file and ``--set`` overrides."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ual.common.config import load_config, load_yaml
from ual.train.config import TrainConfig


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file (top level, or its ``train:`` section) plus ``key=value`` overrides."""
    section = None
    if path is not None and isinstance(load_yaml(path).get("train"), dict):
        section = "train"
    return load_config(TrainConfig, path, overrides, section=section)


def configure_train(p) -> None:
    p.add_argument("--config", help="YAML file with TrainConfig fields (top level or under 'train:')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one field")
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run_train(args) -> int:
    from ual.train.fitting import fit

    cfg = load_train_config(args.config, args.set)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return 0
    res = fit(cfg, resume=not args.no_resume)
    print(json.dumps({"output_dir": str(res.output_dir), "adapter": str(res.adapter_dir), **res.metrics}, indent=2))
    return 0
