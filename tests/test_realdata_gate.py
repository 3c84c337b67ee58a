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
def test_run(tmp_path_factory):
    data = require_shared_data()
    if not REGISTRATIONS.is_dir():
        pytest.fail(f"{REGISTRATIONS} (the shipped registrations) is missing")
    root = tmp_path_factory.mktemp("real_test")
    build_dataset(data, "test", root / "test", log=lambda _: None)
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
