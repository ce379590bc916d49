"""The one error type users see for bad input."""
from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input: names the file, the line (1-based, or None for the whole file) and the field.

    Rendered as ``train.jsonl:42: field "messages": is empty``. The CLI prints it and exits with code 2.
    """

    def __init__(self, path: str | Path | None, line: int | None, field: str | None, message: str):
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        # no file (a value from the command line or a notebook): the field alone says where, not "<input>"
        where = self.path or ("" if self.line is None else "line")
        if self.line is not None:
            where += f":{self.line}" if self.path else f" {self.line}"
        what = f'field "{self.field}": ' if self.field else ""
        return f"{where}: {what}{self.message}" if where else f"{what}{self.message}"

    def __reduce__(self):  # keep picklable across worker processes
        return (InputError, (self.path, self.line, self.field, self.message))
