"""Group level of a large generated group: aggregate HTML, bounded size, complete TSVs."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from bids_qc.group import find_result_files, group_table, load_results, to_tsv
from bids_qc.reports import group as report
from bids_qc.reports.checks import evaluate
from bids_qc.review import model_check_table
from bids_qc.runner import run_group
from bids_qc.schema import COLUMNS
from bids_qc.settings import Settings
from tests.generated_results import generated_result, write_generated
from tests.test_reports_helpers import synthetic_result

N = 2500  # above report.STRIP_MAX_IMAGES: the aggregate view


@pytest.fixture(scope="module")
def large_group(tmp_path_factory):
    out = tmp_path_factory.mktemp("large_group")
    assert write_generated(out, N) == N
    settings = Settings(bids_dir=out.parent, output_dir=out, analysis_level="group")
    assert run_group(settings) == 0
    return out


def _plot_data(html: str) -> dict:
    return json.loads(re.search(r'id="plot-data" type="application/json">(.*?)</script>',
                                html, re.S).group(1))


def test_large_group_html_is_aggregated_and_bounded(large_group):
    html = (large_group / "group_T1w.html").read_text()
    assert N > report.STRIP_MAX_IMAGES
    assert len(html.encode()) < 2.5 * 2**20  # one point per image would be ~5 MB here
    data = _plot_data(html)
    assert data["sampled"] and data["n_images"] == N
    shown = data["names"]
    assert len(shown) <= report.SHOWN_RISKIEST + report.SHOWN_SAMPLE < N
    assert 'id="sampled-note"' in html
    queue = pd.read_csv(large_group / "group_T1w_queue.tsv", sep="\t")
    # The riskiest images are always drawn; every histogram counts every image with a value.
    assert set(queue["bids_name"].head(report.SHOWN_RISKIEST)) <= set(shown)
    frame = pd.read_csv(large_group / "group_T1w.tsv", sep="\t", na_values="n/a")
    for m in data["metrics"]:
        assert sum(m["hist"]["counts"]) == m["n"] == frame[m["name"]].notna().sum()
        assert len(m["values"]) == len(shown)
    rmse = next(m for m in data["metrics"] if m["name"] == "regqc_rmse_mm")
    flagged_rmse = set(frame.loc[frame["regqc_flag"] == 1, "bids_name"])
    assert rmse["n_flagged"] == len(flagged_rmse) > 0
    assert {shown[i] for i in rmse["own"]} == flagged_rmse & set(shown)
    # The page lists the head of the queue, in order, and says where the rest is.
    rows = re.findall(r'<tr><td class="num">(\d+)</td><td><a href="([^"]+)\.html"', html)
    assert len(rows) == report.QUEUE_MAX_ROWS
    assert [n for _, n in rows] == queue["bids_name"].head(report.QUEUE_MAX_ROWS).tolist()
    assert 'id="queue-note"' in html and "group_T1w_queue.tsv" in html


def test_large_group_tsvs_are_complete_and_ordered(large_group):
    frame = pd.read_csv(large_group / "group_T1w.tsv", sep="\t", na_values="n/a")
    assert len(frame) == N and frame["bids_name"].is_monotonic_increasing
    queue = pd.read_csv(large_group / "group_T1w_queue.tsv", sep="\t", na_values="n/a",
                        keep_default_na=False)
    assert sorted(queue["bids_name"]) == frame["bids_name"].tolist()
    assert queue["rank"].tolist() == list(range(1, N + 1))
    failed = queue["qc_error"] != ""
    assert failed.sum() == (frame["qc_error"].fillna("") != "").sum() > 0
    assert failed.iloc[: failed.sum()].all()  # processing failures first
    risk = queue.loc[~failed, "risk"].astype(float).to_numpy()
    assert np.all(np.diff(risk[~np.isnan(risk)]) <= 0)  # then by decreasing risk
    # Every flag a model wrote in a JSON is a row of the flags table, and nothing else
    # is a model flag there.
    flagged = pd.read_csv(large_group / "group_T1w_flagged.tsv", sep="\t")
    assert list(flagged.columns) == ["bids_name", "check", "value", "threshold"]
    assert flagged.equals(flagged.sort_values(["bids_name", "check"]).reset_index(drop=True))
    flag_columns = {c.name for c in COLUMNS if c.kind == "flag" and c.level != "group"}
    written = {(generated_result(i)["bids_name"], c)
               for i in range(N) for c, v in generated_result(i)["metrics"].items()
               if c in flag_columns and v == 1}
    model_rows = {(b, c) for b, c in zip(flagged["bids_name"], flagged["check"], strict=True)
                  if not c.endswith("_outlier")}
    assert model_rows == written and len(written) > 0
    outliers = flagged[flagged["check"].str.endswith("_outlier")]
    # the vol_*_outlier flags (rz_outliers, a list of metric names, is advisory: no flag)
    assert len(outliers) == int(frame.filter(regex="_outlier$").sum().sum())
    # Queue flags agree with the flags table.
    per_image = flagged.groupby("bids_name")["check"].agg(lambda c: ",".join(sorted(c)))
    queue_flags = queue.set_index("bids_name")["flags"]
    for name, checks in per_image.head(200).items():
        assert ",".join(sorted(queue_flags[name].split(","))) == checks


def test_vectorised_checks_match_evaluate(tmp_path):
    """The group's check table gives every JSON the verdicts evaluate() gives it."""
    results = [generated_result(i, seed=3) for i in range(300)]
    results += [synthetic_result("sub-x1_T1w", rmse=None, dice=0.5,
                                 thresholds={"segqc_dice": 0.6, "shapeqc_pfail": 0.2}),
                synthetic_result("sub-x2_T1w", rmse=12.0, pfail=0.45,
                                 thresholds={"regqc_rmse_mm": 15.0})]
    frame = group_table(results)
    table = model_check_table(results, frame).set_index(["bids_name", "check"])
    n = 0
    for res in results:
        for o in evaluate(res):
            if o.value is None and o.flag is None:
                continue  # a failed image: no row (nothing to rank or flag)
            row = table.loc[(res["bids_name"], o.spec.flag)]
            assert row["value"] == pytest.approx(o.value, nan_ok=True)
            assert row["threshold"] == o.threshold and row["flag"] == o.flag
            assert row["ratio"] == pytest.approx(o.ratio, nan_ok=True)
            n += 1
    assert n == len(table)


def test_tsv_writer_matches_pandas(tmp_path):
    write_generated(tmp_path, 50)
    frame = group_table(load_results(find_result_files(tmp_path))[0])
    odd = pd.DataFrame({"a": ["x\ty", 'q"z', None, "ok"], "b": [1.5, np.nan, 1e-12, 1e11],
                        "c": pd.array([1, None, 0, 1], dtype="Int64"), "d": [1, 2, 3, 4],
                        "e": [None, 2.5, None, "s"], "f": [True, False, True, False]})
    for table in (frame, odd):
        assert to_tsv(table) == table.to_csv(sep="\t", index=False, na_rep="n/a",
                                             float_format="%.10g", lineterminator="\n")


def test_result_files_are_found_with_and_without_sessions(tmp_path):
    for rel in ("sub-01/anat/sub-01_T1w.json", "sub-02/ses-A/anat/sub-02_ses-A_T1w.json",
                "sub-02/ses-B/anat/sub-02_ses-B_acq-fast_T1w.json",
                "sub-03/anat/sub-03_T2w.json", "sub-03/figures/sub-03_T1w.json",
                "derivatives/sub-04/anat/sub-04_T1w.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    (tmp_path / "sub-01_T1w.html").write_text("report")  # a file named sub-*
    found = [p.relative_to(tmp_path).as_posix() for p in find_result_files(tmp_path)]
    assert found == ["sub-01/anat/sub-01_T1w.json", "sub-02/ses-A/anat/sub-02_ses-A_T1w.json",
                     "sub-02/ses-B/anat/sub-02_ses-B_acq-fast_T1w.json"]
