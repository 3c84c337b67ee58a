"""Intensity-based affine registration recovers a known transform."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_qc.synth.grids import resample
from bids_qc.synth.metrics import affine_rmse
from bids_qc.synth.misregistration import compose_affine
from bids_qc.synth.phantom import make_phantom
from bids_qc.synth.register import register_affine
from bids_qc.synth.synthesize import synthesize


@pytest.fixture(scope="module")
def fixed() -> nib.Nifti1Image:
    labels, affine = make_phantom((64, 64, 64), voxel_size=2.0)
    case = synthesize(labels, affine, 0, resolution=2.0, deform=False, skull_strip=True)
    return nib.Nifti1Image(case.image, case.affine)


def test_recovers_known_affine(fixed: nib.Nifti1Image) -> None:
    data = np.asarray(fixed.dataobj)
    centre = fixed.affine[:3, :3] @ ((np.array(data.shape) - 1) / 2) + fixed.affine[:3, 3]
    # Known moving -> fixed map M: the moving image shows at y what the fixed shows at M y.
    M = compose_affine([6.0, -4.0, 3.0], np.deg2rad([5.0, -3.0, 6.0]), [1.06, 0.95, 1.0], centre)
    moving = resample(data, fixed.affine, data.shape, fixed.affine, M)
    est = register_affine(
        nib.Nifti1Image(moving, fixed.affine), fixed, resolutions=(6.0, 3.0), iterations=(80, 40)
    )
    error = affine_rmse(np.linalg.inv(M) @ est, data.shape, fixed.affine)
    before = affine_rmse(np.linalg.inv(M), data.shape, fixed.affine)
    assert before > 5.0
    assert error < 1.0, error


def test_rejects_bad_levels(fixed: nib.Nifti1Image) -> None:
    with pytest.raises(ValueError):
        register_affine(fixed, fixed, resolutions=(4.0,), iterations=(10, 10))
