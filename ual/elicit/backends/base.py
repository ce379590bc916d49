"""The interface every scoring backend implements, and the row status values.

A backend yields one row per record as each finishes: ``{"id", "score", "status", "error", ...}`` with
``status`` one of ``ok`` / ``parse_failure`` / ``error``; the runner adds how the row was made (backend, model,
prompt version, settings, scale) and appends it to the results file.
"""
from __future__ import annotations

from typing import Iterator, Sequence

from ual.data.records import Record

OK, PARSE_FAILURE, ERROR = "ok", "parse_failure", "error"


class Backend:
    """Interface. ``settings()`` lists everything that changes a score (a rerun with other settings is refused)."""

    name: str = ""
    model: str | None = None
    prompt_version: str | None = None
    scale: str = ""

    def settings(self) -> dict:
        raise NotImplementedError

    def check(self, records: Sequence[Record]) -> None:
        """Raise InputError before any work if a record cannot be scored by this backend."""

    def prepare(self) -> None:
        """Load what scoring needs (a model), so that timings cover scoring only."""

    def run(self, records: Sequence[Record], progress: bool) -> Iterator[dict]:
        raise NotImplementedError
