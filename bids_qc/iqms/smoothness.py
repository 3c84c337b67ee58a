"""Smoothness: the full width at half maximum (FWHM) of the image, per axis.

AFNI's ``3dFWHMx`` "classic" estimate (Forman et al. 1995), which MRIQC runs on the T1w:
for white noise smoothed by a Gaussian, the lag-1 autocorrelation along an axis is
``r = 1 - var(first differences) / (2 var(image))`` and the Gaussian's FWHM is
``sqrt(-2 ln 2 / ln r)`` voxels. MRIQC divides AFNI's millimetres by the voxel size, so its
``fwhm_*`` are in voxels; so are these. Both the differences and the variance are taken
inside the brain mask (pairs of voxels both inside it). AFNI's ``-detrend`` has no effect
on a single volume and is not applied.
"""

from __future__ import annotations

import math

import numpy as np


def fwhm_axis(image: np.ndarray, mask: np.ndarray, axis: int) -> float | None:
    """The FWHM (voxels) along one axis, or None where it is undefined.

    Parameters
    ----------
    image : ndarray
        The image (float).
    mask : ndarray of bool
        Where to measure (the brain).
    axis : int
        0, 1 or 2.

    Returns
    -------
    float or None
        Lower is sharper. None when the mask holds fewer than 2 voxel pairs, or the
        autocorrelation is not in (0, 1) (a constant image, or one rougher than white noise).
    """
    values = image[mask].astype(np.float64)
    if values.size < 3:
        return None
    var = float(values.var())
    n = image.shape[axis]
    a = [slice(None)] * 3
    b = [slice(None)] * 3
    a[axis], b[axis] = slice(0, n - 1), slice(1, n)
    pairs = mask[tuple(a)] & mask[tuple(b)]
    if pairs.sum() < 2 or var <= 0:
        return None
    diff = image[tuple(b)][pairs].astype(np.float64) - image[tuple(a)][pairs]
    r = 1.0 - 0.5 * float(diff.var()) / var
    if not 0.0 < r < 1.0:
        return None
    return math.sqrt(-2.0 * math.log(2.0) / math.log(r))


def fwhm(image: np.ndarray, mask: np.ndarray) -> dict[str, float | None]:
    """``fwhm_x``, ``fwhm_y``, ``fwhm_z`` (voxels, along the image's axes) and their mean
    ``fwhm_avg`` (MRIQC's arithmetic mean; None if an axis has none)."""
    out = {f"fwhm_{a}": fwhm_axis(image, mask, i) for i, a in enumerate("xyz")}
    values = [v for v in out.values() if v is not None]
    out["fwhm_avg"] = float(np.mean(values)) if len(values) == 3 else None
    return out
