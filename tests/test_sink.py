"""The output sink: node files reach OUTPUT_DIR through WriteResults, paths retargeted."""

from __future__ import annotations

import pytest

from bids_qc.results import stage_result
from bids_qc.sink import publish, retarget


def test_listed_files_are_copied_and_their_paths_retargeted(tmp_path):
    work = tmp_path / "work" / "vinn"
    work.mkdir(parents=True)
    dseg = work / "sub-01_desc-vinn_dseg.nii.gz"
    dseg.write_bytes(b"\x1f\x8b labels")
    out = tmp_path / "out"
    stages = [stage_result("vinn", {}, [], [], [], {"segmentation": str(dseg)},
                           {str(dseg): "sub-01/anat/sub-01_desc-vinn_dseg.nii.gz"}),
              stage_result("classic", {"vol": 1.0}, [], [], [], {"image": "/data/t1.nii"})]
    done = publish(stages, out)
    dest = out / "sub-01" / "anat" / "sub-01_desc-vinn_dseg.nii.gz"
    assert done == {str(dseg): str(dest)}
    assert dest.read_bytes() == dseg.read_bytes()
    row = {"seg": str(dseg), "candidates": {"bids_qc": str(dseg)}, "t1w": "/data/t1.nii"}
    assert retarget(row, done) == {"seg": str(dest), "candidates": {"bids_qc": str(dest)},
                                   "t1w": "/data/t1.nii"}
    moved = retarget(stages, done)
    assert moved[0]["provenance"]["segmentation"] == str(dest)
    assert "publish" not in moved[0] and moved[1] == stages[1]
    # a stage without files publishes nothing
    assert "publish" not in stage_result("x", {}, [], [], [])


def test_a_destination_outside_the_output_dataset_is_refused(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    for bad in ("../escape.txt", str(tmp_path / "abs.txt")):
        with pytest.raises(ValueError, match="not inside the output dataset"):
            publish([stage_result("x", {}, [], [], [], None, {str(f): bad})], tmp_path / "o")
    assert not (tmp_path / "escape.txt").exists()
