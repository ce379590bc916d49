"""The rating prompt (versioned text files in ``ual/prompts``) and the parser for free-text 0-99 ratings.

Parsing rules (the authors' parser is unknown; ual-method.md section 8). A reply yields a score only when it names
one value without ambiguity; otherwise it is a parse failure, recorded with the raw reply, never guessed:

1. Scale mentions (``0-99``, ``0 to 99``) are ignored.
2. Marked values win: a number written as a fraction of the scale (``85/99``, ``85 out of 100``) or following a
   rating word (``score``, ``rating``, ``rate(d)``, ``give``, ``assign``, within 30 characters on the same line).
   If the marked values disagree, the reply is ambiguous.
3. Otherwise the reply's numbers, ranges such as ``70-99`` removed, must all be the same value.
4. The value must lie in [0, 99]; decimals are kept (``42.5``). ``150`` or ``-3`` is out of range: a failure.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ual.common.errors import InputError
from ual.common.io import read_text

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
DEFAULT_PROMPT = "need_for_diversity_v1"
PLACEHOLDER = "{example}"
SCORE_MIN, SCORE_MAX = 0.0, 99.0

_NUM = r"[-+]?\d+(?:\.\d+)?"
_SCALE_RE = re.compile(r"(?<![\d.])0\s*(?:-|–|—|to)\s*99(?![\d.])|\bzero\s+to\s+ninety[- ]nine\b", re.IGNORECASE)
_FRACTION_RE = re.compile(rf"(?<![\w.])({_NUM})\s*(?:/|out\s+of)\s*(?:99|100)(?![\d.])", re.IGNORECASE)
_KEYWORD_RE = re.compile(rf"\b(?:score|rating|rate|rated|give|gave|assign|assigned)\b[^\d\n+-]{{0,30}}?"
                         rf"(?<![\w.])({_NUM})(?![\w.]\d)(?!\s*(?:-|–|—|to\s)\s*\d)", re.IGNORECASE)
_RANGE_RE = re.compile(r"(?<![\w.])\d+\s*(?:-|–|—)\s*\d+(?![\w.])")
_ANY_NUM_RE = re.compile(rf"(?<![\w.])({_NUM})(?![\w]|\.\d)")


@dataclass(frozen=True)
class Prompt:
    """A rating prompt: ``text`` with one ``{example}`` placeholder and its ``version`` (recorded per row)."""

    text: str
    version: str

    def render(self, example: str) -> str:
        return self.text.replace(PLACEHOLDER, example)


def load_prompt(prompt_file: str | Path | None = None) -> Prompt:
    """The default prompt (version = file stem), or a custom file (version ``custom-<sha256[:12]>``)."""
    if prompt_file is None:
        path = PROMPTS_DIR / f"{DEFAULT_PROMPT}.txt"
        version = DEFAULT_PROMPT
    else:
        path = Path(prompt_file)
        version = None
    try:  # the guarded reader: a directory, a symlink loop, bad bytes all name the file
        text = read_text(path)
    except InputError as e:
        raise InputError(e.path, e.line, "prompt_file", e.message) from None
    n = text.count(PLACEHOLDER)
    if n != 1:
        raise InputError(path, None, "prompt_file", f"must contain the placeholder {PLACEHOLDER} exactly once "
                         f"(found {n})")
    if version is None:
        version = "custom-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return Prompt(text=text, version=version)


def render_example(messages: list[dict]) -> str:
    """The whole sample as the authors showed it to the rater: every turn's content joined by newlines."""
    return "\n".join(m["content"] for m in messages)


def rating_messages(prompt: Prompt, messages: list[dict]) -> list[dict]:
    """Chat messages asking the rater to score one sample (a single user turn)."""
    return [{"role": "user", "content": prompt.render(render_example(messages))}]


@dataclass(frozen=True)
class ParsedScore:
    """``score`` in [0, 99] or None; ``reason`` says why not (None when parsed)."""

    score: float | None
    reason: str | None


def _distinct(values: list[str]) -> list[float]:
    out: list[float] = []
    for v in values:
        f = float(v)
        if f not in out:
            out.append(f)
    return out


def parse_score(text: str) -> ParsedScore:
    """Read a 0-99 rating from a free-text reply (rules in the module docstring)."""
    if not text or not text.strip():
        return ParsedScore(None, "empty reply")
    t = _SCALE_RE.sub(" ", text)
    marked = [m.group(1) for m in _FRACTION_RE.finditer(t)]
    t_rest = _FRACTION_RE.sub(" ", t)
    marked += [m.group(1) for m in _KEYWORD_RE.finditer(t_rest)]
    values = _distinct(marked)
    if not values:
        values = _distinct(_ANY_NUM_RE.findall(_RANGE_RE.sub(" ", t_rest)))
        if not values:
            return ParsedScore(None, "no number in reply")
    if len(values) > 1:
        shown = ", ".join(f"{v:g}" for v in values[:5])
        return ParsedScore(None, f"ambiguous: several numbers ({shown})")
    v = values[0]
    if not SCORE_MIN <= v <= SCORE_MAX:
        return ParsedScore(None, f"out of range: {v:g} not in [0, 99]")
    return ParsedScore(v, None)
