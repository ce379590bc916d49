"""Settings of the figures stage."""
from __future__ import annotations

from dataclasses import dataclass

from ual.common.config import setting
from ual.common.errors import InputError

FORMATS = ("png", "pdf", "svg")


@dataclass
class FiguresConfig:
    """Figures stage: which file types to write and at what resolution."""

    formats: list[str] = setting(["png"], "file types to write: any of png, pdf, svg.")
    dpi: int = setting(150, "resolution of raster figures, dots per inch, >= 1.")

    def __post_init__(self) -> None:
        if not self.formats or any(f not in FORMATS for f in self.formats):
            raise InputError(None, None, "formats", f"must list some of {', '.join(FORMATS)}, got {self.formats}")
        if self.dpi < 1:
            raise InputError(None, None, "dpi", f"must be >= 1, got {self.dpi}")
