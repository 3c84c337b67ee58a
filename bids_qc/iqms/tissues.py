"""Tissue classes of the raw T1w: a segmentation seeds a 3-class Gaussian mixture.

MRIQC segments the INU-corrected head with FSL FAST and takes its partial-volume maps.
bids_qc fits a 3-class Gaussian mixture (scikit-learn) to the INU-corrected intensities
inside the brain mask, with each class's initial mean, variance and weight taken from the
voxels the segmentation labels CSF, GM and WM; the mixture's posteriors are the
partial-volume maps (they are mixing probabilities, not FAST's spatially regularised
partial volumes: a deviation). Each class keeps its seed's identity (class 1 is the one
seeded by CSF), so a low-contrast image cannot swap GM and WM silently.

The segmentation is either FreeSurfer-coded (aseg, aparc+aseg, FastSurfer, SynthSeg,
VINN) or fMRIPrep's 3-class ``dseg`` (1 GM, 2 WM, 3 CSF).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .definitions import TISSUES

# FreeSurfer codes by tissue (FreeSurferColorLUT). Cortical (1000-2999) and WM parcels
# (3000-4999, 5001/5002) are handled by range.
_CSF_CODES = (4, 5, 14, 15, 24, 43, 44, 72)
_GM_CODES = (3, 8, 10, 11, 12, 13, 17, 18, 26, 42, 47, 49, 50, 51, 52, 53, 54, 58, 80, 81,
             82)
_WM_CODES = (2, 7, 16, 28, 41, 46, 60, 77, 78, 79, 85, 192, 251, 252, 253, 254, 255)
#: Labelled but not brain: skull, head extra-cerebral tissue, SynthSeg's 5xx extra-cerebral
#: codes (below 1000) and anything else at or above 500 that is not a parcel.
_NOT_BRAIN = (165, 258, 259)
#: fMRIPrep's tissue dseg: 1 GM, 2 WM, 3 CSF.
_DSEG_CLASSES = {3: 1, 1: 2, 2: 3}

#: Voxels the mixture is fitted on (a subsample; the posteriors cover every brain voxel).
FIT_VOXELS = 50_000


def seed_classes(labels: np.ndarray, kind: str = "aseg") -> tuple[np.ndarray, np.ndarray]:
    """The brain mask and the seed class of every voxel.

    Parameters
    ----------
    labels : ndarray of int
        The segmentation on the raw T1w's grid.
    kind : {"aseg", "tissue"}
        FreeSurfer codes, or fMRIPrep's 3-class dseg.

    Returns
    -------
    brain : ndarray of bool
        Every intracranial label (FreeSurfer codes below 500 except skull and head, the
        parcels 1000-4999 and 5001/5002; every non-zero dseg class).
    seeds : ndarray of int8
        0 (no seed), 1 CSF, 2 GM, 3 WM.
    """
    if kind == "tissue":
        lut = np.zeros(4, dtype=np.int8)
        for code, cls in _DSEG_CLASSES.items():
            lut[code] = cls
        inside = (labels >= 0) & (labels < lut.size)
        seeds = np.where(inside, lut[np.clip(labels, 0, lut.size - 1)], 0).astype(np.int8)
        return labels > 0, seeds
    # a lookup table indexed by code (a 1 mm label map has 10^7 voxels, FreeSurfer codes
    # stay below 15,000); codes beyond that go through np.unique
    top = int(labels.max()) if labels.size else 0
    if int(labels.min()) >= 0 and top < 65536:
        codes, index = np.arange(top + 1), labels
    else:
        codes, index = np.unique(labels, return_inverse=True)
        index = index.reshape(labels.shape)
    brain_lut = np.array([_is_brain(int(c)) for c in codes], dtype=bool)
    seed_lut = np.array([_seed_class(int(c)) for c in codes], dtype=np.int8)
    return brain_lut[index], seed_lut[index]


def _is_brain(code: int) -> bool:
    return (0 < code < 500 and code not in _NOT_BRAIN) or 1000 <= code <= 4999 \
        or code in (5001, 5002)


def _seed_class(code: int) -> int:
    if code in _CSF_CODES:
        return 1
    if code in _GM_CODES or 1000 <= code <= 2999:
        return 2
    if code in _WM_CODES or 3000 <= code <= 4999 or code in (5001, 5002):
        return 3
    return 0


@dataclass(frozen=True)
class Tissues:
    """The mixture's result inside the brain.

    Parameters
    ----------
    index : ndarray of int
        Flat indices of the brain voxels on the full grid.
    pvms : ndarray
        ``(3, n)`` float32 posteriors of CSF, GM, WM at those voxels.
    means : tuple of float
        The fitted class means (CSF, GM, WM).
    """

    index: np.ndarray
    pvms: np.ndarray
    means: tuple[float, float, float]

    def full(self, tissue: str, shape: tuple[int, ...]) -> np.ndarray:
        """One tissue's posterior on the full grid (0 outside the brain)."""
        out = np.zeros(int(np.prod(shape)), dtype=np.float32)
        out[self.index] = self.pvms[TISSUES.index(tissue)]
        return out.reshape(shape)


def fit_tissues(values: np.ndarray, seeds: np.ndarray, random_state: int = 0,
                fit_voxels: int = FIT_VOXELS) -> tuple[np.ndarray, np.ndarray]:
    """Fit the seeded 3-class mixture to 1-D intensities and return the posteriors.

    Parameters
    ----------
    values : ndarray
        Intensities of the brain voxels (1-D).
    seeds : ndarray of int
        Their seed classes (0 none, 1 CSF, 2 GM, 3 WM).
    random_state : int
        Seed of the subsample and of scikit-learn (results are reproducible).
    fit_voxels : int
        At most this many voxels are fitted on.

    Returns
    -------
    pvms : ndarray
        ``(3, n)`` float32 posteriors (CSF, GM, WM).
    means : ndarray
        The fitted means.

    Raises
    ------
    ValueError
        When a class has fewer than 10 seed voxels (the segmentation lacks a tissue).
    """
    from sklearn.mixture import GaussianMixture  # only this stage needs scikit-learn

    x = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    means, variances, weights = [], [], []
    for cls, name in enumerate(TISSUES, start=1):
        sel = x[seeds == cls, 0]
        if sel.size < 10:
            raise ValueError(f"the segmentation labels fewer than 10 {name.upper()} voxels "
                             "inside the brain: the tissue classes cannot be seeded")
        means.append(float(np.median(sel)))
        variances.append(max(float(np.var(sel)), 1e-6 * float(np.var(x)) + 1e-12))
        weights.append(float(sel.size))
    weights_arr = np.asarray(weights) / float(np.sum(weights))
    rng = np.random.default_rng(random_state)
    fit_on = x if x.shape[0] <= fit_voxels else x[rng.choice(x.shape[0], fit_voxels,
                                                             replace=False)]
    gmm = GaussianMixture(
        n_components=3, covariance_type="full", means_init=np.asarray(means)[:, None],
        precisions_init=(1.0 / np.asarray(variances))[:, None, None],
        weights_init=weights_arr, max_iter=100, tol=1e-3, random_state=random_state,
    )
    gmm.fit(fit_on)
    means = gmm.means_[:, 0].copy()
    return posteriors(x[:, 0], means, gmm.covariances_[:, 0, 0], gmm.weights_), means


def posteriors(x: np.ndarray, means: np.ndarray, variances: np.ndarray,
               weights: np.ndarray) -> np.ndarray:
    """``(3, n)`` float32 posteriors of a 1-D Gaussian mixture (scikit-learn's
    ``predict_proba`` in float32 and without its generic machinery: 10^6 brain voxels)."""
    x = np.asarray(x, dtype=np.float32)
    logp = np.empty((len(means), x.size), dtype=np.float32)
    for k, (mu, var, w) in enumerate(zip(means, variances, weights)):
        diff = x - np.float32(mu)
        logp[k] = np.float32(np.log(w) - 0.5 * np.log(2 * np.pi * var)) \
            - diff * diff * np.float32(0.5 / var)
    logp -= logp.max(axis=0)
    np.exp(logp, out=logp)
    logp /= logp.sum(axis=0)
    return logp


def tissue_posteriors(values: np.ndarray, index: np.ndarray, seeds: np.ndarray,
                      random_state: int = 0) -> Tissues:
    """The seeded mixture's posteriors of the brain voxels.

    Parameters
    ----------
    values : ndarray
        Intensities of the brain voxels (1-D, INU-corrected).
    index : ndarray of int
        Their flat indices on the full grid.
    seeds : ndarray of int
        Their seed classes.
    random_state : int
        Seed of the subsample and the mixture.
    """
    pvms, means = fit_tissues(values, seeds, random_state)
    return Tissues(index, pvms, (float(means[0]), float(means[1]), float(means[2])))
