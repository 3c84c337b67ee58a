"""Misregistration sampler: exact RMSE targets, RegQCNET ranges, determinism, resampling."""

from __future__ import annotations

import numpy as np
import pytest

from bids_qc.synth.metrics import affine_rmse
from bids_qc.synth.misregistration import apply_affine, sample_affine, sample_misregistration

SHAPE = (40, 46, 40)
AFFINE = np.array([[4.0, 0, 0, -80], [0, 4.0, 0, -110], [0, 0, 4.0, -70], [0, 0, 0, 1]])
CENTRE = AFFINE[:3, :3] @ ((np.array(SHAPE) - 1) / 2) + AFFINE[:3, 3]


@pytest.mark.parametrize("target", [0.3, 2.0, 7.5, 20.0, 45.0])
def test_sample_affine_hits_target(target: float) -> None:
    A = sample_affine(np.random.default_rng(1), target, SHAPE, AFFINE)
    assert abs(affine_rmse(A, SHAPE, AFFINE) - target) < 1e-3
    # Within RegQCNET's ranges: scales (singular values of R S) in [0.5, 1.5], and the
    # translation of the grid centre at most 100 mm per axis.
    sv = np.linalg.svd(A[:3, :3], compute_uv=False)
    assert sv.min() >= 0.5 - 1e-9 and sv.max() <= 1.5 + 1e-9
    assert np.all(np.abs(A[:3, :3] @ CENTRE + A[:3, 3] - CENTRE) <= 100 + 1e-6)


def test_sample_affine_is_deterministic_per_seed() -> None:
    a = sample_affine(np.random.default_rng(5), 10.0, SHAPE, AFFINE)
    b = sample_affine(np.random.default_rng(5), 10.0, SHAPE, AFFINE)
    c = sample_affine(np.random.default_rng(6), 10.0, SHAPE, AFFINE)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_sample_affine_edge_cases() -> None:
    rng = np.random.default_rng(0)
    assert np.array_equal(sample_affine(rng, 0.0, SHAPE, AFFINE), np.eye(4))
    with pytest.raises(ValueError):
        sample_affine(rng, -1.0, SHAPE, AFFINE)
    with pytest.raises(ValueError, match="out of reach"):
        sample_affine(rng, 1e5, SHAPE, AFFINE)
    with pytest.raises(ValueError):
        sample_affine(rng, 1.0, SHAPE, AFFINE, scale_range=(1.2, 1.5))


def test_pure_translation_range() -> None:
    # Only translations allowed: the RMSE is the translation's norm.
    A = sample_affine(
        np.random.default_rng(2), 30.0, SHAPE, AFFINE, max_rotation_deg=0, scale_range=(1, 1)
    )
    assert np.allclose(A[:3, :3], np.eye(3))
    assert np.linalg.norm(A[:3, 3]) == pytest.approx(30.0, abs=1e-3)


def test_sample_misregistration_range() -> None:
    rng = np.random.default_rng(3)
    values = [sample_misregistration(rng, (2.0, 4.0), SHAPE, AFFINE)[1] for _ in range(6)]
    assert all(2.0 - 1e-3 <= v <= 4.0 + 1e-3 for v in values)
    assert len(set(np.round(values, 3))) == 6


def test_apply_affine_translation_shifts_content() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((12, 10, 8)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    A = np.eye(4)
    A[:3, 3] = [4.0, 0.0, -2.0]  # two voxels along i, minus one along k
    # J(x) = I(A x): voxel (i, j, k) shows I(i + 2, j, k - 1).
    for order in (0, 1):
        out = apply_affine(image, affine, A, order=order)
        np.testing.assert_allclose(out[:-2, :, 1:], image[2:, :, :-1], atol=1e-5)
        assert np.all(out[-2:] == 0)
    labels = rng.integers(0, 60, (12, 10, 8)).astype(np.int32)
    moved = apply_affine(labels, affine, A, order=0)
    assert moved.dtype == np.int32
    assert np.array_equal(moved[:-2, :, 1:], labels[2:, :, :-1])
    with pytest.raises(ValueError):
        apply_affine(image, affine, A, order=3)
