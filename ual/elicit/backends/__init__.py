"""Scoring backends: ``openai`` (the paper's API rater, :mod:`.api`), ``source`` (a fixed table, :mod:`.source`)
and the local-model ones, ``local``, ``likelihood``, ``sampling`` and ``sar`` (:mod:`.lm`). :func:`make_backend` picks one;
model backends load their model lazily, on the first record to score."""
from __future__ import annotations

from ual.elicit.backends.base import ERROR, OK, PARSE_FAILURE, Backend
from ual.elicit.config import ElicitConfig


def make_backend(cfg: ElicitConfig) -> Backend:
    """The backend named by ``cfg.backend``."""
    if cfg.backend == "openai":
        from ual.elicit.backends.api import OpenAIBackend

        return OpenAIBackend(cfg)
    if cfg.backend == "source":
        from ual.elicit.backends.source import SourceBackend

        return SourceBackend(cfg)
    from ual.elicit.backends import lm

    return {"local": lm.LocalBackend, "likelihood": lm.LikelihoodBackend, "sampling": lm.SamplingBackend,
            "sar": lm.SarBackend}[cfg.backend](cfg)


__all__ = ["Backend", "ERROR", "OK", "PARSE_FAILURE", "make_backend"]
