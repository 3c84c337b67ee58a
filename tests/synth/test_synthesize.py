"""Synthesis: shapes, dtypes, resolution, label/image alignment, determinism, guards."""

from __future__ import annotations

import numpy as np
import pytest

from bids_qc.synth.contrast import check_family, sample_intensities, tissue_class
from bids_qc.synth.deform import random_deformation
from bids_qc.synth.grids import grid_coords, normaliser
from bids_qc.synth.phantom import make_phantom
from bids_qc.synth.synthesize import SynthCase, synthesize
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray]:
    return make_phantom((40, 40, 40))


def _mean(case: SynthCase, codes: tuple[int, ...]) -> float:
    return float(case.image[np.isin(case.labels, codes)].mean())


def test_output_types_and_shapes(phantom: tuple[np.ndarray, np.ndarray]) -> None:
    labels, affine = phantom
    case = synthesize(labels, affine, seed=0)
    assert isinstance(case, SynthCase)
    assert case.image.dtype == np.float32 and case.labels.dtype == np.int32
    assert case.image.shape == case.labels.shape and case.image.ndim == 3
    assert case.affine.shape == (4, 4)
    assert 0.0 <= case.image.min() and case.image.max() <= 1.0
    assert set(np.unique(case.labels)) <= set(np.unique(labels))
    for key in ("resolution", "skull_strip", "deformation", "intensities", "image_to_source"):
        assert key in case.params


@pytest.mark.parametrize("resolution", [1.0, 1.6, (0.7, 1.2, 1.5)])
def test_resolution_is_honoured(phantom: tuple[np.ndarray, np.ndarray], resolution) -> None:
    labels, affine = phantom
    case = synthesize(labels, affine, seed=1, resolution=resolution, skull_strip=False)
    res = np.broadcast_to(np.asarray(resolution, float), (3,))
    np.testing.assert_allclose(np.linalg.norm(case.affine[:3, :3], axis=0), res)
    fov = (np.array(case.params["crop"])[:, 1] - np.array(case.params["crop"])[:, 0]) * 1.0
    np.testing.assert_allclose(np.array(case.image.shape) * res, fov, atol=res.max())


def test_random_resolution_in_range(phantom: tuple[np.ndarray, np.ndarray]) -> None:
    labels, affine = phantom
    for seed in range(4):
        res = synthesize(labels, affine, seed=seed, deform=False).params["resolution"]
        assert all(0.7 <= r <= 1.6 for r in res)


@pytest.mark.parametrize("deform", [False, True])
def test_labels_aligned_with_t1_contrast(phantom: tuple[np.ndarray, np.ndarray], deform) -> None:
    labels, affine = phantom
    for seed in range(3):
        case = synthesize(labels, affine, seed, "t1", resolution=1.0, deform=deform)
        wm, gm, csf = _mean(case, (2, 41)), _mean(case, (3, 42)), _mean(case, (4, 43, 24))
        assert wm > gm > csf, (seed, wm, gm, csf)


def test_undeformed_labels_equal_input(phantom: tuple[np.ndarray, np.ndarray]) -> None:
    labels, affine = phantom
    case = synthesize(labels, affine, 3, resolution=1.0, deform=False, skull_strip=False)
    box = tuple(slice(a, b) for a, b in case.params["crop"])
    assert np.array_equal(case.labels, labels[box])
    np.testing.assert_allclose(case.affine[:3, 3], affine[:3, :3] @ [s.start for s in box]
                               + affine[:3, 3])  # fmt: skip


def test_deterministic_per_seed(phantom: tuple[np.ndarray, np.ndarray]) -> None:
    labels, affine = phantom
    a = synthesize(labels, affine, 7)
    b = synthesize(labels, affine, 7)
    c = synthesize(labels, affine, 8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.params == b.params
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_skull_strip(phantom: tuple[np.ndarray, np.ndarray]) -> None:
    labels, affine = phantom
    stripped = synthesize(labels, affine, 2, skull_strip=True)
    head = synthesize(labels, affine, 2, skull_strip=False)
    assert not np.any((stripped.labels >= 500) & (stripped.labels < 600))
    assert np.any((head.labels >= 500) & (head.labels < 600))
    drawn = {synthesize(labels, affine, s, deform=False).params["skull_strip"] for s in range(8)}
    assert drawn == {True, False}


def test_t2_is_refused_for_training(phantom: tuple[np.ndarray, np.ndarray]) -> None:
    labels, affine = phantom
    with pytest.raises(ValueError, match="evaluation"):
        synthesize(labels, affine, 0, "t2")
    with pytest.raises(ValueError, match="evaluation"):
        check_family("t2", "train")
    case = synthesize(labels, affine, 0, "t2", split="eval", resolution=1.0)
    assert _mean(case, (4, 43)) > _mean(case, (3, 42)) > _mean(case, (2, 41))


def test_random_family_draws_each_label_on_its_own() -> None:
    # In ``t1`` the labels of one tissue class share a class mean (within the jitter); in
    # ``random`` (domain randomisation) any ordering is possible, within a class too.
    gm_codes = np.array([3, 8, 11, 12, 17, 18, 26, 42, 47, 50, 51, 53, 54, 58])
    assert {tissue_class(c) for c in gm_codes} == {"gm"}
    spread = {}
    for family in ("t1", "random"):
        ranges = []
        for seed in range(20):
            means, _ = sample_intensities(gm_codes, family, np.random.default_rng(seed))
            ranges.append(means.max() - means.min())
        spread[family] = float(np.median(ranges))
    assert spread["t1"] <= 8.0  # 2 x label_jitter
    assert spread["random"] > 100.0
    # A training family, and the images it makes still carry their labels.
    check_family("random", "train")
    labels, affine = make_phantom((24, 24, 24))
    a = synthesize(labels, affine, 5, "random", resolution=1.0, deform=False)
    b = synthesize(labels, affine, 6, "random", resolution=1.0, deform=False)
    assert a.image.shape == a.labels.shape and np.isfinite(a.image).all()
    assert a.params["intensities"] != b.params["intensities"]


def test_bad_inputs(phantom: tuple[np.ndarray, np.ndarray]) -> None:
    labels, affine = phantom
    with pytest.raises(ValueError):
        synthesize(labels[0], affine, 0)
    with pytest.raises(ValueError):
        synthesize(labels, affine, 0, "flair")
    with pytest.raises(ValueError):
        synthesize(labels, affine, 0, resolution=-1.0)
    with pytest.raises(ValueError):
        synthesize(labels + 0.5, affine, 0)
    with pytest.raises(ValueError, match="empty"):
        synthesize(np.zeros_like(labels), affine, 0)
    with pytest.raises(ValueError):
        synthesize(labels, affine, -3)


def test_deformation_is_diffeomorphic() -> None:
    rng = np.random.default_rng(0)
    shape = (48, 40, 44)
    deformation, params = random_deformation(shape, np.ones(3), rng, max_std_mm=6.0)
    assert params["max_displacement_mm"] > 0
    grid = grid_coords(shape, normaliser(shape))
    # Normalised (x, y, z) = (k, j, i) coordinates back to voxel indices (i, j, k).
    moved = deformation.displace(grid).numpy().astype(np.float64)[..., ::-1]
    moved = (moved + 1) * (np.array(shape) - 1) / 2
    # Jacobian of the map by central differences along the voxel axes: positive everywhere.
    jac = np.stack([np.stack(np.gradient(moved[..., c]), axis=-1) for c in range(3)], axis=-2)
    det = np.linalg.det(jac)
    assert det.min() > 0
    assert abs(np.median(det) - 1) < 0.2 and det.std() > 1e-3  # deformed, not identity


def test_atlas_sized_map() -> None:
    from bids_qc.synth.template import load_atlas_label_map

    atlas = load_atlas_label_map()
    assert atlas.labels.shape == (143, 155, 181)
    case = synthesize(atlas.labels, atlas.affine, 0, resolution=2.0)
    assert case.image.shape == case.labels.shape
    assert _mean(case, (2, 41)) > _mean(case, (4, 43))


@pytest.mark.realdata
def test_real_label_map_downsampled() -> None:
    from bids_qc.synth.labelmaps import read_labels

    lm = read_labels(shared_path("synthseg_label_maps", "training_seg_01.nii.gz"))
    labels = lm.labels[::2, ::2, ::2]  # 128^3 at 2 mm: keeps the test fast
    affine = lm.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    case = synthesize(labels, affine, 4, resolution=3.0, skull_strip=True)
    np.testing.assert_allclose(np.linalg.norm(case.affine[:3, :3], axis=0), 3.0)
    assert _mean(case, (2, 41)) > _mean(case, (3, 42)) > _mean(case, (4, 43))
