"""The inputs every segmentation-based model reads: a FreeSurfer-coded segmentation and,
where the model needs it, the intensity image on its grid.

SegQC, ManifoldQC and ShapeQC skip an image for the same reasons with the same words;
this module is where those reasons live.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..inputs import QCInput
from ..io import check_freesurfer_codes, load_image, load_labels


@dataclass(frozen=True)
class SegInputs:
    """A loaded segmentation and (optionally) its intensity image.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer FreeSurfer codes, on the segmentation's grid.
    seg_img : nibabel.spatialimages.SpatialImage
        The segmentation image (its affine and header).
    image_path : Path or None
        The intensity image read (None when not asked for).
    image_img : nibabel.spatialimages.SpatialImage or None
        The intensity image.
    """

    labels: np.ndarray
    seg_img: nib.spatialimages.SpatialImage
    image_path: Path | None = None
    image_img: nib.spatialimages.SpatialImage | None = None


def load_seg_inputs(row: QCInput, stage: str, warnings: list[str], skipped: list[dict],
                    *, with_image: bool) -> SegInputs | None:
    """Load ``row``'s segmentation (and intensity image), or record why the stage skips.

    Parameters
    ----------
    row : QCInput
        The image's inputs.
    stage : str
        The model's name, for skip records.
    warnings, skipped : list
        The stage's lists, extended in place (loader warnings; skip reasons).
    with_image : bool
        Also load the intensity image: ``seg_reference`` (the image on the segmentation's
        grid), else the preprocessed or raw T1w.

    Returns
    -------
    SegInputs or None
        None when the stage skips this image (the reason is in ``skipped``).
    """
    if row.seg is None or row.seg_kind == "tissue":
        skipped.append({"stage": stage, "reason": "no FreeSurfer-coded segmentation in the "
                        "derivatives"})  # fmt: skip
        return None
    image_path = row.seg_reference or row.t1w_preproc or row.t1w
    if with_image and image_path is None:
        skipped.append({"stage": stage, "reason": "no intensity image for the segmentation "
                        "(seg_reference, preprocessed or raw T1w)"})  # fmt: skip
        return None
    seg = load_labels(row.seg, role="segmentation")
    warnings.extend(seg.warnings)
    labels = np.rint(np.asarray(seg.img.dataobj)).astype(np.int32)
    try:
        check_freesurfer_codes(labels, row.seg)
    except Exception as exc:  # not FreeSurfer-coded: a reason to skip, not an error
        skipped.append({"stage": stage, "reason": str(exc)})
        return None
    if not with_image:
        return SegInputs(labels, seg.img)
    image = load_image(image_path, role="T1w")
    warnings.extend(image.warnings)
    return SegInputs(labels, seg.img, Path(image_path), image.img)
