"""Planted segmentation failures on real segmentations, with exact truth.

Two kinds, both applied to a real person's real segmentation (FreeSurfer codes, see
:mod:`bids_qc.training.real_sets`):

- :func:`plant_dice`: one subcortical structure loses (``erode``) or gains (``dilate``)
  exactly the voxels that bring its Dice against the original to a drawn target, taken in
  order of distance to its boundary and given to / taken from its neighbours. SegQC's and
  ManifoldQC's failure class: target Dice uniform on [0.4, 0.95], positive below 0.7.
- shape damage: the ShapeQC card's families (:mod:`bids_qc.synth.shape_damage`,
  ``displaced`` included) on one real structure, FAIL measured as on the card.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..structures import SUBCORTICAL
from ..synth.metrics import dice

#: Range of the damaged structure's Dice, and the failure cut-off.
DICE_RANGE = (0.4, 0.95)
FAIL_DICE = 0.7


@dataclass(frozen=True)
class PlantedSeg:
    """A damaged segmentation and its truth."""

    labels: np.ndarray
    structure: str
    family: str
    dice: float


def plant_dice(labels: np.ndarray, structure: str, family: str, target: float,
               rng: np.random.Generator) -> PlantedSeg:
    """Erode or dilate one structure to an exact Dice against ``labels``.

    Parameters
    ----------
    labels : ndarray
        FreeSurfer-coded labels (the truth).
    structure : str
        A subcortical structure's name.
    family : {"erode", "dilate"}
        Lose voxels to the neighbours, or take them from the neighbours.
    target : float
        The Dice to reach, in (0, 1).
    rng : numpy.random.Generator
        Breaks ties between voxels at the same distance.
    """
    spec = next(s for s in SUBCORTICAL if s.name == structure)
    mask = spec.mask(labels)
    n = int(mask.sum())
    if n == 0:
        raise ValueError(f"{structure} is absent from the segmentation")
    out = labels.copy()
    jitter = rng.random(labels.shape) * 0.5  # random order within one distance shell
    if family == "erode":
        keep = int(round(target * n / (2 - target)))  # 2k / (k + n) = target
        depth = ndi.distance_transform_edt(mask) + jitter
        order = np.argsort(depth[mask])
        lost = np.zeros_like(mask)
        lost[tuple(ix[order[: n - keep]] for ix in np.nonzero(mask))] = True
        # each lost voxel takes the label of its nearest voxel outside the structure
        _, nearest = ndi.distance_transform_edt(mask, return_indices=True)
        out[lost] = labels[tuple(idx[lost] for idx in nearest)]
    elif family == "dilate":
        grow = int(round(n * (2 - target) / target)) - n  # 2n / (n + n + g) = target
        outside = ~mask & (labels > 0)
        dist = ndi.distance_transform_edt(~mask) + jitter
        candidates = np.flatnonzero(outside)
        order = np.argsort(dist.ravel()[candidates])
        out.ravel()[candidates[order[:grow]]] = spec.codes[0]
    else:
        raise ValueError(f"unknown family {family!r}: erode or dilate")
    return PlantedSeg(out, structure, family, dice(mask, spec.mask(out)))
