"""Tests of :mod:`bids_qc.bids` (dataset walking) on fake datasets and one real one."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import bids.layout
import pytest

from bids_qc import bids_layout, exitcodes
from bids_qc.bids import bids_name, check_dataset, collect_inputs, normalise_labels
from bids_qc.errors import DatasetError
from bids_qc.settings import Settings
from tests import fakebids as fb
from tests.conftest import shared_path


def _settings(root: Path, **kwargs) -> Settings:
    return Settings(bids_dir=root, output_dir=root.parent / "out",
                    analysis_level="participant", **kwargs)


def _collect(root: Path, **kwargs) -> dict[str, object]:
    """bids_name -> row."""
    return {r.bids_name: r for r in collect_inputs(_settings(root, **kwargs))}


def _error(root: Path, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        collect_inputs(_settings(root, **kwargs))
    return info.value


# --- labels, names, dataset checks ----------------------------------------------------

def test_normalise_labels():
    assert normalise_labels(["sub-01", "01", " 02 ", "", "sub-03"], "sub") == ("01", "02", "03")
    assert normalise_labels(["ses-A", "B", "A"], "ses-") == ("A", "B")
    assert normalise_labels([], "sub") == ()


def test_bids_name_follows_entity_order():
    entities = {"part": "mag", "run": "02", "reconstruction": "norm", "ceagent": "gad",
                "acquisition": "mprage", "session": "A", "subject": "01"}
    assert bids_name(entities) == "sub-01_ses-A_acq-mprage_ce-gad_rec-norm_run-02_part-mag_T1w"


def test_check_dataset(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01"])
    check_dataset(root, skip_validation=False)
    for path in (tmp_path / "absent", root / "dataset_description.json"):
        for skip in (False, True):  # a missing folder (or a file) is fatal even when skipping
            with pytest.raises(DatasetError) as info:
                check_dataset(path, skip_validation=skip)
            assert info.value.exit_code == exitcodes.INVALID_BIDS
            assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_check_dataset_description(tmp_path, content):
    root = fb.make_raw(tmp_path / "ds", ["01"])
    description = root / "dataset_description.json"
    if content is None:
        description.unlink()
    else:
        description.write_text(content)
    with pytest.raises(DatasetError) as info:
        check_dataset(root, skip_validation=False)
    assert info.value.exit_code == exitcodes.INVALID_BIDS
    assert str(description) in str(info.value) and "--skip-bids-validation" in str(info.value)
    check_dataset(root, skip_validation=True)
    if content == "[1, 2]":  # pybids cannot read it at all
        assert _error(root).exit_code == exitcodes.INVALID_BIDS
    else:
        assert list(_collect(root)) == ["sub-01_T1w"]  # collect_inputs copes without it


# --- raw datasets ---------------------------------------------------------------------

def test_raw_only(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["02", "01"], acq="mprage")
    rows = collect_inputs(_settings(root))
    assert [r.bids_name for r in rows] == ["sub-01_acq-mprage_T1w", "sub-02_acq-mprage_T1w"]
    row = rows[0]
    assert row.t1w == root / "sub-01/anat/sub-01_acq-mprage_T1w.nii.gz"
    assert row.entities == {"subject": "01", "acquisition": "mprage"}
    assert row.sources == {"t1w": "raw"} and row.candidates == {}
    assert row.t1w_preproc is row.seg is row.xfm is row.reg_source is row.seg_source is None


def test_sessions_runs_and_entities(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01"], sessions=["A", "B"], runs=["01", "02"],
                       rec="norm", ce="gad", extension=".nii")
    rows = _collect(root)
    assert sorted(rows) == [f"sub-01_ses-{s}_ce-gad_rec-norm_run-{r}_T1w"
                            for s in "AB" for r in ("01", "02")]
    assert rows["sub-01_ses-B_ce-gad_rec-norm_run-02_T1w"].entities == {
        "subject": "01", "session": "B", "ceagent": "gad", "reconstruction": "norm",
        "run": "02"}


def test_only_anat_niftis_are_indexed(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01"])
    for junk in ("sub-01/func/sub-01_task-rest_T1w.nii.gz",  # wrong datatype
                 "sourcedata/sub-01/anat/sub-01_T1w.nii.gz",
                 "code/sub-01/anat/sub-01_T1w.nii.gz",
                 "sub-01/anat/sub-01_acq-x_T1w.mgz"):
        if junk.endswith(".nii.gz"):
            fb.write_image(root / junk)
        else:
            fb.write_json(root / junk, {})
    assert list(_collect(root)) == ["sub-01_T1w"]


def test_invalid_json_sidecar_does_not_stop_indexing(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01", "02"])
    fb.write_json(root / "sub-01/anat/sub-01_T1w.json", "{ this is not JSON")
    fb.write_json(root / "T1w.json", "[broken")
    assert sorted(_collect(root)) == ["sub-01_T1w", "sub-02_T1w"]


def test_broken_symlinks_still_give_rows(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01", "02"])
    fb.annex(root / "sub-01/anat/sub-01_T1w.nii.gz")
    norm = fb.annex(fb.add_freesurfer(root, "03") / "mri/norm.mgz")
    rows = _collect(root)
    assert sorted(rows) == ["sub-01_T1w", "sub-02_T1w", "sub-03_T1w"]
    assert rows["sub-01_T1w"].t1w.is_symlink() and not rows["sub-01_T1w"].t1w.exists()
    assert rows["sub-03_T1w"].t1w_preproc == norm


def test_no_t1w_at_all(tmp_path):
    root = tmp_path / "ds"
    fb.write_description(root)
    fb.write_image(root / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    error = _error(root)
    assert error.exit_code == exitcodes.NO_INPUT and str(root) in str(error)


def test_missing_folder_is_invalid_bids(tmp_path):
    assert _error(tmp_path / "nowhere").exit_code == exitcodes.INVALID_BIDS


# --- selection ------------------------------------------------------------------------

def test_participant_and_session_labels(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01", "02", "03"], sessions=["A", "B"])
    fb.add_freesurfer(root, "04", "A")  # a derivative-only row is filtered the same way
    for labels in (("02",), ("sub-02",), ("sub-02", "02")):
        assert sorted(_collect(root, participant_label=labels)) == [
            "sub-02_ses-A_T1w", "sub-02_ses-B_T1w"]
    assert sorted(_collect(root, session_label=("ses-B",))) == [
        "sub-01_ses-B_T1w", "sub-02_ses-B_T1w", "sub-03_ses-B_T1w"]
    assert sorted(_collect(root, participant_label=("01", "04"), session_label=("A",))) == [
        "sub-01_ses-A_T1w", "sub-04_ses-A_T1w"]


def test_labels_selecting_nothing_list_existing_ones(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01", "02"], sessions=["A"])
    for kwargs in ({"participant_label": ("sub-09",)}, {"session_label": ("Z",)}):
        error = _error(root, **kwargs)
        assert error.exit_code == exitcodes.NOTHING_SELECTED
        assert "01, 02" in str(error) and "sessions: A" in str(error)


def test_bids_filter_file(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01", "02"], acq="mprage")
    fb.make_raw(root, ["01"], acq="fast")
    fb.make_raw(root, ["01"], acq="mprage", rec="norm")
    fb.add_fmriprep(root, ["03"], entities={"acq": "mprage"})  # derivative-only row
    rows = _collect(root, bids_filters={"t1w": {"acquisition": "mprage",
                                                "reconstruction": None}})
    assert sorted(rows) == ["sub-01_acq-mprage_T1w", "sub-02_acq-mprage_T1w",
                            "sub-03_acq-mprage_T1w"]
    rows = _collect(root, bids_filters={"T1w": {"acq": ["fast"]}, "bold": {"task": "x"}})
    assert sorted(rows) == ["sub-01_acq-fast_T1w"]
    rows = _collect(root, bids_filters={"t1w": {"reconstruction": "*"}})
    assert sorted(rows) == ["sub-01_acq-mprage_rec-norm_T1w"]
    error = _error(root, bids_filters={"t1w": {"acquisition": "nope"}})
    assert error.exit_code == exitcodes.NOTHING_SELECTED
    assert "acquisition: fast, mprage" in str(error)
    assert _error(root, bids_filters={"t1w": {"acquisitoin": "x"}}).exit_code == exitcodes.USAGE
    assert _error(root, bids_filters={"t1w": "mprage"}).exit_code == exitcodes.USAGE


# --- fMRIPrep -------------------------------------------------------------------------

def test_fmriprep_only(tmp_path):
    root = tmp_path / "ds"
    fb.write_description(root)
    deriv = fb.add_fmriprep(root, ["01"], sessions=["A"],
                            spaces=("MNI152NLin6Asym_res-2", "MNI152NLin2009cAsym_res-2",
                                    "MNI152NLin2009cAsym"))
    anat = deriv / "sub-01/ses-A/anat"
    row = _collect(root)["sub-01_ses-A_T1w"]
    assert row.t1w is None
    assert row.entities == {"subject": "01", "session": "A"}
    assert row.t1w_preproc == anat / "sub-01_ses-A_desc-preproc_T1w.nii.gz"
    assert row.template_space == "MNI152NLin2009cAsym"
    assert row.template_t1w == (
        anat / "sub-01_ses-A_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz")
    assert row.brain_mask == anat / "sub-01_ses-A_desc-brain_mask.nii.gz"
    assert (row.seg, row.seg_kind, row.seg_source) == (
        anat / "sub-01_ses-A_desc-aseg_dseg.nii.gz", "aseg", "fmriprep")
    assert row.seg_reference == row.t1w_preproc
    assert row.xfm == anat / "sub-01_ses-A_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5"
    assert (row.xfm_kind, row.reg_source) == ("h5", "fmriprep")
    assert set(row.candidates) == {"fmriprep", "fmriprep_tissue"}
    assert row.sources == {"t1w_preproc": "fmriprep", "template_t1w": "fmriprep",
                           "brain_mask": "fmriprep", "seg": "fmriprep",
                           "seg_reference": "fmriprep", "xfm": "fmriprep"}


def test_runless_fmriprep_pairs_with_every_run(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01", "02"], runs=[1, 2])
    deriv = fb.add_fmriprep(root, ["01"], roles=("preproc", "mask"))
    rows = _collect(root)
    assert len(rows) == 4
    for run in (1, 2):
        row = rows[f"sub-01_run-{run}_T1w"]
        assert row.t1w_preproc == deriv / "sub-01/anat/sub-01_desc-preproc_T1w.nii.gz"
        assert row.brain_mask is not None and row.template_t1w is None
    assert rows["sub-02_run-1_T1w"].t1w_preproc is None


def test_run_specific_fmriprep_wins_over_runless(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01"], runs=[1, 2])
    fb.add_fmriprep(root, ["01"], roles=("preproc",))
    specific = fb.add_fmriprep(root, ["01"], roles=("preproc",), entities={"run": 2})
    rows = _collect(root)
    assert rows["sub-01_run-2_T1w"].t1w_preproc == (
        specific / "sub-01/anat/sub-01_run-2_desc-preproc_T1w.nii.gz")
    assert "run-2" not in rows["sub-01_run-1_T1w"].t1w_preproc.name


def test_padding_matters_for_labels_not_for_runs(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01"], runs=["01"])
    fb.make_raw(root, ["01"], runs=["01"], extension=".nii")  # a duplicate: one row kept
    fb.add_fmriprep(root, ["01"], roles=("preproc",), entities={"run": 1})
    fb.add_freesurfer(root, "1")  # sub-1 is another subject than sub-01
    rows = _collect(root)
    assert sorted(rows) == ["sub-01_run-01_T1w", "sub-1_T1w"]
    assert rows["sub-01_run-01_T1w"].t1w_preproc.name == "sub-01_run-1_desc-preproc_T1w.nii.gz"
    assert rows["sub-01_run-01_T1w"].seg is None


def test_tissue_dseg_is_classified_by_entities(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01"])
    # FreeSurfer-looking values in a bare dseg: still fMRIPrep's tissue classes
    fb.add_fmriprep(root, ["01"], roles=("preproc", "dseg"), arrays={"dseg": fb.tiny_aseg()})
    row = _collect(root)["sub-01_T1w"]
    assert (row.seg.name, row.seg_kind, row.seg_source) == ("sub-01_dseg.nii.gz", "tissue",
                                                            "fmriprep")
    assert row.candidates == {"fmriprep_tissue": str(row.seg)}


def test_non_fmriprep_derivatives_need_naming(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01"])
    other = fb.add_fmriprep(root, ["01"], name="mypipe", generated_by="MyPipe")
    assert _collect(root)["sub-01_T1w"].t1w_preproc is None
    smriprep = fb.add_fmriprep(root, ["01"], name="anat-outputs", generated_by="sMRIPrep")
    assert _collect(root)["sub-01_T1w"].t1w_preproc.is_relative_to(smriprep)
    row = _collect(root, derivatives=(other,))["sub-01_T1w"]
    assert row.t1w_preproc.is_relative_to(other) and row.sources["t1w_preproc"] == "fmriprep"


def test_fmriprep_with_broken_description_is_read_by_file_names(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01"])
    deriv = fb.add_fmriprep(root, ["01"], roles=("preproc", "aseg", "xfm"), xfm_ext=".txt")
    fb.write_json(deriv / "dataset_description.json", "{ broken")
    row = _collect(root)["sub-01_T1w"]
    assert row.t1w_preproc == deriv / "sub-01/anat/sub-01_desc-preproc_T1w.nii.gz"
    assert row.seg_source == "fmriprep" and row.xfm_kind == "itk"


def test_bids_dir_may_be_an_fmriprep_output(tmp_path):
    deriv = fb.add_fmriprep(tmp_path, ["01", "02"], roles=("preproc",))
    assert sorted(_collect(deriv)) == ["sub-01_T1w", "sub-02_T1w"]


def test_explicit_derivatives(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01"])
    fb.add_fmriprep(root, ["01"])
    elsewhere = tmp_path / "elsewhere"
    fs = fb.add_freesurfer(elsewhere, "01")
    row = _collect(root, derivatives=(elsewhere / "derivatives",))["sub-01_T1w"]
    assert row.sources["seg"] == "freesurfer" and "fmriprep" not in row.candidates
    assert _collect(root, derivatives=(fs,))["sub-01_T1w"].seg == fs / "mri/aseg.mgz"
    assert _collect(root, derivatives=())["sub-01_T1w"].sources == {"t1w": "raw"}
    error = _error(root, derivatives=(tmp_path / "missing",))
    assert error.exit_code == exitcodes.USAGE and "missing" in str(error)


# --- FreeSurfer and FastSurfer --------------------------------------------------------

def test_freesurfer_only(tmp_path):
    root = tmp_path / "ds"
    fb.write_description(root)
    folder = fb.add_freesurfer(root, "01")
    row = _collect(root)["sub-01_T1w"]
    mri = folder / "mri"
    assert row.t1w is None and row.entities == {"subject": "01"}
    assert (row.t1w_preproc, row.seg, row.seg_reference) == (
        mri / "norm.mgz", mri / "aseg.mgz", mri / "norm.mgz")
    assert (row.seg_kind, row.seg_source) == ("aseg", "freesurfer")
    assert (row.xfm, row.xfm_kind) == (mri / "transforms/talairach.xfm", "talairach")
    assert (row.template_space, row.reg_source) == ("MNI152NLin2009cAsym", "freesurfer")
    assert row.candidates == {"freesurfer": str(mri / "aseg.mgz")}


def test_freesurfer_fallbacks(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01", "02", "03"])
    fb.add_freesurfer(root, "01", volumes=("orig", "T1"), talairach="mri")
    fb.add_freesurfer(root, "02", volumes=("orig",), with_aseg=False, talairach=None)
    (fb.add_freesurfer(root, "03", volumes=()) / "mri/aseg.mgz").unlink()  # nothing usable
    fb.add_freesurfer(root, "04", under="freesurfer/fsaverage")  # not a subjects dir
    fb.write_image(root / "derivatives/freesurfer/fsaverage/mri/norm.mgz")  # not sub-*
    fb.write_image(root / "derivatives/freesurfer/sub-05_ses-A.long.sub-05/mri/norm.mgz")
    rows = _collect(root)
    assert sorted(rows) == ["sub-01_T1w", "sub-02_T1w", "sub-03_T1w"]
    one, two = rows["sub-01_T1w"], rows["sub-02_T1w"]
    assert one.t1w_preproc.name == "T1.mgz" and one.xfm.parent.name == "mri"
    assert two.t1w_preproc.name == "orig.mgz" and two.seg is None and two.reg_source is None
    assert rows["sub-03_T1w"].sources == {"t1w": "raw"}


def test_freesurfer_under_fmriprep_sourcedata(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01"])
    fb.add_fmriprep(root, ["01"], roles=("preproc", "aseg"))
    folder = fb.add_freesurfer(root, "01", under="fmriprep/sourcedata/freesurfer")
    row = _collect(root)["sub-01_T1w"]
    assert row.seg == folder / "mri/aseg.mgz" and row.seg_source == "freesurfer"
    assert row.reg_source == "freesurfer" and row.t1w_preproc == folder / "mri/norm.mgz"
    assert set(row.candidates) == {"freesurfer", "fmriprep"}


def test_fastsurfer(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01", "02"])
    deep = fb.add_fastsurfer(root, "01", talairach="transforms")
    noccseg = fb.add_fastsurfer(root, "02", deep=False)
    rows = _collect(root)
    one, two = rows["sub-01_T1w"], rows["sub-02_T1w"]
    assert (one.seg, one.seg_source, one.seg_kind) == (
        deep / "mri/aparc.DKTatlas+aseg.deep.mgz", "fastsurfer", "aseg")
    assert one.t1w_preproc == one.seg_reference == deep / "mri/orig.mgz"
    assert (one.reg_source, one.xfm_kind) == ("fastsurfer", "talairach")
    assert two.seg == noccseg / "mri/aseg.auto_noCCseg.mgz" and two.reg_source is None


def test_freesurfer_session_pairing(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01", "02"], sessions=["A", "B"])
    fb.add_freesurfer(root, "01", "A")
    fb.add_freesurfer(root, "01")  # a longitudinal base beside a session folder
    fb.add_freesurfer(root, "02")  # no session folder: pairs with every session
    rows = _collect(root)
    assert len(rows) == 4  # the base adds no row of its own
    assert rows["sub-01_ses-A_T1w"].seg.parts[-3] == "sub-01_ses-A"
    assert rows["sub-01_ses-B_T1w"].seg is None
    assert rows["sub-02_ses-A_T1w"].seg == rows["sub-02_ses-B_T1w"].seg
    assert rows["sub-02_ses-B_T1w"].seg.parts[-3] == "sub-02"


def test_derivative_only_rows_merge(tmp_path):
    root = tmp_path / "ds"
    fb.write_description(root)
    fb.add_freesurfer(root, "01")
    fb.add_fmriprep(root, ["01"], sessions=["A"], roles=("preproc",))
    fb.add_fastsurfer(root, "01", "A")
    rows = _collect(root)
    assert list(rows) == ["sub-01_ses-A_T1w"]
    assert set(rows["sub-01_ses-A_T1w"].candidates) == {"freesurfer", "fastsurfer"}


# --- precedence -----------------------------------------------------------------------

@pytest.mark.parametrize(("choice", "source", "kind"), [
    ("auto", "freesurfer", "aseg"), ("freesurfer", "freesurfer", "aseg"),
    ("fastsurfer", "fastsurfer", "aseg"), ("fmriprep", "fmriprep", "aseg")])
def test_seg_precedence(tmp_path, choice, source, kind):
    root = fb.make_raw(tmp_path / "ds", ["01"])
    fb.add_fmriprep(root, ["01"])
    fb.add_freesurfer(root, "01")
    fb.add_fastsurfer(root, "01", under="fastsurfer")
    row = _collect(root, seg_source=choice)["sub-01_T1w"]
    assert (row.seg_source, row.seg_kind, row.sources["seg"]) == (source, kind, source)
    assert set(row.candidates) == {"freesurfer", "fastsurfer", "fmriprep", "fmriprep_tissue"}
    assert row.seg == Path(row.candidates[source])


def test_seg_precedence_fallbacks(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01", "02"])
    fb.add_fmriprep(root, ["01"], roles=("preproc", "dseg"))
    fb.add_fmriprep(root, ["02"], roles=("preproc", "aseg", "dseg"))
    fb.add_fastsurfer(root, "02")
    rows = _collect(root)
    assert rows["sub-01_T1w"].seg_kind == "tissue"
    assert rows["sub-02_T1w"].seg_source == "fastsurfer"
    rows = _collect(root, seg_source="freesurfer")  # forced and absent: no segmentation
    assert rows["sub-01_T1w"].seg is None and rows["sub-02_T1w"].seg is None
    assert rows["sub-02_T1w"].candidates  # still listed
    assert _collect(root, seg_source="fmriprep")["sub-02_T1w"].seg_kind == "aseg"


def test_registration_precedence(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01", "02", "03", "04"])
    fb.add_fmriprep(root, ["01"])  # template-space T1w
    fb.add_freesurfer(root, "01")
    fb.add_fmriprep(root, ["02", "03"], roles=("preproc", "xfm"), xfm_ext=".txt")
    fb.add_freesurfer(root, "02")  # talairach beats an fMRIPrep affine
    rows = _collect(root)
    one, two, three, four = (rows[f"sub-0{i}_T1w"] for i in range(1, 5))
    assert (one.reg_source, one.template_t1w is not None, one.xfm_kind) == ("fmriprep", True, "h5")
    assert one.t1w_preproc.name == "sub-01_desc-preproc_T1w.nii.gz"
    assert (two.reg_source, two.xfm.name, two.t1w_preproc.name) == (
        "freesurfer", "talairach.xfm", "norm.mgz")
    assert (three.reg_source, three.xfm_kind, three.template_space) == (
        "fmriprep", "itk", "MNI152NLin2009cAsym")
    assert three.template_t1w is None and three.sources["xfm"] == "fmriprep"
    assert four.reg_source is four.xfm is four.template_space is None


# --- database -------------------------------------------------------------------------

def test_database_dir_is_reused(tmp_path, monkeypatch):
    root = fb.make_raw(tmp_path / "ds", ["01", "02"], sessions=["A"])
    fb.add_fmriprep(root, ["01"])
    database = tmp_path / "db"
    first = collect_inputs(_settings(root, bids_database_dir=database))
    assert (database / "layout_index.sqlite").is_file()
    assert list((database / "derivatives").glob("fmriprep-*/layout_index.sqlite"))

    def no_indexing(self, layout):
        raise AssertionError("reindexed although the database exists")

    monkeypatch.setattr(bids.layout.BIDSLayoutIndexer, "__call__", no_indexing)
    assert collect_inputs(_settings(root, bids_database_dir=database)) == first
    # A database of another dataset is not trusted.
    monkeypatch.undo()
    other = fb.make_raw(tmp_path / "other", ["09"])
    assert [r.bids_name for r in collect_inputs(_settings(other, bids_database_dir=database))
            ] == ["sub-09_T1w"]


def test_database_reuse_indexes_nothing_and_detects_a_changed_dataset(tmp_path, monkeypatch,
                                                                        caplog):
    root = fb.make_raw(tmp_path / "ds", ["01", "02"])
    fb.add_fmriprep(root, ["01", "02"])
    database = tmp_path / "db"
    first = collect_inputs(_settings(root, bids_database_dir=database))
    signature = json.loads((database / bids_layout.SIGNATURE_FILE).read_text())
    assert signature == bids_layout.tree_signature(root) and signature["folders"] == 4
    # Reuse: pybids is handed the database and indexes nothing.
    seen = []
    real_layout = bids.layout.BIDSLayout.__init__

    def spy(self, root_, *args, **kwargs):
        seen.append(kwargs.get("database_path"))
        return real_layout(self, root_, *args, **kwargs)

    def no_indexing(self, layout):
        raise AssertionError("reindexed although the database exists")

    monkeypatch.setattr(bids.layout.BIDSLayout, "__init__", spy)
    monkeypatch.setattr(bids.layout.BIDSLayoutIndexer, "__call__", no_indexing)
    assert collect_inputs(_settings(root, bids_database_dir=database)) == first
    assert seen[0] == database and seen[1].parent == database / "derivatives"
    assert len(seen) == 2 and (seen[1] / "layout_index.sqlite").is_file()
    # A job with a participant label asks pybids for its subject only.
    asked = []
    real_get = bids.layout.BIDSLayout.get

    def get_spy(self, *args, **kwargs):
        asked.append(kwargs.get("subject"))
        return real_get(self, *args, **kwargs)

    monkeypatch.setattr(bids.layout.BIDSLayout, "get", get_spy)
    one = collect_inputs(_settings(root, bids_database_dir=database, participant_label=("02",)))
    assert one == [r for r in first if r.bids_name == "sub-02_T1w"]
    assert asked == [["02"], ["02"]]
    # A new subject changes the tree: the stale database is left alone (the jobs of an
    # array share it), this job indexes in memory and finds the new image.
    monkeypatch.undo()
    fb.make_raw(root, ["03"])
    stamp = (database / "layout_index.sqlite").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="bids_qc.bids"):
        rows = collect_inputs(_settings(root, bids_database_dir=database))
    assert [r.bids_name for r in rows] == ["sub-01_T1w", "sub-02_T1w", "sub-03_T1w"]
    assert "out of date" in caplog.text and str(database) in caplog.text
    assert (database / "layout_index.sqlite").stat().st_mtime_ns == stamp
    # Deleting the folder indexes afresh, with the new signature.
    shutil.rmtree(database)
    assert len(collect_inputs(_settings(root, bids_database_dir=database))) == 3
    assert json.loads((database / bids_layout.SIGNATURE_FILE).read_text())["folders"] == 6


# --- real data ------------------------------------------------------------------------

@pytest.mark.realdata
def test_real_ds002748():
    root = shared_path("ds002748")
    rows = collect_inputs(_settings(root))
    assert [r.bids_name for r in rows] == [f"sub-{i:02d}_T1w" for i in range(1, 11)]
    assert all(r.t1w is not None and os.path.lexists(r.t1w) for r in rows)


def test_sidecar_scanner_fields_follow_inheritance(tmp_path):
    root = fb.make_raw(tmp_path / "ds", ["01", "02", "03"], sessions=["A"], runs=["1"],
                       sidecar={})
    fb.write_json(root / "T1w.json", {"Manufacturer": "Siemens", "MagneticFieldStrength": 3})
    fb.write_json(root / "sub-02/sub-02_T1w.json", {"MagneticFieldStrength": 1.5})
    fb.write_json(root / "sub-02/ses-A/anat/sub-02_ses-A_run-1_T1w.json",
                  {"Manufacturer": "GE", "RepetitionTime": 2.3})
    fb.write_json(root / "sub-03/ses-A/anat/sub-03_ses-A_run-1_T1w.json", "{ not JSON")
    fb.write_json(root / "sub-03/ses-A/anat/sub-03_ses-A_run-2_T1w.json",  # another run's
                  {"Manufacturer": "Philips"})
    rows = _collect(root)
    assert rows["sub-01_ses-A_run-1_T1w"].acquisition == {
        "Manufacturer": "Siemens", "MagneticFieldStrength": 3}
    assert rows["sub-02_ses-A_run-1_T1w"].acquisition == {
        "Manufacturer": "GE", "MagneticFieldStrength": 1.5}
    assert rows["sub-03_ses-A_run-1_T1w"].acquisition == {
        "Manufacturer": "Siemens", "MagneticFieldStrength": 3}


def _real(*parts: str) -> Path:
    """A file of the real data; skipped when absent, but a failure on CI (it must be there)."""
    if os.environ.get("CI") == "true":
        from tests.conftest import SHARED_DATA

        path = SHARED_DATA.joinpath(*parts)
        assert path.exists(), f"real data {path} is absent on CI"
        return path
    return shared_path(*parts)


def test_etiv_is_read_from_aseg_stats(tmp_path):
    from bids_qc.derivatives_fs import read_etiv

    assert read_etiv(fb.write_aseg_stats(tmp_path / "a.stats", 1234567.0)) == 1234567.0
    # mri_segstats without --etiv (FastSurfer's segmentation-only stats): no value
    assert read_etiv(fb.write_aseg_stats(tmp_path / "b.stats", None)) is None
    # BrainSegVol-to-eTIV and friends are other measures, not eTIV
    (tmp_path / "c.stats").write_text("# Measure BrainSegVol-to-eTIV, BrainSegVol-to-eTIV, "
                                      "Ratio of BrainSegVol to eTIV, 0.801345, unitless\n")
    assert read_etiv(tmp_path / "c.stats") is None


def test_etiv_of_freesurfers_bert():
    from bids_qc.derivatives_fs import read_etiv

    # bert (FreeSurfer 7.2): "# Measure EstimatedTotalIntraCranialVol, eTIV, ..., 1520021.264474"
    etiv = read_etiv(_real("freesurfer_bert", "stats", "aseg.stats"))
    assert etiv == pytest.approx(1520021.264474)
    # its own BrainSegVol-to-eTIV ratio agrees with the value read
    assert 1218061.0 / etiv == pytest.approx(0.801345, abs=1e-6)


def test_freesurfer_stats_become_the_etiv_metric(tmp_path):
    from bids_qc.interfaces.classic import ClassicMetrics

    root = tmp_path / "ds"
    fb.write_description(root)
    folder = fb.add_freesurfer(root, "01", etiv=1.45e6)
    fb.add_freesurfer(root, "02")  # no stats folder
    rows = _collect(root)
    one, two = rows["sub-01_T1w"], rows["sub-02_T1w"]
    assert one.aseg_stats == folder / "stats" / "aseg.stats"
    assert one.sources["aseg_stats"] == "freesurfer"
    assert "aseg_stats" in one.input_files()  # a changed stats file reruns the image
    assert two.aseg_stats is None and "aseg_stats" not in two.sources
    metrics, warnings = {"etiv_mm3": None}, []
    ClassicMetrics._etiv(one, metrics, warnings)
    assert metrics["etiv_mm3"] == pytest.approx(1.45e6) and not warnings
    ClassicMetrics._etiv(two, metrics := {"etiv_mm3": None}, warnings)
    assert metrics["etiv_mm3"] is None and not warnings
    # a stats file without eTIV, or one not fetched: a warning, not a failed stage
    fb.write_aseg_stats(one.aseg_stats, None)
    ClassicMetrics._etiv(one, metrics, warnings)
    assert metrics["etiv_mm3"] is None and "vol_whole_brain instead" in warnings[-1]
    one.aseg_stats.unlink()
    one.aseg_stats.symlink_to(tmp_path / "annex-object-not-fetched")
    ClassicMetrics._etiv(one, metrics, warnings)
    assert metrics["etiv_mm3"] is None and "eTIV not read" in warnings[-1]


def test_bulk_entity_read_equals_pybids_own_per_file_entities(tmp_path, monkeypatch):
    """The pybids adapter reads entities from pybids' tag table in a few queries; on this
    pybids it must give exactly what ``BIDSFile.get_entities`` gives, without falling back
    to it (a pybids release that changes the table fails here, not silently slower)."""
    root = fb.make_raw(tmp_path / "ds", ["01", "02"], sessions=["A"], runs=[1, 2], acq="mp")
    fb.add_fmriprep(root, ["01"], sessions=["A"])
    raw = bids_layout.open_layout(root, None, derivative=False)
    deriv = bids_layout.open_layout(root / "derivatives" / "fmriprep", None, derivative=True)
    for layout in (raw, deriv):
        files = layout.get(return_type="object", scope="self", datatype="anat")
        assert len(files) >= 4
        expected = [f.get_entities() for f in files]
        with monkeypatch.context() as mp:
            mp.setattr(bids.layout.BIDSFile, "get_entities",
                       lambda self, *a, **k: pytest.fail("fell back to get_entities"))
            assert bids_layout.file_entities(layout, files) == expected
