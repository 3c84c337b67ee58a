"""Affine registration of a real T1w to a template, with SimpleITK, written as an ITK affine.

The real-data evaluation sets need real images in template space (RegQC's good and
misregistered sets, the check of FreeSurfer's ``talairach.xfm``, later raw data). The
registration itself is SimpleITK's (Mattes mutual information, a moments-centred affine,
three resolution levels); this module only chooses its settings and writes the result as
the ITK text affine that fMRIPrep-style derivatives carry, so the app reads it through its
own transform reader (:func:`bids_qc.transforms.read_itk_affine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Template voxels (1 mm) of zeros around the brain that the metric samples too.
RIM_VOXELS = 12


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
    """

    transform: Path
    metric: float
    iterations: int


def _read(path: Path):
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path), sitk.sitkFloat32)
    if img.GetDimension() == 4:  # a single-volume 4-D file: its first volume
        img = img[:, :, :, 0]
    # Clip to the 0.5-99.5th percentiles of the non-zero voxels: a few very bright voxels
    # (vessels, a spike) would otherwise squeeze the whole brain into one histogram bin.
    values = sitk.GetArrayViewFromImage(img)
    lo, hi = np.percentile(values[values > 0], [0.5, 99.5])
    return sitk.Clamp(img, sitk.sitkFloat32, float(lo), float(hi))


def register_affine(image: str | Path, template: str | Path, out: str | Path,
                    brain: np.ndarray | None = None, seed: int = 0) -> Registration:
    """Register ``image`` to ``template`` (affine, 12 parameters) and write the ITK affine.

    Parameters
    ----------
    image : str or Path
        A real T1w (whole-head or skull-stripped; any voxel size).
    template : str or Path
        The template T1w (the app's template of the target space).
    out : str or Path
        The ITK text transform to write (``.txt``).
    brain : ndarray, optional
        A brain mask on the image's voxel grid (e.g. its segmentation > 0). A whole-head
        image registers to the skull-stripped template reliably only through its brain:
        with a mask, only the brain drives the metric (the transform still applies to the
        whole image). Without one the template's brain and a rim of zeros around it are
        sampled, which suits skull-stripped images.
    seed : int
        Seed of the metric's random sampling (a fixed seed makes the result reproducible).

    Returns
    -------
    Registration
    """
    import SimpleITK as sitk

    fixed, moving = _read(Path(template)), _read(Path(image))
    if brain is not None:
        mask = sitk.GetImageFromArray(np.ascontiguousarray(
            np.asarray(brain, dtype=np.uint8).transpose(2, 1, 0)))  # numpy (x,y,z) -> ITK
        mask.CopyInformation(moving)
        moving = sitk.Mask(moving, sitk.BinaryDilate(mask, [2, 2, 2]))
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3),
        sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.05, seed)
    # The template is a skull-stripped brain. Sampling its brain and a rim of zeros around
    # it lets the metric put a whole-head image's skull and scalp on the rim (a brain-only
    # mask would let the head shrink into the brain).
    rim = sitk.BinaryDilate(sitk.Cast(fixed > 0, sitk.sitkUInt8), [RIM_VOXELS] * 3)
    reg.SetMetricFixedMask(rim)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=100, relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    # Stopping at 2 mm: an affine gains little from the 1 mm level, which costs most.
    reg.SetShrinkFactorsPerLevel([4, 2])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    # In place: the optimised parameters land in ``init``, a plain AffineTransform.
    reg.SetInitialTransform(init, inPlace=True)
    reg.Execute(fixed, moving)
    affine = sitk.AffineTransform(init)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part.txt")
    sitk.WriteTransform(affine, str(tmp))
    tmp.replace(out)
    return Registration(out, float(reg.GetMetricValue()), int(reg.GetOptimizerIteration()))

