"""The shipped real-data figures hold: the app, run on the good real test images, flags what
the records say, and the planted-failure builders give exact truth on a real person."""

from __future__ import annotations

import numpy as np
import pytest

from bids_qc.models.gate import realdata
from bids_qc.models.registry import REGISTRY
from bids_qc.training.real_damage import plant_dice
from bids_qc.training.real_gate import false_flags, read_results, run_app, verdicts
from bids_qc.training.real_sets import REGISTRATIONS, build_dataset, good_images, segmentation
from tests.conftest import require_shared_data


def test_good_images_leave_out_the_exclusions_and_keep_the_split():
    data = require_shared_data()
    test = good_images(data, "test")
    items = {(im.dataset, im.item) for im in test}
    assert ("scanners", "ge_signa_pioneer_mprage") not in items      # the phantom
    assert ("voxelmorph_subject", "test_vol") in items
    assert not items & {(im.dataset, im.item) for im in good_images(data, "calibration")}
    assert len({im.label for im in test}) == len(test)                # BIDS labels unique


def test_the_mosaic_shows_every_image_of_the_part_exclusions_included(tmp_path):
    data = require_shared_data()
    from bids_qc.training.real_sets import mosaic

    path = mosaic(data, "test", tmp_path / "test.png")
    import matplotlib.image as mpimg

    assert mpimg.imread(path).shape[0] > 400     # five rows of eight images


def test_planted_dice_is_exact_on_a_real_segmentation():
    data = require_shared_data()
    person = next(im for im in good_images(data, "calibration") if im.seg_kind == "muse")
    labels, _ = segmentation(person)
    rng = np.random.default_rng(0)
    for family in ("erode", "dilate"):
        for target in (0.45, 0.69, 0.9):
            planted = plant_dice(labels, "left_putamen", family, target, rng)
            assert planted.dice == pytest.approx(target, abs=0.01)
            changed = labels != planted.labels
            before, after = np.isin(labels, (12,)), np.isin(planted.labels, (12,))
            if family == "erode":   # only the structure's own voxels were given away
                assert before[changed].all() and not after[changed].any()
            else:                   # only neighbours' voxels were taken
                assert after[changed].all() and not before[changed].any()


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    data = require_shared_data()
    if not REGISTRATIONS.is_dir():
        pytest.fail(f"{REGISTRATIONS} (the shipped registrations) is missing")
    root = tmp_path_factory.mktemp("real_test")
    build_dataset(data, "test", root / "test", log=lambda _: None)
    return root


@pytest.fixture(scope="module")
def test_run(test_set):
    root = test_set
    models = [s.name for s in REGISTRY if s.name != "vinn" and realdata(s.name)]
    run_app(root / "test", root / "out", models)
    return read_results(root / "out"), models


def test_false_flag_rates_on_good_real_test_images_match_the_records(test_run):
    results, models = test_run
    assert models, "no model has a real-data record"
    for name in models:
        record = realdata(name)["good"]["test"]
        again = false_flags(verdicts(results, name))
        assert again["n"] == record["n"], name
        assert abs(again["flagged"] - record["flagged"]) <= 1, (name, again, record)


@pytest.mark.parametrize("model", ["regqc", "segqc"])
def test_shipped_weights_reproduce_the_named_planted_test_cases(test_set, model):
    """The record's ten named planted test cases, planted again and scored with the shipped
    weights, give the record's error within 10%."""
    from bids_qc.training.real_planted import (
        dice_errors,
        replay_misregistration,
        score_planted_segmentation,
        seg_pair,
        template_grid,
    )

    record = realdata(model)
    assert record is not None, f"{model} has no real-data record for its shipped weights"
    named = record["named_cases"]["test"]
    cases = named["cases"]
    assert len(cases) == 10 and len({c["image"] for c in cases}) > 3
    dataset = test_set / "test"
    if model == "regqc":
        grid = template_grid()
        again = np.array([replay_misregistration(dataset, c, grid=grid)["regqc_rmse_mm"]
                          for c in cases])  # fmt: skip
        truth = np.array([c["rmse_mm"] for c in cases])
        mae = float(np.mean(np.abs(again - truth)))
    else:
        scored = []
        for c in cases:
            s = score_planted_segmentation(seg_pair(dataset, c["image"]), c, manifold=False)
            assert s["dice"] == pytest.approx(c["dice"], abs=1e-9)   # the same damage again
            scored.append({**c, **s})
        mae = dice_errors(scored, "segqc")["structure_mae"]
    assert named["mae"] > 0
    assert mae == pytest.approx(named["mae"], rel=0.10), (mae, named["mae"])


def test_dice_errors_per_structure_and_worst():
    from bids_qc.structures import STRUCTURE_NAMES
    from bids_qc.training.real_planted import dice_errors, named_cases

    n = len(STRUCTURE_NAMES)
    cases = []
    for k in range(12):
        true = [1.0] * n
        true[2] = 0.5                   # left caudate damaged in every case
        true[5] = None                  # absent from both: no error counted
        pred = [0.9] * n
        pred[2] = 0.8
        cases.append({"image": f"sub-{k}", "structure": "left_caudate", "family": "erode",
                      "target": 0.5, "seed": k, "dice": 0.5, "true_all": true,
                      "segqc_all": pred})
    e = dice_errors(cases, "segqc")
    assert e["worst_structure"] == "left_caudate"
    assert e["worst_structure_mae"] == pytest.approx(0.3)
    assert np.isnan(e["per_structure_mae"][STRUCTURE_NAMES[5]])
    assert e["structure_mae"] == pytest.approx((0.1 * (n - 2) + 0.3) / (n - 1))
    named = named_cases(cases, "segqc")
    assert len(named["cases"]) == 10 and named["mae"] == pytest.approx(e["structure_mae"])
    assert {"seed", "target", "family"} <= set(named["cases"][0])
