"""The real-data gate: Wilson intervals, the decision, and the registry following it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bids_qc.models import gate
from bids_qc.models.classic import registration_flags
from bids_qc.models.registry import REGISTRY


def test_wilson_interval_matches_the_formula_on_known_cases():
    lo, hi = gate.wilson(0, 30)
    assert lo == 0.0 and hi == pytest.approx(0.1135, abs=1e-3)  # 30 clean images: <= 11%
    lo, hi = gate.wilson(3, 30)
    assert lo == pytest.approx(0.0346, abs=1e-3) and hi == pytest.approx(0.2562, abs=1e-3)
    assert gate.wilson(0, 0) == (None, None)


def _entry(rate_k: int, n: int, auroc: float | None, sens: float | None) -> dict:
    return {"good": {"test": {"n": n, "flagged": rate_k, "rate": rate_k / n}},
            "planted": {"test": {"auroc": auroc, "sensitivity": sens}}}


def test_gate_needs_all_three_figures():
    assert gate.gate_decision(_entry(1, 30, 0.95, 0.9))["passes"]
    fails = gate.gate_decision(_entry(3, 30, 0.95, 0.9))
    assert not fails["passes"] and "3 of 30" in fails["reasons"][0]
    assert not gate.gate_decision(_entry(0, 30, 0.85, 0.9))["passes"]
    # a threshold that never fires cannot pass, however good the ranking
    never = gate.gate_decision(_entry(0, 30, 0.99, 0.0))
    assert not never["passes"] and "sensitivity" in never["reasons"][0]
    unmeasured = gate.gate_decision({"good": {"test": {"n": 30, "flagged": 0, "rate": 0.0}}})
    assert not unmeasured["passes"] and "planted" in unmeasured["reasons"][0]


def test_passes_reads_the_record_of_these_weights_only(tmp_path):
    record = {"sha256": "a" * 64, **_entry(0, 30, 0.97, 0.9)}
    (tmp_path / "toy.json").write_text(json.dumps(record))
    assert gate.passes("toy", "a" * 64, tmp_path)
    assert not gate.passes("toy", "b" * 64, tmp_path)          # retrained: not measured
    assert "other weights" in gate.why_experimental("toy", "b" * 64, tmp_path)[0]
    assert not gate.passes("absent", "a" * 64, tmp_path)
    record.update(_entry(5, 30, 0.97, 0.9))
    (tmp_path / "toy.json").write_text(json.dumps(record))
    assert not gate.passes("toy", "a" * 64, tmp_path)


def test_registry_defaults_follow_the_generated_figures():
    for spec in REGISTRY:
        assert spec.experimental == (not gate.passes(spec.name, spec.sha256)), spec.name


def test_registration_flags_fire_below_the_threshold_only():
    cuts = {"reg_cc": 0.3, "reg_mi": 0.1}
    assert registration_flags({"reg_cc": 0.2, "reg_mi": 0.2}, cuts) == {
        "reg_cc_flag": 1, "reg_mi_flag": 0}
    assert registration_flags({"reg_cc": None, "reg_mi": np.nan}, cuts) == {
        "reg_cc_flag": None, "reg_mi_flag": None}
    assert registration_flags({"reg_cc": 0.2, "reg_mi": 0.05}, {}) == {
        "reg_cc_flag": None, "reg_mi_flag": None}


def test_the_segmenters_gate_needs_dice_per_protocol_and_plausible_volumes():
    ok = {"kind": "segmenter", "dice": {"test": {"freesurfer": 0.87, "dlmuse": 0.81}},
          "volumes": {"test": {"n": 5, "implausible": []}}}
    assert gate.gate_decision(ok)["passes"]
    low = {**ok, "dice": {"test": {"freesurfer": 0.69, "dlmuse": 0.81}}}
    assert "0.690 < 0.85 against freesurfer" in gate.gate_decision(low)["reasons"][0]
    # DLMUSE's bar is lower (its boundaries differ from FreeSurfer's), but it is a bar.
    assert gate.gate_decision({**ok, "dice": {"test": {"dlmuse": 0.82}}})["passes"]
    dl = gate.gate_decision({**ok, "dice": {"test": {"freesurfer": 0.9, "dlmuse": 0.79}}})
    assert dl["reasons"] == ["mean subcortical Dice 0.790 < 0.80 against dlmuse references "
                             "on real test images"]
    odd = {**ok, "volumes": {"test": {"n": 5, "implausible": ["sub-01"]}}}
    assert not gate.gate_decision(odd)["passes"]
    assert not gate.gate_decision({"kind": "segmenter"})["passes"]
