"""The structure contract and the output schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bids_qc import schema
from bids_qc.structures import (
    STRUCTURE_NAMES,
    SUBCORTICAL_KINDS,
    get_structure,
    looks_freesurfer_coded,
)


def test_structure_codes_match_the_contract():
    expected = {
        "left_thalamus": 10, "right_thalamus": 49, "left_caudate": 11, "right_caudate": 50,
        "left_putamen": 12, "right_putamen": 51, "left_pallidum": 13, "right_pallidum": 52,
        "left_hippocampus": 17, "right_hippocampus": 53, "left_amygdala": 18,
        "right_amygdala": 54, "left_accumbens": 26, "right_accumbens": 58,
    }
    for name, code in expected.items():
        assert get_structure(name).codes == (code,)
    assert len(SUBCORTICAL_KINDS) == 7
    assert STRUCTURE_NAMES[-1] == "whole_brain"


def test_structure_masks():
    labels = np.array([0, 2, 3, 41, 1035, 2035, 3000, 4, 43, 7, 8, 46, 47, 16, 10])
    assert get_structure("cerebral_cortex").mask(labels).sum() == 3  # 3, 1035, 2035
    assert get_structure("cerebral_white_matter").mask(labels).sum() == 2
    assert get_structure("cerebellum").mask(labels).sum() == 4
    assert get_structure("whole_brain").mask(labels).sum() == labels.size - 1
    with pytest.raises(ValueError, match="Unknown structure"):
        get_structure("cortex")


def test_freesurfer_code_detection():
    aseg = np.array([0, 2, 3, 41, 42, 10, 49, 11, 50, 17, 53])
    assert looks_freesurfer_coded(aseg)
    assert not looks_freesurfer_coded(np.array([0, 1, 2, 3]))  # fMRIPrep tissue dseg
    assert not looks_freesurfer_coded(np.array([0, 100000, 2, 3, 41, 42, 10, 49]))
    assert not looks_freesurfer_coded(np.array([-1, 2, 3, 41, 42, 10, 49, 11]))


def test_schema_columns_are_unique_and_ordered():
    names = schema.column_names()
    assert len(names) == len(set(names))
    assert names[:4] == ["bids_name", "reg_source", "seg_source", "qc_error"]
    assert "reg_cc" in names and "reg_mi" in names
    for s in STRUCTURE_NAMES:
        assert f"vol_{s}" in names and f"vol_{s}_outlier" in names
    assert schema.column("vol_whole_brain").unit == "mm^3"
    with pytest.raises(ValueError):
        schema.column("nope")


def test_outputs_doc_is_generated_from_the_schema():
    doc = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"
    assert doc.read_text() == schema.render_markdown(), (
        "docs/outputs.md is stale: run `python -m bids_qc.schema > docs/outputs.md`"
    )
