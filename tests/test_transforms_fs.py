"""FreeSurfer's talairach.xfm composed with MNI305 -> MNI152, on a written file and on bert."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from bids_qc.inputs import QCInput
from bids_qc.spatial import TemplateGrid, to_template_space
from bids_qc.transforms import (
    FS_MNI152_TO_MNI305,
    read_talairach_mni152,
    read_talairach_xfm,
    resample_to_grid,
)
from tests.conftest import SHARED_DATA
from tests.fakebids import write_talairach

#: A native -> MNI305 map with rotation, scaling and shift (what talairach.xfm holds).
_TALAIRACH = np.array([[1.12, -0.013, 0.041, -6.3],
                       [0.02, 1.05, 0.12, 14.2],
                       [-0.03, -0.08, 1.09, -21.5],
                       [0, 0, 0, 1]])  # fmt: skip


def test_composition_is_the_product(tmp_path):
    path = write_talairach(tmp_path / "talairach.xfm", _TALAIRACH)
    composed = read_talairach_mni152(path)
    # talairach.xfm first, then MNI305 -> MNI152 (the inverse of the published matrix).
    np.testing.assert_allclose(composed, np.linalg.inv(FS_MNI152_TO_MNI305) @ _TALAIRACH,
                               atol=1e-9)
    np.testing.assert_allclose(FS_MNI152_TO_MNI305 @ composed, read_talairach_xfm(path),
                               atol=1e-9)
    np.testing.assert_allclose(composed[3], [0, 0, 0, 1], atol=1e-12)


def test_published_matrix_goes_from_mni152_to_mni305():
    # The FreeSurfer wiki's worked example (CoordinateSystems, 8b), to its 4 digits.
    point = FS_MNI152_TO_MNI305 @ [10, -20, 35, 1]
    np.testing.assert_allclose(point[:3], [9.3131, -21.5849, 33.8345], atol=2e-3)


def test_app_resamples_freesurfer_through_the_composition(tmp_path):
    """spatial.to_template_space uses the composed map for a talairach row."""
    rng = np.random.default_rng(0)
    native_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    native_affine[:3, 3] = -20
    data = rng.random((20, 20, 20)).astype(np.float32)
    norm = tmp_path / "norm.mgz"
    nib.save(nib.MGHImage(data, native_affine), str(norm))
    xfm = write_talairach(tmp_path / "talairach.xfm", np.eye(4))
    grid_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid_affine[:3, 3] = -24
    grid = TemplateGrid(np.zeros((24, 24, 24), np.float32), np.ones((24, 24, 24), bool),
                        grid_affine)
    row = QCInput(bids_name="sub-01_T1w", entities={"subject": "01"}, t1w_preproc=norm,
                  xfm=xfm, xfm_kind="talairach", template_space="MNI152NLin2009cAsym")
    out, how, _ = to_template_space(row, grid)
    expected = resample_to_grid(data, native_affine, (24, 24, 24), grid_affine, order=1,
                                world_transform=np.linalg.inv(FS_MNI152_TO_MNI305))
    assert how == "talairach"
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # The identity talairach.xfm is no longer read as "already in MNI152".
    plain = resample_to_grid(data, native_affine, (24, 24, 24), grid_affine, order=1)
    assert np.abs(out - plain).max() > 0.05


def _bert():
    bert = SHARED_DATA / "freesurfer_bert"
    if not (bert / "mri" / "norm.mgz").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must have FreeSurfer's bert under {SHARED_DATA}")
        pytest.skip(f"FreeSurfer's bert is absent from {SHARED_DATA}")
    return bert


@pytest.mark.realdata
def test_mni305_composition_on_bert(tmp_path):
    """The composed map lies closer to an independent affine registration than the raw one.

    One SimpleITK registration (~25 s on 2 cores). Its multithreaded sampling is not
    bit-reproducible: two runs of one seed differed by ~0.1 mm, two seeds by ~0.7 mm, so
    the figures measured by ``fs_transform_check`` (raw 4.84-4.95, composed 4.44-4.48,
    reversed 6.33-6.48 mm) are checked to 0.75 mm.
    """
    from bids_qc.training.fs_transform_check import measure

    res = measure(_bert(), tmp_path, seeds=(0,), regqc=False)
    r = res["rmse_mm"]
    assert r["composed_vs_independent"] < r["raw_vs_independent"] < r["reversed_vs_independent"]
    assert r["raw_vs_independent"] == pytest.approx(4.9, abs=0.75)
    assert r["composed_vs_independent"] == pytest.approx(4.46, abs=0.75)
    assert r["reversed_vs_independent"] == pytest.approx(6.4, abs=0.75)
    # The composition itself is exact arithmetic: no registration noise.
    assert res["mni305_to_mni152_mm"] == pytest.approx(2.5706, abs=1e-3)
