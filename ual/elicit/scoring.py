"""``elicit(config, records, output_path)``: score every record once, append each row as it finishes, resume.

Resume contract. The results file is append-only JSONL (``ual.io.JsonlAppender``: one flushed, fsynced line per
finished sample). A rerun, or a run after a kill at any moment, reads the file (skipping a torn last line),
skips every sample whose latest row has a score for the same record content (``record_sha256``: a changed
sample is scored again), and retries those whose latest row is an error or a parse failure (unless
``retry_failed`` is off). So a finished sample is never sent to the API twice and none is lost; only calls in
flight at the kill are repeated. Every row records how it was made (backend, model, prompt version, settings);
a file made with anything else is refused rather than mixed.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

from ual.data.records import Record
from ual.elicit.backends import ERROR, OK, PARSE_FAILURE, make_backend
from ual.elicit.config import ElicitConfig
from ual.common.errors import InputError
from ual.common.io import JsonlAppender, check_writable, iter_jsonl

IDENTITY = ("backend", "model", "prompt_version", "settings")


def latest_rows(path: str | Path) -> dict[str, tuple[int, dict]]:
    """``{id: (line, row)}`` of the last row per id in a results file (a torn line from a kill is skipped)."""
    out: dict[str, tuple[int, dict]] = {}
    path = Path(path)
    if not path.exists():
        return out
    for line, row in iter_jsonl(path, tolerate_torn=True):
        if "id" not in row:
            raise InputError(path, line, "id", "is missing")
        out[str(row["id"])] = (line, row)
    return out


def _check_identity(path: Path, rows: dict[str, tuple[int, dict]], identity: dict) -> None:
    for line, row in rows.values():
        for key in IDENTITY:
            if row.get(key) != identity[key]:
                raise InputError(path, line, key, f"this file holds scores made with {key}={row.get(key)!r}, "
                                 f"this run uses {identity[key]!r}; write to another --output file (or delete "
                                 "this one) rather than mixing scores")


def record_sha256(record: Record) -> str:
    """Content hash of a record (everything but its id): a score is valid only for the sample it was made for."""
    import hashlib
    import json

    body = {k: v for k, v in record.to_dict().items() if k != "id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _is_done(row: dict, record: Record, retry_failed: bool) -> bool:
    # rows written before record hashes were kept carry none: they are trusted as before
    if row.get("record_sha256", record_sha256(record)) != record_sha256(record):
        return False
    if row.get("score") is not None:
        return True
    return not retry_failed


def failure_reasons(rows, limit: int = 3) -> dict[str, int]:
    """The most common errors of failed rows (reason -> count), e.g. ``{"http 503": 12}``."""
    from collections import Counter

    reasons = Counter(str(r.get("error") or r.get("status"))[:80] for r in rows if r.get("score") is None)
    return dict(reasons.most_common(limit))


def elicit(config: ElicitConfig, records: Sequence[Record], output_path: str | Path) -> dict:
    """Score ``records`` into ``output_path`` (JSONL, appended and resumable) and return a summary dict.

    Summary keys: ``records``, ``skipped`` (already in the file), ``attempted``, ``scored``, ``parse_failures``,
    ``errors`` (this run), ``tokens`` (prompt/completion/total, API backends), ``seconds``,
    ``samples_per_second``, ``file_scored`` / ``file_missing`` (records with / without a score in the file after
    this run), and how the scores were made (``backend``, ``model``, ``prompt_version``, ``settings``, ``scale``).
    """
    output_path = Path(output_path)
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(None, None, "id", f"duplicate record id {dup!r}")
    backend = make_backend(config)
    identity = {"backend": backend.name, "model": backend.model, "prompt_version": backend.prompt_version,
                "settings": backend.settings()}
    check_writable(output_path.parent)
    existing = latest_rows(output_path)
    _check_identity(output_path, existing, identity)
    todo = [r for r in records if not (r.id in existing and _is_done(existing[r.id][1], r, config.retry_failed))]
    shas = {r.id: record_sha256(r) for r in todo}
    backend.check(todo)

    counts = {OK: 0, PARSE_FAILURE: 0, ERROR: 0}
    tokens = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    latest = {i: row for i, (_, row) in existing.items()}
    if todo:
        backend.prepare()
    t0 = time.perf_counter()
    if todo:
        with JsonlAppender(output_path) as out:
            for row in backend.run(todo, config.progress):
                s = row.get("score")
                if s is not None and (not math.isfinite(s) or s < 0):
                    row.update(score=None, status=ERROR, error=f"backend produced an invalid score {s!r} (must be "
                               "finite and >= 0)")
                full = {"id": row["id"], "record_sha256": shas[row["id"]], "score": row.get("score"), **identity,
                        "scale": backend.scale,
                        "status": row.get("status"), "error": row.get("error"), "raw": row.get("raw"),
                        **{k: v for k, v in row.items() if k not in ("id", "score", "status", "error", "raw")}}
                out.write(full)
                latest[full["id"]] = full
                counts[full["status"]] += 1
                for k in tokens:
                    tokens[k] += int((row.get("usage") or {}).get(k, 0))
    seconds = time.perf_counter() - t0
    file_scored = sum(1 for i in ids if latest.get(i, {}).get("score") is not None)
    return {"output": str(output_path), **identity, "scale": backend.scale, "records": len(records),
            "skipped": len(records) - len(todo), "attempted": len(todo), "scored": counts[OK],
            "parse_failures": counts[PARSE_FAILURE], "errors": counts[ERROR], "tokens": tokens,
            "seconds": round(seconds, 3), "samples_per_second": (len(todo) / seconds) if todo and seconds > 0 else None,
            "file_scored": file_scored, "file_missing": len(records) - file_scored,
            "failed_reasons": failure_reasons(latest.get(i, {"status": "missing"}) for i in ids)}
