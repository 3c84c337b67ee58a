"""Classical metrics against values computed independently."""

from __future__ import annotations

import numpy as np
import pytest

from bids_qc.models.classic import (
    correlation,
    mutual_information,
    registration_metrics,
    structure_volumes,
)


def test_correlation_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 10, 10))
    mask = np.ones_like(a, dtype=bool)
    assert correlation(a, 3 * a + 2, mask) == pytest.approx(1.0)
    assert correlation(a, -a, mask) == pytest.approx(-1.0)
    b = rng.normal(size=a.shape)
    assert correlation(a, b, mask) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert np.isnan(correlation(a, np.ones_like(a), mask))


def test_mutual_information_of_two_level_images():
    # Two perfectly dependent binary images of equal halves: MI = ln 2 exactly.
    a = np.zeros((4, 4, 4))
    a[:2] = 1
    mask = np.ones_like(a, dtype=bool)
    assert mutual_information(a, a * 5 + 1, mask) == pytest.approx(np.log(2))
    # Independent halves: MI = 0.
    b = np.zeros_like(a)
    b[:, :2] = 1
    assert mutual_information(a, b, mask) == pytest.approx(0.0, abs=1e-12)


def test_registration_metrics_drop_with_misalignment():
    rng = np.random.default_rng(1)
    tpl = np.zeros((32, 32, 32))
    tpl[8:24, 8:24, 8:24] = 1.0
    tpl += 0.05 * rng.normal(size=tpl.shape)
    mask = np.ones_like(tpl, dtype=bool)
    good = registration_metrics(tpl + 0.05 * rng.normal(size=tpl.shape), tpl, mask)
    bad = registration_metrics(np.roll(tpl, 6, axis=0), tpl, mask)
    assert good["reg_cc"] > 0.9 > bad["reg_cc"]
    assert good["reg_mi"] > bad["reg_mi"]


def test_grid_mismatch_and_empty_mask_are_errors():
    with pytest.raises(ValueError, match="one grid"):
        correlation(np.zeros((2, 2, 2)), np.zeros((3, 3, 3)), np.ones((3, 3, 3), bool))
    with pytest.raises(ValueError, match="mask is empty"):
        correlation(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), np.zeros((2, 2, 2), bool))


def test_structure_volumes_count_voxels_times_voxel_volume():
    labels = np.zeros((10, 10, 10), dtype=np.int32)
    labels[:2] = 17  # 200 voxels of left hippocampus
    labels[2:3] = 1028  # 100 voxels of a cortical parcel
    labels[3:4, :5] = 3  # 50 voxels of left cortex
    vols = structure_volumes(labels, 1.5)
    assert vols["vol_left_hippocampus"] == 300.0
    assert vols["vol_cerebral_cortex"] == 225.0
    assert vols["vol_whole_brain"] == 350 * 1.5
    assert vols["vol_right_hippocampus"] == 0.0
    with pytest.raises(ValueError):
        structure_volumes(labels, 0)
