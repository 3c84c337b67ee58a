"""Shared test fixtures: where the real data lives, and tiny generated images."""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib import resources
from pathlib import Path

import pytest

#: The checkout's report templates (``templates/``, installed as ``bids_qc.templates``).
_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def _use_checkout_templates() -> None:
    """Render reports with this checkout's templates.

    An editable install maps ``bids_qc.templates`` to the checkout it was made from, so
    tests run from another checkout (a git worktree on ``PYTHONPATH``) would render that
    one's templates; load this checkout's instead.
    """
    try:
        installed = Path(str(resources.files("bids_qc.templates"))).resolve()
    except ModuleNotFoundError:
        installed = None
    if installed == _TEMPLATES.resolve() or not (_TEMPLATES / "__init__.py").is_file():
        return
    spec = importlib.util.spec_from_file_location(
        "bids_qc.templates", _TEMPLATES / "__init__.py",
        submodule_search_locations=[str(_TEMPLATES)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["bids_qc.templates"] = module
    spec.loader.exec_module(module)


_use_checkout_templates()

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
