"""Shared fixtures: the offline data folder beside the repo, and a tiny random model built in code."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("UAL_SHARED_DATA", REPO.parent / "shared" / "data"))
# The data root of profiles (ual.common.paths.data_root): the real datasets beside the repository, as CI has them.
if "UAL_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["UAL_DATA_DIR"] = str(SHARED_DATA)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real datasets); tests that need it skip with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set UAL_SHARED_DATA to their folder)")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Built-in models are built/converted into a per-session cache unless the user points UAL_CACHE elsewhere."""
    if "UAL_CACHE" not in os.environ:
        os.environ["UAL_CACHE"] = str(tmp_path_factory.mktemp("ual-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny random Llama + byte tokenizer folder (about 0.1M parameters)."""
    from ual.common.models import build_tiny_model

    dest = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(dest)
    return dest
