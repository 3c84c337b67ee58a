"""The train/eval guard: evaluation anatomies never reach a training split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bids_qc.synth import labelmaps
from bids_qc.synth.labelmaps import (
    EVAL_MAPS,
    EVAL_SUBJECTS,
    TRAIN_MAPS,
    TRAIN_SUBJECTS,
    check_training_maps,
    iter_label_maps,
    load_bert,
    load_label_map,
    load_subject_t1,
)
from tests.conftest import shared_path


def test_splits_are_disjoint_and_complete() -> None:
    assert list(TRAIN_MAPS) == list(range(1, 17))
    assert EVAL_MAPS == (17, 18, 19, 20)
    assert not set(TRAIN_MAPS) & set(EVAL_MAPS)
    assert TRAIN_SUBJECTS == tuple(f"{i:02d}" for i in range(1, 9))
    assert EVAL_SUBJECTS == ("09", "10")


@pytest.mark.parametrize("index", EVAL_MAPS)
def test_eval_maps_refused_for_training(index: int) -> None:
    with pytest.raises(ValueError, match="evaluation-only"):
        load_label_map(index, "train")
    with pytest.raises(ValueError, match="evaluation-only"):
        check_training_maps([1, 2, index])
    with pytest.raises(ValueError, match="evaluation-only"):
        list(iter_label_maps([3, index], "train"))  # refused before anything is read


@pytest.mark.parametrize("subject", ["09", "sub-10", 9])
def test_eval_subjects_refused_for_training(subject) -> None:
    with pytest.raises(ValueError, match="evaluation-only"):
        load_subject_t1(subject, "train")


def test_bert_refused_for_training_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="evaluation-only"):
        load_bert("aseg", "train")
    with pytest.raises(ValueError):
        load_label_map(21, "eval")
    with pytest.raises(ValueError):
        load_label_map(3, "test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown ds002748"):
        load_subject_t1("42", "eval")


def test_missing_data_folder_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("BIDS_QC_SHARED_DATA", str(missing))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_label_map(1, "train")


@pytest.mark.realdata
def test_load_train_and_eval_maps() -> None:
    shared_path("synthseg_label_maps", "training_seg_17.nii.gz")
    lm = load_label_map(2, "train")
    assert lm.labels.shape == (256, 256, 256) and lm.labels.dtype == np.int32
    assert lm.affine.shape == (4, 4)
    assert load_label_map(17, "eval").name == "training_seg_17"


@pytest.mark.realdata
def test_load_subject() -> None:
    shared_path("ds002748", "sub-09", "anat", "sub-09_T1w.nii.gz")
    assert load_subject_t1("sub-09", "eval").shape == (288, 288, 181)
    assert labelmaps.load_subject_t1(1, "train").ndim == 3
