"""Where things live: the files shipped with the package, the data root, and run directories.

Shipped files (notebooks, profiles, the small data files the package needs at run time) are package data read
through ``importlib.resources``: in a checkout ``ual/notebooks``, ``ual/profiles`` and ``ual/_data`` are links to
the top-level ``notebooks/``, ``profiles/`` and ``data/``; a built wheel holds copies. So ``pip install .`` (not
editable) runs from any directory.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

DATA_DIR_ENV = "UAL_DATA_DIR"  # redirects the data root, e.g. UAL_DATA_DIR=../shared/data (the test suite and CI)
RUNS_DIR_ENV = "UAL_RUNS_DIR"  # where relative run directories of interactive notebooks go


def package_dir(name: str) -> Path:
    """A folder shipped inside the package: ``notebooks``, ``profiles``, ``prompts`` or ``_data``."""
    return Path(str(resources.files("ual").joinpath(name)))


def notebooks_dir() -> Path:
    return package_dir("notebooks")


def profiles_dir() -> Path:
    return package_dir("profiles")


def data_root() -> Path:
    """The folder dataset paths in profiles are relative to: ``$UAL_DATA_DIR`` if set, else the repository's (or
    the installed package's) ``data/``."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else package_dir("_data")


def resolve_data_path(path: str | Path) -> Path | None:
    """The local file a dataset ``path`` names, or None when it names none (then it is a hub id).

    Order: the path as given (absolute, or relative to the working directory); then under :func:`data_root`;
    then under the package's own ``data/`` (the small files shipped with ual)."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    if p.is_absolute():
        return None
    rel = Path(*p.parts[1:]) if p.parts and p.parts[0] == "data" else p
    for root in (data_root(), package_dir("_data")):
        if (root / rel).exists():
            return root / rel
    return None


def project_root(start: Path | None = None) -> Path | None:
    """The ual checkout that contains ``start`` (default: the working directory), or None outside one."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file() and (d / "ual" / "__init__.py").is_file():
            return d
    return None


def run_path(run_dir: str | Path) -> Path:
    """An absolute run directory. A relative one (``runs/dev``) resolves against ``$UAL_RUNS_DIR`` when set (its
    leading ``runs/`` dropped), else the checkout root when working inside a ual checkout (so a notebook opened in
    ``notebooks/`` writes to the repository's ``runs/``, as the pipeline does), else the working directory."""
    p = Path(run_dir).expanduser()
    if p.is_absolute():
        return p
    env = os.environ.get(RUNS_DIR_ENV)
    if env:
        base = Path(env).expanduser()
        return (base / Path(*p.parts[1:]) if p.parts and p.parts[0] == "runs" else base / p).resolve()
    root = project_root()
    return ((root or Path.cwd()) / p).resolve()
