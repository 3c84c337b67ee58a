"""Label-map operations shared by the damage families (numpy / scipy, CPU).

Operations work inside bounding boxes of the structures they touch, so that damaging a
small structure of a 256^3 map costs what the structure costs, not the map.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from bids_qc.structures import STRUCTURES, Structure

#: Left/right code pairs swapped by the left-right damage (aseg codes; parcels by offset).
LR_PAIRS: tuple[tuple[int, int], ...] = (
    (10, 49), (11, 50), (12, 51), (13, 52), (17, 53), (18, 54), (26, 58),
    (2, 41), (3, 42), (4, 43), (5, 44), (7, 46), (8, 47), (28, 60), (30, 62),
)  # fmt: skip

#: Codes of the structures a damage can target (every code of the contract but cortex
#: parcels, which are handled through the cortex code when present).
TARGET_CODES: tuple[int, ...] = tuple(sorted({c for s in STRUCTURES for c in s.codes}))


def check_labels(labels: np.ndarray) -> np.ndarray:
    """A 3-D integer label map as int32, or ``ValueError``."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be a 3-D array, got shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.rint(labels)):
            raise ValueError("labels must hold integer codes")
    elif labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    return labels.astype(np.int32)


def check_severity(severity: float) -> float:
    """Severity as a float in ``[0, 1]``, or ``ValueError``."""
    s = float(severity)
    if not np.isfinite(s) or not 0.0 <= s <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    return s


def bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Bounding box of a mask, grown by ``margin`` voxels and clipped; None if empty."""
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        return None
    return tuple(
        slice(max(0, int(i.min()) - margin), min(n, int(i.max()) + margin + 1))
        for i, n in zip(idx, mask.shape)
    )


def present_codes(labels: np.ndarray, candidates: tuple[int, ...] = TARGET_CODES) -> list[int]:
    """Candidate codes that occur in the map, in ascending order."""
    values = set(np.unique(labels).tolist())
    return [c for c in candidates if c in values]


def fill_from_neighbours(
    labels: np.ndarray, mask: np.ndarray, exclude: np.ndarray | None = None, margin: int = 4
) -> np.ndarray:
    """Give every voxel of ``mask`` the label of the nearest voxel outside ``mask | exclude``.

    ``exclude`` (e.g. the whole structure being eroded) keeps the fill from copying the very
    label being removed. The search runs in the mask's bounding box grown by ``margin``, or
    the whole map when that box has no donor voxel. Returns a new array.
    """
    out = labels.copy()
    blocked = mask if exclude is None else (mask | exclude)
    box = bbox(mask, margin)
    if box is None:
        return out
    if blocked[box].all():
        box = tuple(slice(0, n) for n in labels.shape)
        if blocked.all():
            out[mask] = 0
            return out
    idx = ndi.distance_transform_edt(blocked[box], return_distances=False, return_indices=True)
    sub = labels[box]
    out[box] = np.where(mask[box], sub[tuple(idx)], sub)
    return out


def distance_outside(mask: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """Euclidean distance (voxels) to ``mask`` for the voxels of ``box`` (0 inside)."""
    return ndi.distance_transform_edt(~mask[box])


def distance_inside(mask: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """Distance (voxels) from each voxel of the mask in ``box`` to the nearest voxel outside."""
    sub = np.pad(mask[box], 1, constant_values=False)
    return ndi.distance_transform_edt(sub)[1:-1, 1:-1, 1:-1]


def neighbour_counts(labels: np.ndarray, mask: np.ndarray) -> dict[int, int]:
    """How many voxels of each other code touch ``mask`` (6-connectivity), most first."""
    box = bbox(mask, 1)
    if box is None:
        return {}
    sub_mask = mask[box]
    ring = ndi.binary_dilation(sub_mask) & ~sub_mask
    codes, counts = np.unique(labels[box][ring], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return {int(codes[i]): int(counts[i]) for i in order}


def ball(radius: float) -> np.ndarray:
    """Boolean ball of a radius in voxels (odd cube side)."""
    r = max(0, int(np.floor(radius)))
    x = np.arange(-r, r + 1)
    return (x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) <= radius**2


def paint(mask_shape: tuple[int, ...], centre: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """A boolean map with ``shape`` (odd-sided) stamped at voxel ``centre``, clipped."""
    out = np.zeros(mask_shape, dtype=bool)
    half = np.asarray(shape.shape) // 2
    centre = np.round(np.asarray(centre)).astype(int)
    lo = centre - half
    src = []
    dst = []
    for a in range(3):
        s0 = max(0, -lo[a])
        s1 = min(shape.shape[a], mask_shape[a] - lo[a])
        if s1 <= s0:
            return out
        src.append(slice(s0, s1))
        dst.append(slice(lo[a] + s0, lo[a] + s1))
    out[tuple(dst)] = shape[tuple(src)]
    return out


def structure_code(structure: Structure, labels: np.ndarray) -> int:
    """The code to paint a structure with: its most frequent code present, else its first."""
    codes = list(structure.codes)
    if not codes:
        raise ValueError(f"structure {structure.name} has no single code to paint with")
    values, counts = np.unique(labels[np.isin(labels, codes)], return_counts=True)
    return int(values[np.argmax(counts)]) if values.size else codes[0]


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Coordinates ``(n, 3)`` of the mask's voxels that touch the outside (6-connectivity)."""
    box = bbox(mask, 1)
    if box is None:
        return np.zeros((0, 3), dtype=int)
    sub = mask[box]
    edge = sub & ~ndi.binary_erosion(sub)
    return np.argwhere(edge) + np.array([s.start for s in box])
