"""Exact truth of the synthetic failures: Dice overlaps and RegQCNET's registration error.

Conventions
-----------
* Dice of two empty masks is NaN: there is nothing to overlap, and 1.0 would claim an
  agreement that was never tested. A structure missing from both maps therefore reads NaN,
  a structure missing from only one reads 0.0. No division by zero happens.
* ``affine_rmse`` follows RegQCNET's Eq. 1, the *mean* over the template grid's voxels of the
  displacement norm ``||A x - x||`` in world mm (the paper calls it RMSE).
"""

from __future__ import annotations

import numpy as np
import torch

from bids_qc.structures import STRUCTURES


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2 |a & b| / (|a| + |b|)`` of two masks (non-zero = inside).

    Parameters
    ----------
    a, b : ndarray
        Arrays of one shape; any non-zero value counts as inside.

    Returns
    -------
    float
        In ``[0, 1]``; NaN when both masks are empty.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"Dice needs masks of one shape, got {a.shape} and {b.shape}")
    a = a != 0
    b = b != 0
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return float("nan")
    return 2.0 * int(np.count_nonzero(a & b)) / total


def structure_dice(true_labels: np.ndarray, seg_labels: np.ndarray) -> dict[str, float]:
    """Dice per structure of :data:`bids_qc.structures.STRUCTURES` (NaN when absent in both).

    Parameters
    ----------
    true_labels, seg_labels : ndarray
        FreeSurfer-coded integer label maps on one grid.

    Returns
    -------
    dict
        Structure name to Dice, in the contract's column order.
    """
    true_labels = np.asarray(true_labels)
    seg_labels = np.asarray(seg_labels)
    if true_labels.shape != seg_labels.shape:
        raise ValueError(
            "label maps must share one grid, got shapes "
            f"{true_labels.shape} and {seg_labels.shape}"
        )
    # Crop to the union of both foregrounds: the masks are empty outside it.
    fg = (true_labels != 0) | (seg_labels != 0)
    if fg.any():
        idx = np.nonzero(fg)
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
        true_labels, seg_labels = true_labels[box], seg_labels[box]
    return {s.name: dice(s.mask(true_labels), s.mask(seg_labels)) for s in STRUCTURES}


def subcortical_dice(true_labels: np.ndarray, seg_labels: np.ndarray) -> dict[str, float]:
    """:func:`structure_dice` plus ``subcortical_mean``, the mean over the 14 subcortical
    structures of :data:`bids_qc.structures.SUBCORTICAL` present in either map."""
    from bids_qc.structures import SUBCORTICAL

    d = structure_dice(true_labels, seg_labels)
    d["subcortical_mean"] = float(np.nanmean([d[s.name] for s in SUBCORTICAL]))
    return {k: float(v) for k, v in d.items()}


def _check_affine(matrix: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"{name} must be a finite 4x4 matrix, got shape {m.shape}")
    return m


def _displacement_terms(
    D: np.ndarray, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``D @ (i, j, k, 1)`` into a ``(3, J, K)`` plane term and the ``i`` column."""
    j = np.arange(shape[1], dtype=np.float64)
    k = np.arange(shape[2], dtype=np.float64)
    plane = D[:3, 1, None, None] * j[None, :, None] + D[:3, 2, None, None] * k[None, None, :]
    plane = plane + D[:3, 3, None, None]
    return torch.from_numpy(plane.astype(np.float32)), torch.from_numpy(
        D[:3, 0].astype(np.float32)
    )


def affine_rmse(A: np.ndarray, shape: tuple[int, int, int], affine: np.ndarray) -> float:
    """RegQCNET Eq. 1: mean over a grid's voxels of ``||A x - x||`` (world mm).

    Parameters
    ----------
    A : ndarray (4, 4)
        World-to-world transform in mm.
    shape : tuple of int
        Shape of the (template) grid.
    affine : ndarray (4, 4)
        The grid's voxel-to-world matrix.

    Returns
    -------
    float
        The exact mean over every voxel centre (a vectorised sum, accumulated in float64).

    Notes
    -----
    The displacement at voxel ``(i, j, k)`` is affine in the indices,
    ``d = d0 + i u + j v + k w``, so each component is a sum of three 1-D terms; the norm is
    evaluated on the full grid in slabs along the first axis.
    """
    A = _check_affine(A, "A")
    affine = _check_affine(affine, "affine")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes, got {shape}")
    # Displacement map D = (A - I) @ affine, acting on homogeneous voxel indices.
    D = (A - np.eye(4)) @ affine
    plane, col = _displacement_terms(D, shape)
    total = 0.0
    # Slabs of ~1M voxels stay in cache; squares accumulate in place, one component at a time.
    step = max(1, 1_000_000 // (shape[1] * shape[2]))
    for start in range(0, shape[0], step):
        ii = torch.arange(start, min(shape[0], start + step), dtype=torch.float32)[:, None, None]
        acc = torch.zeros((ii.shape[0], shape[1], shape[2]), dtype=torch.float32)
        for c in range(3):
            comp = plane[c][None] + col[c] * ii
            acc.addcmul_(comp, comp)
        total += float(acc.sqrt_().sum(dtype=torch.float64))
    return total / float(np.prod(shape))
