"""VINN's real-data evaluation: volumes, plausibility, outside-brain labels, the record and
its gate (small phantoms; no shared data needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bids_qc.models import gate
from bids_qc.models import volumes as V
from bids_qc.synth.phantom import make_phantom
from bids_qc.training import vinn_realdata as ev


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((48, 48, 48), voxel_size=1.5)


def _bounds_around(volumes, width=0.2):
    sc = V.scaled(volumes)
    return {"scaled": {n: [v * (1 - width), v * (1 + width)] for n, v in sc.items()},
            "lr_ratio": list(V.LR_RATIO)}


def test_volumes_leave_out_non_brain_and_scale_by_the_brain(phantom):
    labels, affine = phantom
    vols = ev.reference_volumes(labels, affine)
    brain = np.isin(labels, [507, 511, 24, 0])
    assert vols["brain"] == pytest.approx((~brain).sum() * 1.5 ** 3)
    assert vols["left_hippocampus"] == pytest.approx((labels == 17).sum() * 1.5 ** 3)
    sc = V.scaled(vols)
    assert sc["left_hippocampus"] == pytest.approx(vols["left_hippocampus"] / vols["brain"])
    # Scaling removes head size: the same anatomy at twice the voxel volume scales equally.
    big = ev.reference_volumes(labels, np.diag([3.0, 1.5, 1.5, 1.0]))
    assert V.scaled(big)["left_putamen"] == pytest.approx(sc["left_putamen"])


def test_plausibility_catches_a_shrunken_structure_and_an_asymmetry(phantom):
    labels, affine = phantom
    vols = ev.reference_volumes(labels, affine)
    bounds = _bounds_around(vols)
    assert V.implausible(vols, bounds) == []
    lopsided = labels.copy()
    idx = np.argwhere(lopsided == 11)  # left caudate loses half its voxels
    lopsided[tuple(idx[: len(idx) // 2].T)] = 2
    reasons = V.implausible(ev.reference_volumes(lopsided, affine), bounds)
    assert any(r.startswith("left_caudate") for r in reasons)
    assert any(r.startswith("caudate left/right ratio") for r in reasons)
    assert not any("putamen" in r for r in reasons)


def test_outside_counts_brain_labels_beyond_4_mm_of_the_reference_brain(phantom):
    labels, affine = phantom
    pred = labels.copy()
    assert ev.outside_cm3(pred, labels, affine) == 0.0
    # A brain label in the corner of the field of view, far from the brain, counts whole.
    pred[0, 0, 0] = 3
    assert ev.outside_cm3(pred, labels, affine) == pytest.approx(1.5 ** 3 / 1000)
    # Scalp called cortex: most of it lies beyond 4 mm of the brain.
    scalp = labels == 507
    pred[scalp] = 3
    out = ev.outside_cm3(pred, labels, affine)
    assert 0.5 * scalp.sum() * 1.5 ** 3 / 1000 < out <= (scalp.sum() + 1) * 1.5 ** 3 / 1000
    # One voxel layer of brain grown into the CSF is within 4 mm: it does not count.
    from scipy import ndimage as ndi

    grown = labels.copy()
    ring = ndi.binary_dilation(V.brain_voxels(labels)) & ~V.brain_voxels(labels)
    grown[ring] = 3
    assert ev.outside_cm3(grown, labels, affine) == 0.0


def test_dice_and_the_record_decide_the_gate(tmp_path, phantom, monkeypatch):
    labels, affine = phantom
    perfect = ev.subcortical_dice(labels, labels)
    assert perfect["subcortical_mean"] == pytest.approx(1.0)
    vols = ev.reference_volumes(labels, affine)

    def image(item, protocol, dice, plausible=True):
        rec = {"dataset": "d", "item": item, "cpu_s": 1.0, "brain_l": 1.2,
               "implausible": [] if plausible else ["left_caudate too small"]}
        if protocol:
            rec.update(protocol=protocol, outside_cm3=0.0,
                       dice={**{n: dice for n in ev.SUBCORTICAL_NAMES},
                             "subcortical_mean": dice})
        return rec

    sha = "ab" * 32
    bounds = tmp_path / "bounds.json"
    bounds.write_text(json.dumps(_bounds_around(vols)))
    monkeypatch.setattr(V, "BOUNDS_FILE", bounds)
    for part, images in {"calibration": [image("a", "freesurfer", 0.9)],
                         "test": [image("b", "freesurfer", 0.88), image("c", "dlmuse", 0.78),
                                  image("e", "dlmuse", 0.84), image("f", "", None)]}.items():
        (tmp_path / f"{part}_{sha[:12]}.json").write_text(
            json.dumps({"sha256": sha, "part": part, "images": images}))
    monkeypatch.setattr(V, "load_bounds", lambda path=bounds: json.loads(bounds.read_text()))
    record = ev.make_record(tmp_path, sha, "9.9.9")
    assert record["kind"] == "segmenter" and record["sha256"] == sha
    assert record["dice"]["test"]["freesurfer"] == pytest.approx(0.88)
    assert record["dice"]["test"]["dlmuse"] == pytest.approx(0.81)
    assert record["volumes"]["test"] == {"n": 4, "implausible": []}
    assert gate.gate_decision(record)["passes"]
    # One implausible test image is enough to keep it experimental.
    (tmp_path / f"test_{sha[:12]}.json").write_text(json.dumps(
        {"sha256": sha, "part": "test", "images": [image("b", "freesurfer", 0.9, False)]}))
    record = ev.make_record(tmp_path, sha, "9.9.9")
    assert not gate.gate_decision(record)["passes"]
    # Without an evaluation of those weights there is no record.
    with pytest.raises(ValueError, match="no evaluation"):
        ev.make_record(tmp_path, "cd" * 32, "9.9.9")


def test_committed_bounds_come_from_training_and_calibration_only():
    bounds = V.load_bounds()
    assert "training and calibration" in bounds["source"] and "test" not in bounds["source"]
    assert set(bounds["scaled"]) == set(ev.SUBCORTICAL_NAMES)
    for low, high in bounds["scaled"].values():
        assert 0 < low < high < 0.02
    assert bounds["lr_ratio"] == list(V.LR_RATIO)


def test_fix_bounds_never_asks_for_the_test_part(monkeypatch, tmp_path, phantom):
    labels, affine = phantom
    asked = []
    monkeypatch.setattr(ev, "ixi_people", lambda data, part: asked.append(part) or ())
    from bids_qc.synth import labelmaps

    class Map:
        pass

    lm = Map()
    lm.labels, lm.affine = labels, affine
    monkeypatch.setattr(labelmaps, "load_label_map", lambda m, split: lm)
    import nibabel as nib

    bert = tmp_path / "freesurfer_bert" / "mri"
    bert.mkdir(parents=True)
    nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), bert / "aseg.mgz")
    with pytest.raises((ValueError, IndexError)):
        ev.fix_bounds(tmp_path)  # no IXI person at all: no percentile
    assert asked == ["training", "calibration"]


def test_mosaic_draws_an_image_on_any_grid(tmp_path, phantom):
    labels, affine = phantom
    # A permuted, flipped, anisotropic grid (as scanners write them).
    lia = np.array([[-1.0, 0, 0, 30], [0, 0, 1.2, -30], [0, -1.5, 0, 30], [0, 0, 0, 1]])
    image = np.where(labels > 0, 100.0, 0.0).astype(np.float32)
    ev.mosaic(image, labels, lia, tmp_path / "m.png", "phantom")
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
