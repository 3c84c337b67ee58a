"""Affine registration of a T1w to a template through its brain mask, with SimpleITK.

bids_qc registers a T1w itself when the derivatives hold a segmentation (VINN's or a
derivative's) but no template-space image or transform, so that raw data get the
template-space checks too; the training recipes register real images with the same
function. The registration is SimpleITK's (Mattes mutual information, a moments-centred
affine, two resolution levels, 4 and 2 mm); this module only chooses its settings, builds
the images from nibabel's affines (the app's own reader, so the voxel-to-world maps are the
ones its resampler uses) and writes the result as the ITK text affine that fMRIPrep-style
derivatives carry, which the app reads back with :func:`bids_qc.transforms.read_itk_affine`.
Plain numpy and SimpleITK: no nipype here.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .io import atomic_write_text
from .transforms import LPS_TO_RAS, read_itk_affine, resample_to_grid

#: Millimetres of zeros around the template's brain that the metric samples too.
RIM_MM = 12.0
#: Voxel size (mm) the registration works at. It stops at 2 mm (an affine gains little from
#: a 1 mm level, which costs most), so both images are smoothed and resampled to 2 mm once
#: rather than at every level: a 1 mm image registers in a third of the time.
WORK_MM = 2.0
#: Volume (litres) a brain mask may hold: outside it the segmentation is not a brain's
#: (a whole-head image whose scalp was labelled brain holds 2.6 L), and a registration
#: through it would misplace the head. Generous on purpose: it stops gross failures only.
BRAIN_LITRES = (0.3, 2.4)
#: Seed of the metric's random sampling. SimpleITK's seed 0 is the wall clock (another
#: sampling, and a slightly different transform, on every run): a rerun must reproduce.
SEED = 1
#: Scales (singular values of the T1w -> template map) a registration may end with: a
#: head is not half or twice the template's size, so anything outside failed.
SCALE_RANGE = (0.5, 2.0)


@dataclass(frozen=True)
class Registration:
    """One affine registration.

    Parameters
    ----------
    transform : Path
        The ITK text affine (template points -> image points, LPS, as ITK writes it).
    metric : float
        Final Mattes mutual information (negative: lower is better).
    iterations : int
        Optimiser iterations of the last level.
    seconds : float
        Wall-clock time of the registration (reading the inputs included).
    """

    transform: Path
    metric: float
    iterations: int
    seconds: float = 0.0


def to_sitk(data: np.ndarray, affine: np.ndarray):
    """A SimpleITK image of a 3-D array with nibabel's voxel-to-RAS ``affine``.

    ITK places voxel ``i`` at ``origin + direction @ (spacing * i)`` in LPS, so the RAS
    affine's linear part, flipped to LPS, splits into spacing (its column norms) and
    direction; numpy's ``(x, y, z)`` array is ITK's ``(z, y, x)`` buffer.
    """
    import SimpleITK as sitk

    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in lps[:3, 3]])
    img.SetDirection([float(d) for d in (lps[:3, :3] / spacing).ravel()])
    return img


def _volume(image: str | Path | nib.spatialimages.SpatialImage) -> tuple[np.ndarray, np.ndarray]:
    """float32 data (first volume of a 4-D file, non-finite values 0) and affine."""
    img = image if hasattr(image, "affine") else nib.load(str(image))
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D image, got shape {data.shape}")
    return np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), np.asarray(img.affine, float)


def _clipped(data: np.ndarray) -> np.ndarray:
    # Clip to the 0.5-99.5th percentiles of the non-zero voxels: a few very bright voxels
    # (vessels, a spike) would otherwise squeeze the whole brain into one histogram bin.
    positive = data[data > 0]
    if positive.size == 0:
        raise ValueError("the image holds no positive intensities")
    lo, hi = np.percentile(positive, [0.5, 99.5])
    return np.clip(data, lo, hi).astype(np.float32)


def _at_work_resolution(img):
    """``img`` smoothed (to a 2 mm FWHM) and resampled onto a :data:`WORK_MM` grid, unless
    its voxels are that large already."""
    import SimpleITK as sitk

    spacing = np.asarray(img.GetSpacing())
    if spacing.min() >= 0.95 * WORK_MM:
        return img
    fwhm_to_sigma = 1.0 / np.sqrt(8.0 * np.log(2.0))
    sigma = [float(np.sqrt(max(WORK_MM**2 - s**2, 0.0)) * fwhm_to_sigma) for s in spacing]
    size = [max(1, int(np.ceil(n * s / WORK_MM))) for n, s in zip(img.GetSize(), spacing)]
    return sitk.Resample(sitk.SmoothingRecursiveGaussian(img, sigma), size, sitk.Transform(),
                         sitk.sitkLinear, img.GetOrigin(), [WORK_MM] * 3, img.GetDirection(),
                         0.0, sitk.sitkFloat32)  # fmt: skip


_FIXED: dict[str, tuple] = {}


def _fixed(template: str | Path | nib.spatialimages.SpatialImage) -> tuple:
    """The template at the working resolution and the metric's mask (its brain and a rim
    of :data:`RIM_MM`), made once per process for a template file."""
    import SimpleITK as sitk

    key = None if hasattr(template, "affine") else str(template)
    if key in _FIXED:
        return _FIXED[key]
    data, affine = _volume(template)
    fixed = _at_work_resolution(to_sitk(_clipped(data), affine))
    radius = max(1, int(round(RIM_MM / min(fixed.GetSpacing()))))
    # The template is a skull-stripped brain. Sampling its brain and a rim of zeros around
    # it lets the metric put a whole-head image's skull and scalp on the rim (a brain-only
    # mask would let the head shrink into the brain).
    rim = sitk.BinaryDilate(sitk.Cast(fixed > 0, sitk.sitkUInt8), [radius] * 3)
    if key is not None:
        _FIXED.clear()  # one template at a time: the app uses one space
        _FIXED[key] = (fixed, rim)
    return fixed, rim


def brain_mask(labels: np.ndarray, labels_affine: np.ndarray, shape: tuple[int, ...],
               affine: np.ndarray) -> np.ndarray:  # fmt: skip
    """The labelled voxels of a segmentation, on an image's grid (nearest neighbour).

    A segmentation on another grid than the image (FreeSurfer's conformed ``aseg.mgz``
    beside a raw T1w) is resampled through world coordinates.
    """
    brain = np.asarray(labels) > 0
    shape = tuple(int(n) for n in shape[:3])
    if brain.shape[:3] == shape and np.allclose(labels_affine, affine, atol=1e-4):
        return brain
    return resample_to_grid(brain.astype(np.uint8), labels_affine, shape, affine, order=0) > 0


def check_brain(brain: np.ndarray, affine: np.ndarray) -> float:
    """The brain mask's volume in litres, checked against :data:`BRAIN_LITRES`.

    Raises
    ------
    ValueError
        When the mask is empty or holds a volume no brain has.
    """
    litres = float(np.count_nonzero(brain)) * abs(np.linalg.det(affine[:3, :3])) / 1e6
    lo, hi = BRAIN_LITRES
    if not lo <= litres <= hi:
        raise ValueError(f"its brain (the labelled voxels) holds {litres:.2f} L, outside the "
                         f"{lo}-{hi} L of a brain")
    return litres


def check_transform(path: str | Path) -> np.ndarray:
    """The written affine as the T1w RAS -> template RAS map, checked to be plausible.

    Raises
    ------
    ValueError
        When it is not finite, or its scales leave :data:`SCALE_RANGE`.
    """
    world = read_itk_affine(path)
    if not np.all(np.isfinite(world)):
        raise ValueError("the registration ended with a non-finite transform")
    scales = np.linalg.svd(world[:3, :3], compute_uv=False)
    lo, hi = SCALE_RANGE
    if scales.min() < lo or scales.max() > hi or np.linalg.det(world[:3, :3]) <= 0:
        raise ValueError("the registration ended with an implausible affine (scales "
                         f"{', '.join(f'{s:.2f}' for s in scales)}, outside {lo}-{hi}, or a "
                         "mirror image)")
    return world


def register_affine(image: str | Path | nib.spatialimages.SpatialImage,
                    template: str | Path | nib.spatialimages.SpatialImage, out: str | Path,
                    brain: np.ndarray | None = None, seed: int = SEED,
                    threads: int | None = None) -> Registration:  # fmt: skip
    """Register ``image`` to ``template`` (affine, 12 parameters) and write the ITK affine.

    Parameters
    ----------
    image : str, Path or nibabel image
        A T1w (whole-head or skull-stripped; any voxel size).
    template : str, Path or nibabel image
        The template T1w (the app's template of the target space; a skull-stripped brain).
    out : str or Path
        The ITK text transform to write (``.txt``; written atomically).
    brain : ndarray, optional
        A brain mask on the image's voxel grid (e.g. :func:`brain_mask` of its
        segmentation). A whole-head image registers to the skull-stripped template reliably
        only through its brain: with a mask, only the brain (dilated by 2 voxels) drives the
        metric (the transform still applies to the whole image). Without one the template's
        brain and a rim of zeros around it are sampled, which suits skull-stripped images.
    seed : int
        Seed of the metric's random sampling (a fixed seed makes the result reproducible;
        0 is SimpleITK's wall clock, a new sampling every run).
    threads : int, optional
        Threads of the registration (default: SimpleITK's, all processors).

    Returns
    -------
    Registration

    Raises
    ------
    ValueError
        When an input is not a usable 3-D image, the mask does not fit the image, or the
        result is implausible (:func:`check_transform`).
    """
    import SimpleITK as sitk

    start = time.perf_counter()
    fixed, rim = _fixed(template)
    moving_data, moving_affine = _volume(image)
    moving = to_sitk(_clipped(moving_data), moving_affine)
    if brain is not None:
        brain = np.asarray(brain)
        if brain.shape != moving_data.shape:
            raise ValueError(f"the brain mask's shape {brain.shape} is not the image's "
                             f"{moving_data.shape}")
        if not brain.any():
            raise ValueError("the brain mask is empty")
        mask = to_sitk(brain.astype(np.uint8), moving_affine)
        moving = sitk.Mask(moving, sitk.BinaryDilate(mask, [2, 2, 2]))
    moving = _at_work_resolution(moving)
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3),
        sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    if threads is not None:
        reg.SetNumberOfThreads(max(1, int(threads)))
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.05, seed)
    reg.SetMetricFixedMask(rim)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=100, relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    # 4 then 2 mm (the images are at WORK_MM already).
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    # In place: the optimised parameters land in ``init``, a plain AffineTransform.
    reg.SetInitialTransform(init, inPlace=True)
    reg.Execute(fixed, moving)
    # Written and checked in a scratch folder (SimpleITK picks the format from the
    # extension), then put in place atomically: a failed check leaves no file behind.
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="bids_qc_xfm_") as scratch:
        tmp = Path(scratch) / "xfm.txt"
        sitk.WriteTransform(sitk.AffineTransform(init), str(tmp))
        check_transform(tmp)
        atomic_write_text(out, tmp.read_text())
    return Registration(out, float(reg.GetMetricValue()), int(reg.GetOptimizerIteration()),
                        round(time.perf_counter() - start, 2))
