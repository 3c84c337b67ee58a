"""Classical metrics that need no network: registration baselines and structure volumes.

``reg_cc`` and ``reg_mi`` are the baselines of the RegQCNET paper: the Pearson correlation
and the mutual information of the template-space T1w with the template, inside the
template's brain mask.
"""

from __future__ import annotations

import functools

import numpy as np

from ..structures import STRUCTURES

MI_BINS = 32

#: The registration baselines that carry a threshold, and where a value fails: both fall
#: as a registration gets worse.
BASELINES: tuple[str, ...] = ("reg_cc", "reg_mi")


@functools.cache
def baseline_thresholds() -> dict[str, float]:
    """``reg_cc``/``reg_mi`` thresholds fitted on good real calibration images.

    They are generated with the real-data figures (:mod:`bids_qc.training.real_gate`: the
    5th percentile of the good calibration images in template space, so 95% specificity
    there). Empty when this installation ships no fitted thresholds.
    """
    from .gate import realdata

    entry = realdata("classic") or {}
    return {k: float(v) for k, v in (entry.get("thresholds") or {}).items() if k in BASELINES}


def registration_flags(metrics: dict[str, float | None],
                       thresholds: dict[str, float]) -> dict[str, int | None]:
    """``reg_cc_flag``/``reg_mi_flag``: 1 when the value is below its threshold.

    A baseline without a value or a threshold gets no flag (None).
    """
    out: dict[str, int | None] = {}
    for name in BASELINES:
        value, cut = metrics.get(name), thresholds.get(name)
        out[f"{name}_flag"] = (None if value is None or cut is None or not np.isfinite(value)
                               else int(value < cut))
    return out


def _check_pair(moving: np.ndarray, template: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if moving.shape != template.shape or mask.shape != template.shape:
        raise ValueError(
            f"Image {moving.shape}, template {template.shape} and mask {mask.shape} must be on "
            "one grid; resample the image into template space first."
        )
    mask = mask.astype(bool)
    if mask.sum() < 2:
        raise ValueError("The template brain mask is empty; check the template file.")
    return mask


def correlation(moving: np.ndarray, template: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two images inside a mask (NaN when one is constant there)."""
    mask = _check_pair(moving, template, mask)
    a = moving[mask].astype(np.float64)
    b = template[mask].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def mutual_information(
    moving: np.ndarray, template: np.ndarray, mask: np.ndarray, bins: int = MI_BINS
) -> float:
    """Mutual information (nats) from a ``bins`` x ``bins`` joint histogram inside a mask.

    Each image's bins span its own range inside the mask, so the value does not depend on
    intensity units.
    """
    mask = _check_pair(moving, template, mask)
    joint, _, _ = np.histogram2d(moving[mask].ravel(), template[mask].ravel(), bins=bins)
    pxy = joint / joint.sum()
    px = pxy.sum(axis=1, keepdims=True)
    py = pxy.sum(axis=0, keepdims=True)
    nz = pxy > 0
    return float((pxy[nz] * np.log(pxy[nz] / (px @ py)[nz])).sum())


def registration_metrics(
    moving: np.ndarray, template: np.ndarray, mask: np.ndarray
) -> dict[str, float]:
    """``reg_cc`` and ``reg_mi`` of a template-space image."""
    return {
        "reg_cc": correlation(moving, template, mask),
        "reg_mi": mutual_information(moving, template, mask),
    }


def structure_volumes(labels: np.ndarray, voxel_volume_mm3: float) -> dict[str, float]:
    """``vol_<structure>`` in mm^3 (voxel count x voxel volume) for every contract structure."""
    if voxel_volume_mm3 <= 0:
        raise ValueError(f"Voxel volume must be positive, got {voxel_volume_mm3}")
    # One histogram of the label values serves every structure (segmentations can be 512^3).
    values, counts = np.unique(labels, return_counts=True)
    out = {}
    for s in STRUCTURES:
        keep = s.mask(values)
        out[f"vol_{s.name}"] = float(counts[keep].sum() * voxel_volume_mm3)
    return out
