"""Data: canonical records and their readers (``records``), the controlled benchmark generator (``controlled``),
the Deita selection step (``select``), and the data stage (:class:`Config`, :func:`run`, :func:`plan`), the bottom
of the stage stack. This package's import stays light: the stage (and the selection's model code) loads only when
``run``, ``plan`` or ``data_summary`` is called, so ``ual.figures`` can read records without it."""
from ual.data.config import Config, DataConfig
from ual.data.records import (FORMATS, Record, SourceSpec, load, load_file, load_hub, load_records, load_scores, mix,
                              read_rows, save_records)


def run(cfg: DataConfig, run_dir, *, progress: bool = True) -> dict:
    """Write the run's data files (see :func:`ual.data.stage.run`); returns their paths and counts."""
    from ual.data.stage import run as run_stage

    return run_stage(cfg, run_dir, progress=progress)


def plan(cfg: DataConfig) -> dict:
    """What the data stage will build, without loading or downloading anything (:func:`ual.data.stage.plan`)."""
    from ual.data.stage import plan as plan_stage

    return plan_stage(cfg)


def data_summary(run_dir):
    """Samples per data file and source (:func:`ual.data.stage.data_summary`)."""
    from ual.data.stage import data_summary as summary

    return summary(run_dir)


__all__ = ["Config", "DataConfig", "FORMATS", "Record", "SourceSpec", "data_summary", "load", "load_file", "load_hub",
           "load_records", "load_scores", "mix", "plan", "read_rows", "run", "save_records"]
