"""Preference pairs: one canonical pair, loaders for the common formats, a prompt-hash split, and pairs from the
controlled benchmark.

Canonical pair (one JSON object per line; :func:`save_pairs` writes it, the ``pairs`` format reads it back)::

    {"id": "hh-12", "source": "hh", "prompt": [{"role": "user", "content": "..."}],
     "chosen": "...", "rejected": "...", "first": "chosen"}

``prompt`` is the conversation before the compared response (it ends with a user turn); ``first`` says which of the
two responses the source showed first (AlpacaEval's ``output_1``), or is absent when the source has no order.

Formats (``fmt``; ``auto`` tells them apart by their keys):

- ``pairs``: ``prompt`` / ``chosen`` / ``rejected`` (TRL's explicit-prompt preference format). ``prompt`` is a
  string or a message list; ``chosen`` / ``rejected`` are strings or message lists (conversational: the prompt turns
  may be repeated in front, as in ``HuggingFaceH4/ultrafeedback_binarized``; the last assistant turn is compared).
- ``implicit``: ``chosen`` / ``rejected`` only, the prompt being their shared beginning: Anthropic-HH dialogue strings
  (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; the last assistant turn is compared) or message lists (TRL's
  implicit-prompt conversational format).
- ``ultrafeedback``: ``instruction`` (or ``prompt``) with ``completions``, a list of ``{"response", "overall_score"}``
  (``openbmb/UltraFeedback``; ``score`` or ``fine-grained_score`` also read): the best-scored completion is chosen,
  the worst rejected (our binarisation; HuggingFaceH4's draws the rejected one at random from the rest).
- ``alpaca_eval``: AlpacaEval annotations, ``instruction``, ``output_1``, ``output_2`` and ``preference`` in [1, 2]
  (2 = output_2 wins; the weighted annotators give fractions). ``preference`` 1.5 (a tie) or null (no verdict)
  carries no preference: such rows are dropped and counted.

Rows whose two responses are identical are dropped and counted too. Everything else that is wrong raises
:class:`~ual.common.errors.InputError` naming the file, line and field (the CLI exits 2).
"""
from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ual.common.errors import InputError

PAIR_FORMATS = ("auto", "pairs", "implicit", "ultrafeedback", "alpaca_eval")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = ("system", "user", "assistant")
_SCORE_KEYS = ("overall_score", "score", "fine-grained_score")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")


@dataclass
class PreferencePair:
    """Two responses to one prompt, ``chosen`` preferred over ``rejected``."""

    id: str
    source: str
    prompt: list[dict]
    chosen: str
    rejected: str
    first: str | None = None  # "chosen" | "rejected": which one the source listed first; None: no order

    def to_dict(self) -> dict:
        d = {"id": self.id, "source": self.source, "prompt": self.prompt, "chosen": self.chosen,
             "rejected": self.rejected}
        if self.first is not None:
            d["first"] = self.first
        return d

    @property
    def prompt_text(self) -> str:
        """The prompt turns joined (what the split hashes)."""
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.prompt)


@dataclass
class PairData:
    """What a loader read: the pairs, and rows dropped for carrying no preference (reason -> count)."""

    pairs: list[PreferencePair]
    dropped: dict[str, int] = field(default_factory=dict)
    path: str | None = None

    def summary(self) -> dict:
        return {"path": self.path, "n_pairs": len(self.pairs), "dropped": dict(self.dropped)}


# ----------------------------------------------------------------------------------------------- field checks

def _text(path, line, value, name: str, *, allow_empty: bool = False) -> str:
    if value is None:
        raise InputError(path, line, name, "is missing")
    if not isinstance(value, str):
        raise InputError(path, line, name, f"expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(path, line, name, "is not valid Unicode (a lone surrogate escape)") from None
    if not allow_empty and not value.strip():
        raise InputError(path, line, name, "is empty")
    return value


def _messages(path, line, value, name: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise InputError(path, line, name, "expected a non-empty list of messages")
    out = []
    for k, m in enumerate(value):
        fld = f"{name}[{k}]"
        if not isinstance(m, dict):
            raise InputError(path, line, fld, f"expected an object with role and content, got {type(m).__name__}")
        role = _text(path, line, m.get("role"), f"{fld}.role")
        if role not in _ROLES:
            raise InputError(path, line, f"{fld}.role", f"must be one of {', '.join(_ROLES)}, got {role!r}")
        out.append({"role": role, "content": _text(path, line, m.get("content"), f"{fld}.content")})
    return out


def _prompt(path, line, value, name: str = "prompt") -> list[dict]:
    msgs = [{"role": "user", "content": _text(path, line, value, name)}] if isinstance(value, str) \
        else _messages(path, line, value, name)
    if msgs[-1]["role"] != "user":
        raise InputError(path, line, name, "must end with a user turn")
    return msgs


def _response(path, line, value, name: str, prompt: list[dict] | None) -> tuple[list[dict] | None, str]:
    """(prompt turns found in front of the response or None, the compared response text)."""
    if isinstance(value, str):
        return None, _text(path, line, value, name)
    msgs = _messages(path, line, value, name)
    if msgs[-1]["role"] != "assistant":
        raise InputError(path, line, name, "must end with an assistant turn")
    before = msgs[:-1]
    if prompt is not None and before and before != prompt:
        raise InputError(path, line, name, "the turns before its last assistant turn differ from the prompt")
    return (before or None), msgs[-1]["content"]


def _row_id(path, line, row, source, index) -> str:
    rid = row.get("id")
    if rid is None or rid == "":
        return f"{source}-{index}"
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise InputError(path, line, "id", f"expected a string or an integer, got {type(rid).__name__}")
    return str(rid)


# ----------------------------------------------------------------------------------------------- format parsers

def _parse_pairs(path, line, row, source, index):
    prompt = _prompt(path, line, row.get("prompt"))
    _, chosen = _response(path, line, row.get("chosen"), "chosen", prompt)
    _, rejected = _response(path, line, row.get("rejected"), "rejected", prompt)
    first = row.get("first")
    if first is not None and first not in ("chosen", "rejected"):
        raise InputError(path, line, "first", f"must be 'chosen', 'rejected' or absent, got {first!r}")
    src = _text(path, line, row["source"], "source") if row.get("source") is not None else source
    return PreferencePair(_row_id(path, line, row, src, index), src, prompt, chosen, rejected, first)


def _split_hh(path, line, text: str, name: str) -> tuple[list[dict], str]:
    """An Anthropic-HH dialogue string -> (turns before the last assistant turn, that turn's text)."""
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 5:
        raise InputError(path, line, name, 'expected a "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogue')
    turns = [{"role": "user" if who == "Human" else "assistant", "content": body.strip()}
             for who, body in zip(parts[1::2], parts[2::2])]
    if turns[-1]["role"] != "assistant":
        raise InputError(path, line, name, "the dialogue must end with an Assistant turn")
    prompt = turns[:-1]
    for k, t in enumerate(prompt):
        if not t["content"]:
            raise InputError(path, line, name, f"turn {k + 1} of the dialogue is empty")
    if not prompt or prompt[-1]["role"] != "user":
        raise InputError(path, line, name, "the last Assistant turn must follow a Human turn")
    return prompt, _text(path, line, turns[-1]["content"], name)


def _parse_implicit(path, line, row, source, index):
    c, r = row.get("chosen"), row.get("rejected")
    if isinstance(c, str) and isinstance(r, str):
        pc, chosen = _split_hh(path, line, c, "chosen")
        pr, rejected = _split_hh(path, line, r, "rejected")
    else:
        pc, chosen = _response(path, line, c, "chosen", None)
        pr, rejected = _response(path, line, r, "rejected", None)
        if pc is None:
            raise InputError(path, line, "chosen", "has no prompt turns in front of its response (use the "
                             "prompt/chosen/rejected format)")
    if pc != pr:
        raise InputError(path, line, "rejected", "chosen and rejected do not share the same prompt turns")
    if pc[-1]["role"] != "user":
        raise InputError(path, line, "chosen", "the compared response must follow a user turn")
    return PreferencePair(_row_id(path, line, row, source, index), source, pc, chosen, rejected)


def _score(path, line, comp: dict, k: int) -> float:
    for key in _SCORE_KEYS:
        if key in comp:
            s = comp[key]
            if isinstance(s, bool) or not isinstance(s, (int, float)) or s != s or s in (float("inf"), float("-inf")):
                raise InputError(path, line, f"completions[{k}].{key}", f"expected a finite number, got {s!r}")
            return float(s)
    raise InputError(path, line, f"completions[{k}]", f"has no score ({' / '.join(_SCORE_KEYS)})")


def _parse_ultrafeedback(path, line, row, source, index):
    key = "instruction" if "instruction" in row else "prompt"
    prompt = _prompt(path, line, row.get(key), key)
    comps = row.get("completions")
    if not isinstance(comps, list) or len(comps) < 2:
        raise InputError(path, line, "completions", "expected a list of at least two completions")
    scored = []
    for k, comp in enumerate(comps):
        if not isinstance(comp, dict):
            raise InputError(path, line, f"completions[{k}]", "expected an object with response and a score")
        scored.append((_score(path, line, comp, k), k,
                       _text(path, line, comp.get("response"), f"completions[{k}].response")))
    best = max(scored, key=lambda x: (x[0], -x[1]))
    worst = min(scored, key=lambda x: (x[0], x[1]))
    if best[0] == worst[0]:
        return "all completions score the same"
    return PreferencePair(_row_id(path, line, row, source, index), source, prompt, best[2], worst[2])


def _parse_alpaca_eval(path, line, row, source, index):
    prompt = _prompt(path, line, row.get("instruction"), "instruction")
    o1 = _text(path, line, row.get("output_1"), "output_1")
    o2 = _text(path, line, row.get("output_2"), "output_2")
    p = row.get("preference")
    if p is None:
        return "no verdict (preference null)"
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 1 <= p <= 2:
        raise InputError(path, line, "preference", f"expected a number in [1, 2], got {p!r}")
    if p == 1.5:
        return "tie (preference 1.5)"
    second_wins = p > 1.5
    chosen, rejected = (o2, o1) if second_wins else (o1, o2)
    return PreferencePair(_row_id(path, line, row, source, index), source, prompt, chosen, rejected,
                          first="rejected" if second_wins else "chosen")


_PARSERS = {"pairs": _parse_pairs, "implicit": _parse_implicit, "ultrafeedback": _parse_ultrafeedback,
            "alpaca_eval": _parse_alpaca_eval}


def detect_pair_format(row: dict) -> str:
    """A row's preference format from its keys, or "unknown"."""
    if "output_1" in row and "output_2" in row:
        return "alpaca_eval"
    if "completions" in row:
        return "ultrafeedback"
    if "chosen" in row and "rejected" in row:
        return "pairs" if "prompt" in row else "implicit"
    return "unknown"


def parse_pair_rows(rows: Iterable[tuple[int, dict]], *, fmt: str = "auto", source: str = "pairs",
                    path: str | Path | None = None) -> PairData:
    """Checked pairs from raw ``(line, row)`` items; duplicate ids are an error, rows without a preference are
    dropped and counted."""
    if fmt not in PAIR_FORMATS:
        raise InputError(path, None, "format", f"must be one of {', '.join(PAIR_FORMATS)}, got {fmt!r}")
    out: list[PreferencePair] = []
    dropped: Counter = Counter()
    seen: dict[str, int] = {}
    for index, (line, row) in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(path, line, None, f"expected a JSON object, got {type(row).__name__}")
        f = fmt if fmt != "auto" else detect_pair_format(row)
        if f == "unknown":
            raise InputError(path, line, None, f"cannot tell the preference format from the keys {sorted(row)[:6]}; "
                             "expected prompt/chosen/rejected, chosen/rejected, completions or output_1/output_2")
        got = _PARSERS[f](path, line, row, source, index)
        if isinstance(got, str):
            dropped[got] += 1
            continue
        if got.chosen == got.rejected:
            dropped["identical responses"] += 1
            continue
        if got.id in seen:
            raise InputError(path, line, "id", f"duplicate id {got.id!r} (first on line {seen[got.id]})")
        seen[got.id] = line
        out.append(got)
    return PairData(out, dict(dropped), None if path is None else str(path))


# ----------------------------------------------------------------------------------------------- public loaders

def load_pair_file(path: str | Path, *, fmt: str = "auto", source: str | None = None) -> PairData:
    """Pairs from a local ``.json`` array or ``.jsonl`` file in any :data:`PAIR_FORMATS` format."""
    from ual.data.records import read_rows

    path = Path(path)
    try:
        return parse_pair_rows(read_rows(path), fmt=fmt, source=source or path.name.split(".")[0], path=path)
    except RecursionError:
        raise InputError(path, None, None, "JSON nested too deeply") from None


def load_pair_hub(hub_id: str, *, split: str = "train", fmt: str = "auto", source: str | None = None,
                  config: str | None = None) -> PairData:
    """Pairs from a Hugging Face hub dataset (needs network), e.g. ``load_pair_hub("Anthropic/hh-rlhf")``."""
    import datasets  # heavy, and only needed online

    ds = datasets.load_dataset(hub_id, config, split=split)
    rows = ((i + 1, dict(r)) for i, r in enumerate(ds))
    return parse_pair_rows(rows, fmt=fmt, source=source or hub_id.split("/")[-1], path=f"hub:{hub_id}")


def load_pairs(path_or_hub_id: str | Path, *, fmt: str = "auto", source: str | None = None, split: str = "train",
               config: str | None = None) -> PairData:
    """Pairs from a local file (as given, or under the data root: :func:`ual.common.paths.resolve_data_path`), else
    from the hub id (online only)."""
    from ual.common.paths import resolve_data_path

    p = resolve_data_path(path_or_hub_id)
    if p is not None:
        return load_pair_file(p, fmt=fmt, source=source)
    s = str(path_or_hub_id)
    if s.endswith((".json", ".jsonl")) or not _HUB_ID.fullmatch(s):
        raise InputError(s, None, None, "file not found (and not a hub id)")
    try:
        return load_pair_hub(s, split=split, fmt=fmt, source=source, config=config)
    except InputError:
        raise
    except Exception as e:  # datasets raises many types offline or for a missing repository
        raise InputError(f"hub:{s}", None, None, f"could not load the dataset ({type(e).__name__}: {e})") from None


def load_many(paths: Sequence[str | Path], **kw) -> PairData:
    """Several sources concatenated (ids must stay distinct: sources are named after their files)."""
    pairs, dropped, seen = [], Counter(), {}
    for p in paths:
        d = load_pairs(p, **kw)
        for x in d.pairs:
            if x.id in seen:
                raise InputError(p, None, "id", f"pair id {x.id!r} also occurs in {seen[x.id]}; give each source "
                                 "a distinct file name")
            seen[x.id] = str(p)
        pairs.extend(d.pairs)
        dropped.update(d.dropped)
    return PairData(pairs, dict(dropped), ", ".join(str(p) for p in paths))


def save_pairs(path: str | Path, pairs: Sequence[PreferencePair]) -> int:
    """Write canonical pairs as JSONL (atomically); returns the count."""
    from ual.common.io import write_jsonl

    return write_jsonl(path, (p.to_dict() for p in pairs))


# ----------------------------------------------------------------------------------------------- split

SPLITS = ("all", "train", "heldout")


def heldout_score(prompt_text: str) -> float:
    """A number in [0, 1) fixed by the prompt text alone (first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(prompt_text.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def split_pairs(pairs: Sequence[PreferencePair], part: str, heldout_fraction: float) -> list[PreferencePair]:
    """The ``train`` or ``heldout`` part (or ``all``) of ``pairs``, split by a hash of the prompt: a prompt is held
    out when :func:`heldout_score` < ``heldout_fraction``. Every pair of a prompt lands on the same side (the two
    AlpacaEval annotation files share their 805 instructions), whatever the file order, and no seed is involved."""
    if part not in SPLITS:
        raise InputError(None, None, "pairs_split", f"must be one of {', '.join(SPLITS)}, got {part!r}")
    if not 0 < heldout_fraction < 1:
        raise InputError(None, None, "heldout_fraction", f"must be in (0, 1), got {heldout_fraction}")
    if part == "all":
        return list(pairs)
    keep_heldout = part == "heldout"
    return [p for p in pairs if (heldout_score(p.prompt_text) < heldout_fraction) == keep_heldout]


# ----------------------------------------------------------------------------------------------- controlled benchmark

WRONG_ANSWER_OFFSETS = (-3, -2, -1, 1, 2, 3)  # our choice: near misses, so the pair differs in the answer only


def controlled_pairs(records, *, seed: int = 1337) -> list[PreferencePair]:
    """Pairs from controlled-benchmark records (:mod:`ual.data.controlled`): a valid answer preferred over an
    invalid one.

    High-entropy record: chosen = its answer (one draw from the valid set); rejected = an item of another category
    that is not valid for this one (e.g. "Trombone" for "Name a fruit."). Low-entropy record: chosen = its worked
    solution; rejected = the same solution ending in a wrong final answer (``#### N + d``, d in
    :data:`WRONG_ANSWER_OFFSETS`, kept >= 0). Seeded per record, so a record's pair does not depend on the others.
    """
    from ual.data.controlled import CATEGORIES, HIGH_SOURCE, LOW_SOURCE, normalise_answer

    out = []
    for rec in records:
        rng = random.Random(f"{seed}-pair-{rec.id}")
        prompt = [m for m in rec.messages[:-1]]
        if not rec.messages or rec.messages[-1]["role"] != "assistant" or not prompt:
            raise InputError(None, None, "messages", f"record {rec.id!r} has no prompt and response")
        chosen = rec.messages[-1]["content"]
        if rec.source == HIGH_SOURCE:
            if rec.category not in CATEGORIES:
                raise InputError(None, None, "category", f"record {rec.id!r}: unknown category {rec.category!r}")
            valid = {normalise_answer(x) for x in CATEGORIES[rec.category]["items"]}
            pool = sorted({x for c, spec in CATEGORIES.items() if c != rec.category for x in spec["items"]
                           if normalise_answer(x) not in valid})
            rejected = rng.choice(pool)
        elif rec.source == LOW_SOURCE:
            m = re.search(r"####\s*(-?\d+)\s*$", chosen)
            if m is None:
                raise InputError(None, None, "messages", f"record {rec.id!r}: the solution does not end in '#### N'")
            n = int(m.group(1))
            wrong = n + rng.choice([d for d in WRONG_ANSWER_OFFSETS if n + d >= 0])
            rejected = chosen[: m.start(1)] + str(wrong) + chosen[m.end(1):]
        else:
            raise InputError(None, None, "source", f"record {rec.id!r} is not from the controlled benchmark "
                             f"({LOW_SOURCE!r} or {HIGH_SOURCE!r}): {rec.source!r}")
        out.append(PreferencePair(f"{rec.id}-pair", rec.source, prompt, chosen, rejected))
    return out
