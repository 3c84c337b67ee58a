"""Image artefacts with a graded severity, for testing and validating the IQMs.

One transform per function, each deterministic for a given ``seed``, each taking a 3-D
magnitude image and returning a new float32 one: Gaussian and Rician noise, a smooth
multiplicative bias field, ghosting, Gaussian blur, motion (k-space lines from a moved
head) and ringing (k-space truncation). :func:`phantom_t1w` gives a T1w-like image of the
analytic phantom (:mod:`bids_qc.synth.phantom`) with air around the head.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .contrast import tissue_class
from .phantom import make_phantom

#: T1w-like intensities per tissue class of :func:`bids_qc.synth.contrast.tissue_class`.
_T1W = {"background": 0.0, "csf": 250.0, "gm": 600.0, "deep_gm": 660.0, "wm": 900.0,
        "brainstem": 820.0, "vessel": 700.0, "other": 500.0}
#: SynthSeg's extra-cerebral codes in the phantom: skull dark, scalp fat bright.
_EXTRA = {511: 120.0, 507: 1000.0}


def t1w_from_labels(labels: np.ndarray, blur_voxels: float = 0.5) -> np.ndarray:
    """A noise-free T1w-like image of a FreeSurfer-coded label map: one intensity per tissue
    class (skull dark, scalp fat bright, other extra-cerebral tissue 400), blurred by
    ``blur_voxels`` (Gaussian sigma) for partial volume."""
    image = np.zeros(labels.shape, dtype=np.float32)
    for code in np.unique(labels):
        c = int(code)
        cls = tissue_class(c)
        image[labels == code] = _EXTRA.get(c, 400.0 if cls == "extra" else _T1W.get(cls, 500.0))
    return ndimage.gaussian_filter(image, blur_voxels).astype(np.float32)


def phantom_t1w(shape: tuple[int, int, int] = (48, 48, 48), voxel_size: float = 3.0,
                pad: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noise-free T1w-like phantom with ``pad`` voxels of air on every side.

    Returns
    -------
    image, labels, affine
        float32 intensities (:func:`t1w_from_labels`), int32 FreeSurfer codes, and the RAS
        affine of the padded grid.
    """
    labels, affine = make_phantom(shape, voxel_size)
    labels = np.pad(labels, pad)
    affine = affine.copy()
    affine[:3, 3] -= voxel_size * pad
    return t1w_from_labels(labels), labels, affine


def gaussian_noise(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """``image + N(0, sigma^2)`` (values may go negative)."""
    rng = np.random.default_rng(seed)
    return (image + rng.normal(0.0, sigma, image.shape)).astype(np.float32)


def rician_noise(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise: Rician in tissue, Rayleigh in
    air (a single-channel magnitude image)."""
    rng = np.random.default_rng(seed)
    real = image + rng.normal(0.0, sigma, image.shape)
    imag = rng.normal(0.0, sigma, image.shape)
    return np.hypot(real, imag).astype(np.float32)


def bias_field(image: np.ndarray, amplitude: float) -> np.ndarray:
    """``image * exp(amplitude * g)``, ``g`` a smooth field in [-1, 1]: a linear ramp along
    the last axis plus a half cosine along the first (a receive coil's fall-off)."""
    axes = [np.linspace(-1.0, 1.0, n) for n in image.shape]
    x, _, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    g = 0.6 * z + 0.4 * np.cos(np.pi * x / 2.0) * 2.0 - 0.4
    return (image * np.exp(amplitude * g)).astype(np.float32)


def ghosting(image: np.ndarray, amplitude: float, axis: int = 1) -> np.ndarray:
    """An N/2 ghost: ``amplitude`` times the image, shifted by half the field of view along
    ``axis`` (the phase-encoding direction), added to it."""
    shift = image.shape[axis] // 2
    return (image + amplitude * np.roll(image, shift, axis=axis)).astype(np.float32)


def blur(image: np.ndarray, fwhm_voxels: float) -> np.ndarray:
    """Isotropic Gaussian blur of the given FWHM (voxels)."""
    sigma = fwhm_voxels / np.sqrt(8.0 * np.log(2.0))
    return ndimage.gaussian_filter(image.astype(np.float32), sigma)


def motion(image: np.ndarray, shift_voxels: float, fraction: float, axis: int = 1,
           seed: int = 0) -> np.ndarray:
    """Rigid motion during the scan: a random ``fraction`` of the k-space lines along
    ``axis`` (phase encoding) come from the head translated by ``shift_voxels`` along it,
    which blurs and ghosts the image."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftn(image)
    freqs = np.fft.fftfreq(image.shape[axis])
    moved_lines = rng.random(image.shape[axis]) < fraction
    ramp = np.exp(-2j * np.pi * freqs * shift_voxels)
    factor = np.where(moved_lines, ramp, 1.0)
    shape = [1, 1, 1]
    shape[axis] = -1
    return np.abs(np.fft.ifftn(k * factor.reshape(shape))).astype(np.float32)


def ringing(image: np.ndarray, keep: float, axis: int = 1) -> np.ndarray:
    """Gibbs ringing: k-space truncated along ``axis`` to its central ``keep`` fraction
    (sharp cut-off, no filter)."""
    k = np.fft.fftn(image)
    freqs = np.abs(np.fft.fftfreq(image.shape[axis]))
    shape = [1, 1, 1]
    shape[axis] = -1
    window = (freqs <= 0.5 * keep).reshape(shape)
    return np.abs(np.fft.ifftn(k * window)).astype(np.float32)
