"""ShapeQC: shipped weights and thresholds, accuracy on evaluation shapes per family, the
interface and the app (columns and Grad-CAM figures)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from bids_qc.calibrate import roc_auc
from bids_qc.models.registry import get_spec, load_extra_json, load_state_dict, sha256sum
from bids_qc.models.shapeqc import (
    CALIBRATION_FILE,
    THRESHOLDS_FILE,
    grad_cam,
    kind_index,
    load_model,
    predict,
    shipped_model,
    shipped_thresholds,
    thresholds_for_recall,
)
from bids_qc.structures import SUBCORTICAL_NAMES
from tests.conftest import shared_path

#: Evaluation shapes per family (FAIL or not, as the engine measures).
N_PER_FAMILY = 30
#: Every shape family but ``displaced``, which moves a structure without changing its shape
#: (a shape check cannot see it; the model card reports it). spike and merged are held out
#: of training.
FAMILIES = ("truncation", "bump", "hole", "leak", "spike", "merged")


@pytest.fixture(autouse=True, scope="module")
def _threads():
    torch.set_num_threads(1)


def test_shipped_weights_thresholds_and_card_match_registry():
    spec = get_spec("shapeqc")
    assert spec.needs == ("seg",)
    assert sha256sum(spec.weights_path()) == spec.sha256
    net = load_model(load_state_dict(spec))
    assert net.template_log_density.abs().sum() > 0  # templates ship with the weights
    names = dict(spec.extra_files)
    assert set(names) == {THRESHOLDS_FILE, CALIBRATION_FILE}
    doc = load_extra_json(spec, THRESHOLDS_FILE)
    assert doc["format"] == "bids_qc-thresholds" and doc["target_recall"] == 0.8
    thr = shipped_thresholds()
    assert set(thr) == set(SUBCORTICAL_NAMES) and all(0 < v < 1 for v in thr.values())
    # The same schema as bids_qc-calibrate's: --thresholds reads the shipped file.
    from bids_qc.calibrate import read_thresholds

    as_option = read_thresholds(spec.weights_path().parent / THRESHOLDS_FILE)
    assert as_option == {f"shapeqc_pfail_{s}": v for s, v in thr.items()}
    card = (spec.weights_path().parents[1] / "cards" / "shapeqc.md").read_text()
    assert spec.sha256 in card and sha256sum(spec.weights_path().parent / THRESHOLDS_FILE) in card


def test_recall_rederives_the_shipped_thresholds():
    """``--shapeqc-recall 0.8`` gives the shipped thresholds but for their specificity floor
    (the highest P(FAIL) of good calibration people), which only ever raises them."""
    shipped = shipped_thresholds()
    floor = load_extra_json(get_spec("shapeqc"), THRESHOLDS_FILE).get("floor", {})
    again = thresholds_for_recall(0.8)
    for s in SUBCORTICAL_NAMES:  # scores stored to 6 decimals
        assert max(again[s], floor.get(s, 0.0)) == pytest.approx(shipped[s], abs=2e-6), s
    stricter = thresholds_for_recall(0.95)
    assert all(stricter[s] <= shipped[s] + 2e-6 for s in SUBCORTICAL_NAMES)
    cal = load_extra_json(get_spec("shapeqc"), CALIBRATION_FILE)["structures"]
    for s in SUBCORTICAL_NAMES:  # the recall reached on the calibration data
        scores, bad = np.asarray(cal[s]["scores"]), np.asarray(cal[s]["fail"], bool)
        if bad.any():
            assert (scores[bad] > stricter[s]).mean() >= 0.95 - 1e-9
    with pytest.raises(ValueError, match="recall"):
        thresholds_for_recall(1.5)


def test_grad_cam_is_a_normalised_map():
    net = shipped_model()
    maps = torch.randn(3, 4, 128, 128)
    kinds = kind_index(["left_putamen", "right_caudate", "left_amygdala"])
    logits, cam = grad_cam(net, maps, kinds, net.scalar_mean[kinds])
    assert logits.shape == (3,) and cam.shape == (3, 128, 128)
    assert float(cam.min()) >= 0 and float(cam.max()) <= 1 + 1e-6


@pytest.fixture(scope="session")
def evaluation_shapes():
    """P(FAIL) and truth of damaged and undamaged shapes of test map 17, per family."""
    from bids_qc.synth.labelmaps import load_label_map
    from bids_qc.synth.shape_damage import damage_shape
    from bids_qc.training.shapeqc_data import deform_crop, subcortical_crop

    shared_path("synthseg_label_maps", "training_seg_17.nii.gz")
    lm = load_label_map(17, "eval")
    crop, caff = subcortical_crop(lm.labels, lm.affine)
    crops = [crop, deform_crop(crop, caff, np.random.default_rng(1))]
    net = shipped_model()
    passes = []
    for c in crops:
        passes += [r.pfail for r in predict(net, c, caff)[0]]
    rng = np.random.default_rng(5)
    fams = {}
    for fam in FAMILIES:
        p, bad = [], []
        for i in range(N_PER_FAMILY):
            s = SUBCORTICAL_NAMES[i % len(SUBCORTICAL_NAMES)]
            case = damage_shape(crops[i % 2], s, fam, 1000 + i, float(rng.uniform(0.3, 1.0)))
            res = predict(net, case.labels, caff, (s,))[0]
            if res:
                p.append(res[0].pfail)
                bad.append(case.fail)
        fams[fam] = (np.array(p), np.array(bad, bool))
    return np.array(passes), fams


@pytest.mark.parametrize("family", FAMILIES)
def test_fail_scores_above_pass(evaluation_shapes, family):
    passes, fams = evaluation_shapes
    p, bad = fams[family]
    assert bad.sum() >= 15, f"{family}: only {bad.sum()} FAIL shapes"
    scores = np.concatenate([p[bad], passes])
    truth = np.concatenate([np.ones(bad.sum(), bool), np.zeros(len(passes), bool)])
    auc = roc_auc(scores, truth)
    assert auc > 0.8, f"{family}: AUC {auc:.3f}"


def test_interface_writes_metrics_and_figures(tmp_path):
    import nibabel as nib

    from bids_qc.inputs import QCInput, qc_input_to_dict
    from bids_qc.interfaces.shapeqc import SHAPEQC_METRICS, ShapeQC
    from bids_qc.synth.phantom import make_phantom

    labels, affine = make_phantom((96, 96, 96), voxel_size=2.0)
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "aseg.nii.gz"))
    row = QCInput("sub-01_T1w", {"subject": "01"}, seg=tmp_path / "aseg.nii.gz",
                  seg_kind="aseg")
    out = tmp_path / "out"
    node = ShapeQC(qc_input=qc_input_to_dict(row), output_dir=str(out),
                   thresholds={"shapeqc_pfail_left_thalamus": 0.0})
    result = node.run(cwd=str(tmp_path)).outputs.result
    m = result["metrics"]
    assert not result["errors"] and set(m) == set(SHAPEQC_METRICS)
    assert m["shapeqc_flag_left_thalamus"] == 1  # threshold 0 given: flagged
    flags = [m[f"shapeqc_flag_{s}"] for s in SUBCORTICAL_NAMES]
    assert m["shapeqc_nflagged"] == sum(f for f in flags if f is not None)
    # Figures are drawn in the node's directory and reach OUTPUT_DIR through the sink.
    from bids_qc.sink import publish

    assert sorted(result["publish"].values()) == sorted(
        result["provenance"]["gradcam"].values())
    assert not (out / "sub-01").exists()
    publish([result], out)
    for path in result["provenance"]["gradcam"].values():
        png = out / path
        assert png.parent == out / "sub-01" / "figures" and png.stat().st_size < 150_000
    assert "left_thalamus" in result["provenance"]["gradcam"]


def test_app_writes_columns_and_figures(tmp_path):
    from bids_qc.cli import run
    from bids_qc.demo import SUBJECTS, build_dataset

    # One demo subject with a FreeSurfer aseg, at 2 mm, keeps the test short.
    bids, _ = build_dataset(tmp_path, [s for s in SUBJECTS if s.derivative == "freesurfer"][:1],
                            seed=3, zoom=2.0)
    out = tmp_path / "out"
    assert run([str(bids), str(out), "participant", "--models", "shapeqc", "--nprocs", "1",
                "--shapeqc-recall", "0.9", "--verbose-reports"]) == 0
    assert run([str(bids), str(out), "group"]) == 0
    with open(out / "group_T1w.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    done = [r for r in rows if r["shapeqc_nflagged"] != "n/a"]
    assert done, "no image got ShapeQC values"
    for r in done:
        assert all(r[f"shapeqc_flag_{s}"] in ("0", "1", "n/a") for s in SUBCORTICAL_NAMES)
        sub = r["bids_name"].split("_")[0]
        res = json.loads(next((out / sub).rglob(f"{r['bids_name']}.json")).read_text())
        prov = res["provenance"]["stages"]["shapeqc"]
        expected = thresholds_for_recall(0.9)
        assert prov["thresholds"]["shapeqc_pfail_left_thalamus"] == pytest.approx(
            expected["left_thalamus"], abs=1e-6)
        figs = list((out / sub).rglob("figures/*shapeqc*.png"))
        assert len(figs) == len(prov["gradcam"]) > 0
        html = (out / f"{r['bids_name']}.html").read_text()
        assert "Grad-CAM" in html
