"""Figures, tables and statistics rebuilt from a run's saved result files alone.

Imports no model, training or generation code (a test walks the imports): only :mod:`ual.evaluate.metrics` and
the files of a run directory or an exported ``results/`` folder. Stage face: :class:`Config` and :func:`run`.
"""
from ual.figures.config import FiguresConfig

Config = FiguresConfig  # the stage's config under the name every stage uses


def run(cfg: FiguresConfig, run_dir) -> list[str]:
    """Write every registered figure of ``run_dir`` into ``run_dir/figures``; returns the paths written."""
    from ual.figures.plots import make_all

    return make_all(run_dir, formats=tuple(cfg.formats), dpi=cfg.dpi)


__all__ = ["Config", "FiguresConfig", "run"]
