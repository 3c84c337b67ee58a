"""Bring a row's T1w into template space, from whichever input the derivatives provide.

Preference (the RegQC issue): a template-space T1w from fMRIPrep/sMRIPrep; a native
FreeSurfer/FastSurfer image through ``talairach.xfm``; a raw T1w through an affine ITK
transform. ANTs composite ``.h5`` transforms need ANTs and are not read.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

from .errors import InputError
from .inputs import QCInput
from .io import load_image, read_itk_affine, read_talairach_xfm, resample_to_grid
from .templates_data import Template


@dataclass(frozen=True)
class TemplateGrid:
    """A template's image and brain mask as arrays on the template grid."""

    data: np.ndarray
    mask: np.ndarray
    affine: np.ndarray


def load_template(template: Template) -> TemplateGrid:
    """Load a template and its brain mask (the template's non-zero voxels when it has none)."""
    img = load_image(template.t1w, role="template").img
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    if template.mask is not None:
        mask_img = nib.load(str(template.mask))
        mask = resample_to_grid(
            np.asanyarray(mask_img.dataobj), mask_img.affine, data.shape, img.affine, order=0
        ) > 0
    else:
        mask = data > 0
    return TemplateGrid(data=data, mask=mask, affine=img.affine)


def _native_source(qc_input: QCInput) -> tuple[str, str] | None:
    """The native image and transform to use, as (image path, how)."""
    if qc_input.xfm is None:
        return None
    if qc_input.xfm_kind == "talairach" and qc_input.t1w_preproc is not None:
        return str(qc_input.t1w_preproc), "talairach"
    if qc_input.xfm_kind == "itk":
        image = qc_input.t1w if qc_input.t1w is not None else qc_input.t1w_preproc
        if image is not None:
            return str(image), "itk"
    return None


def to_template_space(
    qc_input: QCInput, grid: TemplateGrid
) -> tuple[np.ndarray, str, list[str]]:
    """The row's T1w resampled onto the template grid.

    Returns
    -------
    data : ndarray
        float32 image on the template grid.
    how : str
        ``template_t1w``, ``talairach`` or ``itk``: which input was used.
    warnings : list of str
        Loader warnings (4D input, NaNs replaced, ...).

    Raises
    ------
    InputError
        If no usable input exists or a file cannot be read.
    """
    if qc_input.template_t1w is not None:
        loaded = load_image(qc_input.template_t1w, role="template-space T1w")
        img = loaded.img
        data = np.asanyarray(img.dataobj, dtype=np.float32)
        if data.shape != grid.data.shape or not np.allclose(img.affine, grid.affine, atol=1e-3):
            data = resample_to_grid(data, img.affine, grid.data.shape, grid.affine, order=1)
        return data, "template_t1w", list(loaded.warnings)
    native = _native_source(qc_input)
    if native is None:
        if qc_input.xfm_kind == "h5":
            raise InputError(
                qc_input.xfm, "is an ANTs composite (.h5) transform, which bids_qc cannot read",
                "Provide fMRIPrep's template-space T1w (--output-spaces MNI152NLin2009cAsym) "
                "or an affine .txt/.mat transform.",
            )
        raise InputError(
            None, "no template-space T1w and no transform to a template",
            "Run fMRIPrep/sMRIPrep with --output-spaces MNI152NLin2009cAsym, or FreeSurfer.",
        )
    path, how = native
    loaded = load_image(path, role="T1w")
    img = loaded.img
    if how == "talairach":
        world = read_talairach_xfm(qc_input.xfm)
    else:
        world = read_itk_affine(qc_input.xfm)
    data = resample_to_grid(
        np.asanyarray(img.dataobj, dtype=np.float32), img.affine, grid.data.shape, grid.affine,
        order=1, world_transform=world,
    )
    return data, how, list(loaded.warnings)
