"""File primitives every stage uses: atomic writes, append-and-flush JSONL, tolerant JSONL reads.

A kill at any moment must leave either the old file or the new one, never half of one (atomic replace), and
an appended results file loses at most its last, torn line (which readers skip).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from ual.common.errors import InputError


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (keys kept in insertion order)."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Atomically write ``rows`` as JSON Lines; returns the number of rows."""
    lines = [json.dumps(r, ensure_ascii=False, default=_json_default) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


class JsonlAppender:
    """Append rows to a JSONL file, flushed and fsynced per row, so a kill loses no finished row.

    If the file ends in a torn line (a kill mid-write), a newline is added first so the torn fragment stays
    isolated on its own line and is skipped by :func:`read_jsonl`.
    """

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        self._f = open(self.path, "a", encoding="utf-8")
        if needs_newline:
            self._f.write("\n")
            self._flush()

    def _flush(self) -> None:
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
        self._flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_jsonl(path: str | Path, *, tolerate_torn: bool = True) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)`` for each JSON object line of ``path`` (1-based line numbers).

    Blank lines are skipped. With ``tolerate_torn`` (results files written by :class:`JsonlAppender`), lines that
    are not valid JSON are skipped: a kill can leave a torn fragment, which the appender isolates on its own line.
    Otherwise (data files: ``tolerate_torn=False``) such a line raises :class:`InputError` naming file and line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, None, None, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, None, None, "is a directory, expected a file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(path, line, None, f"not valid UTF-8 (byte {e.start})") from None
    lines = text.split("\n")
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if tolerate_torn:
                continue
            raise InputError(path, i + 1, None, f"invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            if tolerate_torn and i == last:
                continue
            raise InputError(path, i + 1, None, f"expected a JSON object, got {type(row).__name__}")
        yield i + 1, row


def read_jsonl(path: str | Path, *, tolerate_torn: bool = True) -> list[dict]:
    """All rows of a JSONL file (see :func:`iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path, tolerate_torn=tolerate_torn)]


def read_json(path: str | Path) -> Any:
    """Load one JSON document, with an :class:`InputError` naming the file and line on failure."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, None, None, "file not found") from None
    except UnicodeDecodeError as e:
        raise InputError(path, None, None, f"not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, e.lineno, None, f"invalid JSON ({e.msg} at column {e.colno})") from None


def check_writable(directory: str | Path, min_free_mb: float = 50.0) -> None:
    """Fail before expensive work if ``directory`` cannot be created/written or has under ``min_free_mb`` free."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".ual-write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise InputError(directory, None, None, f"output directory is not writable ({e.strerror or e})") from None
    st = os.statvfs(directory)
    free_mb = st.f_bavail * st.f_frsize / 2**20
    if free_mb < min_free_mb:
        raise InputError(directory, None, None, f"only {free_mb:.0f} MB free on disk, need at least {min_free_mb:.0f} MB")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
