"""A small analytic head phantom, FreeSurfer-coded, for tests and quick demos.

Ellipsoids in normalised coordinates (so any grid size works): scalp and skull (SynthSeg's
extra-cerebral codes), CSF, cortex and white matter split into hemispheres, lateral
ventricles, the 14 subcortical structures (neighbouring pairs touch, as in a real brain),
brainstem and cerebellum. Left is low ``i`` (the affine is RAS, so world x < 0).
"""

from __future__ import annotations

import numpy as np

# (code, centre (x, y, z), radii) in units of the half field of view; x is left-right.
_BLOBS: tuple[tuple[int, tuple[float, float, float], tuple[float, float, float]], ...] = (
    (4, (-0.12, 0.05, 0.10), (0.07, 0.22, 0.10)),  # lateral ventricles
    (10, (-0.12, -0.10, 0.0), (0.10, 0.14, 0.10)),  # thalamus
    (11, (-0.20, 0.25, 0.10), (0.06, 0.12, 0.08)),  # caudate
    (26, (-0.13, 0.34, -0.02), (0.06, 0.06, 0.06)),  # accumbens, touches the caudate
    (12, (-0.36, 0.12, 0.0), (0.07, 0.15, 0.10)),  # putamen
    (13, (-0.27, 0.08, -0.02), (0.05, 0.09, 0.07)),  # pallidum, touches the putamen
    (17, (-0.38, -0.22, -0.22), (0.07, 0.17, 0.07)),  # hippocampus
    (18, (-0.38, 0.02, -0.24), (0.08, 0.08, 0.07)),  # amygdala, touches the hippocampus
)
_RIGHT = {4: 43, 10: 49, 11: 50, 26: 58, 12: 51, 13: 52, 17: 53, 18: 54}


def _ellipsoid(u: np.ndarray, centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    d = sum(((u[a] - centre[a]) / radii[a]) ** 2 for a in range(3))
    return d <= 1.0


def make_phantom(
    shape: tuple[int, int, int] = (48, 48, 48), voxel_size: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Build the phantom.

    Parameters
    ----------
    shape : tuple of int
        Grid shape (each at least 16 for the small structures to exist).
    voxel_size : float
        Isotropic voxel size, mm.

    Returns
    -------
    (labels, affine)
        int32 codes and a RAS voxel-to-world matrix centred on the grid.
    """
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"phantom shape must be three sizes >= 16, got {shape}")
    axes = [np.linspace(-1, 1, n) for n in shape]
    u = np.meshgrid(*axes, indexing="ij")
    labels = np.zeros(shape, dtype=np.int32)
    labels[_ellipsoid(u, (0, 0, 0), (0.98, 0.98, 0.98))] = 507  # scalp / soft tissue
    labels[_ellipsoid(u, (0, 0, 0), (0.9, 0.9, 0.9))] = 511  # skull
    labels[_ellipsoid(u, (0, 0, 0.05), (0.82, 0.84, 0.78))] = 24  # extra-cerebral CSF
    brain = _ellipsoid(u, (0, 0.05, 0.08), (0.76, 0.8, 0.66))
    left = u[0] < 0
    labels[brain] = np.where(left, 3, 42)[brain]  # cortex
    wm = _ellipsoid(u, (0, 0.05, 0.08), (0.64, 0.68, 0.54))
    labels[wm] = np.where(left, 2, 41)[wm]
    cereb = _ellipsoid(u, (0, -0.55, -0.5), (0.5, 0.25, 0.22)) & ~brain
    labels[cereb] = np.where(left, 8, 47)[cereb]
    cereb_wm = _ellipsoid(u, (0, -0.55, -0.5), (0.3, 0.12, 0.1))
    labels[cereb_wm] = np.where(left, 7, 46)[cereb_wm]
    labels[_ellipsoid(u, (0, -0.25, -0.45), (0.12, 0.12, 0.3))] = 16  # brainstem
    for code, centre, radii in _BLOBS:
        labels[_ellipsoid(u, centre, radii)] = code
        mirrored = (-centre[0], centre[1], centre[2])
        labels[_ellipsoid(u, mirrored, radii)] = _RIGHT[code]
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = -voxel_size * (np.asarray(shape) - 1) / 2
    return labels, affine
