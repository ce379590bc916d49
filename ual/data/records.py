"""Training and evaluation records: one canonical format, loaders for the common ones, mixing, validation.

Canonical record (one JSON object per line in a ``.jsonl`` file)::

    {"id": "gsm8k-12", "source": "gsm8k", "messages": [{"role": "user", "content": "..."},
                                                    {"role": "assistant", "content": "..."}],
     "answer": "72", "category": "math"}

``answer`` (gold final answer, for math) and ``category`` are optional. Every loader accepts a local path; a
Hugging Face hub id works too when online (through ``datasets``). Bad input raises :class:`~ual.InputError`
naming the file, the line and the field.
"""
from __future__ import annotations

import codecs
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ual.common.errors import InputError
from ual.common.io import decode_text, iter_jsonl_bytes, read_bytes, write_jsonl

ROLES = ("system", "user", "assistant")
FORMATS = ("auto", "records", "alpaca", "gsm8k", "metamath", "sharegpt", "lima", "alpaca_eval")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}


@dataclass
class Record:
    """One training or evaluation sample. ``messages`` alternate user/assistant, optionally after a system turn."""

    id: str
    source: str
    messages: list[dict]
    answer: str | None = None
    category: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None}

    @property
    def prompt(self) -> str:
        """The first user turn (the instruction)."""
        return next(m["content"] for m in self.messages if m["role"] == "user")

    @property
    def response(self) -> str | None:
        """The last assistant turn, or None for prompt-only records."""
        for m in reversed(self.messages):
            if m["role"] == "assistant":
                return m["content"]
        return None


# ----------------------------------------------------------------------------------------------- reading raw rows

def _iter_json_array(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """Yield (line, element) for each element of a top-level JSON array, tracking the element's start line."""
    dec = json.JSONDecoder()
    i = 0
    n = len(text)
    ws = " \t\r\n"

    def skip(j: int) -> int:
        while j < n and text[j] in ws:
            j += 1
        return j

    i = skip(i)
    if i >= n or text[i] != "[":
        raise InputError(path, 1, None, "expected a JSON array of objects (or use .jsonl)")
    i = skip(i + 1)
    if i < n and text[i] == "]":
        return
    while True:
        line = text.count("\n", 0, i) + 1
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise InputError(path, e.lineno, None, f"invalid JSON ({e.msg} at column {e.colno})") from None
        except ValueError as e:  # e.g. an integer of more than 4300 digits
            raise InputError(path, line, None, f"invalid JSON ({e})") from None
        except RecursionError:
            raise InputError(path, line, None, "invalid JSON (nested too deeply)") from None
        yield line, obj
        i = skip(end)
        if i < n and text[i] == ",":
            i = skip(i + 1)
            continue
        if i < n and text[i] == "]":
            return
        raise InputError(path, text.count("\n", 0, i) + 1, None, "invalid JSON (expected ',' or ']' in array)")


def read_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line, row)`` from a ``.jsonl`` file or a ``.json`` array; every row must be a JSON object."""
    path = Path(path)
    raw = read_bytes(path)  # the guarded path: a directory, a symlink loop, a permission all name the file
    if not raw.removeprefix(codecs.BOM_UTF8).strip():
        raise InputError(path, None, None, "file is empty")
    if raw.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"["):
        for line, obj in _iter_json_array(path, decode_text(path, raw)):
            if not isinstance(obj, dict):
                raise InputError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
            yield line, obj
    else:  # a data file is not appended to: its last line is as strict as the others
        yield from iter_jsonl_bytes(path, raw, tolerate_torn=False)


def _str_field(path, line, row: dict, name: str, *, required: bool = True, allow_empty: bool = False) -> str | None:
    if name not in row or row[name] is None:
        if required:
            raise InputError(path, line, name, "is missing")
        return None
    v = row[name]
    if isinstance(v, (int, float)) and not isinstance(v, bool) and name in ("answer", "id"):
        v = str(v)
    if not isinstance(v, str):
        raise InputError(path, line, name, f"expected a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise InputError(path, line, name, "is empty")
    return v


# ----------------------------------------------------------------------------------------------- format parsers

def gsm8k_final_answer(solution: str) -> str | None:
    """The final answer after ``####`` in a GSM8K solution, normalised (``1,000`` -> ``1000``), or None."""
    m = re.search(r"####\s*(.+?)\s*$", solution.strip())
    if not m:
        return None
    return m.group(1).replace(",", "").replace("$", "").strip()


def _parse_records(path, line, row) -> Record:
    rid = _str_field(path, line, row, "id")
    source = _str_field(path, line, row, "source")
    msgs = row.get("messages")
    if msgs is None:
        raise InputError(path, line, "messages", "is missing")
    if not isinstance(msgs, list):
        raise InputError(path, line, "messages", f"expected a list, got {type(msgs).__name__}")
    if not msgs:
        raise InputError(path, line, "messages", "is empty")
    clean = []
    for k, m in enumerate(msgs):
        fld = f"messages[{k}]"
        if not isinstance(m, dict):
            raise InputError(path, line, fld, f"expected an object with role and content, got {type(m).__name__}")
        role = _str_field(path, line, {f"{fld}.role": m.get("role")}, f"{fld}.role")
        if role not in ROLES:
            raise InputError(path, line, f"{fld}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
        content = _str_field(path, line, {f"{fld}.content": m.get("content")}, f"{fld}.content")
        clean.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in clean):
        raise InputError(path, line, "messages", "has no user turn")
    answer = _str_field(path, line, row, "answer", required=False)
    category = _str_field(path, line, row, "category", required=False)
    unknown = set(row) - {"id", "source", "messages", "answer", "category"}
    if unknown:
        raise InputError(path, line, sorted(unknown)[0], "unknown field in a canonical record")
    return Record(rid, source, clean, answer, category)


def _parse_alpaca(path, line, row, source, index) -> Record:
    instruction = _str_field(path, line, row, "instruction")
    inp = _str_field(path, line, row, "input", required=False, allow_empty=True) or ""
    key = "output" if "output" in row else "response"
    if key not in row:
        raise InputError(path, line, "output", 'is missing (expected "output" or "response")')
    output = _str_field(path, line, row, key)
    prompt = instruction if not inp.strip() else f"{instruction}\n\n{inp}"
    rid = _str_field(path, line, row, "id", required=False) or f"{source}-{index}"
    category = _str_field(path, line, row, "category", required=False)
    return Record(rid, source, [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}],
                  category=category)


def _parse_gsm8k(path, line, row, source, index) -> Record:
    question = _str_field(path, line, row, "question")
    solution = _str_field(path, line, row, "answer")
    final = gsm8k_final_answer(solution)
    if final is None:
        raise InputError(path, line, "answer", "does not end in '#### <final answer>'")
    rid = _str_field(path, line, row, "id", required=False) or f"{source}-{index}"
    return Record(rid, source, [{"role": "user", "content": question}, {"role": "assistant", "content": solution}],
                  answer=final, category="math")


def _parse_metamath(path, line, row, source, index) -> Record:
    """MetaMathQA rows: ``query``, ``response`` ending in "The answer is: X", optional ``type``."""
    query = _str_field(path, line, row, "query")
    response = _str_field(path, line, row, "response")
    m = re.search(r"The answer is:?\s*(.+?)\s*$", response.strip())
    if not m:
        raise InputError(path, line, "response", "does not end in 'The answer is: <answer>'")
    category = _str_field(path, line, row, "type", required=False) or "math"
    return Record(f"{source}-{index}", source, [{"role": "user", "content": query},
                                                {"role": "assistant", "content": response}],
                  answer=m.group(1).rstrip(".").strip(), category=category)


def _conversations(path, line, row, what: str = "") -> list:
    """A row's non-empty ``conversations`` list (ShareGPT and LIMA rows)."""
    conv = row.get("conversations")
    if conv is None:
        raise InputError(path, line, "conversations", "is missing")
    if not isinstance(conv, list) or not conv:
        raise InputError(path, line, "conversations", f"expected a non-empty list{what}")
    return conv


def _parse_sharegpt(path, line, row, source, index) -> Record:
    conv = _conversations(path, line, row)
    msgs = []
    for k, turn in enumerate(conv):
        fld = f"conversations[{k}]"
        if not isinstance(turn, dict):
            raise InputError(path, line, fld, "expected an object with from and value")
        who = turn.get("from")
        if who not in _SHAREGPT_ROLES:
            raise InputError(path, line, f"{fld}.from", f"unknown speaker {who!r}")
        value = _str_field(path, line, {f"{fld}.value": turn.get("value")}, f"{fld}.value")
        msgs.append({"role": _SHAREGPT_ROLES[who], "content": value})
    rid = row.get("id")
    rid = str(rid) if rid not in (None, "") else f"{source}-{index}"
    return Record(rid, source, msgs)


def _parse_lima(path, line, row, source, index) -> Record:
    """GAIR/lima rows: ``conversations`` is a list of strings, user and assistant turns alternating from the user;
    the test split holds the prompt alone (a prompt-only record)."""
    conv = _conversations(path, line, row, " of strings")
    msgs = []
    for k, text in enumerate(conv):
        value = _str_field(path, line, {f"conversations[{k}]": text}, f"conversations[{k}]")
        msgs.append({"role": "user" if k % 2 == 0 else "assistant", "content": value})
    category = _str_field(path, line, row, "source", required=False)
    return Record(f"{source}-{index}", source, msgs, category=category)


def _parse_alpaca_eval(path, line, row, source, index) -> Record:
    instruction = _str_field(path, line, row, "instruction")
    output = _str_field(path, line, row, "output", allow_empty=True)
    category = _str_field(path, line, row, "dataset", required=False)
    msgs = [{"role": "user", "content": instruction}]
    if output and output.strip():
        msgs.append({"role": "assistant", "content": output})
    return Record(f"{source}-{index}", source, msgs, category=category)


_PARSERS = {"alpaca": _parse_alpaca, "gsm8k": _parse_gsm8k, "metamath": _parse_metamath, "sharegpt": _parse_sharegpt,
            "lima": _parse_lima, "alpaca_eval": _parse_alpaca_eval}


def detect_format(row: dict) -> str:
    """Guess a row's format from its keys."""
    if "messages" in row:
        return "records"
    if "conversations" in row:
        conv = row["conversations"]
        return "lima" if isinstance(conv, list) and conv and isinstance(conv[0], str) else "sharegpt"
    if "question" in row and "answer" in row:
        return "gsm8k"
    if "query" in row and "response" in row:
        return "metamath"
    if "instruction" in row and "generator" in row:
        return "alpaca_eval"
    if "instruction" in row:
        return "alpaca"
    return "unknown"


def parse_rows(rows: Iterable[tuple[int, dict]], *, fmt: str = "auto", source: str | None = None,
               path: str | Path | None = None, first_index: int = 0) -> list[Record]:
    """Turn raw ``(line, row)`` pairs into checked :class:`Record` s; duplicate ids are an error.

    ``first_index``: the source row number of the first row given (ids made from row numbers, ``<source>-<row>``,
    stay those of the whole source when only a slice of its rows is parsed)."""
    if fmt not in FORMATS:
        raise InputError(path, None, "format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out: list[Record] = []
    seen: dict[str, int] = {}
    for index, (line, row) in enumerate(rows, start=first_index):
        f = fmt if fmt != "auto" else detect_format(row)
        if f == "unknown":
            raise InputError(path, line, None, "cannot tell the format from the keys "
                             f"{sorted(row)[:6]}; expected messages, conversations, question/answer or instruction")
        if f == "records":
            rec = _parse_records(path, line, row)
        else:
            rec = _PARSERS[f](path, line, row, source or (Path(path).stem if path else f), index)
        if rec.id in seen:
            raise InputError(path, line, "id", f"duplicate id {rec.id!r} (first on line {seen[rec.id]})")
        seen[rec.id] = line
        out.append(rec)
    return out


# ----------------------------------------------------------------------------------------------- public loaders

def row_range(rows: Sequence[int | None] | None, total: int, *, where=None) -> range:
    """The source rows a ``rows: [start, stop]`` setting selects out of ``total``: a Python slice in file order
    (either end null; negative counts from the end, so ``[-1030, null]`` is the last 1,030 rows and ``[0, -1030]``
    all the others). None selects every row."""
    if rows is None:
        return range(total)
    if (not isinstance(rows, (list, tuple)) or len(rows) != 2
            or any(v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in rows)):
        raise InputError(where, None, "rows", f"must be [start, stop] with integers or null, got {rows!r}")
    return range(total)[slice(rows[0], rows[1])]


def load_file(path: str | Path, *, fmt: str = "auto", source: str | None = None,
              rows: Sequence[int | None] | None = None) -> list[Record]:
    """Load a local ``.json``/``.jsonl`` file in any supported format into records (``rows``: see
    :func:`row_range`; ids keep the rows' numbers in the whole file)."""
    path = Path(path)
    if rows is None:
        return parse_rows(read_rows(path), fmt=fmt, source=source, path=path)
    raw = list(read_rows(path))
    r = row_range(rows, len(raw), where=path)
    return parse_rows(raw[r.start:r.stop], fmt=fmt, source=source, path=path, first_index=r.start)


def load_records(path: str | Path) -> list[Record]:
    """Load a canonical records file (the format every stage writes)."""
    return load_file(path, fmt="records")


def save_records(path: str | Path, records: Sequence[Record]) -> int:
    """Write records as canonical JSONL (atomically); returns the count."""
    return write_jsonl(path, (r.to_dict() for r in records))


def load_hub(hub_id: str, *, split: str = "train", fmt: str = "auto", source: str | None = None,
             config: str | None = None, rows: Sequence[int | None] | None = None,
             data_files: str | None = None) -> list[Record]:
    """Load a Hugging Face hub dataset (needs network), e.g. ``load_hub("openai/gsm8k", config="main")``.

    ``data_files``: a JSON/JSONL file inside the dataset repository, read with the ``json`` builder instead of
    the repository's own loader (``datasets`` >= 4 no longer runs loading scripts, which GAIR/lima has):
    ``load_hub("GAIR/lima", data_files="test.jsonl")``. ``rows``: see :func:`row_range`."""
    import datasets  # imported here: heavy, and only needed online

    if data_files:
        ds = datasets.load_dataset("json", data_files=f"hf://datasets/{hub_id}/{data_files}", split="train")
    else:
        ds = datasets.load_dataset(hub_id, config, split=split)
    r = row_range(rows, len(ds), where=f"hub:{hub_id}")
    if rows is not None:
        ds = ds.select(r)
    pairs = ((r.start + i + 1, dict(x)) for i, x in enumerate(ds))
    return parse_rows(pairs, fmt=fmt, source=source or hub_id.split("/")[-1], path=f"hub:{hub_id}",
                      first_index=r.start)


def load(path_or_hub_id: str | Path, *, fmt: str = "auto", source: str | None = None, split: str = "train",
         config: str | None = None, rows: Sequence[int | None] | None = None,
         data_files: str | None = None) -> list[Record]:
    """Load records from a local file (as given, or under the data root: :func:`ual.common.paths.resolve_data_path`),
    else from the hub id (online only). ``rows`` keeps a slice of the source's rows (:func:`row_range`);
    ``data_files`` names a file inside a hub repository (:func:`load_hub`)."""
    from ual.common.paths import resolve_data_path

    p = resolve_data_path(path_or_hub_id)
    if p is not None:
        return load_file(p, fmt=fmt, source=source, rows=rows)
    s = str(path_or_hub_id)
    if s.endswith((".json", ".jsonl")) or s.startswith((".", "/")) or s.count("/") > 1:
        raise InputError(s, None, None, "file not found")
    return load_hub(s, split=split, fmt=fmt, source=source, config=config, rows=rows, data_files=data_files)


@dataclass
class SourceSpec:
    """One source of a mixed set: where to load it, how many samples to take (None = all), its format.

    ``rows``: ``[start, stop]``, a slice of the source's rows in file order taken before ``n`` is drawn (e.g.
    ``[-1030, null]``: the last 1,030 rows); ids keep the rows' numbers in the whole source. ``data_files``: a
    file inside a hub dataset repository, for repositories whose loading script ``datasets`` no longer runs."""

    path: str
    n: int | None = None
    format: str = "auto"
    source: str | None = None
    split: str = "train"
    config: str | None = None
    rows: list | None = None
    data_files: str | None = None

    def load(self) -> list[Record]:
        """Every record this spec names (its ``rows`` slice; ``n`` is not drawn here)."""
        return load(self.path, fmt=self.format, source=self.source, split=self.split, config=self.config,
                    rows=self.rows, data_files=self.data_files)


def mix(specs: Sequence[SourceSpec | dict], *, seed: int = 1337, shuffle: bool = True,
        select: Callable[[SourceSpec, list[Record]], list[Record]] | None = None) -> list[Record]:
    """Load each source, draw ``n`` samples from it without replacement (seeded), and concatenate.

    The draw of one source does not depend on the other sources, so adding a source keeps the others' samples.
    ``select(spec, records)``, when given, runs on each source's records after the draw and returns the ones to keep
    (the data stage's ``select: deita`` step, :mod:`ual.data.select`).
    """
    out: list[Record] = []
    for k, spec in enumerate(specs):
        if isinstance(spec, dict):
            spec = SourceSpec(**spec)
        recs = spec.load()
        if spec.n is not None:
            if spec.n > len(recs):
                raise InputError(spec.path, None, "n", f"asks for {spec.n} samples but the source has {len(recs)}")
            rng = random.Random(f"{seed}-{spec.source or spec.path}")
            recs = [recs[i] for i in sorted(rng.sample(range(len(recs)), spec.n))]
        if select is not None:
            recs = select(spec, recs)
        out.extend(recs)
    ids = [r.id for r in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(None, None, "id", f"id {dup!r} occurs in more than one source; give each a distinct source name")
    if shuffle:
        random.Random(seed).shuffle(out)
    return out


# ----------------------------------------------------------------------------------------------- scores

def load_scores(path: str | Path, records: Sequence[Record] | None = None, *, score_range: tuple[float, float] = (0, 99),
                allow_missing: bool = False) -> dict[str, float]:
    """Read a scores file into ``{id: score}`` and check it against ``records``.

    Formats: JSONL lines with ``id`` and ``score`` (what ``ual.elicit`` writes; later lines override earlier
    ones for the same id, null scores count as missing), or a JSON array of numbers in record order (the authors'
    format). Scores must be finite and inside ``score_range``; every record needs one unless ``allow_missing``.
    A JSONL scores file is appended by elicitation: a torn last line (a kill mid-append) is skipped with a warning.
    """
    import math

    from ual.common.io import parse_json

    path = Path(path)
    scores: dict[str, float] = {}
    lines: dict[str, int] = {}
    lo, hi = score_range
    raw = read_bytes(path)
    if raw.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"[") and path.suffix == ".json":
        values = parse_json(path, decode_text(path, raw))
        if not isinstance(values, list):
            raise InputError(path, 1, None, f"expected a JSON list of scores, got {type(values).__name__}")
        if records is None:
            raise InputError(path, None, None, "a list of scores needs the data file to give the ids")
        if len(values) != len(records):
            raise InputError(path, None, "score", f"has {len(values)} scores for {len(records)} samples")
        rows = [(i + 1, {"id": r.id, "score": v}) for i, (r, v) in enumerate(zip(records, values))]
    else:
        rows = list(iter_jsonl_bytes(path, raw, tolerate_torn=True))
    if not rows:
        raise InputError(path, None, None, "file is empty")
    for line, row in rows:
        if "id" not in row:
            raise InputError(path, line, "id", "is missing")
        rid = str(row["id"])
        if "score" not in row:
            raise InputError(path, line, "score", "is missing")
        s = row["score"]
        if s is None:
            continue
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise InputError(path, line, "score", f"expected a number, got {s!r}")
        if math.isnan(s) or math.isinf(s):
            raise InputError(path, line, "score", f"is {s}, expected a finite number")
        if not lo <= s <= hi:
            raise InputError(path, line, "score", f"{s} is outside the declared range [{lo}, {hi}]")
        scores[rid] = float(s)
        lines[rid] = line
    if records is not None:
        known = {r.id for r in records}
        extra = [i for i in scores if i not in known]
        if extra:
            raise InputError(path, lines[extra[0]], "id", f"{extra[0]!r} is not in the data ({len(extra)} such ids)")
        missing = [r.id for r in records if r.id not in scores]
        if missing and not allow_missing:
            raise InputError(path, None, "score", f"{len(missing)} of {len(records)} samples have no score "
                             f"(first: {missing[0]!r})")
    return scores
