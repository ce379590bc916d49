"""The ``source`` backend: a fixed score per source or category (the ablation that knows only a sample's origin)."""
from __future__ import annotations

import math
from typing import Iterator, Sequence

from ual.common.errors import InputError
from ual.data.records import Record
from ual.elicit.backends.base import OK, Backend
from ual.elicit.config import ElicitConfig


class SourceBackend(Backend):
    """A fixed score per source (or category): the ablation that knows only where a sample came from."""

    name = "source"
    scale = "fixed per source (as given)"

    def __init__(self, cfg: ElicitConfig):
        if not cfg.source_scores:
            raise InputError(None, None, "source_scores", "the source backend needs a score per source, e.g. "
                             "--source-scores gsm8k=10,gpteacher=90")
        table = {}
        for k, v in cfg.source_scores.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InputError(None, None, f"source_scores.{k}", f"must be a finite number >= 0, got {v!r}")
            table[str(k)] = float(v)
        self.table = table
        self.key = cfg.source_key
        self.model = None

    def settings(self) -> dict:
        return {"table": self.table, "key": self.key}

    def _key(self, r: Record) -> str | None:
        return r.source if self.key == "source" else r.category

    def check(self, records: Sequence[Record]) -> None:
        missing = sorted({str(self._key(r)) for r in records if self._key(r) not in self.table})
        if missing:
            raise InputError(None, None, "source_scores", f"no score for {self.key} {', '.join(missing[:10])} "
                             f"(known: {', '.join(sorted(self.table))})")

    def run(self, records: Sequence[Record], progress: bool) -> Iterator[dict]:
        for r in records:
            yield {"id": r.id, "score": self.table[self._key(r)], "status": OK, "error": None, "key": self._key(r)}
