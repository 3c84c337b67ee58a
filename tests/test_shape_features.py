"""Shape features on analytic shapes: thickness of a sphere and an ellipsoid, LogJac of the
template against itself, and invariance of the map to a rigid motion of the segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from bids_qc.models.shape_features import (
    GRID,
    build_template,
    mask_mesh,
    structure_features,
)

CODE = 49  # right_thalamus


def _ellipsoid(a: float, b: float, c: float, n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A label volume holding one ellipsoid (semi-axes in mm along x, y, z), 1 mm, centred."""
    g = np.arange(n) - (n - 1) / 2
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    labels = np.where((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1, CODE, 0).astype(np.int32)
    affine = np.eye(4)
    affine[:3, 3] = -(n - 1) / 2
    return labels, affine


def test_sphere_mesh_radius_and_thickness() -> None:
    labels, affine = _ellipsoid(12, 12, 12)
    verts, _ = mask_mesh(labels == CODE, affine)
    radius = np.linalg.norm(verts, axis=1)
    assert abs(np.median(radius) - 12) < 0.6
    f = structure_features(labels, affine, "right_thalamus")
    # On a sphere, D is the radius of the cross-section: D^2 + t^2 = R^2 around the centre.
    t = (f.vertices - f.vertices.mean(axis=0)) @ f.axis
    expected = np.sqrt(np.clip(np.median(radius) ** 2 - t**2, 0, None))
    mid = np.abs(t) < 8
    assert np.median(np.abs(f.thickness[mid] - expected[mid])) < 0.6
    # Equator of the map: thickness about R; poles: small.
    assert abs(np.median(f.maps[0, GRID // 2 - 2:GRID // 2 + 2]) - 12) < 1.0
    assert f.maps[0, 0].mean() < 5 and f.maps[0, -1].mean() < 5
    assert np.allclose(f.maps[1], f.maps[0] / f.volume_mm3 ** (1 / 3), rtol=1e-5)


def test_ellipsoid_thickness_follows_the_minor_axes() -> None:
    labels, affine = _ellipsoid(20, 9, 6)
    f = structure_features(labels, affine, "right_thalamus")
    assert abs(abs(f.axis[0]) - 1) < 1e-3  # principal axis along x
    v = f.vertices - f.vertices.mean(axis=0)
    mid = np.abs(v[:, 0]) < 4  # cross-sections near the centre: an ellipse 9 x 6
    expected = np.hypot(v[mid, 1], v[mid, 2])
    assert np.median(np.abs(f.thickness[mid] - expected)) < 0.5
    assert 8.0 < f.thickness[mid].max() < 10.0
    assert 5.0 < f.thickness[mid].min() < 7.0
    # Standardised longitude: thickest direction (along y) at phi = 0 and pi.
    equator = f.maps[0, GRID // 2]
    assert min(equator[0], equator[-1]) > equator[GRID // 4] + 2
    assert equator[GRID // 2] > equator[3 * GRID // 4] + 2


def test_logjac_of_template_against_itself_is_zero() -> None:
    labels, affine = _ellipsoid(16, 9, 7)
    f = structure_features(labels, affine, "right_thalamus")
    template = build_template([f.log_density], [f.log_area], [f.axis])
    g = structure_features(labels, affine, "right_thalamus", template)
    assert np.abs(g.maps[2:]).max() < 1e-6
    # A shape scaled by 1.2 has LogJac log(1.44) everywhere-ish, and zero once normalised.
    big, big_aff = _ellipsoid(16 * 1.2, 9 * 1.2, 7 * 1.2, n=56)
    h = structure_features(big, big_aff, "right_thalamus", template)
    assert abs(np.median(h.maps[2]) - np.log(1.44)) < 0.08
    assert abs(np.median(h.maps[3])) < 0.08


def _rigid(angles_deg: tuple[float, float, float], shift: tuple[float, float, float]
           ) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rz @ ry @ rx
    m[:3, 3] = shift
    return m


def _blob() -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric, bent, tapered structure (no symmetry to make the map ambiguous)."""
    n = 56
    g = np.arange(n) - (n - 1) / 2
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    bend = 0.015 * x**2
    radius = 7 - 0.12 * x
    inside = ((y - bend) / radius) ** 2 + (z / (0.7 * radius)) ** 2 <= 1
    labels = np.where(inside & (np.abs(x) < 20), CODE, 0).astype(np.int32)
    labels[(x - 8) ** 2 + (y - bend - radius) ** 2 + z**2 < 9] = CODE  # a bump on one side
    affine = np.eye(4)
    affine[:3, 3] = -(n - 1) / 2
    return labels, affine


@pytest.mark.parametrize("voxel_motion", [False, True])
def test_map_is_invariant_to_rigid_motion(voxel_motion: bool) -> None:
    labels, affine = _blob()
    f = structure_features(labels, affine, "right_thalamus")
    if voxel_motion:
        # Move the structure inside its grid: resample the labels (nearest neighbour).
        from bids_qc.synth.grids import resample

        motion = _rigid((25.0, -15.0, 40.0), (2.0, -3.0, 1.0))
        moved = resample(labels, affine, labels.shape, affine, np.linalg.inv(motion), order=0)
        g = structure_features(moved, affine, "right_thalamus")
        tol, corr = 0.6, 0.85
    else:
        motion = _rigid((25.0, -15.0, 40.0), (12.0, -30.0, 5.0))
        g = structure_features(labels, motion @ affine, "right_thalamus")  # the grid moves
        tol, corr = 1e-3, 0.999
    assert abs(f.volume_mm3 - g.volume_mm3) / f.volume_mm3 < 0.03
    assert np.median(np.abs(f.maps[0] - g.maps[0])) < tol
    assert np.corrcoef(f.maps[0].ravel(), g.maps[0].ravel())[0, 1] > corr


def test_left_structures_are_mirrored() -> None:
    labels, affine = _blob()
    right = structure_features(labels, affine, "right_thalamus")
    mirrored = labels[::-1].copy()
    mirrored[mirrored == CODE] = 10  # left_thalamus
    # The grid is centred on x = 0, so the flipped array is the mirror image in world mm.
    left = structure_features(mirrored, affine, "left_thalamus")
    assert np.median(np.abs(left.maps[0] - right.maps[0])) < 0.05


def test_absent_structure_is_a_value_error() -> None:
    labels, affine = _ellipsoid(5, 5, 5, n=16)
    with pytest.raises(ValueError, match="too small"):
        structure_features(labels, affine, "left_caudate")
