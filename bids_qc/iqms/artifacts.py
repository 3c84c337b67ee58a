"""Artefacts in the air around the head: Mortamet's quality indices QI1 and QI2.

Mortamet et al. (2009, MRM 62:365) look for structured signal (ghosts, wrap-around,
motion streaks) in the air, where a magnitude image should hold only noise. MRIQC's
``qi_1`` and ``qi_2`` follow them; so do these, with the deviations each docstring names.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, optimize, stats

from .measures import MAD_TO_SD

#: A voxel of the far air is an artefact candidate beyond this robust z-score (MRIQC's).
ARTEFACT_Z = 10.0
#: QI2 reads at most this many air voxels (a fixed subsample; fewer make its floor on pure
#: noise, the histogram's own scatter, rise).
QI2_VOXELS = 500_000


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
    if not out.any():
        return out
    # open only the candidates' box (plus the structure's reach): the grid is 10^7 voxels
    box = tuple(slice(max(0, int(i.min()) - 1), int(i.max()) + 2) for i in np.nonzero(out))
    out[box] = ndimage.binary_opening(out[box],
                                      structure=ndimage.generate_binary_structure(3, 1))
    return out


def qi_1(artefacts: np.ndarray, air_far: np.ndarray) -> float | None:
    """QI1: artefact voxels / air voxels (the air farther than 10 mm from the head).

    Dimensionless, in [0, 1]; lower is better. MRIQC's air is a "hat" below the head
    drawn from the template; bids_qc's is every voxel farther than 10 mm from the head.
    """
    n = int(air_far.sum())
    return float(artefacts[air_far].sum()) / n if n else None


def fit_chi(x: np.ndarray) -> tuple[float, float] | None:
    """Degrees of freedom and scale of the chi distribution (location 0) with the same
    quartiles as ``x``: the quartile ratio fixes the degrees of freedom (it falls as they
    grow), the median then the scale. None when the ratio is beyond the range of 1 to 128
    degrees of freedom (not noise-like)."""
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    if q25 <= 0:
        return None
    target = q75 / q25

    def gap(k: float) -> float:
        return float(stats.chi.ppf(0.75, k) / stats.chi.ppf(0.25, k)) - target

    lo, hi = 1.0, 128.0
    if gap(lo) < 0 or gap(hi) > 0:
        return None
    df = float(optimize.brentq(gap, lo, hi, xtol=1e-4))
    return df, float(q50 / stats.chi.median(df))


def qi_2(values: np.ndarray) -> float | None:
    """QI2: how badly a chi distribution fits the air's intensities, in its upper tail.

    A magnitude image's noise is chi-distributed (Rayleigh for one channel). The
    distribution (degrees of freedom and scale; location 0) is fitted to the quartiles of
    the air's non-zero voxels (:func:`fit_chi`), which an artefact tail above them does not
    move (MRIQC fits by maximum likelihood to the voxels below the 95th percentile, which
    biases the fit even on pure noise, truncation being ignored); QI2 is the mean
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

    Returns
    -------
    float or None
        Lower is better; None with fewer than 1000 non-zero air voxels.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[x > 0]
    if x.size < 1000:
        return None
    if x.size > QI2_VOXELS:  # every k-th voxel: deterministic, and no shuffle of 10^7
        x = x[:: -(-x.size // QI2_VOXELS)]
    fitted = fit_chi(x)
    if fitted is None:
        return None
    df, scale = fitted
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
