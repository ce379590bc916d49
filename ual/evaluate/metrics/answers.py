"""Math answer protocols: extract a final number from a model's output and compare it with the gold answer.

GSM8K accuracy depends on the rule used to read the answer, so every rule is named, registered and versioned
(as lm-eval does with its ``strict-match`` / ``flexible-extract`` filters) and ``metrics.json`` records which:

``strict``
    the number right after the first ``####`` (lm-eval's strict-match; GSM8K's own answer format).
``flexible``
    the last number anywhere in the output (lm-eval's flexible-extract).
``metamath``
    the number right after the last "The answer is" (optionally followed by ``:``), case-insensitive
    (MetaMath's answer format).
``substring``
    the UAL authors' lenient rule: correct when the normalised gold answer equals *any* number token of the
    output. Tokens are whole numbers as :data:`NUMBER_RE` finds them, so gold ``7`` does not match ``17``,
    ``7.5`` or ``x7``, but does match ``$7``, ``7%``, ``7.00`` and ``7th``; gold ``1000`` matches ``1,000``.
    Its "invalid" case is an output with no number at all.

A miss is ``None`` (counted as invalid and wrong), never a guess. Bump :data:`PROTOCOL_VERSION` whenever a rule
or the number grammar changes.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ual.data.records import gsm8k_final_answer
from ual.common.errors import InputError
from ual.common.io import iter_jsonl

# v1: first release (number grammar below; strict/flexible/metamath/substring).
PROTOCOL_VERSION = 1

# A number token: optional sign (only when not glued to a preceding word, so "3-5" is 3 and 5), optional "$",
# digits with well-formed thousands groups or plain digits, optional decimals; or a bare ".5". Not preceded by a
# word character, so "H2O" and "x7" hold no number.
NUMBER_RE = re.compile(
    r"(?:(?<![\w)\]])[-\u2212+])?\$?(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)"
    r"|(?:(?<![\w)\]])[-\u2212])?(?<![\w.])\.\d+"
)
_CANONICAL_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+")
_EDGE_PUNCT = " \t\r\n*\"'`()[]{}<>:;!?,"


def normalize_number(text: str) -> str | None:
    """Canonical decimal string of a number written in ``text``, or None if ``text`` is not one number.

    Strips surrounding whitespace/punctuation, ``$``, a trailing ``%``, thousands separators (well-formed groups
    only: "1,234" yes, "12,34" no), trailing decimal zeros and leading zeros; keeps the sign ("-0" -> "0").
    Examples: "1,234.50" -> "1234.5", "$18.00" -> "18", "-3" -> "-3", "50%" -> "50", "abc" -> None.
    """
    if not isinstance(text, str):
        return None
    s = text.replace("\u2212", "-").strip(_EDGE_PUNCT)
    s = s.rstrip(".").strip(_EDGE_PUNCT) if not re.fullmatch(r"[-+]?\.\d+", s) else s
    if s.endswith("%"):
        s = s[:-1].rstrip()
    sign = ""
    if s and s[0] in "-+":
        sign, s = s[0], s[1:].lstrip()
    if s.startswith("$"):
        s = s[1:].lstrip()
    s = sign + s
    if not _CANONICAL_RE.fullmatch(s):
        return None
    # String arithmetic rather than Decimal, whose context precision would round very long numbers.
    neg = s.startswith("-")
    int_part, _, frac = s.lstrip("+-").replace(",", "").partition(".")
    int_part, frac = int_part.lstrip("0") or "0", frac.rstrip("0")
    out = int_part + ("." + frac if frac else "")
    return "-" + out if neg and out != "0" else out


def number_tokens(text: str) -> list[str]:
    """Every number in ``text``, in order, normalised with :func:`normalize_number`."""
    out = []
    for m in NUMBER_RE.finditer(text):
        n = normalize_number(m.group(0))
        if n is not None:
            out.append(n)
    return out


# ----------------------------------------------------------------------------------------------- protocol registry

@dataclass(frozen=True)
class Protocol:
    """A named answer rule. ``candidates(text)`` returns the normalised numbers the rule accepts as the answer
    (at most one for extraction rules, all number tokens for ``substring``); an empty list is a miss."""

    name: str
    description: str
    candidates: Callable[[str], list[str]]
    extracts: bool  # True when the rule reads a single answer (extract_answer applies)


_REGISTRY: dict[str, Protocol] = {}


def register_protocol(name: str, description: str, *, extracts: bool = True):
    """Decorator registering ``fn(text) -> list[str]`` as an answer protocol under ``name``."""
    def deco(fn: Callable[[str], list[str]]):
        if name in _REGISTRY:
            raise ValueError(f"answer protocol {name!r} is already registered")
        _REGISTRY[name] = Protocol(name, description, fn, extracts)
        return fn
    return deco


def get_protocol(name: str) -> Protocol:
    """The registered protocol ``name`` (ValueError listing the known ones otherwise)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown answer protocol {name!r}; known: {', '.join(_REGISTRY)}") from None


def _first_number_at(text: str, pos: int) -> list[str]:
    """The number starting at ``pos`` (after optional spaces, ``$``), or [] if none starts there."""
    m = NUMBER_RE.match(text, pos + len(text[pos:]) - len(text[pos:].lstrip()))
    if not m:
        return []
    n = normalize_number(m.group(0))
    return [] if n is None else [n]


@register_protocol("strict", "number right after the first '####' (lm-eval strict-match)")
def _strict(text: str) -> list[str]:
    m = re.search(r"####", text)
    return [] if m is None else _first_number_at(text, m.end())


@register_protocol("flexible", "last number anywhere in the output (lm-eval flexible-extract)")
def _flexible(text: str) -> list[str]:
    toks = number_tokens(text)
    return toks[-1:]


@register_protocol("metamath", "number right after the last 'The answer is' / 'The answer is:' (MetaMath)")
def _metamath(text: str) -> list[str]:
    hits = list(re.finditer(r"the answer is\s*:?", text, flags=re.IGNORECASE))
    return [] if not hits else _first_number_at(text, hits[-1].end())


@register_protocol("substring", "gold equals any number token of the output (UAL authors' lenient rule)",
                   extracts=False)
def _substring(text: str) -> list[str]:
    return number_tokens(text)


PROTOCOLS: tuple[str, ...] = ("strict", "flexible", "metamath", "substring")


def extract_answer(text: str, protocol: str) -> str | None:
    """The normalised answer ``protocol`` reads from ``text``, or None on a miss.

    ``substring`` is a matching rule without a single answer: use :func:`is_correct` (ValueError here).
    """
    p = get_protocol(protocol)
    if not p.extracts:
        raise ValueError(f"protocol {protocol!r} matches the gold answer anywhere and extracts no single answer; "
                         "use is_correct()")
    c = p.candidates(text)
    return c[0] if c else None


def gold_answer(answer_field: str | int | float) -> str:
    """Normalised gold answer from a plain number (``"72"``, ``72``, ``"1,000"``) or a GSM8K solution ending
    in ``#### N``. ValueError when no number can be read."""
    if isinstance(answer_field, bool) or not isinstance(answer_field, (str, int, float)):
        raise ValueError(f"expected a number or a string, got {type(answer_field).__name__}")
    text = str(answer_field)
    if "####" in text:
        final = gsm8k_final_answer(text)
        text = "" if final is None else final
    n = normalize_number(text)
    if n is None:
        raise ValueError(f"no number in gold answer {str(answer_field)[-60:]!r}")
    return n


def is_correct(output: str, gold: str | int | float, protocol: str) -> bool:
    """Whether ``output`` answers ``gold`` (a raw gold field, see :func:`gold_answer`) under ``protocol``."""
    return gold_answer(gold) in get_protocol(protocol).candidates(output)


# ----------------------------------------------------------------------------------------------- scoring

def _parse_row(row: dict, path, line) -> tuple[list[str], str]:
    if not isinstance(row, dict):
        raise InputError(path, line, None, f"expected an object, got {type(row).__name__}")
    if "output" not in row:
        raise InputError(path, line, "output", "is missing")
    out = row["output"]
    outs = [out] if isinstance(out, str) else out
    if not isinstance(outs, list) or not outs or not all(isinstance(o, str) for o in outs):
        raise InputError(path, line, "output", "expected a string or a non-empty list of strings")
    if "answer" not in row or row["answer"] is None:
        raise InputError(path, line, "answer", "is missing")
    try:
        gold = gold_answer(row["answer"])
    except ValueError as e:
        raise InputError(path, line, "answer", str(e)) from None
    return outs, gold


def _parse_rows(rows: Iterable[dict], path, lines) -> list[tuple[list[str], str]]:
    parsed = []
    for i, row in enumerate(rows):
        parsed.append(_parse_row(row, path, lines[i] if lines is not None else i + 1))
    if not parsed:
        raise InputError(path, None, None, "no generations to score")
    return parsed


def _row_counts(parsed: list[tuple[list[str], str]], protocol: str) -> list[tuple[int, int, int]]:
    """Per row: (correct outputs, outputs with no answer read, outputs) under ``protocol``."""
    cand = get_protocol(protocol).candidates
    out = []
    for outs, gold in parsed:
        cands = [cand(o) for o in outs]
        out.append((sum(gold in c for c in cands), sum(not c for c in cands), len(outs)))
    return out


def row_accuracy(rows: Iterable[dict], protocols: Sequence[str] = PROTOCOLS, *, path: str | Path | None = None,
                 lines: Sequence[int] | None = None) -> dict[str, list[float]]:
    """Per-row accuracy under each protocol: ``{protocol: [fraction (0-1) of row i's outputs that are correct]}``,
    in row order (the per-item values that :func:`score_math`'s ``accuracy`` averages; used by the bootstrap)."""
    for name in protocols:
        get_protocol(name)
    parsed = _parse_rows(rows, path, lines)
    return {name: [c / n for c, _, n in _row_counts(parsed, name)] for name in protocols}


def score_math(rows: Iterable[dict], protocols: Sequence[str] = PROTOCOLS, *, path: str | Path | None = None,
               lines: Sequence[int] | None = None) -> dict:
    """Accuracy of math generations under each answer protocol.

    ``rows``: dicts with ``output`` (a string, or a list of n sampled strings) and ``answer`` (gold, see
    :func:`gold_answer`). ``path``/``lines`` only name the source in an :class:`InputError` for a bad row.
    Returns ``{"protocol_version", "n_rows", "n_samples" (total outputs), "samples_per_row" (min, max),
    "protocols": {name: {...}}}`` where each protocol has ``accuracy`` (percent, mean over rows of the fraction of
    that row's samples that are correct), ``best_of_n`` (percent of rows with at least one correct sample),
    ``invalid_rate`` (percent of samples with no answer read), and the counts ``n_correct``, ``n_invalid``
    (samples) and ``n_rows_any_correct``. With one sample per row, accuracy == best_of_n.
    """
    for name in protocols:
        get_protocol(name)
    parsed = _parse_rows(rows, path, lines)
    result: dict = {
        "protocol_version": PROTOCOL_VERSION,
        "n_rows": len(parsed),
        "n_samples": sum(len(o) for o, _ in parsed),
        "samples_per_row": [min(len(o) for o, _ in parsed), max(len(o) for o, _ in parsed)],
        "protocols": {},
    }
    for name in protocols:
        counts = _row_counts(parsed, name)
        n_invalid = sum(i for _, i, _ in counts)
        result["protocols"][name] = {
            "description": get_protocol(name).description,
            "accuracy": 100.0 * sum(c / n for c, _, n in counts) / len(parsed),
            "best_of_n": 100.0 * sum(c > 0 for c, _, _ in counts) / len(parsed),
            "invalid_rate": 100.0 * n_invalid / result["n_samples"],
            "n_correct": sum(c for c, _, _ in counts),
            "n_invalid": n_invalid,
            "n_rows_any_correct": sum(c > 0 for c, _, _ in counts),
        }
    return result


def score_math_file(path: str | Path, protocols: Sequence[str] = PROTOCOLS) -> dict:
    """:func:`score_math` on a generations JSONL file (rows with ``output`` and ``answer``). The file is appended by
    generation: a torn last line (a kill mid-append) is skipped with a warning; damage elsewhere is an error."""
    lines, rows = [], []
    for line, row in iter_jsonl(path):
        lines.append(line)
        rows.append(row)
    out = score_math(rows, protocols, path=path, lines=lines)
    out["generations"] = str(path)
    return out


# ----------------------------------------------------------------------------------------------- answer confidence

def answer_as_written(text: str, protocol: str) -> str | None:
    """The substring of ``text`` that ``protocol`` reads as the answer, as written (``"1,000"``, not ``"1000"``), so
    its tokens can be located; None when the protocol reads no answer. The one definition every stage uses."""
    ans = extract_answer(text, protocol)
    if ans is None:
        return None
    start = text.find("####") if protocol == "strict" else 0
    hits = [m.group(0) for m in NUMBER_RE.finditer(text, max(start, 0)) if normalize_number(m.group(0)) == ans]
    if not hits:
        return None
    return hits[0] if protocol == "strict" else hits[-1]


def answer_confidence(answer: str | None, logprob: float | None) -> float:
    """Confidence in a read answer: the probability of its tokens as written (capped at 1), and 0 when no answer
    was read or its tokens were not found (no confidence in any answer; such an item also counts as wrong)."""
    if answer is None or logprob is None:
        return 0.0
    return min(1.0, math.exp(logprob))


# ----------------------------------------------------------------------------------------------- CLI

def configure_score_math(p) -> None:
    p.add_argument("--generations", required=True, help="JSONL with 'output' (string or list) and 'answer' per row")
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=sorted(_REGISTRY),
                   help="answer protocols to score (default: all)")


def run_score_math(args) -> int:
    print(json.dumps(score_math_file(args.generations, args.protocols), indent=2))
    return 0
