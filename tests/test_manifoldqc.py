"""ManifoldQC: crop and search mechanics, shipped weights, accuracy on evaluation maps, app."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bids_qc.models import manifoldqc as mq
from bids_qc.models.registry import get_spec, sha256sum
from bids_qc.structures import SUBCORTICAL_NAMES
from bids_qc.synth.phantom import make_phantom

from .conftest import shared_path

CARD = Path(mq.__file__).parent / "cards" / "manifoldqc.md"


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(2)


def test_crop_is_centred_on_the_structures_and_pads():
    classes = np.zeros((80, 96, 80), dtype=np.uint8)
    classes[30:40, 50:60, 20:30] = 3
    origin = mq.crop_origin(classes)
    centre = origin + (np.asarray(mq.CROP_SHAPE) - 1) / 2
    np.testing.assert_allclose(centre, [34.5, 54.5, 24.5], atol=0.5)
    out = mq.crop(classes, origin)
    assert out.shape == mq.CROP_SHAPE and out.sum() == classes.sum()
    # A crop leaving the volume is padded with zeros, not shifted.
    edge = mq.crop(np.ones((10, 10, 10), dtype=np.uint8), np.array([-5, 0, 8]))
    assert edge.sum() == 10 * 10 * 2  # x 0..9, y 0..9, z 8..9
    with pytest.raises(ValueError, match="none of the 14"):
        mq.crop_origin(np.zeros((8, 8, 8), dtype=np.uint8))


def test_preprocess_any_grid_and_surrogate_back_to_the_input_grid():
    labels, affine = make_phantom((56, 56, 56), voxel_size=3.0)
    image = np.where(labels > 0, 40 + (labels % 9) * 10, 0).astype(np.float32)
    prep = mq.preprocess(image, affine, labels, affine)
    assert prep.image.shape == prep.classes.shape == mq.CROP_SHAPE
    present = {int(c) for c in np.unique(prep.classes)}
    assert present == set(range(mq.N_CLASSES))  # the phantom has all 14 structures
    # The input classes mapped back to the input grid give back its subcortical codes.
    back = mq.surrogate_to_labels(prep.classes, prep.affine, labels.shape, affine)
    sub = np.isin(labels, [10, 11, 12, 13, 17, 18, 26, 49, 50, 51, 52, 53, 54, 58])
    assert np.mean(back[sub] == labels[sub]) > 0.9
    assert np.all(back[~sub & (back > 0)] > 0)  # only subcortical codes are written
    assert set(np.unique(back)) <= {0, 10, 11, 12, 13, 17, 18, 26, 49, 50, 51, 52, 53, 54, 58}


def test_random_network_shapes_and_bad_input():
    torch.manual_seed(0)
    net = mq.ManifoldVAE(latent=4).eval()
    x = mq.to_tensor(np.zeros(mq.CROP_SHAPE, np.float32), np.ones(mq.CROP_SHAPE, np.uint8))
    image, logits, mu, _ = net(x[None])
    assert image.shape == (1, *mq.CROP_SHAPE) and logits.shape == (1, mq.N_CLASSES,
                                                                    *mq.CROP_SHAPE)
    assert mu.shape == (1, 4)
    with pytest.raises(ValueError, match="expects"):
        net.encode(torch.zeros(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="at least one"):
        mq.predict([], model=net)


def test_shipped_weights_match_registry_and_card():
    spec = get_spec("manifoldqc")
    assert spec.is_installed()
    assert sha256sum(spec.weights_path()) == spec.sha256
    assert spec.sha256 in CARD.read_text()
    assert spec.weights_path().stat().st_size < 4 * 1024**2
    assert spec.needs == ("seg", "t1w")
    net = mq.load_model("cpu")
    assert mq.load_model("cpu") is net  # loaded once per process
    assert float(net.z_scale.min()) > 0  # the search's unit was set after training


@pytest.fixture(scope="module")
def eval_pairs():
    """Good and damaged pairs of the evaluation maps 17-20 (never trained on), exact Dice.

    Built on SegQC's 2 mm box (damage there, Dice there) to stay cheap: one 2 mm synthesis
    per map (contrasts t1 / t1_wide alternating), each good + 7 damaged copies = 32 pairs.
    """
    shared_path("synthseg_label_maps", "training_seg_17.nii.gz")
    from bids_qc.models.segqc import conform, group_index
    from bids_qc.synth.damage import DAMAGE_FAMILIES
    from bids_qc.synth.labelmaps import load_label_map
    from bids_qc.synth.synthesize import synthesize
    from bids_qc.training.segqc import fast_dice

    rng = np.random.default_rng(77)
    families = ("erosion", "misalignment", "missing", "lr_swap", "dilation", "merge")
    pairs, truths, damaged = [], [], []
    for m in (17, 18, 19, 20):
        lm = load_label_map(m, "eval")
        contrast = ("t1", "t1_wide")[m % 2]
        case = synthesize(lm.labels, lm.affine, 9100 + m, contrast, resolution=2.0,
                          split="eval")  # fmt: skip
        img, lab = conform(case.image, case.affine, case.labels, case.affine)
        true_groups = group_index(lab)
        for k in range(8):
            seg = lab
            if k:
                family = families[(m + k) % len(families)]
                seg = DAMAGE_FAMILIES[family](lab, np.random.default_rng(int(
                    rng.integers(2**31))), float(rng.uniform(0.5, 1.0)), image=img)
            groups = group_index(seg)
            truths.append(fast_dice(true_groups, groups)[: mq.N_STRUCT])
            damaged.append(k > 0)
            pairs.append(mq.prepare_from_box(img, groups))
    result = mq.predict(pairs, model=mq.load_model("cpu"), steps=10)
    return result, np.array(truths, dtype=np.float64), np.array(damaged)


def test_search_reduces_the_reconstruction_loss(eval_pairs):
    result, _, _ = eval_pairs
    assert result.steps > 1
    assert np.all(result.loss_end <= result.loss_start)
    assert np.mean(result.loss_end) < 0.99 * np.mean(result.loss_start)


def test_good_pairs_score_higher_than_damaged_ones(eval_pairs):
    from bids_qc.training.manifoldqc_card import auc

    result, truth, damaged = eval_pairs
    assert len(truth) >= 30 and damaged.sum() >= 10
    score = mq.to_dice(result.dice).mean(axis=1)
    assert auc(score[~damaged], score[damaged]) > 0.8


def test_dice_error_beats_a_constant_predictor(eval_pairs):
    result, truth, _ = eval_pairs
    pred = mq.to_dice(result.dice)
    ok = np.isfinite(truth)
    mae = np.mean(np.abs(pred - truth)[ok])
    const = np.mean(np.abs(truth[ok] - truth[ok].mean()))
    assert mae < const, (mae, const)


def test_app_writes_columns_and_surrogate(tmp_path):
    from bids_qc.cli import run
    from bids_qc.schema import column_names

    from .fakebids import add_freesurfer, make_raw

    labels, affine = make_phantom((56, 56, 56), voxel_size=3.0)
    image = np.where(labels > 0, 40 + (labels % 9) * 10, 0).astype(np.float32)
    bids = make_raw(tmp_path / "bids", ["01"], data=image, affine=affine)
    add_freesurfer(bids, "01", arrays={"aseg": labels, "norm": image}, affine=affine)
    out = tmp_path / "out"
    code = run([str(bids), str(out), "participant", "--models", "manifoldqc",
                "--manifoldqc-threshold", "0.5", "--nprocs", "1"])  # fmt: skip
    assert code == 0
    res = json.loads((out / "sub-01" / "anat" / "sub-01_T1w.json").read_text())
    metrics = res["metrics"]
    cols = [f"manifoldqc_dice_{n}" for n in SUBCORTICAL_NAMES]
    assert all(c in column_names() for c in [*cols, "manifoldqc_dice_mean", "manifoldqc_flag"])
    dice = [metrics[c] for c in cols]
    assert all(0 <= d <= 1 for d in dice)
    assert metrics["manifoldqc_flag"] == int(min(dice) < 0.5)
    prov = res["provenance"]["stages"]["manifoldqc"]
    assert prov["threshold"] == 0.5 and prov["weights_sha256"] == get_spec("manifoldqc").sha256
    dseg = out / "sub-01" / "anat" / "sub-01_desc-manifoldqc_dseg.nii.gz"
    assert prov["surrogate_seg"] == str(dseg) and dseg.is_file()
    img = nib.load(str(dseg))
    assert img.shape == labels.shape and np.allclose(img.affine, affine)
    assert set(np.unique(np.asarray(img.dataobj))) - {0} <= {10, 11, 12, 13, 17, 18, 26, 49,
                                                             50, 51, 52, 53, 54, 58}
    assert "manifoldqc" in (out / "sub-01_T1w.html").read_text().lower()
