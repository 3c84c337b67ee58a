"""``tpm_overlap_*``: the image's tissue maps against the template's tissue probability maps.

MRIQC warps the template's tissue probability maps (TPMs) into the image's space and
takes the fuzzy Jaccard overlap with FAST's partial-volume maps. bids_qc has the image in
template space already (the classical stage's template-space T1w, from the derivative's
template-space image or transform) and goes the other way: a 3-class mixture is fitted
to the template-space T1w inside the template's brain mask, seeded by the TPMs (voxels
where a TPM exceeds 0.5), and its posteriors are compared with the TPMs on the template
grid.

Where the TPMs come from: a local TemplateFlow home (``$TEMPLATEFLOW_HOME``) holding
``tpl-<space>_res-01_label-{CSF,GM,WM}_probseg.nii.gz``; else, for the MNI152 2009 spaces,
nilearn's MNI152 2009a symmetric grey and white matter maps (nilearn ships no CSF map, so
``tpm_overlap_csf`` is n/a; for ``MNI152NLin2009cAsym`` the 2009a symmetric maps stand in
for the asymmetric template's, which differ by a few millimetres at most). Nothing is
downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ..transforms import resample_to_grid
from .definitions import TISSUES
from .measures import fuzzy_jaccard
from .tissues import fit_tissues

_NILEARN_SPACES = ("MNI152NLin2009cAsym", "MNI152NLin2009aSym")
_NILEARN_FILES = {"gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                  "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}


def tpm_files(space: str) -> tuple[dict[str, Path | None], str]:
    """The TPM file of each tissue for ``space`` (None where none is installed) and where
    they come from (``templateflow:<home>``, ``nilearn`` or "")."""
    home = os.environ.get("TEMPLATEFLOW_HOME")
    root = Path(home) if home else Path.home() / ".cache" / "templateflow"
    folder = root / f"tpl-{space}"
    found = {t: folder / f"tpl-{space}_res-01_label-{t.upper()}_probseg.nii.gz"
             for t in TISSUES}
    try:
        if all(p.is_file() for p in found.values()):
            return dict(found), f"templateflow:{root}"
    except OSError:  # an unreadable home folder
        pass
    if space in _NILEARN_SPACES:
        from ..templates_data import package_dir

        data = package_dir("nilearn") / "datasets" / "data"
        files: dict[str, Path | None] = {t: None for t in TISSUES}
        files.update({t: data / name for t, name in _NILEARN_FILES.items()})
        return files, "nilearn"
    return {t: None for t in TISSUES}, ""


def load_tpms(files: dict[str, Path | None], shape: tuple[int, ...],
              affine: np.ndarray) -> dict[str, np.ndarray | None]:
    """The TPMs resampled (trilinear) onto a template grid, as probabilities in [0, 1].

    nilearn stores its maps as bytes (0 to 255, no scaling in the header): a map whose
    maximum exceeds 1 is divided by its maximum.
    """
    out: dict[str, np.ndarray | None] = {}
    for tissue, path in files.items():
        if path is None:
            out[tissue] = None
            continue
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj, dtype=np.float32)
        top = float(data.max())
        if top > 1.0:
            data /= top
        out[tissue] = np.clip(resample_to_grid(data, img.affine, shape, affine, order=1),
                              0.0, 1.0)
    return out


def tpm_overlap(image: np.ndarray, mask: np.ndarray,
                tpms: dict[str, np.ndarray | None],
                random_state: int = 0) -> dict[str, float | None]:
    """``tpm_overlap_<tissue>`` of a template-space T1w.

    Parameters
    ----------
    image : ndarray
        The T1w on the template grid.
    mask : ndarray of bool
        The template's brain mask.
    tpms : dict
        Tissue -> TPM on the same grid, or None (that overlap is then n/a).
    random_state : int
        Seed of the mixture.

    Returns
    -------
    dict
        Fuzzy Jaccard overlaps in [0, 1]; higher is better.
    """
    out: dict[str, float | None] = {f"tpm_overlap_{t}": None for t in TISSUES}
    gm, wm, csf = tpms.get("gm"), tpms.get("wm"), tpms.get("csf")
    if gm is None or wm is None:
        return out
    region = mask & (image > 0)
    seeds = np.zeros(image.shape, dtype=np.int8)
    # without a CSF map, CSF seeds are brain-mask voxels the GM and WM maps leave empty
    seeds[(csf > 0.5) if csf is not None else (gm + wm < 0.3)] = 1
    seeds[gm > 0.5] = 2
    seeds[wm > 0.5] = 3
    index = np.flatnonzero(region.ravel())
    pvms, _ = fit_tissues(image.ravel()[index], seeds.ravel()[index], random_state)
    for row, tissue in enumerate(TISSUES):
        tpm = tpms.get(tissue)
        if tpm is None:
            continue
        post = np.zeros(image.size, dtype=np.float32)
        post[index] = pvms[row]
        out[f"tpm_overlap_{tissue}"] = fuzzy_jaccard(post, tpm.ravel())
    return out
