"""Training: LoRA fine-tuning with one label-smoothing value per sample (``sft``, ``ls``, ``ual``).

Stage face: :class:`Config` and :func:`run` (``run(cfg, run_dir)`` trains the grid into ``run_dir/train``).
One run: :class:`TrainConfig` and :func:`fit`. In your own transformers/TRL script: :class:`UALTrainer`,
:class:`UALLossMixin` and :class:`UALCollator` (README, "UAL in your own training script"). The trainer classes
import transformers, so they load on first use.
"""
from ual.train.config import METHODS, Config, TrainConfig, TrainStageConfig
from ual.train.examples import UALCollator, sample_eps, tokenize_records
from ual.train.stage import run, variant_name, variants

_LAZY = {"UALTrainer": "ual.train.trainer", "UALLossMixin": "ual.train.trainer",
         "EpochPermutationSampler": "ual.train.trainer", "fit": "ual.train.fitting", "TrainResult": "ual.train.fitting"}

__all__ = ["METHODS", "Config", "TrainConfig", "TrainStageConfig", "UALCollator", "sample_eps", "tokenize_records", "run",
           "variant_name", "variants", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ual.train' has no attribute {name!r}")
