"""Shared test fixtures: where the real data lives, and tiny generated images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: ``../shared/data`` beside the repository (present for developers and CI).
_DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_DATA = Path(os.environ.get("BIDS_QC_SHARED_DATA", _DEFAULT_SHARED))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder, or skip with the reason."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set BIDS_QC_SHARED_DATA)")
    return SHARED_DATA


def require_shared_data() -> Path:
    """The real data folder; skips without it, but fails under ``CI=true`` (CI has it)."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must have the real data folder {SHARED_DATA}")
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def shared_path(*parts: str) -> Path:
    """A path under the real data folder; skips the test when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} is absent (set BIDS_QC_SHARED_DATA to ../shared/data)")
    return path
