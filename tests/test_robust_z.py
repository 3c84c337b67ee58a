"""Robust z-scores on generated groups."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bids_qc.robust_z import OUTLIER_Z, acquisition_groups, icv_scaled, robust_z


def test_robust_z_matches_the_definition_and_flags_the_planted_outlier():
    rng = np.random.default_rng(0)
    values = pd.Series(rng.normal(100, 5, 30))
    values[7] = 160.0
    r = robust_z(values, name="vol")
    median = values.median()
    mad = (values - median).abs().median()
    np.testing.assert_allclose(r.z, 0.6745 * (values - median) / mad)
    flags = r.outliers()
    assert flags[7] == 1
    assert flags.sum() == 1
    assert not r.warnings
    assert (r.reference == "dataset").all()


def test_small_dataset_and_constant_metric_give_no_flags_but_a_warning():
    r = robust_z(pd.Series([1.0, 2, 3, 50, 5]), name="reg_cc")
    assert r.z.isna().all() and r.outliers().isna().all()
    assert "only 5 image(s)" in r.warnings[0]
    r = robust_z(pd.Series([4.0] * 12 + [9.0]), name="x")
    assert r.z.isna().all() and "MAD 0" in r.warnings[0]


def test_groups_score_within_themselves_and_small_groups_against_the_dataset():
    a = np.linspace(-1, 1, 15)          # scanner A
    b = 10 + np.linspace(-1, 1, 15)     # scanner B: its own level, not outliers
    c = np.array([10.5, 9.5, 30.0])     # 3 images of scanner C: too few for their own
    values = pd.Series(np.concatenate([a, b, c]))
    groups = pd.Series(["A"] * 15 + ["B"] * 15 + ["C"] * 3)
    r = robust_z(values, groups)
    assert set(r.reference[:30]) == {"A", "B"}
    assert (r.reference[30:] == "dataset").all()
    flags = r.outliers()
    assert flags[:30].sum() == 0
    assert flags[32] == 1              # the 30.0 of group C is caught against the dataset
    assert abs(r.z[32]) > OUTLIER_Z
    # scored per group, A's and B's extremes sit at the same distance from their own centre
    assert np.isclose(r.z[0], -r.z[29])


def test_icv_scaling_and_acquisition_keys():
    vols = pd.Series([1000.0, 2000.0, 3000.0, None])
    icv = pd.Series([1.0e6, 2.0e6, 0.0, 1.0e6])
    out = icv_scaled(vols, icv)
    assert out[0] == out[1] == 1e-3
    assert out[2:].isna().all()
    frame = pd.DataFrame({"acquisition": ["mp", "mp", "sp"], "run": [1, 1, 1],
                          "Manufacturer": ["GE", None, "GE"]})
    keys = acquisition_groups(frame)
    assert keys.tolist() == ["acquisition=mp,Manufacturer=GE", "acquisition=mp,Manufacturer=n/a",
                             "acquisition=sp,Manufacturer=GE"]
    assert acquisition_groups(frame[["run"]]) is None


def test_schema_documents_the_cut_off_in_force():
    from bids_qc.reports.checks import model_checks
    from bids_qc.schema import RZ_COLUMNS, RZ_CUTOFF, column

    assert RZ_CUTOFF == OUTLIER_Z
    assert f"|z| > {OUTLIER_Z}" in column("rz_outliers").description
    # a prefix, so that no code matching a model's column prefix takes a score for it
    assert RZ_COLUMNS["shapeqc_pfail_left_thalamus"] == "rz_shapeqc_pfail_left_thalamus"
    every = {c: 0.5 for c in RZ_COLUMNS.values()}
    assert model_checks(every) == []
