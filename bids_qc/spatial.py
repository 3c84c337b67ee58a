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
from .io import load_image, read_itk_affine, read_talairach_mni152, resample_to_grid
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


def _resample_footprint(
    data: np.ndarray,
    affine: np.ndarray,
    grid: TemplateGrid,
    world_transform: np.ndarray | None = None,
) -> np.ndarray:
    """Trilinear :func:`resample_to_grid` onto the template grid, sampling only where
    the source grid lands.

    Target voxels more than half a source voxel outside the source grid are 0 in
    :func:`resample_to_grid`, so only the bounding box of the source's footprint (plus
    a voxel of margin) is interpolated; a small field of view (a slab, a tiny test image)
    then costs its own size, not the template's 8.5 million voxels.
    """
    shape = np.asarray(grid.data.shape)
    world = np.eye(4) if world_transform is None else np.asarray(world_transform, float)
    to_target = np.linalg.inv(grid.affine) @ world @ np.asarray(affine, dtype=np.float64)
    edges = [(-0.5, n - 0.5) for n in data.shape[:3]]
    corners = np.array([[i, j, k, 1.0] for i in edges[0] for j in edges[1] for k in edges[2]])
    points = (to_target @ corners.T)[:3]
    if not np.all(np.isfinite(points)):
        return resample_to_grid(
            data, affine, grid.data.shape, grid.affine, order=1, world_transform=world_transform
        )
    lo = np.clip(np.floor(points.min(axis=1)).astype(int) - 1, 0, shape)
    hi = np.clip(np.ceil(points.max(axis=1)).astype(int) + 2, 0, shape)
    out = np.zeros(grid.data.shape, dtype=np.float32)
    if np.any(hi <= lo):
        return out  # the image lies wholly outside the template's box
    box_affine = grid.affine.copy()
    box_affine[:3, 3] = grid.affine[:3, :3] @ lo + grid.affine[:3, 3]
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = resample_to_grid(
        data, affine, tuple(hi - lo), box_affine, order=1, world_transform=world_transform
    )
    return out


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
            data = _resample_footprint(data, img.affine, grid)
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
        # talairach.xfm ends in MNI305; the templates are MNI152.
        world = read_talairach_mni152(qc_input.xfm)
    else:
        world = read_itk_affine(qc_input.xfm)
    data = _resample_footprint(
        np.asanyarray(img.dataobj, dtype=np.float32), img.affine, grid, world_transform=world
    )
    return data, how, list(loaded.warnings)
