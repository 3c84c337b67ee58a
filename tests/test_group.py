"""Group level: table, outlier flags, flags table, review queue, group report."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from bids_qc.group import (
    group_table,
    outlier_bounds,
    outlier_flags,
    to_tsv,
    write_group_outputs,
)
from bids_qc.ratings import RATINGS_FILE
from bids_qc.results import assemble, stage_result
from bids_qc.review import share_to_review
from bids_qc.schema import column_names
from tests.test_reports_helpers import synthetic_result, write_results


def _result(name: str, hippo: float | None, error: str = "") -> dict:
    row = {"bids_name": name, "entities": {"subject": name[4:6]}, "reg_source": "fmriprep",
           "seg_source": "freesurfer", "seg_kind": "aseg", "sources": {}, "candidates": {}}
    metrics = {"reg_cc": 0.9, "vol_left_hippocampus": hippo}
    errors = [{"stage": "segmentation", "file": "/x/aseg.mgz", "problem": error}] if error else []
    return assemble(row, [stage_result("classic", metrics, errors, [], [])],
                    {"inputs": {}, "models": {}}, "cpu")


def _write(tmp_path, results):
    for res in results:
        sub = res["bids_name"].split("_")[0]
        path = tmp_path / sub / "anat" / f"{res['bids_name']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res))


def test_outlier_rules():
    few = pd.Series([100.0, 101, 99, 102, 98, 300, None])
    flags = outlier_flags(few)
    assert flags.tolist()[:6] == [0, 0, 0, 0, 0, 1]
    assert pd.isna(flags.iloc[6])
    # 2.4 lies inside 1.5 IQR (fence 2.5) but beyond 2 SD: flagged only with 10+ images.
    nine = pd.Series([0.0, 0, 0, 0, 1, 1, 1, 1, 2.4])
    ten = pd.Series([0.0, 0, 0, 0, 1, 1, 1, 1, 1, 2.4])
    for values in (nine, ten):
        q1, q3 = np.percentile(values, [25, 75])
        assert values.iloc[-1] < q3 + 1.5 * (q3 - q1)
        assert values.iloc[-1] - values.mean() > 2 * values.std(ddof=1)
    assert outlier_flags(nine).sum() == 0
    assert outlier_flags(ten).tolist()[-1] == 1 and outlier_flags(ten).sum() == 1


def test_group_table_order_and_missing_values(tmp_path):
    results = [_result("sub-02_T1w", 4000.0), _result("sub-01_T1w", None, "bad codes")]
    frame = group_table(results)
    assert list(frame.columns) == column_names()
    assert frame["bids_name"].tolist() == ["sub-01_T1w", "sub-02_T1w"]
    text = to_tsv(frame)
    header, first, second = text.splitlines()
    assert header.split("\t")[0] == "bids_name"
    cells = dict(zip(header.split("\t"), first.split("\t"), strict=True))
    assert cells["vol_left_hippocampus"] == "n/a"
    assert "bad codes" in cells["qc_error"]
    cells2 = dict(zip(header.split("\t"), second.split("\t"), strict=True))
    assert cells2["vol_left_hippocampus"] == "4000"
    assert cells2["vol_left_hippocampus_outlier"] == "0"
    assert cells2["qc_error"] == ""


def test_group_reads_only_jsons_and_needs_some(tmp_path):
    with pytest.raises(FileNotFoundError, match="run participant level first"):
        write_group_outputs(tmp_path)
    _write(tmp_path, [_result(f"sub-{i:02d}_T1w", 4000.0 + i) for i in range(1, 6)])
    (tmp_path / "sub-09" / "anat").mkdir(parents=True)
    (tmp_path / "sub-09" / "anat" / "sub-09_T1w.json").write_text("{not json")
    tsv, html, frame, problems = write_group_outputs(tmp_path)
    assert len(frame) == 5 and len(problems) == 1 and "sub-09" in problems[0]
    assert tsv.read_text().count("\n") == 6
    assert "sub-05_T1w.html" in html.read_text()


def test_outlier_bounds_match_the_flags():
    values = pd.Series([0.0, 0, 0, 0, 1, 1, 1, 1, 1, 2.4])
    low, high = outlier_bounds(values)
    flags = outlier_flags(values)
    assert ((values < low) | (values > high)).astype(int).tolist() == flags.tolist()
    assert outlier_bounds(pd.Series([None, None], dtype=float)) is None


def _model_group(tmp_path):
    results = [
        synthetic_result("sub-01_T1w", rmse=25.0),  # registration ratio 2.5
        synthetic_result("sub-02_T1w", dice=0.40),  # lowest Dice 0.35: ratio 2.0
        synthetic_result("sub-03_T1w"),
        synthetic_result("sub-04_T1w", error="bad codes"),  # failed: first in the queue
        synthetic_result("sub-05_T1w", rmse=8.0),
    ]
    write_results(tmp_path, results)


def test_flagged_table_and_review_queue(tmp_path):
    _model_group(tmp_path)
    _, html, _, _ = write_group_outputs(tmp_path)
    flagged = pd.read_csv(tmp_path / "group_T1w_flagged.tsv", sep="\t")
    assert list(flagged.columns) == ["bids_name", "check", "value", "threshold"]
    reg = flagged[flagged["check"] == "regqc_flag"]
    assert reg[["bids_name", "value", "threshold"]].values.tolist() == [["sub-01_T1w", 25.0,
                                                                          10.0]]
    seg = flagged[(flagged["bids_name"] == "sub-02_T1w") & (flagged["check"] == "segqc_flag")]
    assert seg["value"].tolist() == [pytest.approx(0.35)] and seg["threshold"].tolist() == [0.7]
    text = html.read_text()
    order = re.findall(r'<tr><td class="num">\d+</td><td><a href="(sub-\d+_T1w)\.html"', text)
    assert order[:3] == ["sub-04_T1w", "sub-01_T1w", "sub-02_T1w"]
    assert "No ratings yet" in text
    data = json.loads(re.search(r'id="plot-data" type="application/json">(.*?)</script>',
                                text).group(1))
    rmse = next(m for m in data["metrics"] if m["name"] == "regqc_rmse_mm")
    assert [data["names"][i] for i in rmse["own"]] == ["sub-01_T1w"]


def test_experimental_checks_never_outrank_a_gated_flag():
    """An experimental model's flag lifts an image only as far as relative evidence does."""
    from bids_qc.models.registry import get_spec
    from bids_qc.review import risk_scores

    assert not get_spec("regqc").experimental and get_spec("segqc").experimental
    names = ["gated", "experimental", "less", "clean"]
    frame = pd.DataFrame({"bids_name": names, "qc_error": [""] * 4})
    checks = pd.DataFrame({"bids_name": names,
                           "check": ["regqc_flag", "segqc_flag", "segqc_flag", "regqc_flag"],
                           "ratio": [1.2, 7.0, 2.0, 0.5], "row": [0, 1, 2, 3]})
    risk = risk_scores(frame, checks)
    assert risk["gated"] == 1.2 and risk["experimental"] < 1
    assert risk["gated"] > risk["experimental"] > risk["less"] > risk["clean"]


def test_share_to_review_reads_ties_together():
    risk = pd.Series({"a": 5.0, "b": 3.0, "c": 3.0, "d": 1.0, "e": np.nan})
    truth = {"a": True, "b": False, "c": True, "d": False, "e": True}
    # 80% of 3 failing = 3 images: e has no risk, so everything is read.
    assert share_to_review(risk, truth, 0.8) == 1.0
    truth["e"] = False
    # 2 failing, both needed: a, then the tie b/c is read whole.
    assert share_to_review(risk, truth, 0.8) == pytest.approx(3 / 5)
    assert share_to_review(risk, {"a": False}, 0.8) is None


def test_group_report_shows_share_to_review_with_ratings(tmp_path):
    _model_group(tmp_path)
    (tmp_path / RATINGS_FILE).write_text(
        "bids_name\tcheck\trating\n"
        "sub-01_T1w\tregqc_flag\tFAIL\nsub-02_T1w\tsegqc_flag\tFAIL\n"
        "sub-03_T1w\tregqc_flag\tPASS\nsub-04_T1w\tregqc_flag\tPASS\n"
        "sub-05_T1w\tregqc_flag\tPASS\n")
    _, html, _, _ = write_group_outputs(tmp_path)
    shares = re.findall(r'<td class="num">([\d.]+%)</td></tr>', html.read_text().split(
        'id="review-shares"')[1].split("</table>")[0])
    # the failed sub-04, then sub-01 (RegQC, gated); sub-02's flags are all experimental and
    # rank with the other images' experimental ShapeQC flags, so every image is read
    assert shares == ["100.0%", "100.0%"]
    # Checks of experimental models carry a badge in the summary; the default one does not.
    from bids_qc.models.registry import get_spec

    rows = {m.group(1): m.group(0) for m in re.finditer(
        r"<tr><td><code>(\w+)</code></td>.*?</tr>", html.read_text())}
    for flag in ("regqc_flag", "segqc_flag"):
        badge = "experimental</span>" in rows[flag]
        assert badge == get_spec(flag.split("_")[0]).experimental, rows[flag]


def test_malformed_ratings_do_not_stop_the_group_level(tmp_path):
    _model_group(tmp_path)
    (tmp_path / RATINGS_FILE).write_text("bids_name\tcheck\trating\nsub-01_T1w\treg_cc\tOK\n")
    _, html, frame, _ = write_group_outputs(tmp_path)
    assert len(frame) == 5
    assert "Ratings not used" in html.read_text() and RATINGS_FILE in html.read_text()


def test_group_level_renders_missing_participant_reports(tmp_path):
    _model_group(tmp_path)
    assert not (tmp_path / "sub-03_T1w.html").exists()
    write_group_outputs(tmp_path)
    assert all((tmp_path / f"sub-0{i}_T1w.html").is_file() for i in range(1, 6))


def _acq_result(i: int, hippo: float, brain: float, acq: str = "mp",
                sidecar: dict | None = None) -> dict:
    name = f"sub-{i:02d}_acq-{acq}_T1w"
    row = {"bids_name": name, "entities": {"subject": f"{i:02d}"}, "reg_source": None,
           "seg_source": "freesurfer", "seg_kind": "aseg", "sources": {}, "candidates": {},
           "acquisition": sidecar or {}}
    metrics = {"vol_left_hippocampus": hippo, "vol_whole_brain": brain,
               "reg_cc": 0.9 + 0.001 * i}
    return assemble(row, [stage_result("classic", metrics, [], [], [])],
                    {"inputs": {}, "models": {}}, "cpu")


def test_group_table_has_robust_z_scores_scaled_by_icv(caplog):
    # 14 images of one acquisition, hippocampi in proportion to their heads
    results = [_acq_result(i, (4000 + 10 * i) * (1 + 0.02 * (i % 5)),
                           1.2e6 * (1 + 0.02 * (i % 5))) for i in range(14)]
    results.append(_acq_result(20, 2000, 1.2e6))        # a half-size hippocampus
    results.append(_acq_result(21, 2040, 0.6e6))        # a small head, in proportion
    frame = group_table(results).set_index("bids_name")
    assert frame.loc["sub-20_acq-mp_T1w", "rz_vol_left_hippocampus"] < -3.5
    assert "vol_left_hippocampus" in frame.loc["sub-20_acq-mp_T1w", "rz_outliers"].split()
    others = frame.drop("sub-20_acq-mp_T1w")
    assert (others["rz_vol_left_hippocampus"].abs() < 3.5).all()
    assert "vol_left_hippocampus" not in " ".join(others["rz_outliers"])
    # scaling by the intracranial content is what clears the small head: unscaled, its
    # hippocampus is as far out as the half-size one
    from bids_qc.robust_z import robust_z
    unscaled = robust_z(frame["vol_left_hippocampus"]).z
    assert unscaled["sub-21_acq-mp_T1w"] < -3.5
    assert abs(frame.loc["sub-21_acq-mp_T1w", "rz_vol_left_hippocampus"]) < 1.5
    # a single image: no scores, and the log says why
    with caplog.at_level("WARNING", logger="bids_qc"):
        single = group_table(results[:1])
    assert single["rz_vol_left_hippocampus"].isna().all()
    assert single["rz_noutliers"].tolist() == [0] and single["rz_outliers"].tolist() == [""]
    assert "need at least 10" in caplog.text


def test_volumes_are_scaled_by_etiv_where_present():
    def result(i: int, hippo: float, brain: float, etiv: float | None) -> dict:
        res = _acq_result(i, hippo, brain)
        res["metrics"]["etiv_mm3"] = etiv
        return res

    # 14 FreeSurfer images: hippocampus and whole brain in proportion to eTIV (the whole
    # brain about 80% of it), with some spread
    scale = [1 + 0.03 * (i % 7) for i in range(14)]
    results = [result(i, 4000 * s * (1 + 0.01 * (i % 5)), 1.2e6 * s * (1 + 0.004 * (i % 3)),
                      1.5e6 * s) for i, s in enumerate(scale)]
    # a small skull whose segmentation's whole brain is large for it, hippocampus in
    # proportion to eTIV: not an outlier with eTIV, far out against vol_whole_brain
    results.append(result(20, 4000 * 0.6 * 1.02, 0.9e6, 0.9e6))
    # two images without FreeSurfer stats: their vol_whole_brain stands in, at eTIV's scale
    results.append(result(21, 4000 * 1.03 * 1.02, 1.2e6 * 1.03, None))
    results.append(result(22, 2000, 1.2e6, None))  # a half-size hippocampus
    frame = group_table(results).set_index("bids_name")
    rz = frame["rz_vol_left_hippocampus"]
    assert abs(rz["sub-20_acq-mp_T1w"]) < 1.5
    from bids_qc.robust_z import robust_z

    by_brain = robust_z(frame["vol_left_hippocampus"] / frame["vol_whole_brain"]).z
    assert by_brain["sub-20_acq-mp_T1w"] < -3.5  # what the old scaling said
    # the stand-in is on eTIV's scale (x median eTIV / vol_whole_brain = 1.25): the image
    # in proportion is not an outlier; divided by vol_whole_brain alone it would be one
    assert abs(rz["sub-21_acq-mp_T1w"]) < 1.5
    raw = frame["vol_left_hippocampus"] / frame["etiv_mm3"].fillna(frame["vol_whole_brain"])
    assert robust_z(raw).z["sub-21_acq-mp_T1w"] > 3.5
    assert rz["sub-22_acq-mp_T1w"] < -3.5
    assert "vol_left_hippocampus" in frame.loc["sub-22_acq-mp_T1w", "rz_outliers"].split()


def test_acquisition_groups_come_from_entities_and_sidecars():
    from bids_qc.group import acquisition_keys

    names = pd.Series(["sub-01_acq-a_run-1_T1w", "sub-02_acq-a_run-01_T1w",
                       "sub-03_acq-b_T1w", "sub-04_T1w"])
    keys = acquisition_keys(names, {"sub-01_acq-a_run-1_T1w": {"MagneticFieldStrength": 3},
                                    "sub-02_acq-a_run-01_T1w": {"MagneticFieldStrength": 3.0,
                                                                "Manufacturer": "Siemens"}})
    assert keys[0] != keys[1]  # the manufacturer tells them apart, not run-1 vs run-01
    assert "run=1" in keys[0] and "run=1" in keys[1] and "MagneticFieldStrength=3" in keys[1]
    assert keys[2] != keys[3]
    assert acquisition_keys(pd.Series(["sub-01_T1w", "sub-02_T1w"])) is None


def test_a_scanner_of_its_own_is_scored_within_its_group():
    # 12 images at 1.5 T with smaller hippocampi (relative to the head) than 12 at 3 T:
    # against the dataset the 1.5 T images would spread it; per group none is an outlier,
    # and a half-size hippocampus at 3 T still is.
    results = [_acq_result(i, 3000 + 10 * i, 1.2e6, sidecar={"MagneticFieldStrength": 1.5})
               for i in range(12)]
    results += [_acq_result(i, 4000 + 10 * i, 1.2e6, sidecar={"MagneticFieldStrength": 3})
                for i in range(20, 32)]
    results.append(_acq_result(40, 2000, 1.2e6, sidecar={"MagneticFieldStrength": 3}))
    assert results[0]["acquisition"] == {"MagneticFieldStrength": 1.5}  # in the JSON
    frame = group_table(results).set_index("bids_name")
    assert frame.loc["sub-40_acq-mp_T1w", "rz_vol_left_hippocampus"] < -3.5
    assert (frame.drop("sub-40_acq-mp_T1w")["rz_vol_left_hippocampus"].abs() < 3.5).all()
    from bids_qc.robust_z import robust_z
    pooled = robust_z(frame["vol_left_hippocampus"] / frame["vol_whole_brain"]).z
    assert abs(pooled["sub-40_acq-mp_T1w"]) < 3.5  # the two scanners would hide it


def test_robust_outliers_change_no_model_flag():
    """The rz_* columns are advisory: checks and flags ignore them; the queue only orders
    by them below every flagged image."""
    from bids_qc.group import volume_bounds
    from bids_qc.review import build_review
    from bids_qc.schema import RZ_COLUMNS
    from tests.generated_results import generated_result

    results = [generated_result(i, seed=5) for i in range(60)]
    # one image far off on a model output that its model does not flag
    metrics = results[7]["metrics"]
    metrics["shapeqc_pfail_left_thalamus"] = 0.45
    metrics["reg_cc"] = -0.5
    frame = group_table(results)
    row = frame.index[frame["bids_name"] == results[7]["bids_name"]][0]
    assert {"shapeqc_pfail_left_thalamus", "reg_cc"} <= set(frame.at[row, "rz_outliers"].split())
    bare = frame.drop(columns=[*RZ_COLUMNS.values(), "rz_outliers", "rz_noutliers"])
    with_rz = build_review(results, frame, volume_bounds(frame))
    without = build_review(results, bare, volume_bounds(bare))
    pd.testing.assert_frame_equal(with_rz.checks, without.checks)
    assert not with_rz.checks["check"].str.startswith("rz_").any()
    # Flagged (and failed) images keep their places at the head of the queue; below them
    # the scores can only raise a risk, never past 1.
    n_flagged = int((without.queue["risk"] > 1).sum())
    assert n_flagged > 0
    head = ["bids_name", "risk", "flags", "qc_error"]
    pd.testing.assert_frame_equal(with_rz.queue[head].head(n_flagged),
                                  without.queue[head].head(n_flagged))
    merged = with_rz.queue.merge(without.queue, on="bids_name", suffixes=("", "_abs"))
    rest = merged[merged["risk_abs"].fillna(0) <= 1]
    assert (rest["risk"] <= 1).all()
    assert (rest["risk"] >= rest["risk_abs"].fillna(0)).all()
    assert without.queue["rz_max"].isna().all()
    flag_cols = [c for c in frame.columns if c.endswith(("_flag", "_outlier")) or "_flag_" in c]
    for res in results:
        got = frame.loc[frame["bids_name"] == res["bids_name"], flag_cols].iloc[0]
        for col in flag_cols:
            if col in res["metrics"]:
                want = res["metrics"][col]
                assert (pd.isna(got[col]) and want is None) or got[col] == want


def _rmse_result(i: int, rmse: float, etiv: float) -> dict:
    row = {"bids_name": f"sub-{i:02d}_T1w", "entities": {"subject": f"{i:02d}"},
           "reg_source": "fmriprep", "seg_source": None, "sources": {}, "candidates": {}}
    metrics = {"regqc_rmse_mm": rmse, "etiv_mm3": etiv}
    return assemble(row, [stage_result("classic", metrics, [], [], [])],
                    {"inputs": {}, "models": {}}, "cpu")


def test_a_robust_outlier_ranks_below_flagged_and_above_clean_images(tmp_path):
    from bids_qc.group import volume_bounds
    from bids_qc.review import build_review, queue_table

    # 14 clean images (RegQC RMSE 2-5.9 mm against the default 10 mm: risk 0.2-0.59),
    # one RegQC flags (12 mm: risk 1.2), and two no check flags whose eTIV (which no check
    # reads) lies far out: a 6-sigma one and a farther one.
    results = [_rmse_result(i, 2 + 0.3 * i, 1.5e6 + 1e4 * (i % 7)) for i in range(14)]
    results += [_rmse_result(20, 12.0, 1.5e6), _rmse_result(21, 3.0, 1.5e6 + 2.0e5),
                _rmse_result(22, 5.0, 1.5e6 + 4.0e5)]
    frame = group_table(results)
    z = frame.set_index("bids_name")["rz_etiv_mm3"]
    assert 5.5 < z["sub-21_T1w"] < 7 and z["sub-22_T1w"] > z["sub-21_T1w"]
    review = build_review(results, frame, volume_bounds(frame))
    queue = review.queue.set_index("bids_name")
    order = review.queue["bids_name"].tolist()
    assert order[:3] == ["sub-20_T1w", "sub-22_T1w", "sub-21_T1w"]  # larger |z| first
    assert queue.loc["sub-20_T1w", "risk"] == pytest.approx(1.2)
    assert queue.loc["sub-21_T1w", "risk"] == queue.loc["sub-22_T1w", "risk"] == 1.0
    assert queue.loc["sub-21_T1w", "flags"] == []  # relative evidence is no flag
    # below the cut-off, |z| / 3.5 lifts an image above its own absolute risk
    clean = queue.drop(["sub-20_T1w", "sub-21_T1w", "sub-22_T1w"])
    assert (clean["risk"] < 1).all()
    lifted = clean["rz_max"] / 3.5 > clean["risk"] - 1e-12
    assert lifted.any()
    assert not review.checks["check"].str.startswith("rz_").any()
    tsv = queue_table(review.queue)
    assert list(tsv.columns)[-1] == "rz_max"
    assert tsv["rz_max"].iloc[1] == pytest.approx(z["sub-22_T1w"])


def test_small_group_report_says_outlier_checks_need_more_images(tmp_path):
    _write(tmp_path, [_result("sub-01_T1w", 4000.0)])
    _, html, _, _ = write_group_outputs(tmp_path)
    text = html.read_text()
    assert 'id="few-images-note"' in text and "this group has 1" in text
    assert 'id="rz-note"' not in text


def test_group_report_counts_robust_outliers(tmp_path):
    results = [_acq_result(i, 4000 + 10 * i, 1.2e6) for i in range(14)]
    results.append(_acq_result(20, 2000, 1.2e6))
    _write(tmp_path, results)
    tsv, html, _, _ = write_group_outputs(tmp_path)
    text = html.read_text()
    assert 'id="few-images-note"' not in text
    assert re.search(r'id="rz-note">1 image\(s\) have a metric beyond', text)
    table = pd.read_csv(tsv, sep="\t", na_values="n/a", keep_default_na=False)
    assert table.set_index("bids_name").loc["sub-20_acq-mp_T1w", "rz_outliers"] \
        == "vol_left_hippocampus"


_DOM_STUB = """
// Just enough DOM for templates/group.js: prints each plot's SVG, one JSON string a line.
const fs = require("fs");
const data = fs.readFileSync(process.argv[2], "utf8");
const code = fs.readFileSync(process.argv[3], "utf8");
let slots = [];
const container = {
  set innerHTML(html) {
    slots = [...html.matchAll(/data-k="(\\d+)"/g)].map((m) => ({dataset: {k: m[1]}}));
  },
  querySelectorAll: () => slots,
  addEventListener: () => {},
};
const elements = {"plot-data": {textContent: data}, plots: container, tooltip: {style: {}}};
global.window = {};
global.document = {
  getElementById: (id) => elements[id],
  createElement: () => ({}),
  head: {appendChild: () => {}},
};
eval(code);
slots.forEach((s) => console.log(JSON.stringify(s.innerHTML)));
"""


def _drawn_plots(html: str, tmp_path) -> dict[str, str]:
    """The SVG ``templates/group.js`` draws for each metric of a group report, by name
    (run in node over a stub DOM; skips where node is missing)."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page's script cannot run")
    data = re.search(r'id="plot-data" type="application/json">(.*?)</script>', html,
                     re.S).group(1)
    code = re.search(r"<script>\n(.*?)</script>", html, re.S).group(1)
    paths = [tmp_path / "data.json", tmp_path / "group.js", tmp_path / "stub.js"]
    for path, text in zip(paths, (data, code, _DOM_STUB), strict=True):
        path.write_text(text)
    out = subprocess.run([node, str(paths[2]), str(paths[0]), str(paths[1])],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    plots = [json.loads(line) for line in out.splitlines()]
    return {re.search(r"<h3><code>(\w+)</code>", p).group(1): p for p in plots}


def _good_group(tmp_path):
    """Six good images that one check flags every time (as a strict RegQC threshold would),
    and one of them a second check flags too."""
    results = [synthetic_result(f"sub-0{i}_T1w", rmse=11.0 + i, volume=4000.0 + 25 * i,
                                pfail=None, dice=0.72 if i == 3 else 0.85)  # 0.67: SegQC
               for i in range(1, 7)]
    write_results(tmp_path, results)


def test_group_report_opens_with_the_riskiest_images(tmp_path):
    _model_group(tmp_path)
    _, html, _, _ = write_group_outputs(tmp_path)
    text = html.read_text()
    first_section = re.search(r"<h2[^>]*>(.*?)</h2>", text).group(1)
    assert first_section == "Images, riskiest first"
    order = [text.index(marker) for marker in (
        'id="queue-table"', 'id="queue-quality"', '<th>check</th><th>what</th>',
        'id="metrics"', '<div id="plots">', 'id="plot-data"')]
    assert order == sorted(order)
    assert text.count('id="plots"') == 1  # the script draws into the div, not a heading


def test_plot_points_are_coloured_only_where_their_own_check_flags(tmp_path):
    _good_group(tmp_path)
    _, html, _, _ = write_group_outputs(tmp_path)
    text = html.read_text()
    assert "#ef8f00" not in text and "circle.other" not in text  # no "another check" colour
    plots = _drawn_plots(text, tmp_path)
    red = {name: re.findall(r'data-i="(\d+)"[^>]*><circle [^>]*class="own"', svg)
           for name, svg in plots.items()}
    drawn = {name: len(re.findall(r"<circle ", svg)) for name, svg in plots.items()}
    assert drawn["regqc_rmse_mm"] == 6 and len(red["regqc_rmse_mm"]) == 6
    data = json.loads(re.search(r'id="plot-data" type="application/json">(.*?)</script>',
                                text).group(1))
    assert [data["names"][int(i)] for i in red["segqc_dice_left_hippocampus"]] == [
        "sub-03_T1w"]
    coloured = {name for name, points in red.items() if points}
    assert coloured == {"regqc_rmse_mm", "segqc_dice_left_hippocampus"}
    # Every image is flagged by RegQC, yet the other plots show all six points uncoloured.
    assert all(drawn[name] == 6 for name in plots)
    assert len(data["flagged"]) == 6


def test_plot_axes_have_round_ticks(tmp_path):
    _good_group(tmp_path)
    _, html, _, _ = write_group_outputs(tmp_path)
    text = html.read_text()
    data = json.loads(re.search(r'id="plot-data" type="application/json">(.*?)</script>',
                                text).group(1))
    for m in data["metrics"]:
        values = [v for v in m["values"] if v is not None]
        ticks = [t[0] for t in m["ticks"]]
        assert len(ticks) >= 3 and ticks == sorted(ticks), m["name"]
        assert m["axis"] == [ticks[0], ticks[-1]]
        assert ticks[0] <= min(values) and max(values) <= ticks[-1], m["name"]
    rmse = next(m for m in data["metrics"] if m["name"] == "regqc_rmse_mm")
    assert [t[1] for t in rmse["ticks"]] == ["12", "13", "14", "15", "16", "17"]
    for name, svg in _drawn_plots(text, tmp_path).items():
        labels = re.findall(r'<text class="tick"[^>]*>([^<]*)</text>', svg)
        want = next(m for m in data["metrics"] if m["name"] == name)["ticks"]
        assert labels == [t[1] for t in want] and len(labels) > 2, name


@pytest.mark.parametrize(("lo", "hi"), [(0.61, 0.93), (3012.0, 5230.0), (0.5, 0.5), (0.0, 0.0),
                                        (-0.4, 0.9), (2.1, 2.3), (1.2e6, 1.21e6)])
def test_axis_ticks_cover_the_range_in_round_steps(lo, hi):
    from bids_qc.reports.group import axis_ticks

    start, end, ticks = axis_ticks(lo, hi)
    values = [v for v, _ in ticks]
    assert start == values[0] <= lo and hi <= values[-1] == end and end > start
    assert 3 <= len(values) <= 12
    steps = np.diff(values)
    assert np.allclose(steps, steps[0])
    mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]))
    assert any(np.isclose(mantissa, m) for m in (1, 2, 2.5, 5))
    assert len({label for _, label in ticks}) == len(ticks)  # labels tell ticks apart
