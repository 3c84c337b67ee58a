"""Misregistration with exact truth: affines drawn to hit a chosen RegQCNET RMSE.

The sampler follows RegQCNET's ranges (translation up to 100 mm per axis, rotation up to 45
degrees about each axis, scale 0.5 to 1.5 per axis), all about the centre of the template
grid. To make the RMSE of a training set uniform on ``[lo, hi]``, the RMSE is chosen first:

1. draw the target RMSE (uniformly on ``[lo, hi]`` in :func:`sample_misregistration`);
2. draw a random direction ``d`` on the unit sphere of the 9 normalised parameters
   (each parameter divided by its maximum, so the box of allowed parameters is ``[-1, 1]^9``);
3. find ``lam`` in ``[0, lam_max]`` (``lam_max`` puts ``lam d`` on the box's surface) with
   ``affine_rmse(A(lam d)) = target`` by bisection-safe root finding (Brent's method, the
   RMSE being 0 at ``lam = 0`` and continuous); redraw the direction when even ``lam_max``
   falls short of the target.

The RMSE is evaluated exactly on the full grid (:func:`bids_qc.synth.metrics.affine_rmse`).

Convention of ``A``: the misregistered image shows, at template point ``x``, the anatomy
that belongs at ``A x`` (``J(x) = I(A x)``), so ``||A x - x||`` is the error at ``x``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import brentq

from bids_qc.synth.grids import resample
from bids_qc.synth.metrics import affine_rmse

#: Tolerance on the RMSE reached by :func:`sample_affine` (mm).
RMSE_TOL = 1e-4
_MAX_DIRECTIONS = 200


def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """3x3 rotation ``Rz @ Ry @ Rx`` from angles about the x, y and z axes (radians)."""
    ax, ay, az = (float(a) for a in angles_rad)
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def grid_centre(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the centre of a grid's field of view."""
    mid = (np.asarray(shape, dtype=np.float64) - 1) / 2
    return (np.asarray(affine, dtype=np.float64) @ np.append(mid, 1.0))[:3]


def compose_affine(
    translation: np.ndarray, angles_rad: np.ndarray, scales: np.ndarray, centre: np.ndarray
) -> np.ndarray:
    """``T(centre) T(translation) R S T(-centre)``: rotate and scale about ``centre``."""
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(angles_rad) @ np.diag(np.asarray(scales, dtype=np.float64))
    centre = np.asarray(centre, dtype=np.float64)
    m[:3, 3] = centre + np.asarray(translation, dtype=np.float64) - m[:3, :3] @ centre
    return m


def _params_to_affine(
    u: np.ndarray,
    centre: np.ndarray,
    max_translation: float,
    max_rotation_deg: float,
    scale_range: tuple[float, float],
) -> np.ndarray:
    lo, hi = scale_range
    s = u[6:9]
    scales = np.where(s >= 0, 1 + s * (hi - 1), 1 + s * (1 - lo))
    return compose_affine(
        u[0:3] * max_translation, np.deg2rad(u[3:6] * max_rotation_deg), scales, centre
    )


def _proxy_grid(
    shape: tuple[int, int, int], affine: np.ndarray, max_voxels: int = 60_000
) -> tuple[tuple[int, int, int], np.ndarray]:
    """A centred subgrid (every ``s``-th voxel) with at most ``max_voxels`` voxels."""
    shape = tuple(int(n) for n in shape)
    stride = max(1, int(np.ceil((np.prod(shape) / max_voxels) ** (1 / 3))))
    sub = tuple(max(1, (n - 1) // stride + 1) for n in shape)
    offset = [((n - 1) - stride * (m - 1)) / 2 for n, m in zip(shape, sub)]
    scale = np.diag([stride, stride, stride, 1.0])
    scale[:3, 3] = offset
    return sub, np.asarray(affine, dtype=np.float64) @ scale  # type: ignore[return-value]


def _solve(
    exact: Callable[[float], float],
    proxy: Callable[[float], float],
    lam_max: float,
    f_max: float,
    target: float,
) -> tuple[float, float]:
    """Root of ``exact(lam) = target`` on ``[0, lam_max]`` (``exact(0) = 0 < target <= f_max``).

    The cheap proxy (the same RMSE on a subgrid) is nearly proportional to the exact RMSE, so
    solving ``proxy(lam) = target * proxy(lam_k) / exact(lam_k)`` converges in a few exact
    evaluations; Brent's method on the exact function, inside the bracket found so far, is
    the fall-back.
    """
    lo, hi = 0.0, lam_max
    if abs(f_max - target) <= RMSE_TOL / 10:
        return lam_max, f_max
    goal = target
    for _ in range(8):
        p_max = proxy(lam_max)
        if p_max < goal:
            break
        lam = brentq(lambda t, g=goal: proxy(t) - g, 0.0, lam_max, xtol=1e-14, rtol=1e-14)
        f = exact(lam)
        if abs(f - target) <= RMSE_TOL / 10:
            return lam, f
        if f < target:
            lo = max(lo, lam)
        else:
            hi = min(hi, lam)
        if f <= 0:
            break
        goal = goal * target / f
    lam = brentq(lambda t: exact(t) - target, lo, hi, xtol=1e-14, rtol=1e-14, maxiter=200)
    return lam, exact(lam)


def sample_affine(
    rng: np.random.Generator,
    rmse_target: float,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    max_translation: float = 100,
    max_rotation_deg: float = 45,
    scale_range: tuple[float, float] = (0.5, 1.5),
) -> np.ndarray:
    """Draw a misregistration affine whose RegQCNET RMSE on a grid equals ``rmse_target``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (the direction in parameter space).
    rmse_target : float
        Wanted mean displacement norm over the grid, mm (>= 0).
    shape, affine
        The template grid (shape and voxel-to-world matrix) the RMSE is measured on.
    max_translation : float
        Largest translation per axis, mm.
    max_rotation_deg : float
        Largest rotation about each axis, degrees.
    scale_range : (float, float)
        Smallest and largest scale per axis (``lo <= 1 <= hi``).

    Returns
    -------
    ndarray (4, 4)
        World-to-world matrix ``A`` with ``|affine_rmse(A) - rmse_target| <= 1e-4`` mm.

    Raises
    ------
    ValueError
        For a negative target, bad ranges, or a target out of reach of the ranges.
    """
    if not np.isfinite(rmse_target) or rmse_target < 0:
        raise ValueError(f"rmse_target must be a finite number >= 0 mm, got {rmse_target}")
    lo, hi = scale_range
    if not (0 < lo <= 1 <= hi) or max_translation < 0 or max_rotation_deg < 0:
        raise ValueError(
            "need max_translation >= 0, max_rotation_deg >= 0 and 0 < scale lo <= 1 <= hi; got "
            f"{max_translation}, {max_rotation_deg}, {scale_range}"
        )
    if rmse_target == 0:
        return np.eye(4)
    centre = grid_centre(shape, affine)
    limits = np.array([max_translation] * 3 + [max_rotation_deg] * 3 + [max(hi - 1, 1 - lo)] * 3)
    active = limits > 0
    if not active.any():
        raise ValueError("all parameter ranges are empty: no misregistration is possible")

    def build(u: np.ndarray) -> np.ndarray:
        return _params_to_affine(u, centre, max_translation, max_rotation_deg, scale_range)

    proxy_shape, proxy_affine = _proxy_grid(shape, affine)

    def exact(t: float, d: np.ndarray) -> float:
        return affine_rmse(build(t * d), shape, affine)

    def proxy(t: float, d: np.ndarray) -> float:
        return affine_rmse(build(t * d), proxy_shape, proxy_affine)

    for _ in range(_MAX_DIRECTIONS):
        d = rng.standard_normal(9) * active
        d /= np.linalg.norm(d)
        lam_max = 1.0 / np.max(np.abs(d))
        if proxy(lam_max, d) < 0.9 * rmse_target:
            continue  # this direction cannot reach the target inside the box
        f_max = exact(lam_max, d)
        if f_max < rmse_target:
            continue
        lam, f = _solve(
            lambda t, d=d: exact(t, d), lambda t, d=d: proxy(t, d), lam_max, f_max, rmse_target
        )
        if abs(f - rmse_target) <= RMSE_TOL:
            return build(lam * d)
    raise ValueError(
        f"RMSE {rmse_target} mm is out of reach of translations <= {max_translation} mm, "
        f"rotations <= {max_rotation_deg} deg and scales in {scale_range} on this grid"
    )


def sample_misregistration(
    rng: np.random.Generator,
    rmse_range: tuple[float, float],
    shape: tuple[int, int, int],
    affine: np.ndarray,
    **ranges: object,
) -> tuple[np.ndarray, float]:
    """Draw an RMSE uniformly on ``rmse_range`` and an affine that has it.

    Returns
    -------
    (A, rmse)
        The 4x4 world matrix and its exact RMSE (mm). ``ranges`` go to :func:`sample_affine`.
    """
    lo, hi = (float(v) for v in rmse_range)
    if not 0 <= lo <= hi:
        raise ValueError(f"rmse_range must satisfy 0 <= lo <= hi, got {rmse_range}")
    target = float(rng.uniform(lo, hi))
    A = sample_affine(rng, target, shape, affine, **ranges)  # type: ignore[arg-type]
    return A, affine_rmse(A, shape, affine)


def apply_affine(
    image: np.ndarray, affine_img: np.ndarray, A: np.ndarray, order: int = 1, device: str = "cpu"
) -> np.ndarray:
    """The image as seen through the misregistration ``A``, on its own grid.

    Voxel ``v`` of the result holds the image at world point ``A @ affine_img @ v``
    (``J(x) = I(A x)``); outside the field of view it is 0.

    Parameters
    ----------
    image : ndarray
        3-D image (or label map with ``order=0``).
    affine_img : ndarray (4, 4)
        The image's voxel-to-world matrix.
    A : ndarray (4, 4)
        World-to-world misregistration (mm).
    order : int
        0 nearest (labels keep their codes), 1 trilinear.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"apply_affine needs a 3-D image, got shape {image.shape}")
    return resample(image, affine_img, image.shape, affine_img, A, order=order, device=device)
