"""SegQC: network shapes, shipped weights, accuracy on evaluation maps, the nipype node."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bids_qc.inputs import QCInput, qc_input_to_dict
from bids_qc.models import segqc
from bids_qc.models.registry import get_spec, sha256sum
from bids_qc.structures import STRUCTURE_NAMES
from bids_qc.synth.phantom import make_phantom

from .conftest import shared_path

CARD = Path(segqc.__file__).parent / "cards" / "segqc.md"


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(2)


def test_random_network_outputs_dice_per_structure():
    torch.manual_seed(0)
    net = segqc.SegQCNet().eval()
    x = torch.rand(2, segqc.IN_CHANNELS, *segqc.GRID_SHAPE)
    out = segqc.predict(x, model=net)
    assert out.shape == (2, len(STRUCTURE_NAMES)) == (2, 20)
    assert np.all((out >= 0) & (out <= 1))
    with pytest.raises(ValueError, match="expects"):
        net(torch.zeros(1, 3, 8, 8, 8))


def test_fast_dice_matches_the_engine():
    from bids_qc.synth.damage import damage
    from bids_qc.synth.metrics import structure_dice
    from bids_qc.training.segqc import fast_dice

    labels, _ = make_phantom((40, 40, 40))
    for family in ("misalignment", "lr_swap", "missing", "erosion"):
        seg = damage(labels, family, 3, 0.8).labels
        ref = structure_dice(labels, seg)
        got = fast_dice(segqc.group_index(labels), segqc.group_index(seg))
        want = np.array([ref[n] for n in STRUCTURE_NAMES])
        np.testing.assert_allclose(got, want, atol=1e-6, equal_nan=True)


def test_preprocess_any_grid_and_bad_input():
    labels, affine = make_phantom((48, 40, 44), voxel_size=3.0)
    image = (labels > 0).astype(np.float32) * 100 + labels % 7
    x = segqc.preprocess(image, affine, labels, affine)
    assert tuple(x.shape) == (segqc.IN_CHANNELS, *segqc.GRID_SHAPE)
    assert float(x[1:].sum(0).max()) == 1.0  # one-hot: at most one group per voxel
    # The same anatomy stored flipped and with two axes swapped gives the same input.
    def reorder(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.flip(np.transpose(a, (0, 2, 1)), 0))

    new_to_old = np.array([[-1, 0, 0, labels.shape[0] - 1], [0, 0, 1, 0], [0, 1, 0, 0],
                           [0, 0, 0, 1]], dtype=float)  # fmt: skip
    other = affine @ new_to_old
    y = segqc.preprocess(reorder(image), other, reorder(labels), other)
    assert torch.mean((x != y).float()) < 0.001
    with pytest.raises(ValueError, match="integer"):
        segqc.preprocess(image, affine, labels.astype(np.float32) + 0.5, affine)
    with pytest.raises(ValueError, match="3-D"):
        segqc.preprocess(image[0], affine, labels, affine)
    with pytest.raises(ValueError, match="none of the contract"):
        segqc.preprocess(image, affine, np.where(labels > 100, labels, 0), affine)


def test_shipped_weights_match_registry_and_card():
    spec = get_spec("segqc")
    assert spec.is_installed()
    assert sha256sum(spec.weights_path()) == spec.sha256
    assert spec.sha256 in CARD.read_text()
    assert spec.weights_path().stat().st_size < 8 * 1024**2
    net = segqc.load_model("cpu")
    assert segqc.load_model("cpu") is net  # loaded once per process


def test_accuracy_on_evaluation_maps():
    """Mean-Dice error on 32 cases of the evaluation maps (17-20), never seen in training."""
    shared_path("synthseg_label_maps", "training_seg_17.nii.gz")
    from bids_qc.synth.damage import damage
    from bids_qc.synth.labelmaps import load_label_map
    from bids_qc.synth.synthesize import synthesize

    rng = np.random.default_rng(2024)
    families = ("erosion", "dilation", "misalignment", "missing", "merge", "lr_swap",
                "partial_volume", "leak")  # fmt: skip
    xs, truths = [], []
    for m in (17, 18, 19, 20):
        lm = load_label_map(m, "eval")
        case = synthesize(lm.labels, lm.affine, 7000 + m, "t1", resolution=2.0, split="eval")
        for k, family in enumerate(families):
            severity = 0.0 if k == 0 else float(rng.uniform(0.1, 1.0))
            d = damage(case.labels, family, 100 * m + k, severity, image=case.image)
            xs.append(segqc.preprocess(case.image, case.affine, d.labels, case.affine))
            truths.append(np.nanmean([d.dice[n] for n in STRUCTURE_NAMES]))
    pred = np.concatenate([segqc.predict(torch.stack(xs[i : i + 8]))
                           for i in range(0, len(xs), 8)]).mean(axis=1)  # fmt: skip
    truth = np.array(truths)
    mae = float(np.mean(np.abs(pred - truth)))
    const = float(np.mean(np.abs(truth - truth.mean())))
    assert mae < 0.08, (mae, const)
    assert mae < 0.5 * const, (mae, const)


def _write_case(tmp_path: Path, labels: np.ndarray, affine: np.ndarray) -> dict:
    image = np.where(labels > 0, 40 + (labels % 9) * 10, 0).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "norm.nii.gz"))
    nib.save(nib.Nifti1Image(labels.astype(np.int32), affine), str(tmp_path / "aseg.nii.gz"))
    row = QCInput("sub-01_T1w", {"subject": "01"}, seg=tmp_path / "aseg.nii.gz",
                  seg_kind="aseg", seg_reference=tmp_path / "norm.nii.gz")  # fmt: skip
    return qc_input_to_dict(row)


def test_interface_returns_stage_result(tmp_path):
    from bids_qc.interfaces.segqc import SEGQC_METRICS, SegQC

    labels, affine = make_phantom((56, 56, 56), voxel_size=3.0)
    node = SegQC(qc_input=_write_case(tmp_path, labels, affine), classic_result={},
                 device="cpu", thresholds={"segqc_dice": 0.7})  # fmt: skip
    result = node.run(cwd=str(tmp_path)).outputs.result
    assert result["stage"] == "segqc" and not result["errors"] and not result["skipped"]
    assert set(result["metrics"]) == set(SEGQC_METRICS)
    dice = [result["metrics"][f"segqc_dice_{n}"] for n in STRUCTURE_NAMES]
    assert all(0 <= d <= 1 for d in dice)
    assert result["metrics"]["segqc_flag"] == int(min(dice) < 0.7)
    assert result["provenance"]["weights_sha256"] == get_spec("segqc").sha256


def test_interface_skips_non_freesurfer_codes_and_records_errors(tmp_path):
    from bids_qc.interfaces.segqc import SegQC

    labels, affine = make_phantom((32, 32, 32))
    tissue = np.where(labels > 0, 1 + labels % 3, 0)  # a 3-class map, not FreeSurfer's codes
    result = SegQC(qc_input=_write_case(tmp_path, tissue, affine)).run(
        cwd=str(tmp_path)).outputs.result  # fmt: skip
    assert result["skipped"] and "not FreeSurfer's" in result["skipped"][0]["reason"]
    assert result["metrics"]["segqc_flag"] is None and not result["errors"]
    # A missing file becomes an error record, not a crash.
    qc = _write_case(tmp_path, labels, affine)
    qc["seg"] = str(tmp_path / "absent.nii.gz")
    result = SegQC(qc_input=qc).run(cwd=str(tmp_path)).outputs.result
    assert result["errors"] and result["errors"][0]["stage"] == "segqc"


def test_a_paused_sitting_with_a_data_worker_equals_an_uninterrupted_one(tmp_path):
    """The recipe's sitting: batches prefetched by a worker process (paused after every step)
    give the weights of an uninterrupted sitting that makes them in-process (1 thread)."""
    from bids_qc.training import segqc as recipe

    labels, _ = make_phantom(recipe.POOL_SHAPE, voxel_size=2.0)
    one = tmp_path / "case.npz"
    np.savez(one, image=np.where(labels > 0, 0.3 + (labels % 7) * 0.1, 0).astype(np.float16),
             labels=labels.astype(np.int16), resolution=np.full(3, 2.0))  # fmt: skip
    cache = tmp_path / "cache"
    cache.mkdir()
    for m, contrast, s in recipe.pool_keys(1, recipe.DEFAULT_SEED):
        (cache / f"map{m:02d}_{contrast}_{s}.npz").symlink_to(one)
    args = ["--cache", str(cache), "--per-map", "1", "--batch", "2", "--steps", "2",
            "--threads", "1"]  # fmt: skip
    recipe.main([*args, "--out", str(tmp_path / "whole"), "--workers", "0"])
    for _ in range(3):
        recipe.main([*args, "--out", str(tmp_path / "paused"), "--workers", "1",
                     "--pause-after-minutes", "0"])  # fmt: skip
        if json.loads((tmp_path / "paused" / "sitting.json").read_text())["completed"]:
            break  # (a paused sitting has a record too, not completed)
    records = [json.loads((tmp_path / d / "sitting.json").read_text())
               for d in ("whole", "paused")]  # fmt: skip
    assert records[1]["resumes"] >= 1 and records[0]["samples"] == records[1]["samples"] == 4
    assert records[0]["weights_sha256"] == records[1]["weights_sha256"]
    assert records[0]["warm_start"].startswith("shipped segqc.pt")
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model"]
            for d in ("whole", "paused"))  # fmt: skip
    assert all(torch.equal(a[k], b[k]) for k in a)
    # --record-only re-exports the checkpoint's weights: the same file, the same record.
    recipe.main(["--out", str(tmp_path / "whole"), "--record-only"])
    again = json.loads((tmp_path / "whole" / "sitting.json").read_text())
    assert again["completed"] and again["weights_sha256"] == records[0]["weights_sha256"]


def test_single_structure_damage_in_training_reaches_its_drawn_dice():
    """``plant_p=1``: every damage of a sample is one subcortical structure eroded or grown to
    a Dice drawn on the recipe's range, measured on the model grid as the target says."""
    from bids_qc.structures import SUBCORTICAL
    from bids_qc.training import segqc as recipe

    labels, _ = make_phantom(recipe.POOL_SHAPE, voxel_size=2.0)
    image = np.where(labels > 0, 0.3 + (labels % 7) * 0.1, 0).astype(np.float32)
    sub = [STRUCTURE_NAMES.index(s.name) for s in SUBCORTICAL]
    lo, hi = recipe.PLANT_DICE_RANGE
    seen = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        _, groups, target, applied = recipe.make_sample(image, labels, rng, plant_p=1.0)
        if applied != ["plant_one"]:
            continue
        seen += 1
        damaged = np.nanmin(target[sub])
        assert lo - 0.02 <= damaged <= hi + 0.02, (seed, damaged)
        # the damaged structure is the one clearly below the others
        assert np.sum(target[sub] < damaged + 1e-6) == 1
    assert seen >= 5
