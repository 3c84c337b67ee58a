"""Random smooth spatial transforms: a mild affine and a diffeomorphic deformation.

The deformation integrates a stationary velocity field by scaling and squaring: a smooth
random velocity (Gaussian values on a coarse control grid, upsampled trilinearly) is divided
by ``2^steps`` and the resulting small displacement composed with itself ``steps`` times.
The result is a diffeomorphism as long as the scaled velocity is small, which the
control-grid smoothness ensures.

A field spans a box of voxels (the image's field of view in the source's voxel units) with
its corners on the box's corner voxel centres, and is stored in the box's ``grid_sample``
coordinates (:func:`bids_qc.synth.grids.normaliser`), so displacing normalised points is
one ``grid_sample`` call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bids_qc.synth.grids import as_volume, grid_coords, normaliser, sample
from bids_qc.synth.misregistration import compose_affine


@dataclass
class Deformation:
    """A displacement field over a box of voxels, in the box's normalised coordinates.

    Attributes
    ----------
    field : Tensor ``(1, 3, a, b, c)``
        Displacement at the coarse grid nodes (channels in ``grid_sample``'s x, y, z order).
    box_shape : tuple of int
        Shape of the voxel box the field spans.
    """

    field: torch.Tensor
    box_shape: tuple[int, int, int]

    def displace(self, grid: torch.Tensor) -> torch.Tensor:
        """Points ``p + u(p)`` for normalised box coordinates ``(A, B, C, 3)``."""
        disp = sample(self.field, grid, mode="bilinear", padding="border")
        return grid + disp[0].permute(1, 2, 3, 0)


def integrate_velocity(velocity: torch.Tensor, steps: int = 6) -> torch.Tensor:
    """Scaling and squaring of a velocity ``(1, 3, a, b, c)`` in normalised coordinates.

    Returns the displacement of ``exp(v)`` in the same units and shape.
    """
    disp = velocity / (2**steps)
    shape = tuple(int(s) for s in velocity.shape[2:])
    ident = grid_coords(shape, normaliser(shape), velocity.device)
    for _ in range(steps):
        # (phi o phi)(x) - x = u(x) + u(x + u(x))
        disp = disp + sample(disp, ident + disp[0].permute(1, 2, 3, 0), padding="border")
    return disp


def random_deformation(
    box_shape: tuple[int, int, int],
    voxel_size: np.ndarray,
    rng: np.random.Generator,
    *,
    max_std_mm: float = 3.0,
    control_spacing_mm: float = 32.0,
    max_nodes: int = 40,
    steps: int = 6,
    device: str | torch.device = "cpu",
) -> tuple[Deformation, dict[str, object]]:
    """Draw a smooth diffeomorphic deformation of a voxel box.

    Parameters
    ----------
    box_shape : tuple of int
        Shape of the voxel box (the source crop).
    voxel_size : ndarray (3,)
        The box's voxel size, mm (the velocity is drawn in mm).
    rng : numpy.random.Generator
        Source of randomness (velocity values come from it, not from torch's global state).
    max_std_mm : float
        The velocity's standard deviation is drawn uniformly in ``[0, max_std_mm]``.
    control_spacing_mm : float
        Approximate spacing of the random control points (2 to 8 per axis).

    Returns
    -------
    (Deformation, params)
    """
    voxel_size = np.asarray(voxel_size, dtype=np.float64)
    box = np.asarray(box_shape)
    extent = box * voxel_size
    control = tuple(int(max(2, min(8, np.ceil(e / control_spacing_mm) + 1))) for e in extent)
    nodes = tuple(int(max(4, min(max_nodes, np.ceil(n / 4)))) for n in box_shape)
    std_mm = float(rng.uniform(0, max_std_mm))
    vel = rng.standard_normal((3, *control)) * std_mm  # mm along i, j, k
    # mm to normalised units, channels reversed to grid_sample's (x, y, z) = (k, j, i).
    mm_to_norm = 2.0 / (voxel_size * np.clip(box - 1, 1, None))
    vel = (vel * mm_to_norm[:, None, None, None])[::-1].copy()
    vel_t = F.interpolate(as_volume(vel, device), size=nodes, mode="trilinear", align_corners=True)
    field = integrate_velocity(vel_t, steps)
    norm_to_mm = torch.as_tensor((1.0 / mm_to_norm)[::-1].copy(), dtype=torch.float32,
                                 device=field.device)  # fmt: skip
    max_disp = float(torch.linalg.vector_norm(field * norm_to_mm.view(1, 3, 1, 1, 1), dim=1).max())
    params = {"velocity_std_mm": std_mm, "max_displacement_mm": max_disp,
              "control_points": list(control)}  # fmt: skip
    return Deformation(field, tuple(int(s) for s in box_shape)), params


def random_affine(
    centre: np.ndarray,
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 10.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    max_translation: float = 5.0,
) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Draw a mild world-to-world affine about ``centre`` (data augmentation, not failure).

    Returns
    -------
    (matrix, params)
        4x4 matrix and the drawn angles (deg), scales and translation (mm).
    """
    angles = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
    scales = rng.uniform(*scale_range, 3)
    shift = rng.uniform(-max_translation, max_translation, 3)
    m = compose_affine(shift, np.deg2rad(angles), scales, centre)
    return m, {"rotation_deg": angles.tolist(), "scale": scales.tolist(),
               "translation_mm": shift.tolist()}  # fmt: skip
