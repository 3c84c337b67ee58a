"""The frozen evaluation protocol: eval-only anatomies, sizes, determinism, case building."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bids_qc.synth.damage import DAMAGE_FAMILIES
from bids_qc.synth.labelmaps import EVAL_MAPS, EVAL_SUBJECTS
from bids_qc.synth.phantom import make_phantom
from bids_qc.synth.shape_damage import SHAPE_FAMILIES
from bids_qc.training import eval_protocol as ep
from tests.conftest import shared_path


def test_protocol_invariants() -> None:
    ep.validate_protocol()
    for t in ep.TEST_SETS.values():
        assert t.n_cases >= ep.MIN_CASES
        assert len(ep.case_specs(t.name)) == t.n_cases
    assert set(ep.TRAINING_DAMAGE_FAMILIES) | set(ep.HELDOUT_DAMAGE_FAMILIES) == set(
        DAMAGE_FAMILIES
    )
    assert not set(ep.TRAINING_DAMAGE_FAMILIES) & set(ep.HELDOUT_DAMAGE_FAMILIES)
    assert not set(ep.TRAINING_SHAPE_FAMILIES) & set(ep.HELDOUT_SHAPE_FAMILIES)
    assert set(ep.TRAINING_SHAPE_FAMILIES) | set(ep.HELDOUT_SHAPE_FAMILIES) == set(SHAPE_FAMILIES)


def test_specs_use_eval_anatomies_only() -> None:
    allowed = {f"synthseg:{i}" for i in EVAL_MAPS} | {f"ds002748:sub-{s}" for s in EVAL_SUBJECTS}
    allowed.add("freesurfer:bert")
    for name in ep.TEST_SETS:
        specs = ep.case_specs(name)
        assert {s.anatomy for s in specs} <= allowed
        assert len({s.seed for s in specs}) == len(specs)
        assert all(0.0 <= s.severity <= 1.0 for s in specs)


def test_specs_are_deterministic() -> None:
    first = ep.case_specs("segqc_synth")
    ep.case_specs.cache_clear()
    assert ep.case_specs("segqc_synth") == first
    families = {s.failure_family for s in first}
    assert families == set(ep.TRAINING_DAMAGE_FAMILIES)
    assert {s.contrast_family for s in ep.case_specs("segqc_t2_shift")} == {"t2"}
    assert "t2" not in {s.contrast_family for s in first}
    rmse = [s.rmse_target for s in ep.case_specs("regqc_synth")]
    assert min(rmse) >= 0 and max(rmse) <= 20
    with pytest.raises(ValueError):
        ep.case_specs("no_such_set")


@pytest.fixture()
def phantom_maps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the evaluation maps by the small phantom (tests the plumbing, not the data)."""
    labels, affine = make_phantom((48, 48, 48))
    monkeypatch.setattr(ep, "_eval_map", lambda index: (labels, affine))


def test_build_segqc_and_shapeqc_cases(phantom_maps: None) -> None:
    spec = next(s for s in ep.case_specs("segqc_synth") if s.severity > 0)
    case = ep.build_case(spec)
    assert case.labels.shape == case.image.shape
    assert set(case.truth["dice"]) >= {"left_hippocampus", "whole_brain"}
    again = ep.build_case(spec)
    assert np.array_equal(again.labels, case.labels) and np.array_equal(again.image, case.image)
    shape_spec = next(s for s in ep.case_specs("shapeqc_synth") if s.severity > 0.5)
    shape_case = ep.build_case(shape_spec)
    assert isinstance(shape_case.truth["fail"], bool)


def test_build_regqc_case(phantom_maps: None) -> None:
    spec = ep.case_specs("regqc_synth")[3]
    case = next(ep.iter_cases("regqc_synth", start=3, stop=4))
    assert case.spec == spec
    assert case.image.shape == (97, 115, 97)
    assert math.isclose(case.truth["rmse"], spec.rmse_target, abs_tol=1e-3)


@pytest.mark.realdata
def test_real_bert_difference() -> None:
    shared_path("freesurfer_bert", "mri", "aparc.DKTatlas+aseg.mgz")
    specs = ep.case_specs("segqc_real_bert")
    dkt = ep.build_case(specs[0]).truth["dice"]
    assert all(v == 1.0 for v in dkt.values() if not math.isnan(v))  # FreeSurfer 7: identical
    presurf = ep.build_case(specs[1]).truth["dice"]
    assert 0.5 < presurf["cerebral_cortex"] < 0.95
    assert presurf["left_hippocampus"] == 1.0  # same subcortical labels in both maps
