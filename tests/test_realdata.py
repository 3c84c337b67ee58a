"""The split table loader and the MUSE -> FreeSurfer mapping, on written files and real data."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_qc.structures import SUBCORTICAL
from bids_qc.training.realdata import (
    MUSE_TO_FREESURFER,
    ixi_people,
    load_splits,
    muse_to_freesurfer,
)
from tests.conftest import require_shared_data


def test_load_splits_reads_parts(tmp_path):
    f = tmp_path / "splits.tsv"
    f.write_text("dataset\titem\tpart\na\tx\ttraining\na\ty\ttest\nb\tz\tcalibration\n")
    s = load_splits(tmp_path)
    assert s.part("a", "y") == "test"
    assert s.items("a", "training") == ("x",)
    assert s.items("b", "test") == ()
    assert s.datasets() == ("a", "b")
    with pytest.raises(KeyError, match="not listed"):
        s.part("a", "w")


@pytest.mark.parametrize("text, match", [
    ("dataset\titem\n", "lacks the column"),
    ("dataset\titem\tpart\na\tx\tvalidation\n", "line 2: part 'validation'"),
    ("dataset\titem\tpart\na\tx\ttest\na\tx\ttraining\n", "line 3: a/x is listed twice"),
])  # fmt: skip
def test_load_splits_rejects_bad_tables(tmp_path, text, match):
    f = tmp_path / "splits.tsv"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_splits(f)


def test_load_splits_names_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path / "splits.tsv")):
        load_splits(tmp_path)


def test_real_split_table_is_as_documented():
    data = require_shared_data()
    s = load_splits(data)
    assert len(s.items("ixi_dlmuse", "training")) == 60
    assert len(s.items("ixi_dlmuse", "calibration")) == 30
    assert len(s.items("ixi_dlmuse", "test")) == 30
    assert s.part("freesurfer_bert", "bert") == "calibration"
    assert s.items("ds002748", "test") == ("sub-09", "sub-10")
    assert len(ixi_people(data, "calibration", s)) == 30


def test_muse_mapping_codes():
    labels = np.array([[0, 59, 60], [31, 32, 601]])  # 601: no aseg label, a neighbour's
    out = muse_to_freesurfer(labels)
    assert out.tolist() == [[0, 49, 10], [54, 18, 18]]
    # cortex and white matter by side (even cortical codes and odd WM codes are right)
    assert muse_to_freesurfer(np.array([100, 101, 81, 82, 1])).tolist() == [42, 3, 41, 2, 0]
    # the vermis takes its neighbour's label: the cerebellar cortex beside it
    assert muse_to_freesurfer(np.array([38, 72, 72, 39, 39])).tolist() == [47, 47, 8, 8, 8]
    with pytest.raises(ValueError, match="integer"):
        muse_to_freesurfer(np.array([1.5]))
    # every subcortical structure of the contract has exactly one MUSE source
    fs_codes = {c for s in SUBCORTICAL for c in s.codes}
    assert fs_codes <= set(MUSE_TO_FREESURFER.values())


def test_muse_mapping_on_a_real_person_keeps_sides_and_sizes():
    data = require_shared_data()
    person = ixi_people(data, "calibration")[0]
    img = nib.load(person.dlmuse)
    fs = muse_to_freesurfer(np.asarray(img.dataobj))
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000
    ijk = np.indices(fs.shape).reshape(3, -1)
    for s in SUBCORTICAL:
        mask = s.mask(fs).reshape(-1)
        vol = mask.sum() * voxel_ml
        assert 0.1 < vol < 20, f"{s.name}: {vol:.2f} ml"
        x = nib.affines.apply_affine(img.affine, ijk[:, mask].mean(axis=1))[0]
        # RAS+: the subject's left is at x < 0 of the head's centre
        centre = nib.affines.apply_affine(img.affine, ijk[:, (fs > 0).reshape(-1)].mean(axis=1))[0]
        assert (x < centre) == s.name.startswith("left_"), s.name
    # a whole aseg: cortex and white matter present, no unlabelled hole inside the brain
    for code, low, high in ((3, 150, 450), (42, 150, 450), (2, 120, 400), (41, 120, 400)):
        assert low < (fs == code).sum() * voxel_ml < high, code
    inside = np.asarray(img.dataobj) > 1
    assert (fs[inside] > 0).all()


def test_voxelmorphs_header_is_fixed_so_left_is_left_and_up_is_up():
    from scipy import ndimage as ndi

    from bids_qc.training.real_sets import good_images, load_t1w, segmentation

    data = require_shared_data()
    (im,) = [i for i in good_images(data, "test") if i.dataset == "voxelmorph_subject"]
    labels, affine = segmentation(im)
    assert np.allclose(affine, load_t1w(im).affine)

    def world(code):
        return affine[:3, :3] @ np.array(ndi.center_of_mass(labels == code)) + affine[:3, 3]

    # RAS world: the left hippocampus (17) left of the right one (53); the brainstem (16)
    # well below and behind the lateral ventricles (4).
    assert world(17)[0] < -10 < 10 < world(53)[0]
    stem, ventricle = world(16), world(4)
    assert stem[2] < ventricle[2] - 30 and stem[1] < ventricle[1]
