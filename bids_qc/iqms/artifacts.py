"""Artefacts in the air around the head: Mortamet's quality indices QI1 and QI2.

Mortamet et al. (2009, MRM 62:365) look for structured signal (ghosts, wrap-around,
motion streaks) in the air, where a magnitude image should hold only noise. MRIQC's
``qi_1`` and ``qi_2`` follow them; so do these, with the deviations each docstring names.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, stats

from .measures import MAD_TO_SD

#: A voxel of the far air is an artefact candidate beyond this robust z-score (MRIQC's).
ARTEFACT_Z = 10.0
#: QI2's chi fit and histogram use at most this many air voxels (a fixed subsample).
QI2_VOXELS = 50_000


def artefact_mask(image: np.ndarray, air_far: np.ndarray, z: float = ARTEFACT_Z) -> np.ndarray:
    """Voxels of the far air brighter than the air's median + ``z`` robust SDs, kept after
    a binary opening (6-connected), which removes isolated noise voxels.

    The median and spread come from the air's non-zero voxels (as MRIQC's), the spread
    being the normalised MAD (the SD where the MAD is 0).
    """
    values = image[air_far]
    values = values[values > 0]
    out = np.zeros(image.shape, dtype=bool)
    if values.size < 10:
        return out
    med = float(np.median(values))
    spread = MAD_TO_SD * float(np.median(np.abs(values - med))) or float(values.std())
    if spread <= 0:
        return out
    out[air_far] = image[air_far] > med + z * spread
    return ndimage.binary_opening(out, structure=ndimage.generate_binary_structure(3, 1))


def qi_1(artefacts: np.ndarray, air_far: np.ndarray) -> float | None:
    """QI1: artefact voxels / air voxels (the air farther than 10 mm from the head).

    Dimensionless, in [0, 1]; lower is better. MRIQC's air is a "hat" below the head
    drawn from the template; bids_qc's is every voxel farther than 10 mm from the head.
    """
    n = int(air_far.sum())
    return float(artefacts[air_far].sum()) / n if n else None


def qi_2(values: np.ndarray, seed: int = 0) -> float | None:
    """QI2: how badly a chi distribution fits the air's intensities, in its upper tail.

    A magnitude image's noise is chi-distributed (Rayleigh for one channel). The
    distribution (degrees of freedom and scale; location 0) is fitted by maximum
    likelihood to the air's non-zero voxels below their 95th percentile; QI2 is the mean
    absolute difference between the air's density (a histogram of 100 bins up to its 99th
    percentile) and the fitted density over the bins right of where the fitted density
    falls below half its peak. Intensities are divided by the fitted scale first, so QI2
    does not depend on the image's intensity units (MRIQC fits a chi-squared and compares
    in raw intensity units with a kernel density estimate: a deviation; values are not
    comparable with MRIQC's).

    Parameters
    ----------
    values : ndarray
        Intensities of the air voxels (artefacts excluded).
    seed : int
        Seed of the subsample.

    Returns
    -------
    float or None
        Lower is better; None with fewer than 1000 non-zero air voxels.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[x > 0]
    if x.size < 1000:
        return None
    if x.size > QI2_VOXELS:
        x = np.random.default_rng(seed).choice(x, QI2_VOXELS, replace=False)
    fit_on = x[x < np.percentile(x, 95)]
    df, _, scale = stats.chi.fit(fit_on, floc=0)
    if not (np.isfinite(scale) and scale > 0):
        return None
    u = x / scale
    top = float(np.percentile(u, 99))
    counts, edges = np.histogram(u, bins=100, range=(0.0, top))
    # a density over every voxel, so that it compares with the model's (the 1% above the
    # range is not renormalised away)
    density = counts / (u.size * (edges[1] - edges[0]))
    centres = 0.5 * (edges[:-1] + edges[1:])
    model = stats.chi.pdf(centres, df)
    peak = int(np.argmax(model))
    tail = np.flatnonzero((np.arange(model.size) > peak) & (model < 0.5 * model[peak]))
    if tail.size == 0:
        return None
    start = int(tail[0])
    return float(np.mean(np.abs(density[start:] - model[start:])))
