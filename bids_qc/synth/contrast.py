"""Contrast families: per-label Gaussian intensities drawn from named priors (SynthSeg-style).

Every FreeSurfer code belongs to a tissue class (:func:`tissue_class`); a family gives, per
class, the range of the class mean and of the within-label standard deviation, on a 0-255
scale. A case draws one mean per class, then jitters it per label, so left and right
structures of one class look alike but not identical.

``t1``, ``t1_wide`` and ``random`` (per-label means, SynthSeg's domain randomisation) are
training families; ``t2`` is reserved for measuring domain shift
and is refused for training splits (:func:`check_family`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Tissue classes of the intensity model.
CLASSES: tuple[str, ...] = (
    "background", "csf", "gm", "deep_gm", "wm", "brainstem", "vessel", "other", "extra",
)  # fmt: skip

_CODES: dict[str, tuple[int, ...]] = {
    "background": (0,),
    "csf": (4, 5, 14, 15, 24, 43, 44, 72, 31, 63),
    "gm": (3, 8, 11, 12, 17, 18, 26, 42, 47, 50, 51, 53, 54, 58, 80),
    "deep_gm": (10, 13, 49, 52),
    "wm": (2, 7, 41, 46, 77, 85, 251, 252, 253, 254, 255),
    "brainstem": (16, 28, 60),
    "vessel": (30, 62),
}
_BY_CODE = {code: cls for cls, codes in _CODES.items() for code in codes}


def tissue_class(code: int) -> str:
    """Tissue class of a FreeSurfer code.

    Cortical parcels (1000-2999) are ``gm``, 500-599 (SynthSeg's extra-cerebral tissues)
    are ``extra``, anything else unknown is ``other``.
    """
    code = int(code)
    if code in _BY_CODE:
        return _BY_CODE[code]
    if 1000 <= code <= 2999:
        return "gm"
    if 500 <= code <= 599:
        return "extra"
    return "other"


def is_extra_cerebral(codes: np.ndarray) -> np.ndarray:
    """Mask of SynthSeg's extra-cerebral codes (500-599: skull, scalp, eyes, ...)."""
    codes = np.asarray(codes)
    return (codes >= 500) & (codes <= 599)


@dataclass(frozen=True)
class ContrastFamily:
    """Priors of one contrast family.

    Attributes
    ----------
    name : str
        Family name.
    means : dict
        Class to (low, high) range of the class mean, 0-255.
    label_jitter : float
        Half-width of the uniform per-label offset added to the class mean.
    stds : (float, float)
        Range of the within-label standard deviation.
    gamma_std : float
        Standard deviation of the log of the final gamma correction.
    training : bool
        Whether training splits may use the family.
    per_label : bool
        Draw every label's mean independently from its class range (no shared class mean):
        SynthSeg's domain randomisation, where only shapes tell the labels apart.
    """

    name: str
    means: dict[str, tuple[float, float]]
    label_jitter: float
    stds: tuple[float, float]
    gamma_std: float
    training: bool
    per_label: bool = False


_ANY = (0.0, 255.0)

CONTRAST_FAMILIES: dict[str, ContrastFamily] = {
    # T1-like: ordered, non-overlapping ranges so that WM > deep GM > GM > CSF always.
    "t1": ContrastFamily(
        "t1",
        {"background": (0, 15), "csf": (20, 60), "gm": (75, 115), "deep_gm": (118, 140),
         "wm": (150, 210), "brainstem": (130, 175), "vessel": (40, 200), "other": (60, 160),
         "extra": _ANY},
        label_jitter=4.0, stds=(1.0, 12.0), gamma_std=0.15, training=True,
    ),
    # Wider, overlapping ranges: T1-ish on average, any ordering possible in a given case.
    "t1_wide": ContrastFamily(
        "t1_wide",
        {"background": (0, 40), "csf": (0, 110), "gm": (50, 170), "deep_gm": (70, 200),
         "wm": (100, 255), "brainstem": (80, 230), "vessel": _ANY, "other": _ANY,
         "extra": _ANY},
        label_jitter=15.0, stds=(0.0, 25.0), gamma_std=0.3, training=True,
    ),
    # T2-like (CSF bright, WM dark): evaluation of domain shift only.
    "t2": ContrastFamily(
        "t2",
        {"background": (0, 15), "csf": (190, 250), "gm": (110, 150), "deep_gm": (85, 110),
         "wm": (50, 80), "brainstem": (65, 100), "vessel": (10, 120), "other": (60, 160),
         "extra": _ANY},
        label_jitter=4.0, stds=(1.0, 12.0), gamma_std=0.15, training=False,
    ),
    # Domain randomisation (SynthSeg): any mean for any label, drawn per label, so a network
    # cannot lean on one contrast's ordering (e.g. putamen as dark as cortex in ``t1``).
    "random": ContrastFamily(
        "random",
        {"background": (0, 40), **{c: _ANY for c in CLASSES if c != "background"}},
        label_jitter=0.0, stds=(0.0, 25.0), gamma_std=0.3, training=True, per_label=True,
    ),
}  # fmt: skip

#: Families a training split may draw from.
TRAINING_FAMILIES: tuple[str, ...] = tuple(n for n, f in CONTRAST_FAMILIES.items() if f.training)
#: Families reserved for evaluation.
EVAL_ONLY_FAMILIES: tuple[str, ...] = tuple(
    n for n, f in CONTRAST_FAMILIES.items() if not f.training
)


def check_family(family: str, split: str = "train") -> ContrastFamily:
    """Return the family, refusing unknown names and evaluation-only families for training.

    Raises
    ------
    ValueError
        For an unknown family, an unknown split, or ``t2`` with ``split="train"``.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if family not in CONTRAST_FAMILIES:
        raise ValueError(
            f"unknown contrast family {family!r}; known: {', '.join(CONTRAST_FAMILIES)}"
        )
    fam = CONTRAST_FAMILIES[family]
    if split == "train" and not fam.training:
        raise ValueError(
            f"contrast family {family!r} is reserved for evaluation of domain shift and is never "
            f"used for training; training families: {', '.join(TRAINING_FAMILIES)}"
        )
    return fam


def sample_intensities(
    codes: np.ndarray, family: ContrastFamily | str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a Gaussian (mean, std) per label code.

    Parameters
    ----------
    codes : ndarray
        Distinct label codes (sorted or not).
    family : ContrastFamily or str
        The priors (a name is looked up without the training check).
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    (means, stds)
        float64 arrays aligned with ``codes``, on a 0-255 scale.
    """
    fam = CONTRAST_FAMILIES[family] if isinstance(family, str) else family
    codes = np.asarray(codes).ravel()
    # One draw per class first (in the fixed CLASSES order, so results do not depend on
    # which codes are present), then per-label jitter and std.
    class_mean = {c: rng.uniform(*fam.means[c]) for c in CLASSES}
    means = np.empty(codes.size)
    stds = np.empty(codes.size)
    for n, code in enumerate(codes):
        cls = tissue_class(code)
        lo, hi = fam.means[cls]
        if fam.per_label or cls in ("extra", "other", "vessel"):
            means[n] = rng.uniform(lo, hi)  # heterogeneous tissues: independent per label
        else:
            means[n] = np.clip(class_mean[cls] + rng.uniform(-1, 1) * fam.label_jitter, lo, hi)
        stds[n] = rng.uniform(*fam.stds)
    return means, stds
