"""Generations in AlpacaEval's ``model_outputs.json`` format, written atomically in the reference order.

A ``model_outputs.json`` is a JSON list of ``{"instruction", "output", "generator", "dataset"}``, one per
AlpacaEval instruction. The length-controlled win rate needs a model's outputs to line up one-to-one with the
reference's 805 instructions, so writing checks that and orders the rows like the reference.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ual.data.records import Record
from ual.common.errors import InputError
from ual.common.io import atomic_write_json, iter_jsonl, read_json

MODEL_OUTPUT_FIELDS = ("instruction", "output", "generator", "dataset")


def check_items(rows, source: str | Path | None, *, what: str, string_fields: Sequence[str],
                optional: Sequence[str] = ()) -> list[dict]:
    """Checks shared by AlpacaEval JSON lists: a non-empty list of objects whose ``string_fields`` are strings
    (those in ``optional`` may be absent) and whose ``instruction`` appears once. :class:`InputError` names the
    item (1-based, as the line) and the field."""
    if not isinstance(rows, list) or not rows:
        raise InputError(source, None, None, f"expected a non-empty JSON list of {what}s")
    seen: dict[str, int] = {}
    for i, r in enumerate(rows, start=1):
        if not isinstance(r, dict):
            raise InputError(source, i, None, f"{what} {i}: expected an object, got {type(r).__name__}")
        for f in string_fields:
            if f not in r:
                if f in optional:
                    continue
                raise InputError(source, i, f, f"{what} {i}: is missing")
            if not isinstance(r[f], str):
                raise InputError(source, i, f, f"{what} {i}: expected a string, got {type(r[f]).__name__}")
        if r["instruction"] in seen:
            raise InputError(source, i, "instruction", f"{what} {i}: same instruction as {what} "
                             f"{seen[r['instruction']]}")
        seen[r["instruction"]] = i
    return rows


def validate_model_outputs(rows, source: str | Path | None = None) -> list[dict]:
    """Check a model_outputs list (string fields :data:`MODEL_OUTPUT_FIELDS`, ``dataset`` optional as in
    AlpacaEval, each instruction once); returns it."""
    return check_items(rows, source, what="item", string_fields=MODEL_OUTPUT_FIELDS, optional=("dataset",))


def read_model_outputs(path: str | Path) -> list[dict]:
    """Read and validate a ``model_outputs.json``."""
    return validate_model_outputs(read_json(path), path)


def order_like_reference(outputs: Sequence[dict], reference: Sequence[dict], *, source=None,
                         reference_source=None) -> list[dict]:
    """``outputs`` reordered to the reference's instruction order; every reference instruction must have exactly
    one output and every output a reference instruction (else :class:`InputError`). ``dataset`` is taken from the
    reference when the output lacks it."""
    by_inst = {r["instruction"]: r for r in validate_model_outputs(list(outputs), source)}
    ref_insts = [r["instruction"] for r in validate_model_outputs(list(reference), reference_source)]
    missing = [i for i in ref_insts if i not in by_inst]
    if missing:
        raise InputError(source, None, "instruction", f"{len(missing)} of {len(ref_insts)} reference instructions "
                         f"have no output (first: {missing[0][:60]!r})")
    extra = set(by_inst) - set(ref_insts)
    if extra:
        raise InputError(source, None, "instruction", f"{len(extra)} outputs answer no reference instruction "
                         f"(first: {sorted(extra)[0][:60]!r})")
    ordered = []
    for ref in reference:
        row = dict(by_inst[ref["instruction"]])
        if not row.get("dataset"):
            row["dataset"] = ref.get("dataset", "")
        ordered.append({f: row[f] for f in MODEL_OUTPUT_FIELDS})
    return ordered


def write_model_outputs(path: str | Path, outputs: Sequence[dict], *, reference: Sequence[dict] | None = None,
                        reference_source: str | Path | None = None) -> int:
    """Atomically write ``outputs`` as a ``model_outputs.json`` (in ``reference`` order when given, checked for
    one-to-one coverage); returns the number of rows."""
    rows = (order_like_reference(outputs, reference, reference_source=reference_source) if reference is not None
            else [{f: r.get(f, "") for f in MODEL_OUTPUT_FIELDS} for r in validate_model_outputs(list(outputs))])
    atomic_write_json(path, rows)
    return len(rows)


def model_outputs_from_generations(generations_path: str | Path, records: Sequence[Record], generator: str) -> list[dict]:
    """Model outputs from a generations JSONL (``ual.evaluate.generate``: rows ``id``, ``output``) and the
    evaluation records it was generated from (instruction = the record's first user turn, dataset = its
    category). Each record needs exactly one generation with a single output (``n`` = 1)."""
    outs: dict[str, str] = {}
    for line, row in iter_jsonl(generations_path):
        rid, out = row.get("id"), row.get("output")
        if not isinstance(rid, str):
            raise InputError(generations_path, line, "id", "expected a string")
        if isinstance(out, list) and len(out) == 1:
            out = out[0]
        if not isinstance(out, str):
            raise InputError(generations_path, line, "output", "expected one output string per prompt (n = 1)")
        outs[rid] = out
    missing = [r.id for r in records if r.id not in outs]
    if missing:
        raise InputError(generations_path, None, "id", f"{len(missing)} of {len(records)} records have no "
                         f"generation (first: {missing[0]!r})")
    return [{"instruction": r.prompt, "output": outs[r.id], "generator": generator, "dataset": r.category or ""}
            for r in records]
