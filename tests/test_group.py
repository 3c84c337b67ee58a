"""Group table: column order, n/a, outlier flags, reading JSONs only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bids_qc.group import group_table, outlier_flags, to_tsv, write_group_outputs
from bids_qc.results import assemble, stage_result
from bids_qc.schema import column_names


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
