"""Shape failures of one structure, for ShapeQC: truncations, bumps, spikes, holes, leaks,
merged parts and displacements, each with a severity in ``[0, 1]``.

Every family has the signature ``f(labels, structure, rng, severity) -> labels`` (structure
by name, same grid, voxel units) and is registered in :data:`SHAPE_FAMILIES`. Severity 0 is
the identity. Sizes scale with the structure's equivalent radius ``R`` (radius of the ball
of its volume), so a severity means the same on a pallidum and a thalamus.

The truth is measured, not assumed: :func:`damage_shape` marks the structure FAIL when its
mask changed visibly, i.e. Dice(before, after) < :data:`FAIL_DICE` or the symmetric
Hausdorff distance >= :data:`FAIL_HAUSDORFF` voxels. Small bumps can therefore be PASS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from bids_qc.structures import SUBCORTICAL, Structure, get_structure
from bids_qc.synth.labelops import (
    ball,
    bbox,
    check_labels,
    check_severity,
    distance_inside,
    distance_outside,
    fill_from_neighbours,
    neighbour_counts,
    paint,
    structure_code,
    surface_voxels,
)
from bids_qc.synth.metrics import dice

#: Dice between the structure before and after below which it is FAIL.
FAIL_DICE = 0.95
#: Symmetric Hausdorff distance (voxels) from which the structure is FAIL.
FAIL_HAUSDORFF = 3.0

ShapeFn = Callable[[np.ndarray, str, np.random.Generator, float], np.ndarray]


@dataclass
class ShapeCase:
    """A label map with one damaged structure and the measured truth.

    Attributes
    ----------
    labels : ndarray of int32
        The damaged map.
    structure : str
        The damaged structure.
    family, severity
        What was done.
    fail : bool
        Whether the structure's shape is a failure (see module notes).
    dice : float
        Dice of the structure before and after.
    hausdorff : float
        Symmetric Hausdorff distance before/after, voxels (inf if one mask is empty).
    """

    labels: np.ndarray
    structure: str
    family: str
    severity: float
    fail: bool
    dice: float = 1.0
    hausdorff: float = 0.0


def _setup(
    labels: np.ndarray, structure: str, severity: float
) -> tuple[np.ndarray, Structure, np.ndarray, int, float]:
    labels = check_labels(labels)
    severity = check_severity(severity)
    s = get_structure(structure)
    if s.all_nonzero:
        raise ValueError("shape damage needs one structure, not whole_brain")
    mask = s.mask(labels)
    if not mask.any():
        raise ValueError(f"structure {structure} is absent from the label map")
    return labels, s, mask, structure_code(s, labels), severity


def _radius(mask: np.ndarray) -> float:
    return float((3 * np.count_nonzero(mask) / (4 * np.pi)) ** (1 / 3))


def _outward(mask: np.ndarray, point: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    d = point - np.argwhere(mask).mean(axis=0) + 0.2 * rng.standard_normal(3)
    return d / max(float(np.linalg.norm(d)), 1e-6)


def truncation(
    labels: np.ndarray, structure: str, rng: np.random.Generator, severity: float
) -> np.ndarray:
    """A slab of 10-60 % of the structure cut off by a random plane."""
    labels, _, mask, _, severity = _setup(labels, structure, severity)
    if severity == 0:
        return labels
    normal = rng.standard_normal(3)
    coords = np.argwhere(mask)
    proj = coords @ (normal / np.linalg.norm(normal))
    cut = coords[proj >= np.quantile(proj, 1 - (0.1 + 0.5 * severity))]
    gone = np.zeros_like(mask)
    gone[tuple(cut.T)] = True
    return fill_from_neighbours(labels, gone, exclude=mask)


def bump(
    labels: np.ndarray, structure: str, rng: np.random.Generator, severity: float
) -> np.ndarray:
    """A ball of radius 1 to 1 + 0.6 R grown out of the surface."""
    labels, _, mask, code, severity = _setup(labels, structure, severity)
    if severity == 0:
        return labels
    surface = surface_voxels(mask)
    p = surface[int(rng.integers(len(surface)))]
    r = 1.0 + 0.6 * severity * _radius(mask)
    out = labels.copy()
    out[paint(labels.shape, p + _outward(mask, p, rng) * r * 0.6, ball(r))] = code
    return out


def spike(
    labels: np.ndarray, structure: str, rng: np.random.Generator, severity: float
) -> np.ndarray:
    """A thin spike (radius 1) of length 2 to 2 + 1.5 R out of the surface."""
    labels, _, mask, code, severity = _setup(labels, structure, severity)
    if severity == 0:
        return labels
    surface = surface_voxels(mask)
    p = surface[int(rng.integers(len(surface)))]
    direction = _outward(mask, p, rng)
    out = labels.copy()
    length = 2.0 + 1.5 * severity * _radius(mask)
    for t in np.arange(0.0, length + 0.5, 0.5):
        out[paint(labels.shape, p + direction * t, ball(1.0))] = code
    return out


def hole(
    labels: np.ndarray, structure: str, rng: np.random.Generator, severity: float
) -> np.ndarray:
    """A ball removed around a deep point, radius 1 to 1 + 0.8 depth (may break through)."""
    labels, _, mask, _, severity = _setup(labels, structure, severity)
    if severity == 0:
        return labels
    box = bbox(mask, 1)
    depth = distance_inside(mask, box)
    deep = np.argwhere(depth >= 0.6 * depth.max())
    centre = deep[int(rng.integers(len(deep)))] + [s.start for s in box]
    r = 1.0 + 0.8 * severity * float(depth.max())
    gone = paint(labels.shape, centre, ball(r)) & mask
    return fill_from_neighbours(labels, gone, exclude=mask)


#: Neighbours a structure can merge with before any other: subcortical structures,
#: ventricles, ventral DC and brainstem (merging into white matter is a leak, not a merge).
_MERGE_FIRST = frozenset(c for s in SUBCORTICAL for c in s.codes) | {4, 43, 28, 60, 16}


def _neighbour(
    labels: np.ndarray, mask: np.ndarray, prefer: frozenset[int] = frozenset()
) -> int | None:
    inside = set(np.unique(labels[mask]).tolist())
    others = [c for c in neighbour_counts(labels, mask) if c != 0 and c not in inside]
    preferred = [c for c in others if c in prefer]
    return (preferred or others or [None])[0]


def leak(
    labels: np.ndarray, structure: str, rng: np.random.Generator, severity: float
) -> np.ndarray:
    """The structure spills into its main neighbour through a chain of balls."""
    labels, _, mask, code, severity = _setup(labels, structure, severity)
    if severity == 0:
        return labels
    other = _neighbour(labels, mask)
    if other is None:
        return labels
    target = labels == other
    box = bbox(mask, 1)
    contact = np.argwhere(ndi.binary_dilation(mask[box]) & target[box])
    start = contact[int(rng.integers(len(contact)))] + [s.start for s in box]
    direction = _outward(mask, start, rng)
    r = 1.5 + 2.0 * severity
    region = np.zeros_like(mask)
    for step in range(2 + int(round(4 * severity))):
        region |= paint(labels.shape, start + direction * r * step, ball(r))
    out = labels.copy()
    out[region & target] = code
    return out


def merged(
    labels: np.ndarray, structure: str, rng: np.random.Generator, severity: float
) -> np.ndarray:
    """The structure absorbs the part of its main neighbour near it (all of it at 1)."""
    labels, _, mask, code, severity = _setup(labels, structure, severity)
    if severity == 0:
        return labels
    other = _neighbour(labels, mask, _MERGE_FIRST)
    if other is None:
        return labels
    target = labels == other
    box = bbox(mask | target, 1)
    # All of a neighbour structure at severity 1, but never more than 2 R of a large tissue.
    extent = max(s.stop - s.start for s in bbox(target))
    reach = max(1.0, severity * min(extent, 2 * _radius(mask)))
    out = labels.copy()
    take = target[box] & (distance_outside(mask, box) <= reach)
    out[box][take] = code
    return out


def displaced(
    labels: np.ndarray, structure: str, rng: np.random.Generator, severity: float
) -> np.ndarray:
    """The structure moved by 1 to 1 + 0.8 R voxels in a random direction."""
    labels, _, mask, code, severity = _setup(labels, structure, severity)
    if severity == 0:
        return labels
    d = rng.standard_normal(3)
    shift = np.round(d / np.linalg.norm(d) * (1.0 + 0.8 * severity * _radius(mask))).astype(int)
    if not shift.any():
        shift[int(np.argmax(np.abs(d)))] = 1 if d[int(np.argmax(np.abs(d)))] > 0 else -1
    coords = np.argwhere(mask) + shift
    keep = np.all((coords >= 0) & (coords < np.array(labels.shape)), axis=1)
    out = fill_from_neighbours(labels, mask)
    out[tuple(coords[keep].T)] = code
    return out


SHAPE_FAMILIES: dict[str, ShapeFn] = {
    "truncation": truncation,
    "bump": bump,
    "spike": spike,
    "hole": hole,
    "leak": leak,
    "merged": merged,
    "displaced": displaced,
}


def hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Hausdorff distance of two masks in voxels (0 if equal, inf if one is empty)."""
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    box = bbox(a | b, 1)
    to_b = distance_outside(b, box)
    to_a = distance_outside(a, box)
    return float(max(to_b[a[box]].max(), to_a[b[box]].max()))


def damage_shape(
    labels: np.ndarray, structure: str, family: str, seed: int, severity: float
) -> ShapeCase:
    """Damage one structure's shape and measure whether it is now a failure.

    Parameters
    ----------
    labels : ndarray
        FreeSurfer-coded label map.
    structure : str
        Name from :data:`bids_qc.structures.STRUCTURES` (not ``whole_brain``).
    family : str
        A key of :data:`SHAPE_FAMILIES`.
    seed : int
        Seed of the family's ``numpy.random.Generator``.
    severity : float
        In ``[0, 1]``; 0 leaves the map unchanged (PASS).

    Returns
    -------
    ShapeCase
    """
    if family not in SHAPE_FAMILIES:
        raise ValueError(f"unknown shape family {family!r}; known: {', '.join(SHAPE_FAMILIES)}")
    labels, s, mask, _, severity = _setup(labels, structure, severity)
    out = SHAPE_FAMILIES[family](labels, structure, np.random.default_rng(seed), severity)
    after = s.mask(out)
    d = dice(mask, after)
    h = hausdorff(mask, after)
    fail = bool(d < FAIL_DICE or h >= FAIL_HAUSDORFF)
    return ShapeCase(out, structure, family, severity, fail, d, h)
