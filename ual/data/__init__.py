"""Data: canonical records and their readers (``records``), the controlled benchmark generator (``controlled``),
and the data stage (:class:`Config`, :func:`run`), the bottom of the stage stack."""
from ual.data.config import Config, DataConfig
from ual.data.records import (FORMATS, Record, SourceSpec, load, load_file, load_hub, load_records, load_scores, mix,
                              read_rows, save_records)
from ual.data.stage import data_summary, run

__all__ = ["Config", "DataConfig", "FORMATS", "Record", "SourceSpec", "data_summary", "load", "load_file", "load_hub",
           "load_records", "load_scores", "mix", "read_rows", "run", "save_records"]
