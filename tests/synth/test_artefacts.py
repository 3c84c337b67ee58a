"""The graded image artefacts of bids_qc.synth.artefacts."""

from __future__ import annotations

import numpy as np
import pytest

from bids_qc.synth import artefacts as art


@pytest.fixture(scope="module")
def phantom():
    image, labels, affine = art.phantom_t1w((24, 24, 24), 6.0, pad=4)
    return image, labels


def test_phantom_t1w_has_air_and_t1_contrast(phantom):
    image, labels = phantom
    assert image.shape == labels.shape == (32, 32, 32)
    assert image[0].max() == 0.0  # the padding is air
    assert image[labels == 2].mean() > image[labels == 3].mean() > image[labels == 4].mean()


def test_noise(phantom):
    image, _ = phantom
    g = art.gaussian_noise(image, 10.0, seed=3)
    assert (g - image).std() == pytest.approx(10.0, rel=0.05)
    r = art.rician_noise(image, 10.0, seed=3)
    air = r[image == 0]
    assert air.min() >= 0 and air.mean() == pytest.approx(10.0 * np.sqrt(np.pi / 2), rel=0.05)
    assert np.array_equal(r, art.rician_noise(image, 10.0, seed=3))


def test_bias_field_is_multiplicative_and_graded(phantom):
    image, _ = phantom
    assert np.allclose(art.bias_field(image, 0.0), image)
    spread = [np.ptp(np.log(art.bias_field(np.ones_like(image), a))) for a in (0.2, 0.4)]
    assert spread[1] == pytest.approx(2 * spread[0]) and spread[0] > 0.3


def test_ghosting_blur_motion_ringing(phantom):
    image, _ = phantom
    air = image == 0
    ghosted = [art.ghosting(image, a)[air].sum() for a in (0.0, 0.1, 0.2)]
    assert ghosted[0] == 0 < ghosted[1] < ghosted[2]
    edges = [np.abs(np.diff(art.blur(image, f), axis=0)).sum() for f in (0.5, 2.0, 4.0)]
    assert edges[0] > edges[1] > edges[2]
    assert np.allclose(art.motion(image, 3.0, 0.0), image, atol=1e-3)
    moved = [np.abs(art.motion(image, 3.0, f, seed=1) - image).sum() for f in (0.1, 0.3)]
    assert 0 < moved[0] < moved[1]
    assert np.allclose(art.ringing(image, 1.0), image, atol=1e-3)
    rings = [np.abs(art.ringing(image, k) - image).sum() for k in (0.8, 0.5)]
    assert 0 < rings[0] < rings[1]
