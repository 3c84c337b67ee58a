"""Weak segmenters: what a poor tissue classifier makes of an image, coded as FreeSurfer labels.

Two damage families run a deliberately weak segmenter on the image (or on a quick synthetic
T1 when none is given), after a noise attack whose strength is the severity:

* ``intensity_classifier``: a Gaussian classifier per tissue (CSF, GM, WM) fitted on the
  true labels, with a spatial prior (the true tissues blurred) whose weight falls with
  severity;
* ``kmeans``: three-class k-means of the intensities (started at the true tissue means),
  no spatial prior.

A voxel whose tissue class is wrong takes the label of the nearest voxel of the class it was
given, so the result is a complete FreeSurfer-coded map (a misclassified thalamus voxel
becomes cerebral white matter, say). Voxels outside CSF/GM/WM structures keep their labels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from bids_qc.synth.contrast import CONTRAST_FAMILIES, sample_intensities, tissue_class
from bids_qc.synth.labelops import bbox, check_labels, check_severity

#: Tissue indices of the classifiers (0: not classified).
CSF, GM, WM = 1, 2, 3
_CLASS_INDEX = {"csf": CSF, "gm": GM, "deep_gm": GM, "wm": WM, "brainstem": WM}
#: Noise standard deviation at severity 1, as a fraction of the CSF-WM contrast.
NOISE_MAX = 0.6


def _codes_and_index(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct codes and each voxel's position among them, without sorting the voxels."""
    if labels.size and labels.min() >= 0 and labels.max() < 2**16:
        present = np.flatnonzero(np.bincount(labels.ravel()))
        lut = np.zeros(int(present[-1]) + 1, dtype=np.int32)
        lut[present] = np.arange(present.size)
        return present, lut[labels]
    codes, inverse = np.unique(labels, return_inverse=True)
    return codes, inverse.reshape(labels.shape)


def tissue_map(labels: np.ndarray) -> np.ndarray:
    """Tissue index per voxel (1 CSF, 2 GM, 3 WM, 0 anything else)."""
    codes, index = _codes_and_index(labels)
    lut = np.array([_CLASS_INDEX.get(tissue_class(c), 0) for c in codes], dtype=np.int8)
    return lut[index]


def quick_image(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A T1-like image of a label map: per-label Gaussian intensities, no blur (float32)."""
    codes, index = _codes_and_index(labels)
    means, stds = sample_intensities(codes, CONTRAST_FAMILIES["t1"], rng)
    noise = rng.standard_normal(labels.shape)
    return (means[index] + stds[index] * noise).astype(np.float32)


def _prepare(
    labels: np.ndarray, rng: np.random.Generator, severity: float, image: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[slice, ...] | None]:
    labels = check_labels(labels)
    severity = check_severity(severity)
    if image is None:
        image = quick_image(labels, rng)
    image = np.asarray(image, dtype=np.float32)
    if image.shape != labels.shape:
        raise ValueError(
            f"image and labels must share one grid, got shapes {image.shape} and {labels.shape}"
        )
    tissue = tissue_map(labels)
    box = bbox(tissue > 0, 2)
    return labels, image, tissue, box


def _attack(
    image: np.ndarray, tissue: np.ndarray, rng: np.random.Generator, severity: float
) -> np.ndarray:
    """Add Gaussian noise of ``severity * NOISE_MAX`` times the CSF-WM contrast."""
    means = [image[tissue == c].mean() for c in (CSF, WM) if np.any(tissue == c)]
    contrast = abs(means[-1] - means[0]) if len(means) == 2 else float(image.std())
    sigma = severity * NOISE_MAX * max(contrast, 1e-6)
    return image + (sigma * rng.standard_normal(image.shape)).astype(np.float32)


def _relabel(labels: np.ndarray, tissue: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Labels where the class is wrong are copied from the nearest voxel of the given class."""
    out = labels.copy()
    for c in (CSF, GM, WM):
        wrong = (classes == c) & (tissue != c) & (tissue > 0)
        if not wrong.any() or not np.any(tissue == c):
            continue
        idx = ndi.distance_transform_edt(tissue != c, return_distances=False, return_indices=True)
        out[wrong] = labels[tuple(i[wrong] for i in idx)]
    return out


def _apply(
    labels: np.ndarray, tissue: np.ndarray, box: tuple[slice, ...] | None, classes: np.ndarray
) -> np.ndarray:
    out = labels.copy()
    if box is not None:
        out[box] = _relabel(labels[box], tissue[box], classes)
    return out


def intensity_classifier(
    labels: np.ndarray,
    rng: np.random.Generator,
    severity: float,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Gaussian tissue classifier with a fading spatial prior, on a noise-attacked image."""
    if check_severity(severity) == 0:
        return check_labels(labels)
    labels, image, tissue, box = _prepare(labels, rng, severity, image)
    if box is None:
        return labels
    img = _attack(image[box], tissue[box], rng, severity)
    t = tissue[box]
    present = [c for c in (CSF, GM, WM) if np.any(t == c)]
    if len(present) < 2:
        return labels
    # Posterior per class: Gaussian likelihood fitted on the true tissues, times the blurred
    # true tissue map raised to a weight that falls from 2 (clean) to 0 (severity 1).
    weight = 2.0 * (1.0 - severity)
    scores = []
    for c in present:
        vals = img[t == c]
        mu, sd = float(vals.mean()), max(float(vals.std()), 1e-3)
        prior = ndi.gaussian_filter((t == c).astype(np.float32), 1.0)
        scores.append(-0.5 * ((img - mu) / sd) ** 2 - np.log(sd) + weight * np.log(prior + 1e-3))
    classes = np.asarray(present, dtype=np.int8)[np.argmax(np.stack(scores), axis=0)]
    classes = np.where(t > 0, classes, 0)
    return _apply(labels, tissue, box, classes)


def kmeans(
    labels: np.ndarray,
    rng: np.random.Generator,
    severity: float,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Three-class 1-D k-means of a noise-attacked image (no spatial prior)."""
    if check_severity(severity) == 0:
        return check_labels(labels)
    labels, image, tissue, box = _prepare(labels, rng, severity, image)
    if box is None:
        return labels
    img = _attack(image[box], tissue[box], rng, severity)
    t = tissue[box]
    present = [c for c in (CSF, GM, WM) if np.any(t == c)]
    if len(present) < 2:
        return labels
    # Fitting on at most ~250k voxels (a regular subsample) gives the same centres, faster.
    values = img[t > 0].astype(np.float64)
    values = values[:: max(1, values.size // 250_000)]
    k = len(present)
    # Started at the true tissue means (a segmenter with sensible priors), the clusters
    # drift as the noise attack blurs the intensity classes.
    centres = np.sort([float(img[t == c].mean()) for c in present])
    # 1-D Lloyd iterations: with sorted centres the clusters are intervals between midpoints.
    for _ in range(50):
        assign = np.searchsorted((centres[1:] + centres[:-1]) / 2, values)
        counts = np.bincount(assign, minlength=k)
        sums = np.bincount(assign, weights=values, minlength=k)
        new = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centres))
        if np.allclose(new, centres, rtol=0, atol=1e-6 * (np.ptp(values) + 1e-12)):
            break
        centres = new
    # Clusters in intensity order take the tissues in the order of their true mean intensity
    # (CSF < GM < WM on a T1, reversed on a T2).
    true_order = np.argsort([img[t == c].mean() for c in present])
    cluster_to_class = np.asarray(present, dtype=np.int8)[true_order]
    assign = np.searchsorted((centres[1:] + centres[:-1]) / 2, img)
    classes = np.where(t > 0, cluster_to_class[assign], 0)
    return _apply(labels, tissue, box, classes)
