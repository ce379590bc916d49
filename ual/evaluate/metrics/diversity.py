"""Judge-free descriptors of open-ended outputs: lexical diversity within one output.

A small model sampled at temperature 0.8 often falls into loops ("I am a pirate. I am a pirate. ..."); distinct-n
(Li et al. 2016: unique n-grams / all n-grams) catches that without a judge. It is computed within one output, so it
measures repetition, not the spread of answers across samples (one sample per prompt here).
"""
from __future__ import annotations

import math
import re

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens of ``text`` (a tokenizer-free split, stable across models)."""
    return _WORD.findall(text.lower())


def distinct_n(text: str, n: int) -> float:
    """Unique n-grams / all n-grams of ``text``'s :func:`words` (0-1; 1 = no repeated n-gram); NaN when the text
    has fewer than ``n`` words."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    w = words(text)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan
