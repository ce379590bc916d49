"""Run manifests: what produced a result (config, git commit, package versions, seeds, times)."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from ual.common.io import atomic_write_json, read_json

TRACKED_PACKAGES = ("ual", "torch", "transformers", "peft", "accelerate", "datasets", "numpy", "scikit-learn",
                    "papermill", "matplotlib", "seaborn")


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(repo_dir: str | Path | None = None) -> str | None:
    """The checked-out commit of the ``ual`` source tree (with ``+dirty`` when it has changes), or None."""
    repo_dir = Path(repo_dir) if repo_dir else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo_dir), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that decide results."""
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def environment() -> dict[str, Any]:
    """Python, platform and package versions, plus the git commit."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "packages": package_versions(),
    }


def write_manifest(path: str | Path, **fields: Any) -> dict:
    """Write (atomically) a manifest with ``fields`` plus the environment; returns it."""
    manifest = {"created": now_iso(), **fields, "environment": environment()}
    atomic_write_json(path, manifest)
    return manifest


def update_manifest(path: str | Path, **fields: Any) -> dict:
    """Merge ``fields`` into an existing manifest (or create one) and write it back atomically."""
    path = Path(path)
    manifest = read_json(path) if path.exists() else {"created": now_iso(), "environment": environment()}
    manifest.update(fields)
    manifest["updated"] = now_iso()
    atomic_write_json(path, manifest)
    return manifest
