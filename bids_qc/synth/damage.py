"""Segmentation damage with exact truth: named families, each returning a damaged label map.

Every family has the signature ``f(labels, rng, severity, image=None) -> labels`` (same grid,
int32) and is registered in :data:`DAMAGE_FAMILIES`, so a model card can name the families a
model trained on and those it never saw. Severity 0 is always the identity; severity 1 is
the family's worst case. Voxel units are used throughout (the damage is on the
segmentation's own grid). :func:`damage` runs a family and reports the per-structure Dice
against the undamaged labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from bids_qc.structures import SUBCORTICAL
from bids_qc.synth.grids import resample
from bids_qc.synth.labelops import (
    LR_PAIRS,
    ball,
    bbox,
    check_labels,
    check_severity,
    distance_inside,
    distance_outside,
    fill_from_neighbours,
    neighbour_counts,
    paint,
    present_codes,
)
from bids_qc.synth.metrics import structure_dice
from bids_qc.synth.misregistration import compose_affine
from bids_qc.synth.weak_segmenter import intensity_classifier, kmeans, tissue_map

DamageFn = Callable[..., np.ndarray]
_SUBCORTICAL_CODES = tuple(c for s in SUBCORTICAL for c in s.codes)
_TISSUE_PAIRS = ((2, 3), (3, 2), (1, 2), (2, 1))  # (grower, shrinker): GM/WM, CSF/GM


@dataclass
class DamageCase:
    """A damaged segmentation and its exact Dice against the true labels."""

    labels: np.ndarray
    dice: dict[str, float]
    family: str
    severity: float


def _choose(rng: np.random.Generator, codes: list[int], severity: float, most: int) -> list[int]:
    """``ceil(severity * min(most, n))`` distinct codes, at least one."""
    if not codes:
        return []
    k = max(1, int(np.ceil(severity * min(most, len(codes)))))
    return [int(c) for c in rng.choice(codes, size=min(k, len(codes)), replace=False)]


def _start(labels: np.ndarray, severity: float) -> tuple[np.ndarray, float]:
    return check_labels(labels), check_severity(severity)


def erosion(
    labels: np.ndarray,
    rng: np.random.Generator,
    severity: float,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Under-segmentation: structures lose a boundary band of 1-3 voxels to their neighbours."""
    labels, severity = _start(labels, severity)
    if severity == 0:
        return labels
    out = labels.copy()
    radius = 1 + 2 * severity
    for code in _choose(rng, present_codes(labels), severity, 6):
        mask = out == code
        box = bbox(mask, 1)
        if box is None:
            continue
        band = np.zeros_like(mask)
        band[box] = mask[box] & (distance_inside(mask, box) <= radius)
        out = fill_from_neighbours(out, band, exclude=mask)
    return out


def dilation(
    labels: np.ndarray,
    rng: np.random.Generator,
    severity: float,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Over-segmentation: structures take a band of 1-3 voxels from their neighbours."""
    labels, severity = _start(labels, severity)
    if severity == 0:
        return labels
    out = labels.copy()
    radius = 1 + 2 * severity
    for code in _choose(rng, present_codes(labels), severity, 6):
        mask = out == code
        box = bbox(mask, int(np.ceil(radius)) + 1)
        if box is None:
            continue
        grow = (distance_outside(mask, box) <= radius) & ~mask[box]
        out[box][grow] = code
    return out


def partial_volume(
    labels: np.ndarray,
    rng: np.random.Generator,
    severity: float,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """A partial-volume bias: one tissue (GM, WM or CSF) wins its boundary with another.

    Every structure of the growing tissue advances by 1-2.5 voxels into the adjacent
    structures of the shrinking tissue, as a segmenter whose tissue threshold is off would.
    """
    labels, severity = _start(labels, severity)
    if severity == 0:
        return labels
    tissue = tissue_map(labels)
    grower, shrinker = _TISSUE_PAIRS[int(rng.integers(len(_TISSUE_PAIRS)))]
    box = bbox(tissue > 0, 3)
    if box is None or not np.any(tissue == grower):
        return labels
    t = tissue[box]
    dist, idx = ndi.distance_transform_edt(t != grower, return_indices=True)
    take = (t == shrinker) & (dist <= 1 + 1.5 * severity)
    out = labels.copy()
    sub = labels[box]
    out[box] = np.where(take, sub[tuple(idx)], sub)
    return out


def misalignment(
    labels: np.ndarray,
    rng: np.random.Generator,
    severity: float,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """The whole segmentation shifted (1-4 voxels) and rotated (up to 5 degrees)."""
    labels, severity = _start(labels, severity)
    if severity == 0:
        return labels
    box = bbox(labels != 0)
    if box is None:
        return labels
    centre = np.array([(s.start + s.stop - 1) / 2 for s in box])
    direction = rng.standard_normal(3)
    shift = direction / np.linalg.norm(direction) * (1 + 3 * severity)
    axis = rng.standard_normal(3)
    angles = axis / np.linalg.norm(axis) * np.deg2rad(5 * severity)
    # Voxel grid used as world: the transform is in voxel units.
    A = compose_affine(shift, angles, np.ones(3), centre)
    return resample(labels, np.eye(4), labels.shape, np.eye(4), A, order=0)


def lr_swap(
    labels: np.ndarray,
    rng: np.random.Generator,
    severity: float,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Left and right codes exchanged for some structure pairs (cortical parcels included)."""
    labels, severity = _start(labels, severity)
    if severity == 0:
        return labels
    values = set(np.unique(labels).tolist())
    pairs = [p for p in LR_PAIRS if p[0] in values or p[1] in values]
    has_parcels = any(1000 <= v <= 2999 for v in values)
    options = list(range(len(pairs) + int(has_parcels)))
    out = labels.copy()
    for n in _choose(rng, options, severity, len(options)):
        if n == len(pairs):  # cortical parcels 1xxx <-> 2xxx
            left = (labels >= 1000) & (labels <= 1999)
            right = (labels >= 2000) & (labels <= 2999)
            out[left] += 1000
            out[right] -= 1000
            continue
        a, b = pairs[n]
        out[labels == a] = b
        out[labels == b] = a
    return out


def missing(
    labels: np.ndarray,
    rng: np.random.Generator,
    severity: float,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Structures missing: their voxels taken by the nearest other labels (1-4 structures)."""
    labels, severity = _start(labels, severity)
    if severity == 0:
        return labels
    out = labels.copy()
    for code in _choose(rng, present_codes(labels, _SUBCORTICAL_CODES + (4, 43)), severity, 4):
        out = fill_from_neighbours(out, out == code)
    return out


def _neighbour(labels: np.ndarray, mask: np.ndarray, code: int) -> int | None:
    counts = neighbour_counts(labels, mask)
    for other in counts:
        if other not in (0, code):
            return other
    return None


def merge(
    labels: np.ndarray,
    rng: np.random.Generator,
    severity: float,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Merged structures: a subcortical structure and its main neighbour share one code."""
    labels, severity = _start(labels, severity)
    if severity == 0:
        return labels
    out = labels.copy()
    for code in _choose(rng, present_codes(labels, _SUBCORTICAL_CODES), severity, 3):
        mask = out == code
        other = _neighbour(out, mask, code)
        if other is None:
            continue
        if rng.random() < 0.5:
            out[mask] = other
        else:
            out[out == other] = code
    return out


def leak(
    labels: np.ndarray,
    rng: np.random.Generator,
    severity: float,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Leaks: a subcortical structure spills into a neighbour through a chain of balls."""
    labels, severity = _start(labels, severity)
    if severity == 0:
        return labels
    out = labels.copy()
    for code in _choose(rng, present_codes(labels, _SUBCORTICAL_CODES), severity, 3):
        mask = out == code
        other = _neighbour(out, mask, code)
        if other is None:
            continue
        target = out == other
        box = bbox(mask, 1)
        contact = np.argwhere(ndi.binary_dilation(mask[box]) & target[box])
        start = contact[int(rng.integers(len(contact)))] + [sl.start for sl in box]
        direction = start - np.argwhere(mask).mean(axis=0)
        direction = direction / max(float(np.linalg.norm(direction)), 1e-6)
        radius = 1.5 + 3 * severity
        region = np.zeros_like(mask)
        for step in range(1 + int(round(3 * severity))):
            region |= paint(out.shape, start + direction * radius * step, ball(radius))
        out[region & target] = code
    return out


DAMAGE_FAMILIES: dict[str, DamageFn] = {
    "intensity_classifier": intensity_classifier,
    "kmeans": kmeans,
    "erosion": erosion,
    "dilation": dilation,
    "partial_volume": partial_volume,
    "misalignment": misalignment,
    "lr_swap": lr_swap,
    "missing": missing,
    "merge": merge,
    "leak": leak,
}


def damage(
    labels: np.ndarray,
    family: str,
    seed: int,
    severity: float,
    image: np.ndarray | None = None,
) -> DamageCase:
    """Damage a segmentation with a named family and measure the result.

    Parameters
    ----------
    labels : ndarray
        True FreeSurfer-coded labels.
    family : str
        A key of :data:`DAMAGE_FAMILIES`.
    seed : int
        Seed of the family's ``numpy.random.Generator``.
    severity : float
        In ``[0, 1]``; 0 returns the labels unchanged.
    image : ndarray or None
        The image the segmentation belongs to (weak segmenters run on it).

    Returns
    -------
    DamageCase
        Damaged labels and Dice per structure against ``labels`` (NaN where a structure is
        absent from both).
    """
    if family not in DAMAGE_FAMILIES:
        raise ValueError(f"unknown damage family {family!r}; known: {', '.join(DAMAGE_FAMILIES)}")
    labels = check_labels(labels)
    severity = check_severity(severity)
    rng = np.random.default_rng(seed)
    damaged = DAMAGE_FAMILIES[family](labels, rng, severity, image=image)
    return DamageCase(damaged, structure_dice(labels, damaged), family, severity)
