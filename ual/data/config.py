"""Settings of the data stage: what goes into a run's data folder."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ual.common.config import setting
from ual.common.errors import InputError


@dataclass
class DataConfig:
    """Data stage: the generated controlled benchmark (``kind: controlled``) or real sources mixed (``kind: mix``)."""

    kind: Literal["controlled", "mix"] = setting(
        "controlled", "controlled (generated benchmark, ual.data.controlled) or mix (real sources).")
    seed: int = setting(1337, "draws of every source and of the generator (authors' seed).")
    n_train_low: int = setting(96, "controlled: low-entropy (arithmetic) training items, >= 0 (ours).")
    n_train_high: int = setting(96, "controlled: high-entropy (open prompt) training items, >= 0 (ours).")
    n_eval_low: int = setting(48, "controlled: held-out arithmetic items, >= 0 (ours).")
    n_eval_high: int = setting(24, "controlled: held-out open prompts, 0-30 (ours).")
    distribution: Literal["zipf", "uniform"] = setting(
        "zipf", "controlled: true answer distribution of each open category.")
    train_sources: list[dict] = setting(
        [], "mix: a list of {path, n, format, source, split, config} (ual.data.SourceSpec); path is a file, a hub id "
        "or a path under the data root (UAL_DATA_DIR, default the repository's data/).")
    eval_sets: list[dict] = setting(
        [], "mix: a list of {name, path, n, format, source, split, config}; samples whose prompt is in the training "
        "set are removed before drawing n.")

    def __post_init__(self) -> None:
        for name in ("n_train_low", "n_train_high", "n_eval_low", "n_eval_high"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise InputError(None, None, name, f"must be a non-negative integer, got {v!r}")


Config = DataConfig  # the stage's config under the name every stage uses
