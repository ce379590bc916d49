"""Evaluation: every model of a run on every evaluation set it has; outputs saved first, metrics from files.

Stage face: :class:`Config` and :func:`run`. Model-running modules: ``generate``, ``likelihood``, ``controlled``,
``judge``, ``clustering``, ``stage``. Pure metrics on saved files: :mod:`ual.evaluate.metrics` (what the figures
use). This package's import stays light: model code loads only when ``run`` is called.
"""
from ual.evaluate.config import EvalConfig

Config = EvalConfig  # the stage's config under the name every stage uses


def run(cfg: EvalConfig, run_dir, *, progress: bool = True) -> list[dict]:
    """Evaluate every model of the run in ``run_dir`` (see :func:`ual.evaluate.stage.run`); returns their metrics."""
    from ual.evaluate.stage import run as run_stage

    return run_stage(cfg, run_dir, progress=progress)


__all__ = ["Config", "EvalConfig", "run"]
