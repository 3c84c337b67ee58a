"""Dice and RegQCNET RMSE against answers computed independently of the engine."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bids_qc.structures import STRUCTURE_NAMES
from bids_qc.synth.metrics import affine_rmse, dice, structure_dice


def _brute_rmse(A: np.ndarray, shape: tuple[int, int, int], affine: np.ndarray) -> float:
    """Mean of ||A x - x|| by an explicit loop over voxel centres (reference)."""
    total = 0.0
    for i, j, k in itertools.product(*(range(n) for n in shape)):
        x = affine @ np.array([i, j, k, 1.0])
        total += float(np.linalg.norm((A @ x - x)[:3]))
    return total / (shape[0] * shape[1] * shape[2])


def test_dice_offset_cubes() -> None:
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    a[2:12, 2:12, 2:12] = True  # 1000 voxels
    b[4:14, 2:12, 2:12] = True  # shifted by 2: overlap 8 x 10 x 10
    assert dice(a, b) == pytest.approx(2 * 800 / 2000)
    assert dice(a, a) == 1.0


def test_dice_offset_spheres_matches_count() -> None:
    x = np.indices((30, 30, 30)).astype(float)
    a = ((x - 15) ** 2).sum(0) <= 64
    b = (((x.T - [15, 15, 18]).T) ** 2).sum(0) <= 64
    overlap = sum(
        1 for i, j, k in itertools.product(range(30), repeat=3) if a[i, j, k] and b[i, j, k]
    )
    assert dice(a, b) == pytest.approx(2 * overlap / (a.sum() + b.sum()))


def test_dice_empty_and_errors() -> None:
    empty = np.zeros((4, 4, 4), bool)
    full = np.ones((4, 4, 4), bool)
    assert math.isnan(dice(empty, empty))
    assert dice(empty, full) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice(empty, np.zeros((4, 4, 5)))


def test_structure_dice_keys_and_values() -> None:
    true = np.zeros((16, 16, 16), np.int32)
    seg = np.zeros_like(true)
    true[2:6, 2:6, 2:6] = 17  # left hippocampus, 64 voxels
    seg[3:7, 2:6, 2:6] = 17  # shifted by 1: overlap 48
    true[8:12, 8:12, 8:12] = 2  # white matter present in truth only
    out = structure_dice(true, seg)
    assert tuple(out) == STRUCTURE_NAMES
    assert out["left_hippocampus"] == pytest.approx(2 * 48 / 128)
    assert out["cerebral_white_matter"] == 0.0
    assert math.isnan(out["right_thalamus"])  # absent from both
    assert out["whole_brain"] == pytest.approx(2 * 48 / (128 + 64))
    with pytest.raises(ValueError):
        structure_dice(true, seg[:-1])


def test_rmse_pure_translation() -> None:
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    affine[:3, 3] = [-20, 5, 7]
    A = np.eye(4)
    A[:3, 3] = [3.0, -4.0, 12.0]
    assert affine_rmse(A, (17, 9, 11), affine) == pytest.approx(13.0, abs=1e-5)
    assert affine_rmse(np.eye(4), (5, 5, 5), affine) == 0.0


def test_rmse_scaling_about_centre_closed_form() -> None:
    shape = (6, 5, 7)
    affine = np.diag([2.0, 1.0, 1.5, 1.0])
    affine[:3, 3] = [10, -3, 4]
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    s = 1.3
    A = np.eye(4)
    A[:3, :3] *= s
    A[:3, 3] = (1 - s) * centre
    # ||A x - x|| = |s - 1| ||x - c||: average the distance to the centre by hand.
    dist = [
        math.dist(affine[:3, :3] @ [i, j, k] + affine[:3, 3], centre)
        for i, j, k in itertools.product(*(range(n) for n in shape))
    ]
    assert affine_rmse(A, shape, affine) == pytest.approx(abs(s - 1) * np.mean(dist), rel=1e-6)


def test_rmse_rotation_and_general_affine_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    shape = (7, 6, 5)
    affine = np.array([[0, 0, -1.2, 30], [2.0, 0, 0, -10], [0, 1.1, 0, 5], [0, 0, 0, 1]])
    for _ in range(3):
        A = np.eye(4)
        A[:3, :3] += 0.2 * rng.standard_normal((3, 3))
        A[:3, 3] = 10 * rng.standard_normal(3)
        assert affine_rmse(A, shape, affine) == pytest.approx(
            _brute_rmse(A, shape, affine), rel=1e-6
        )


def test_rmse_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        affine_rmse(np.eye(3), (4, 4, 4), np.eye(4))
    with pytest.raises(ValueError):
        affine_rmse(np.eye(4), (4, 0, 4), np.eye(4))
