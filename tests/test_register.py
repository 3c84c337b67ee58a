"""bids_qc's own registration: the SimpleITK geometry, the brain mask, a known pose
recovered, implausible results refused, its node's skips and errors, and its wiring."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_qc import register
from bids_qc.inputs import QCInput, qc_input_to_dict
from bids_qc.interfaces.register import RegisterT1w
from bids_qc.register import brain_mask, check_transform, register_affine, to_sitk
from bids_qc.sink import publish, retarget
from bids_qc.synth.metrics import affine_rmse
from bids_qc.templates_data import DEFAULT_SPACE, get_template
from bids_qc.transforms import LPS_TO_RAS, read_itk_affine

#: An oblique LIA grid with anisotropic voxels: the geometry a conversion gets wrong first.
LIA = np.array([[-1.2, 0, 0, 90], [0, 0, 0.9, -120], [0, -1.5, 0, 100], [0, 0, 0, 1]])


def _pose(deg: float = 8.0, shift: tuple[float, float, float] = (6.0, -9.0, 5.0)) -> np.ndarray:
    a = np.deg2rad(deg)
    pose = np.eye(4)
    pose[1:3, 1:3] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    pose[:3, 3] = shift
    return pose


@pytest.fixture(scope="module")
def template_2mm():
    """The app's template at 2 mm (every other voxel): a head of known anatomy, fast."""
    img = nib.load(str(get_template(DEFAULT_SPACE).t1w))
    data = np.asanyarray(img.dataobj, dtype=np.float32)[::2, ::2, ::2]
    affine = img.affine.copy()
    affine[:3, :3] *= 2
    return data, affine, img


def test_to_sitk_places_voxels_where_nibabel_does():
    rot = _pose(20.0) @ LIA
    img = to_sitk(np.zeros((5, 6, 7), np.float32), rot)
    assert img.GetSize() == (5, 6, 7)
    for idx in [(0, 0, 0), (4, 1, 6), (2, 5, 3)]:
        lps = np.asarray(img.TransformIndexToPhysicalPoint(idx))
        ras = (rot @ [*idx, 1.0])[:3]
        assert np.allclose(LPS_TO_RAS[:3, :3] @ lps, ras, atol=1e-6)


def test_brain_mask_is_resampled_onto_the_image_grid():
    labels = np.zeros((20, 20, 20), np.int16)
    labels[5:15, 5:15, 5:15] = 17
    fine = np.eye(4)
    assert brain_mask(labels, fine, labels.shape, fine).sum() == 1000  # same grid: as is
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    mask = brain_mask(labels, fine, (10, 10, 10), coarse)
    assert mask.shape == (10, 10, 10) and mask[5, 5, 5] and not mask[0, 0, 0]
    assert 100 <= mask.sum() <= 216  # the cube of 10 mm at 2 mm voxels, give or take an edge


def test_a_known_pose_is_recovered(tmp_path, template_2mm):
    data, affine, tpl = template_2mm
    pose = _pose()  # the T1w's world = pose @ the template's world
    moving = nib.Nifti1Image(data, pose @ affine)
    out = tmp_path / "sub-01_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.txt"
    reg = register_affine(moving, get_template(DEFAULT_SPACE).t1w, out, brain=data > 0,
                          threads=1)
    assert reg.transform == out and out.read_text().startswith("#Insight Transform File")
    assert reg.metric < 0 and reg.seconds > 0
    world = read_itk_affine(out)  # T1w -> template, as the app reads fMRIPrep's transforms
    assert affine_rmse(world @ pose, tpl.shape, tpl.affine) < 1.0
    assert not list(tmp_path.glob(".*"))  # written atomically, no temp file left
    # a rerun gives the same transform (a fixed sampling seed, not SimpleITK's wall clock)
    again = register_affine(moving, get_template(DEFAULT_SPACE).t1w, tmp_path / "again.txt",
                            brain=data > 0, threads=1)
    assert np.allclose(read_itk_affine(again.transform), world, atol=1e-6)  # float noise only


def test_an_implausible_transform_is_refused(tmp_path):
    path = tmp_path / "xfm.txt"
    path.write_text("#Insight Transform File V1.0\n#Transform 0\n"
                    "Transform: AffineTransform_double_3_3\n"
                    "Parameters: 3 0 0 0 3 0 0 0 3 0 0 0\nFixedParameters: 0 0 0\n")
    with pytest.raises(ValueError, match="implausible affine"):
        check_transform(path)


def _run_node(tmp_path, row: QCInput) -> tuple[dict, dict]:
    node = RegisterT1w(qc_input=qc_input_to_dict(row), output_dir=str(tmp_path / "out"))
    outputs = node.run(cwd=str(tmp_path)).outputs
    return outputs.qc_input, outputs.result


def _write(path, data, affine=LIA):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_the_node_skips_what_it_cannot_register_and_names_the_file_that_failed(tmp_path,
                                                                              monkeypatch):
    head = np.zeros((80, 80, 80), np.float32)
    head[10:70, 10:70, 10:70] = 100.0  # 0.35 L at LIA's voxels: a (small) brain's volume
    t1w = _write(tmp_path / "sub-01_T1w.nii.gz", head)
    row = QCInput("sub-01_T1w", {"subject": "01"}, t1w=t1w)
    # no segmentation: nothing to take a brain mask from
    new, result = _run_node(tmp_path, row)
    assert new["xfm"] is None and "segmentation" in result["skipped"][0]["reason"]
    # a segmentation that labels nothing of the T1w's field of view
    far = LIA.copy()
    far[:3, 3] += 1000
    seg = _write(tmp_path / "aseg.nii.gz", (head > 0).astype(np.int16) * 17, far)
    new, result = _run_node(tmp_path, QCInput("sub-01_T1w", {"subject": "01"}, t1w=t1w,
                                              seg=seg, seg_kind="aseg"))
    err = result["errors"][0]
    assert new["xfm"] is None and err["stage"] == "bids_qc registration"
    assert err["file"] == str(seg)
    # SimpleITK fails (as it does when too few samples fall in the image): the error names
    # the T1w and the segmentation the mask came from
    def fails(*args, **kwargs):
        raise RuntimeError("Exception thrown in SimpleITK ImageRegistrationMethod_Execute: "
                           "Too many samples map outside moving image buffer")

    monkeypatch.setattr(register, "register_affine", fails)
    seg = _write(tmp_path / "aseg.nii.gz", (head > 0).astype(np.int16) * 17)
    new, result = _run_node(tmp_path, QCInput("sub-01_T1w", {"subject": "01"}, t1w=t1w,
                                              seg=seg, seg_kind="aseg"))
    err = result["errors"][0]
    assert err["file"] == str(t1w) and "affine registration" in err["problem"]
    assert "Too many samples" in err["problem"] and str(seg) in err["hint"]
    assert new["reg_source"] is None and not list((tmp_path / "out").rglob("*xfm*"))
    # a segmentation whose "brain" is the whole head (2 mm voxels: 4.1 L) is not used
    big = np.diag([2.0, 2.0, 2.0, 1.0])
    whole = _write(tmp_path / "whole_T1w.nii.gz", head + 10, big)
    labels = np.full(head.shape, 3, np.int16)
    labels[0, 0, 0] = 0  # (a label map of one label is refused on read)
    seg_all = _write(tmp_path / "all.nii.gz", labels, big)
    _, result = _run_node(tmp_path, QCInput("sub-01_T1w", {"subject": "01"}, t1w=whole,
                                            seg=seg_all, seg_kind="aseg"))
    reason = result["skipped"][0]["reason"]
    assert not result["errors"] and str(seg_all) in reason
    assert "4.10 L, outside the 0.3-2.4 L" in reason
    # a field of view too small for a head is skipped, as VINN skips it
    small = _write(tmp_path / "small_T1w.nii.gz", head[:30, :30, :30])
    _, result = _run_node(tmp_path, QCInput("sub-01_T1w", {"subject": "01"}, t1w=small,
                                            seg=seg, seg_kind="aseg"))
    assert "field of view" in result["skipped"][0]["reason"] and not result["errors"]


def test_the_node_hands_on_the_row_with_its_transform(tmp_path, template_2mm):
    data, affine, _ = template_2mm
    pose = _pose()
    t1w = _write(tmp_path / "sub-01_ses-A_T1w.nii.gz", data, pose @ affine)
    seg = _write(tmp_path / "dseg.nii.gz", (data > 0).astype(np.int16) * 2, pose @ affine)
    row = QCInput("sub-01_ses-A_T1w", {"subject": "01", "session": "A"}, t1w=t1w, seg=seg,
                  seg_kind="aseg", seg_source="bids_qc", sources={"t1w": "raw"})
    new, result = _run_node(tmp_path, row)
    rel = ("sub-01/ses-A/anat/"
           "sub-01_ses-A_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.txt")
    # The node writes the transform in its own directory and lists it for the sink.
    work = Path(new["xfm"])
    assert work.is_file() and work.name == Path(rel).name and not result["errors"]
    assert result["publish"] == {str(work): rel}
    assert not (tmp_path / "out" / rel).exists()
    assert (new["xfm_kind"], new["template_space"], new["reg_source"]) == (
        "itk", DEFAULT_SPACE, "bids_qc")
    assert new["sources"] == {"t1w": "raw", "xfm": "bids_qc"}
    prov = result["provenance"]
    assert prov["transform"] == str(work) and prov["brain_mask_from"] == str(seg)
    assert prov["seconds"] > 0
    # The sink publishes it and every path to it follows.
    done = publish([result], tmp_path / "out")
    assert (tmp_path / "out" / rel).read_bytes() == work.read_bytes()
    assert retarget(new, done)["xfm"] == str(tmp_path / "out" / rel)


def test_registration_runs_for_a_segmented_row_without_template_input(tmp_path):
    from bids_qc.models.registry import get_spec
    from bids_qc.workflows.base import init_image_qc_wf, runs_registration

    t1w = tmp_path / "t1.nii.gz"
    raw = QCInput("sub-01_T1w", {"subject": "01"}, t1w=t1w)
    fs = QCInput("sub-01_T1w", {"subject": "01"}, t1w=t1w, seg=tmp_path / "aseg.mgz",
                 seg_kind="aseg")
    fmriprep = QCInput("sub-01_T1w", {"subject": "01"}, t1w=t1w, seg=tmp_path / "aseg.mgz",
                       seg_kind="aseg", xfm=tmp_path / "xfm.txt", xfm_kind="itk")
    h5 = QCInput("sub-01_T1w", {"subject": "01"}, t1w=t1w, seg=tmp_path / "aseg.mgz",
                 seg_kind="aseg", xfm=tmp_path / "xfm.h5", xfm_kind="h5")
    assert [runs_registration(r, False) for r in (raw, fs, fmriprep, h5)] == [
        False, True, False, True]
    assert runs_registration(raw, True)  # VINN segments it first
    wf = init_image_qc_wf(raw, output_dir=tmp_path / "out", fingerprint={},
                          models=(get_spec("regqc"),), device="cpu",
                          segmenter=get_spec("vinn"))
    graph = wf._graph
    names = {n.name: n for n in graph.nodes()}
    assert {"vinn", "register", "regqc"} <= set(names)
    assert names["register"] in graph.successors(names["vinn"])
    assert {names["classic"], names["regqc"]} <= set(graph.successors(names["register"]))
