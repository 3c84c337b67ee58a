"""VINN: resolution normalisation, native-grid handling, shipped weights, held-out accuracy,
and the app's segmentation node end to end."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bids_qc.cli import run
from bids_qc.models import vinn
from bids_qc.models.registry import get_spec, load_state_dict, sha256sum
from bids_qc.structures import SUBCORTICAL_NAMES
from bids_qc.synth.phantom import make_phantom

from .conftest import shared_path
from .fakebids import make_raw

CARD = Path(vinn.__file__).parent / "cards" / "vinn.md"
#: An LIA affine with 2 mm voxels (FreeSurfer's conformed orientation), so the RAS
#: reorientation is a real permutation with flips.
LIA_2MM = np.array([[-2.0, 0, 0, 40], [0, 0, 2.0, -40], [0, -2.0, 0, 40], [0, 0, 0, 1]])


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(1)  # 2 threads spin on a busy 2-core machine


@pytest.fixture(scope="module")
def model():
    return vinn.load_model("cpu")


def test_resnorm_is_the_identity_at_scale_one():
    x = torch.randn(2, 3, 17, 23)
    assert torch.equal(vinn.ResNorm()(x, scale=(1.0, 1.0)), x)
    assert torch.equal(vinn.ResNorm()(x, size=(17, 23)), x)


@pytest.mark.parametrize("scale", [(0.7, 0.7), (1.6, 1.6), (0.8, 1.3)])
def test_resnorm_resamples_feature_maps_by_the_factor(scale):
    # A linear ramp along each axis stays a ramp whose slope changes by 1 / scale.
    h, w = 40, 30
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    x = torch.stack([ii, jj])[None]
    y = vinn.ResNorm()(x, scale=scale)
    assert y.shape == (1, 2, round(h * scale[0]), round(w * scale[1]))
    inner = (slice(3, -3), slice(3, -3))  # bilinear edges clamp
    di = torch.diff(y[0, 0][inner], dim=0).mean().item()
    dj = torch.diff(y[0, 1][inner], dim=1).mean().item()
    assert di == pytest.approx(h / y.shape[2], rel=0.02)
    assert dj == pytest.approx(w / y.shape[3], rel=0.02)
    back = vinn.ResNorm()(y, size=(h, w))
    assert back.shape == x.shape


def test_views_return_the_input_grid_at_any_voxel_size():
    torch.manual_seed(0)
    net = vinn.VINN().eval()
    x = torch.rand(2, vinn.N_SLICES, 37, 29)
    with torch.no_grad():
        for scale in [(0.7, 0.7), (1.0, 1.0), (1.5, 0.9)]:
            assert net.views["axial"](x, scale).shape == (2, vinn.N_CLASSES, 37, 29)
            assert net.views["sagittal"](x, scale).shape == (2, vinn.N_SAGITTAL, 37, 29)


def test_label_tables_are_consistent():
    assert len(set(vinn.CLASS_CODES)) == vinn.N_CLASSES
    codes = np.array([0, 2, 7, 17, 53, 251, 77, 999, 5])
    back = vinn.class_to_code(vinn.code_to_class(codes))
    assert back.tolist() == [0, 2, 8, 17, 53, 2, 2, 0, 4]
    # Sagittal classes merge hemispheres: left and right thalamus share one.
    f2s = vinn.FULL_TO_SAGITTAL
    assert f2s[vinn.CLASS_CODES.index(10)] == f2s[vinn.CLASS_CODES.index(49)]
    assert f2s[vinn.CLASS_CODES.index(10)] != f2s[vinn.CLASS_CODES.index(11)]


def test_ras_round_trip_keeps_the_native_grid():
    data = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    ras, vox, ornt = vinn.to_ras(data, LIA_2MM)
    assert ras.shape == (4, 6, 5) and np.allclose(vox, 2.0)
    assert np.array_equal(vinn.from_ras(ras, ornt), data)
    aniso = np.diag([1.0, 2.0, 3.0, 1.0])[[0, 2, 1, 3]]  # axes 1 and 2 swapped
    aniso[3] = [0, 0, 0, 1]
    _, vox, _ = vinn.to_ras(data, aniso)
    assert vox.tolist() == [1.0, 3.0, 2.0]


def test_segmentation_follows_the_image_orientation(model):
    # Segmenting an LIA image equals segmenting its RAS copy, put back on the LIA grid.
    labels, _ = make_phantom((32, 32, 32), voxel_size=2.0)
    image = np.where(labels > 0, 40 + (labels % 7) * 15, 0).astype(np.float32)
    seg = vinn.segment_array(model, image, LIA_2MM)
    ras, _, ornt = vinn.to_ras(image, LIA_2MM)
    ras_affine = nib.as_closest_canonical(nib.Nifti1Image(image, LIA_2MM)).affine
    seg_ras = vinn.segment_array(model, ras, ras_affine)
    assert seg.shape == image.shape and seg.dtype == np.int16
    assert np.array_equal(vinn.from_ras(seg_ras, ornt), seg)
    assert set(np.unique(seg).tolist()) <= set(vinn.CLASS_CODES)


def test_shipped_weights_match_registry_and_card():
    spec = get_spec("vinn")
    assert spec.needs == ("t1w",)
    assert spec.weights_path().stat().st_size < 5_000_000
    assert sha256sum(spec.weights_path()) == spec.sha256
    state = load_state_dict(spec)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    vinn.VINN().load_state_dict({k: v.float() for k, v in state.items()})
    text = CARD.read_text()
    assert spec.sha256 in text
    assert "## Licences" in text and "GPU" in text


@pytest.fixture(scope="module")
def heldout_case():
    """A held-out synthetic case (map 17, contrast t1, 1.4 mm, skull-stripped), as the card's."""
    shared_path("synthseg_label_maps", "training_seg_17.nii.gz")
    from bids_qc.synth.labelmaps import load_label_map
    from bids_qc.synth.synthesize import synthesize

    lm = load_label_map(17, "eval")
    return synthesize(lm.labels, lm.affine, 4242, "t1", resolution=1.4, skull_strip=True,
                      split="eval")


@pytest.fixture(scope="module")
def heldout_pred(model, heldout_case):
    return vinn.segment_array(model, heldout_case.image, heldout_case.affine)


def _subcortical_mean(case, pred) -> float:
    from bids_qc.synth.metrics import structure_dice

    dice = structure_dice(case.labels, pred)
    return float(np.mean([dice[n] for n in SUBCORTICAL_NAMES]))


def test_heldout_synthetic_image_is_segmented(heldout_case, heldout_pred):
    """The issue's CI check: mean subcortical Dice above 0.6 on a held-out map."""
    mean = _subcortical_mean(heldout_case, heldout_pred)
    assert mean > 0.6, f"mean subcortical Dice {mean:.3f} on held-out map 17"


def test_app_writes_desc_vinn_dseg_and_checks_it(tmp_path, heldout_case, heldout_pred):
    # The held-out case, stored LIA (FreeSurfer's orientation), so "native grid" is tested
    # on a grid that is not RAS.
    ras = nib.Nifti1Image(heldout_case.image * 255, heldout_case.affine)
    to_lia = nib.orientations.ornt_transform(nib.orientations.io_orientation(ras.affine),
                                             nib.orientations.axcodes2ornt("LIA"))
    img = ras.as_reoriented(to_lia)
    bids = make_raw(tmp_path / "ds", ["01", "02"], data=np.asarray(img.dataobj),
                    affine=img.affine)
    out = tmp_path / "out"
    assert run([str(bids), str(out), "participant", "--participant-label", "01",
                "--nprocs", "1", "--models", "segqc", "vinn"]) == 0
    dseg = out / "sub-01" / "anat" / "sub-01_desc-vinn_dseg.nii.gz"
    t1 = nib.load(str(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"))
    seg = nib.load(str(dseg))
    assert seg.shape == t1.shape and np.allclose(seg.affine, t1.affine)
    labels = np.asarray(seg.dataobj)
    assert set(np.unique(labels).tolist()) <= set(vinn.CLASS_CODES)
    # On the native grid: the file, put back on the case's grid, is the segmentation of
    # the case itself (up to float rounding of the intensity scale).
    back = nib.Nifti1Image(labels, seg.affine).as_reoriented(
        nib.orientations.ornt_transform(nib.orientations.io_orientation(seg.affine),
                                        nib.orientations.io_orientation(ras.affine)))
    assert np.allclose(back.affine, ras.affine)
    assert np.mean(np.asarray(back.dataobj) == heldout_pred) > 0.999
    res = json.loads((out / "sub-01" / "anat" / "sub-01_T1w.json").read_text())
    assert res["seg_source"] == "bids_qc" and not res["qc_error"]
    assert res["provenance"]["stages"]["vinn"]["weights_sha256"] == get_spec("vinn").sha256
    voxel = float(np.prod(t1.header.get_zooms()[:3]))
    assert res["metrics"]["vol_left_thalamus"] == pytest.approx((labels == 10).sum() * voxel)
    assert res["metrics"]["segqc_dice_mean"] is not None  # SegQC ran on it
    # --segment never: no segmentation, and the checks say why.
    out2 = tmp_path / "out2"
    assert run([str(bids), str(out2), "participant", "--participant-label", "02",
                "--nprocs", "1", "--segment", "never", "--models", "segqc"]) == 0
    assert not list(out2.rglob("*desc-vinn_dseg*"))
    res2 = json.loads((out2 / "sub-02" / "anat" / "sub-02_T1w.json").read_text())
    assert res2["seg_source"] is None and res2["metrics"]["vol_left_thalamus"] is None


def test_segment_option_decides_when_vinn_runs(tmp_path):
    from bids_qc.inputs import QCInput
    from bids_qc.workflows.base import runs_segmenter

    raw = QCInput("sub-01_T1w", {"subject": "01"}, t1w=tmp_path / "t1.nii.gz")
    fs = QCInput("sub-01_T1w", {"subject": "01"}, t1w=tmp_path / "t1.nii.gz",
                 seg=tmp_path / "aseg.mgz", seg_kind="aseg", seg_source="freesurfer")
    tissue = QCInput("sub-01_T1w", {"subject": "01"}, t1w=tmp_path / "t1.nii.gz",
                     seg=tmp_path / "dseg.nii.gz", seg_kind="tissue", seg_source="fmriprep")
    none = QCInput("sub-01_T1w", {"subject": "01"})
    assert [runs_segmenter(r, "auto") for r in (raw, fs, tissue, none)] == [
        True, False, True, False]
    assert [runs_segmenter(r, "always") for r in (raw, fs, tissue, none)] == [
        True, True, True, False]
    assert not any(runs_segmenter(r, "never") for r in (raw, fs, tissue, none))
