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
        [], "mix: a list of {path, n, format, source, split, config, rows, data_files} (ual.data.SourceSpec); path "
        "is a file, a hub id or a path under the data root (UAL_DATA_DIR, default the repository's data/).")
    eval_sets: list[dict] = setting(
        [], "mix: a list of {name, path, n, format, source, split, config, rows, data_files}; samples whose prompt "
        "is in the training set are removed before drawing n. rows [start, stop] slices the source first "
        "([-1030, null]: its last 1,030 rows, the authors' MetaMath hold-out).")
    probe_sets: list[dict] = setting(
        [], "mix: texts for the token-clustering analysis (evaluate.clustering_set names one), each like an eval "
        "set; written to data/probe_<name>.jsonl and never evaluated, so prompt-only records are fine (paper: the "
        "300 LIMA test prompts).")
    select: Literal["none", "deita"] = setting(
        "none", "mix: subset selection of one training source: none, or deita (rank by Deita complexity x quality, "
        "then a greedy walk keeping samples whose embedding is within select_threshold cosine of no kept one; "
        "ual.data.select; the authors' MetaMath-6k).")
    select_source: str = setting(
        "", "deita: the source name of the training source to select from; its rows/n, if set, make the pool.")
    select_target: int = setting(6000, "deita: samples kept, >= 1 (authors: 6000).")
    select_threshold: float = setting(
        0.95, "deita: a candidate whose cosine similarity to a kept sample exceeds this is dropped, in (-1, 1] "
              "(authors: 0.95).")
    select_complexity_model: str = setting(
        "hkust-nlp/deita-complexity-scorer", "deita: instruction-complexity scorer, 1-6 from the next-token "
                                             "distribution over '1'..'6' (authors: Deita's).")
    select_quality_model: str = setting(
        "hkust-nlp/deita-quality-scorer", "deita: response-quality scorer, 1-6 the same way (authors: Deita's).")
    select_embedding_model: str = setting(
        "meta-llama/Llama-2-13b-hf", "deita: causal LM whose final hidden states, averaged over a sample's tokens, "
                                     "embed it for the similarity walk (authors: Llama-2-13B).")
    select_batch_size: int = setting(16, "deita: sequences per forward pass of the three models, >= 1 (ours).")
    select_max_length: int = setting(
        2048, "deita: tokens per scorer prompt or embedded turn; longer ones are cut, keeping the template's tail "
              "(ours; the authors never cut, the scorers' Llama-1 context is 2048).")
    select_dtype: Literal["float32", "bfloat16", "float16"] = setting(
        "float32", "deita: weights dtype of the three models (authors: scorers float32, embedder float16).")
    select_allow_pickle: bool = setting(
        False, "deita: allow .bin (pickled) weights, which can run code when loaded; the Deita scorers ship "
               "only .bin files.")
    select_dir: str = setting(
        "", "deita: folder of the scores, walk and kept ids; empty is <run_dir>/data/select. Runs that share "
            "it (e.g. the paper profiles of different base models) score once.")

    def __post_init__(self) -> None:
        for name in ("n_train_low", "n_train_high", "n_eval_low", "n_eval_high"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise InputError(None, None, name, f"must be a non-negative integer, got {v!r}")
        for name in ("select_target", "select_batch_size", "select_max_length"):
            if getattr(self, name) < 1:
                raise InputError(None, None, name, f"must be >= 1, got {getattr(self, name)}")
        if not -1 < self.select_threshold <= 1:
            raise InputError(None, None, "select_threshold", f"must be in (-1, 1], got {self.select_threshold}")
        if self.select == "deita":
            if self.kind != "mix":
                raise InputError(None, None, "select", "deita selection needs kind 'mix'")
            names = [s.get("source") or s.get("path") for s in self.train_sources if isinstance(s, dict)]
            if names.count(self.select_source) != 1:
                raise InputError(None, None, "select_source", f"must name exactly one training source (by its "
                                 f"source name); sources: {', '.join(map(str, names)) or 'none'}")


Config = DataConfig  # the stage's config under the name every stage uses
