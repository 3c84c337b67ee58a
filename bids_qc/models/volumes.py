"""Structure volumes of a FreeSurfer-coded segmentation and whether they are plausible.

A segmentation made by bids_qc itself (VINN) has no rater behind it, so its volumes are
checked against people's: each of the 14 subcortical structures' volume scaled by the
segmented brain volume must lie within bounds measured on real reference segmentations
(:data:`BOUNDS_FILE`, fixed before any test image was looked at), and each left/right pair's
ratio within :data:`LR_RATIO`. The brain volume stands in for the intracranial volume: a raw
image has no skull model, and scaling by either removes most of the head-size variance.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bids_qc.structures import SUBCORTICAL

#: Left/right volume ratios outside these are implausible (the VINN issue's rule).
LR_RATIO: tuple[float, float] = (0.8, 1.25)
#: Scaled-volume bounds of each structure (1st-99th percentile of the IXI training and
#: calibration people's DLMUSE segmentations), written by ``bids_qc.training.vinn_realdata``.
BOUNDS_FILE = Path(str(resources.files("bids_qc.models") / "cards" / "realdata"
                       / "vinn_bounds.json"))  # fmt: skip
#: FreeSurfer's label of extra-ventricular CSF: inside the head but not brain tissue.
CSF_CODE = 24


def brain_voxels(labels: np.ndarray) -> np.ndarray:
    """Voxels with a brain label (any label of the structure contract but CSF)."""
    from bids_qc.models.vinn import code_to_class

    classes = code_to_class(np.asarray(labels))
    return (classes > 0) & (np.asarray(labels) != CSF_CODE)


def structure_volumes(labels: np.ndarray, voxel_mm3: float) -> dict[str, float]:
    """Volumes (mm³) of the subcortical structures and of the brain (``brain``)."""
    labels = np.asarray(labels)
    vols = {s.name: float(s.mask(labels).sum() * voxel_mm3) for s in SUBCORTICAL}
    vols["brain"] = float(brain_voxels(labels).sum() * voxel_mm3)
    return vols


def scaled(volumes: dict[str, float]) -> dict[str, float]:
    """Structure volumes divided by the brain volume (NaN when there is no brain)."""
    brain = volumes["brain"]
    return {s.name: volumes[s.name] / brain if brain > 0 else float("nan") for s in SUBCORTICAL}


def lr_ratios(volumes: dict[str, float]) -> dict[str, float]:
    """Left/right volume ratio of each structure pair, keyed by the pair's name."""
    out = {}
    for s in SUBCORTICAL:
        if s.name.startswith("left_"):
            pair = s.name[len("left_"):]
            right = volumes[f"right_{pair}"]
            out[pair] = volumes[s.name] / right if right > 0 else float("inf")
    return out


def load_bounds(path: Path = BOUNDS_FILE) -> dict[str, Any]:
    """The committed bounds (see :data:`BOUNDS_FILE`)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def implausible(volumes: dict[str, float], bounds: dict[str, Any]) -> list[str]:
    """Every reason the volumes are implausible (empty when they are plausible).

    Parameters
    ----------
    volumes : dict
        :func:`structure_volumes` of one segmentation.
    bounds : dict
        :func:`load_bounds`: ``scaled`` -> structure -> ``[low, high]``.
    """
    reasons = []
    for name, value in scaled(volumes).items():
        low, high = bounds["scaled"][name]
        if not low <= value <= high:
            reasons.append(f"{name} {volumes[name]:.0f} mm³ is {value:.2e} of the brain, "
                           f"outside [{low:.2e}, {high:.2e}]")
    lo, hi = bounds.get("lr_ratio", LR_RATIO)
    for pair, ratio in lr_ratios(volumes).items():
        if not lo <= ratio <= hi:
            reasons.append(f"{pair} left/right ratio {ratio:.2f} outside [{lo}, {hi}]")
    return reasons
