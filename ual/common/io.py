"""File primitives every stage uses: one guarded reader path, atomic writes, append-and-flush JSONL.

Reading: every reader of a user file goes ``bytes -> text -> records`` through :func:`read_bytes`,
:func:`decode_text`, :func:`parse_json` / :func:`read_yaml` / :func:`iter_jsonl`, which turn any OS, decoding or
parse failure (a missing file, a directory, a permission, a symlink loop, bytes that are not UTF-8, bad JSON or
YAML) into an :class:`~ual.common.errors.InputError` naming the file and the line (the CLI: exit 2). One rule for
text encodings everywhere: UTF-8, with an optional byte-order mark at the start (``utf-8-sig``), which editors on
Windows add.

Writing: a kill at any moment must leave either the old file or the new one, never half of one (atomic replace),
and an appended results file loses at most its last, torn line: readers skip it with a warning, and the next
:class:`JsonlAppender` on the file cuts it off so the resumed run rewrites that row.
"""
from __future__ import annotations

import codecs
import errno
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

from ual.common.errors import InputError


class TornLineWarning(UserWarning):
    """An appended JSONL file ended in a torn line (a kill or a full disk mid-append), which was skipped or cut."""


# ----------------------------------------------------------------------------------------------- guarded reading

def os_error_message(path: Path, e: OSError) -> str:
    """What went wrong opening ``path``, in words (the errno decides, not the exception class)."""
    if e.errno == errno.ELOOP:
        return "is a symbolic link loop (a link that points back to itself), cannot be read"
    if e.errno == errno.ENOENT:
        if path.is_symlink():
            return f"file not found (a broken symbolic link to {os.readlink(path)})"
        return "file not found"
    if e.errno == errno.EISDIR:
        return "is a directory, expected a file"
    if e.errno == errno.ENOTDIR:
        return "file not found (a part of the path is a file, not a directory)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot be read ({e.strerror or e})"


def read_bytes(path: str | Path) -> bytes:
    """The bytes of a user file; any OS failure becomes an :class:`InputError` saying which."""
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(path, None, None, os_error_message(path, e)) from None


def decode_text(path: str | Path, raw: bytes, *, first_line: int = 1, bom: bool = True) -> str:
    """``raw`` as UTF-8 (a leading byte-order mark dropped when ``bom``); bad bytes name their line."""
    try:
        return raw.decode("utf-8-sig" if bom else "utf-8")
    except UnicodeDecodeError as e:
        start = e.start + (len(codecs.BOM_UTF8) if bom and raw.startswith(codecs.BOM_UTF8) else 0)
        line = first_line + raw[:start].count(b"\n")
        col = start - (raw.rfind(b"\n", 0, start) + 1) + 1
        raise InputError(path, line, None, f"not valid UTF-8 (byte {raw[start:start + 1].hex()} at byte "
                                           f"{col} of the line)") from None


def read_text(path: str | Path) -> str:
    """A user text file as a string (:func:`read_bytes` then :func:`decode_text`)."""
    return decode_text(path, read_bytes(path))


def parse_json(path: str | Path | None, text: str, *, first_line: int = 1) -> Any:
    """One JSON document; a syntax error, a number too long to convert or nesting too deep names the line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, first_line + e.lineno - 1, None, f"invalid JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise InputError(path, first_line, None, f"invalid JSON ({e})") from None
    except RecursionError:
        raise InputError(path, first_line, None, "invalid JSON (nested too deeply)") from None


def read_json(path: str | Path) -> Any:
    """Load one JSON document, with an :class:`InputError` naming the file and line on failure."""
    return parse_json(path, read_text(path))


def read_yaml(path: str | Path) -> Any:
    """Load one YAML document (any top-level type), with an :class:`InputError` naming the file and line."""
    import yaml

    text = read_text(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        raise InputError(path, None if mark is None else mark.line + 1, None,
                         f"invalid YAML ({' '.join(str(e).split())})") from None
    except (ValueError, OverflowError) as e:  # a value YAML's resolver accepts but cannot build, e.g. 2024-13-45
        raise InputError(path, None, None, f"invalid YAML value ({e})") from None
    except RecursionError:
        raise InputError(path, None, None, "invalid YAML (nested too deeply)") from None


def iter_jsonl_bytes(path: str | Path, raw: bytes, *, tolerate_torn: bool = True) -> Iterator[tuple[int, dict]]:
    """:func:`iter_jsonl` on bytes already read. Lines are decoded one at a time, so a line cut inside a multi-byte
    UTF-8 character is a torn line like any other, not a decoding error of the whole file."""
    chunks = raw.split(b"\n")
    last = max((i for i, c in enumerate(chunks) if c.strip()), default=-1)
    for i, chunk in enumerate(chunks):
        if not chunk.strip():
            continue
        try:
            row = parse_json(path, decode_text(path, chunk, first_line=i + 1, bom=i == 0), first_line=i + 1)
            if not isinstance(row, dict):
                raise InputError(path, i + 1, None, f"expected a JSON object, got {type(row).__name__}")
        except InputError as e:
            if not (tolerate_torn and i == last):
                raise
            warnings.warn(TornLineWarning(f"{path}:{i + 1}: skipped a torn last line ({len(chunk)} bytes: {e.message}"
                                          "), as a kill or a full disk mid-append leaves; a resumed run rewrites it"),
                          stacklevel=3)
            return
        yield i + 1, row


def iter_jsonl(path: str | Path, *, tolerate_torn: bool = True) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)`` for each JSON object line of ``path`` (1-based line numbers).

    Blank lines are skipped. With ``tolerate_torn`` (results files written by :class:`JsonlAppender`), a last line
    that is not a JSON object (a kill or a full disk mid-append: invalid JSON, or cut inside a multi-byte character)
    is skipped with a :class:`TornLineWarning`; damage anywhere else is an :class:`InputError` naming the line.
    Without it (data files: ``tolerate_torn=False``) the last line is as strict as the others.
    """
    path = Path(path)
    yield from iter_jsonl_bytes(path, read_bytes(path), tolerate_torn=tolerate_torn)


def read_jsonl(path: str | Path, *, tolerate_torn: bool = True) -> list[dict]:
    """All rows of a JSONL file (see :func:`iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path, tolerate_torn=tolerate_torn)]


# ----------------------------------------------------------------------------------------------- writing

def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` sets it process-wide, which a
    concurrent thread creating a file could observe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and an atomic rename.

    The file gets the mode a plain ``open(path, "w")`` would give it (``0o666`` less the umask), as appended
    files do, not ``mkstemp``'s private 0600: a shared results folder stays readable to colleagues."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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


def _tail_start(path: Path, size: int, block: int = 1 << 16) -> int:
    """Offset just after the last newline of ``path`` (0 when there is none), reading backwards in blocks."""
    with open(path, "rb") as f:
        end = size
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            k = f.read(end - start).rfind(b"\n")
            if k >= 0:
                return start + k + 1
            end = start
    return 0


class JsonlAppender:
    """Append rows to a JSONL file, flushed and fsynced per row, so a kill loses no finished row.

    If the file ends in a torn line (a kill or a full disk mid-write: bytes after the last newline that are not a
    whole JSON object), those bytes are cut off first, so the resumed run rewrites that row and the file stays
    valid line by line; a whole row that only lacks its newline is kept and the newline added.
    """

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        needs_newline = False
        size = self.path.stat().st_size if self.path.exists() else 0
        if size:
            start = _tail_start(self.path, size)
            if start < size:
                with open(self.path, "rb") as f:
                    f.seek(start)
                    tail = f.read()
                try:
                    whole = bool(tail.strip()) and isinstance(
                        parse_json(self.path, decode_text(self.path, tail, bom=start == 0)), dict)
                except InputError:
                    whole = False
                if whole or not tail.strip():
                    needs_newline = True
                else:
                    warnings.warn(TornLineWarning(f"{self.path}: cut a torn last line ({size - start} bytes) before "
                                                  "appending; its row is written again"), stacklevel=2)
                    os.truncate(self.path, start)
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
