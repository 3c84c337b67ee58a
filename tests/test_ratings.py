"""Ratings back into the models: merging ratings, calibrating thresholds, --thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bids_qc import calibrate, ratings
from bids_qc.cli import UsageError, parse_settings, run
from tests.test_reports_helpers import synthetic_result, write_results


def _download(path, name, *pairs, rater="ab"):
    """A JSON as a participant report's 'download ratings' button saves it."""
    path.write_text(json.dumps({
        "format": "bids_qc-ratings", "version": 1, "bids_name": name, "rater": rater,
        "timestamp": "2026-01-01T00:00:00Z", "bids_qc_version": "0",
        "ratings": [{"check": c, "rating": r, "artefacts": ["motion"], "comment": "a\tb\nc"}
                    for c, r in pairs]}))
    return path


def test_merge_json_and_tsv_later_wins(tmp_path, capsys):
    a = _download(tmp_path / "a.json", "sub-01_T1w", ("regqc_flag", "PASS"))
    b = _download(tmp_path / "b.json", "sub-01_T1w", ("regqc_flag", "FAIL"),
                  ("shapeqc_flag_left_hippocampus", "PASS"))
    tsv = tmp_path / "more.tsv"
    tsv.write_text("bids_name\tcheck\trating\nsub-02_ses-1_T1w\tsegqc_flag\tfail\n")
    with pytest.raises(SystemExit) as stop:
        ratings.main([str(tmp_path), str(a), str(b), str(tsv)])
    assert stop.value.code == 0
    rows = ratings.read_rating_file(tmp_path / ratings.RATINGS_FILE)
    got = {(r["bids_name"], r["check"]): r for r in rows}
    assert len(rows) == 3 and got[("sub-01_T1w", "regqc_flag")]["rating"] == "FAIL"
    assert got[("sub-02_ses-1_T1w", "segqc_flag")]["rating"] == "FAIL"
    assert got[("sub-01_T1w", "regqc_flag")]["comment"] == "a b c"  # one line per rating
    assert "3 rating(s)" in capsys.readouterr().out
    # A second rater's PASS is kept beside the first one's FAIL; any FAIL fails.
    c = _download(tmp_path / "c.json", "sub-01_T1w", ("regqc_flag", "PASS"), rater="cd")
    with pytest.raises(SystemExit):
        ratings.main([str(tmp_path), str(c)])
    rows = ratings.read_rating_file(tmp_path / ratings.RATINGS_FILE)
    assert len(rows) == 4 and ratings.failing(rows)[("sub-01_T1w", "regqc_flag")]


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "not valid JSON"),
    ('{"ratings": []}', "not a bids_qc ratings JSON"),
    ("bids_name\tcheck\n", "needs the columns"),
    ("bids_name\tcheck\trating\nsub-01_T1w\treg_cc\tPASS\n", "not a flag column"),
    ("bids_name\tcheck\trating\nsub-01_T1w\tregqc_flag\tmaybe\n", "must be PASS or FAIL"),
    ("bids_name\tcheck\trating\nsub-01\tregqc_flag\tPASS\n", "not a T1w name"),
])
def test_bad_rating_files_name_the_file(tmp_path, capsys, text, message):
    bad = tmp_path / ("bad.json" if text.startswith("{") else "bad.tsv")
    bad.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        ratings.read_rating_file(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(SystemExit) as stop:
        ratings.main([str(tmp_path), str(bad)])
    assert stop.value.code == 64 and str(bad) in capsys.readouterr().err


def test_enigma_threshold_reaches_recall_with_fewest_flagged():
    scores = np.array([9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    bad = np.array([1, 0, 1, 0, 1, 0, 0, 1, 0, 0], dtype=bool)
    # 80% of 4 failing = 4 (ceil 3.2): the lowest failing score, 2, must be flagged.
    cut = calibrate.enigma_threshold(scores, bad, 0.8)
    assert cut == pytest.approx(1.5)
    cut = calibrate.enigma_threshold(scores, bad, 0.75)  # 3 of 4: down to 5
    assert cut == pytest.approx(4.5)
    assert calibrate.roc_auc(scores, bad) == pytest.approx(17 / 24)  # 6 + 5 + 4 + 2 pairs
    assert calibrate.roc_auc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert np.isnan(calibrate.roc_auc(scores, np.ones(10, dtype=bool)))  # one class
    # the cards' AUCs are this one: ManifoldQC's (good above damaged), the gate's
    from bids_qc.training.manifoldqc_card import auc
    from bids_qc.training.real_planted import auroc

    assert auc(scores[~bad], scores[bad]) == pytest.approx(1 - 17 / 24)
    assert auroc(scores, bad) == pytest.approx(17 / 24) and auroc(scores, ~bad | bad) is None


def _rated_group(tmp_path):
    rmses = [2.0, 3.0, 4.0, 6.0, 9.0, 12.0, 15.0, 30.0]
    dices = [0.9, 0.88, 0.85, 0.8, 0.6, 0.75, 0.5, 0.3]
    results = [synthetic_result(f"sub-{i:02d}_T1w", rmse=r, dice=d, pfail=None)
               for i, (r, d) in enumerate(zip(rmses, dices, strict=True), start=1)]
    write_results(tmp_path, results)
    lines = ["bids_name\tcheck\trating"]
    for i, (r, d) in enumerate(zip(rmses, dices, strict=True), start=1):
        lines.append(f"sub-{i:02d}_T1w\tregqc_flag\t{'FAIL' if r >= 9 else 'PASS'}")
        lines.append(f"sub-{i:02d}_T1w\tsegqc_flag\t{'FAIL' if d < 0.7 else 'PASS'}")
    lines.append("sub-01_T1w\tshapeqc_flag_left_hippocampus\tPASS")  # no values: left out
    (tmp_path / ratings.RATINGS_FILE).write_text("\n".join(lines) + "\n")


def test_calibrate_cli_writes_a_thresholds_file_the_cli_reads(tmp_path, capsys):
    _rated_group(tmp_path)
    with pytest.raises(SystemExit) as stop:
        calibrate.main([str(tmp_path), "--ratings", ratings.RATINGS_FILE, "--recall", "0.8"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    assert "regqc_flag" in printed and "ROC AUC" in printed and "not calibrated" in printed
    doc = json.loads((tmp_path / calibrate.THRESHOLDS_FILE).read_text())
    reg, seg = doc["checks"]["regqc_flag"], doc["checks"]["segqc_flag"]
    # Failing RMSEs 9, 12, 15, 30: 80% needs all 4 (ceil 3.2): cut between 6 and 9.
    assert reg["threshold"] == pytest.approx(7.5) and reg["recall"] == 1.0
    assert reg["review_fraction"] == pytest.approx(4 / 8) and reg["roc_auc"] == 1.0
    # Failing lowest Dice 0.55, 0.45, 0.25 (structure minimum): all 3 needed.
    assert seg["direction"] == "below" and seg["threshold"] == pytest.approx((0.55 + 0.7) / 2)
    settings = parse_settings(["/b", "/o", "participant", "--regqc-threshold-mm", "20",
                               "--thresholds", str(tmp_path / calibrate.THRESHOLDS_FILE)])
    assert settings.thresholds["regqc_rmse_mm"] == pytest.approx(7.5)  # the file wins
    assert settings.thresholds["segqc_dice"] == pytest.approx(0.625)


@pytest.mark.parametrize(("content", "message"), [
    ("{", "not valid JSON"),
    ('{"format": "other"}', "not a bids_qc thresholds file"),
    ('{"format": "bids_qc-thresholds", "version": 9, "checks": {}}', "version 9"),
    ('{"format": "bids_qc-thresholds", "version": 1, "checks": {"reg_cc": {"threshold": 1}}}',
     "not a check"),
    ('{"format": "bids_qc-thresholds", "version": 1, "checks": {"regqc_flag": {}}}',
     "finite number"),
    ('{"format": "bids_qc-thresholds", "version": 1, "checks": {"regqc_flag": '
     '{"threshold": 5, "direction": "below"}}}', "uses 'above'"),
])
def test_bad_thresholds_file_is_a_usage_error(tmp_path, capsys, content, message):
    path = tmp_path / "thr.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message) as err:
        parse_settings(["/b", "/o", "participant", "--thresholds", str(path)])
    assert str(path) in str(err.value)
    assert run([str(tmp_path), str(tmp_path / "out"), "participant", "--thresholds",
                str(path)]) == 64
    assert str(path) in capsys.readouterr().err


def test_shapeqc_thresholds_are_per_structure(tmp_path):
    path = tmp_path / "shape.json"
    path.write_text(json.dumps({"format": "bids_qc-thresholds", "version": 1, "checks": {
        "shapeqc_flag_left_hippocampus": {"threshold": 0.35, "metric":
                                          "shapeqc_pfail_left_hippocampus"}}}))
    assert calibrate.read_thresholds(path) == {"shapeqc_pfail_left_hippocampus": 0.35}
    res = synthetic_result("sub-01_T1w", pfail=0.4,
                           thresholds={"shapeqc_pfail_left_hippocampus": 0.35})
    from bids_qc.reports.checks import evaluate

    shape = {o.spec.flag: o for o in evaluate(res)}["shapeqc_flag_left_hippocampus"]
    assert shape.threshold == 0.35 and shape.ratio == pytest.approx(0.4 / 0.35)


def test_demo_truth_becomes_ratings():
    truth = [{"bids_name": "sub-01_T1w", "true_rmse_mm": 25.0, "true_dice_min": 1.0,
              "true_dice_left_hippocampus": 1.0},
             {"bids_name": "sub-02_T1w", "true_rmse_mm": 6.0, "true_dice_min": 0.6,
              "true_dice_left_hippocampus": 0.65}]
    rows = ratings.ratings_from_truth(truth)
    assert ratings.failing(rows) == {
        ("sub-01_T1w", "regqc_flag"): True, ("sub-01_T1w", "segqc_flag"): False,
        ("sub-02_T1w", "regqc_flag"): False, ("sub-02_T1w", "segqc_flag"): True}
    assert ratings.failing_images(rows) == {"sub-01_T1w": True, "sub-02_T1w": True}
