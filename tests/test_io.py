"""Tests of bids_qc.io: a corpus of broken inputs, resampling, transforms, atomic writes."""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import os
import stat
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.io

from bids_qc import atomic, filechecks, transforms
from bids_qc import io as bio
from bids_qc.errors import InputError
from bids_qc.io import (
    LoadedImage,
    atomic_save_nifti,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_freesurfer_codes,
    json_ready,
    load_image,
    load_labels,
    md5sum,
    read_itk_affine,
    read_talairach_xfm,
    reorient_ras,
    resample_to_grid,
)
from tests.conftest import shared_path

RNG = np.random.default_rng(0)


def _volume(shape=(10, 11, 12), dtype=np.int16) -> np.ndarray:
    """A non-constant test volume with distinct values (so voxels can be tracked)."""
    return (np.arange(np.prod(shape)).reshape(shape) % 30000 + 1).astype(dtype)


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    nib.save(img, str(path))
    return path


def _raises(path: Path, *fragments: str, loader=load_image) -> InputError:
    """Assert ``loader(path)`` raises an InputError naming the file and each fragment."""
    with pytest.raises(InputError) as info:
        loader(path)
    message = str(info.value)
    assert path.name in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def _valid(loaded: LoadedImage, shape) -> None:
    data = loaded.data
    assert isinstance(loaded.img, nib.Nifti1Image)
    assert data.shape == tuple(shape) and data.dtype == np.float32
    assert np.all(np.isfinite(data))
    assert abs(np.linalg.det(loaded.affine)) > 0


# --------------------------------------------------------------------------------------
# Valid inputs


def test_int16_loads_as_float32_with_its_values(tmp_path):
    data = _volume()
    path = _save(tmp_path / "sub-01_T1w.nii.gz", data)
    loaded = load_image(path)
    _valid(loaded, data.shape)
    np.testing.assert_array_equal(loaded.data, data.astype(np.float32))
    assert loaded.warnings == () and loaded.path == path


def test_scaled_integers_are_scaled_in_float32(tmp_path):
    img = nib.Nifti1Image(_volume(), np.eye(4))
    img.header.set_data_dtype(np.int16)
    path = tmp_path / "scaled.nii"
    nib.save(img, str(path))
    # Set scaling after writing, so nibabel does not choose its own.
    raw = bytearray(path.read_bytes())
    hdr = np.ndarray((), dtype=nib.nifti1.header_dtype, buffer=raw)
    hdr["scl_slope"], hdr["scl_inter"] = 2.0, 10.0
    path.write_bytes(bytes(raw))
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.data, _volume().astype(np.float32) * 2 + 10)


def test_anisotropic_voxels_load(tmp_path):
    path = _save(tmp_path / "aniso.nii.gz", _volume(), np.diag([1.0, 1.0, 5.0, 1.0]))
    loaded = load_image(path)
    np.testing.assert_allclose(loaded.img.header.get_zooms()[:3], (1, 1, 5))


def _oblique() -> np.ndarray:
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.9, 1.0, 1.2])
    aff[:3, 3] = (-5, 3, 7)
    return aff


AFFINES = {
    "LPS": np.array([[-1.0, 0, 0, 9], [0, -1, 0, 10], [0, 0, 1, -4], [0, 0, 0, 1]]),
    "LIA": np.array([[-1.0, 0, 0, 9], [0, 0, 1, -3], [0, -1, 0, 10], [0, 0, 0, 1]]),
    "oblique": _oblique(),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_orientations_load_unchanged_and_reorient_keeps_world(tmp_path, name):
    data = _volume()
    path = _save(tmp_path / f"{name}.nii.gz", data, AFFINES[name])
    loaded = load_image(path)
    np.testing.assert_allclose(loaded.affine, AFFINES[name], atol=1e-5)
    np.testing.assert_array_equal(loaded.data, data)
    ras = reorient_ras(loaded.img)
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    as_loaded = reorient_ras(loaded)
    assert isinstance(as_loaded, LoadedImage) and as_loaded.path == loaded.path
    np.testing.assert_array_equal(as_loaded.affine, ras.affine)
    # The voxel holding a given value sits at the same world point in both images.
    rdata = np.asanyarray(ras.dataobj)
    for value in (1.0, 437.0, float(data.max())):
        ijk = np.argwhere(loaded.data == value)[0]
        rijk = np.argwhere(rdata == value)[0]
        np.testing.assert_allclose(nib.affines.apply_affine(loaded.affine, ijk),
                                   nib.affines.apply_affine(ras.affine, rijk), atol=1e-4)


@pytest.mark.parametrize("suffix", [".mgz", ".mgh"])
def test_mgh_and_mgz_load(tmp_path, suffix):
    data = _volume(dtype=np.float32)
    aff = AFFINES["LIA"]
    path = tmp_path / f"orig{suffix}"
    nib.save(nib.MGHImage(data, aff), str(path))
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.data, data)
    np.testing.assert_allclose(loaded.affine, aff, atol=1e-4)


def test_4d_mgz_first_frame(tmp_path):
    data = _volume((8, 9, 10, 3), dtype=np.float32)
    path = tmp_path / "frames.mgz"
    nib.save(nib.MGHImage(data, np.eye(4)), str(path))
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.data, data[..., 0])
    assert loaded.warnings


def test_nifti2_loads(tmp_path):
    path = tmp_path / "n2.nii.gz"
    nib.save(nib.Nifti2Image(_volume(), np.eye(4)), str(path))
    assert isinstance(load_image(path).img, nib.Nifti1Image)


@pytest.mark.parametrize("dtype, limit", [(np.int16, 7.5), (np.float32, 5.5)])
def test_large_image_has_no_float64_copy(tmp_path, monkeypatch, dtype, limit):
    """Peak allocation per voxel stays near raw + float32 + a 1-byte mask.

    nibabel's own path would hold a float64 copy (int16: 2 + 8 + 4 bytes per voxel) or
    a second gzip buffer (float32: 4 + 4).
    """
    shape = (96, 96, 96)
    path = tmp_path / "big.nii.gz"
    img = nib.Nifti1Image(_volume(shape, dtype), np.eye(4))
    img.header.set_slope_inter(1.5, 3.0)
    nib.save(img, str(path))
    monkeypatch.setattr(bio, "_READ_CHUNK", 1 << 16)  # in proportion to a 512^3 image
    tracemalloc.start()
    loaded = load_image(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n = np.prod(shape)
    np.testing.assert_array_equal(loaded.data, _volume(shape, dtype) * np.float32(1.5) + 3)
    assert peak < limit * n, f"peak {peak / n:.1f} bytes per voxel"


def test_big_endian_nifti_loads(tmp_path):
    data = _volume()
    img = nib.Nifti1Image(data, np.eye(4), nib.Nifti1Header(endianness=">"))
    path = tmp_path / "be.nii.gz"
    nib.save(img, str(path))
    assert nib.load(str(path)).get_data_dtype().byteorder == ">"
    np.testing.assert_array_equal(load_image(path).data, data)
    np.testing.assert_array_equal(load_labels(path).data, data)


# --------------------------------------------------------------------------------------
# File-level problems


def test_missing_file(tmp_path):
    _raises(tmp_path / "sub-01_T1w.nii.gz", "file not found")


def test_broken_symlink_gives_datalad_hint(tmp_path):
    link = tmp_path / "sub-01_T1w.nii.gz"
    link.symlink_to(tmp_path / ".git" / "annex" / "objects" / "XX" / "SHA256E-s1--abc")
    err = _raises(link, "broken symbolic link", "datalad get")
    assert str(link) in err.hint


def test_annex_pointer_file(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.write_text("/annex/objects/SHA256E-s123--abcdef.nii.gz\n")
    _raises(path, "git-annex pointer", "datalad get")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.touch()
    _raises(path, "empty file (0 bytes)")


def test_folder_instead_of_file(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.mkdir()
    _raises(path, "folder")


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_gz(tmp_path, keep):
    """Cut in the data (header reads, data fails) or early (header itself fails)."""
    data = RNG.normal(size=(16, 16, 16)).astype(np.float32)  # incompressible
    full = _save(tmp_path / "full.nii.gz", data).read_bytes()
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.write_bytes(full[: int(len(full) * keep)])
    _raises(path, "truncated")


def test_truncated_header_in_gz(tmp_path):
    full = _save(tmp_path / "full.nii.gz", _volume()).read_bytes()
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.write_bytes(gzip.compress(gzip.decompress(full)[:200]))
    _raises(path, "truncated")


def test_truncated_uncompressed(tmp_path):
    full = _save(tmp_path / "full.nii", _volume()).read_bytes()
    path = tmp_path / "sub-01_T1w.nii"
    path.write_bytes(full[:1000])
    _raises(path, "truncated")


def test_text_file_named_nii_gz(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.write_text("<html>404 Not Found</html>\n" * 3)
    _raises(path, "not a NIfTI file", "not gzip-compressed")


def test_gzipped_text_named_nii_gz(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.write_bytes(gzip.compress(b"hello " * 200))
    _raises(path, "not a NIfTI file", "magic")


def test_uncompressed_nifti_named_gz(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.write_bytes(nib.Nifti1Image(_volume(), np.eye(4)).to_bytes())
    err = _raises(path, "not gzip-compressed")
    assert "Rename it to .nii" in err.hint


def test_not_mgh(tmp_path):
    path = tmp_path / "orig.mgz"
    path.write_bytes(gzip.compress(b"\x00\x00\x00\x07" + bytes(400)))
    _raises(path, "not an MGH/MGZ file")


def test_unreadable_file(tmp_path, monkeypatch):
    path = _save(tmp_path / "sub-01_T1w.nii.gz", _volume())

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # root ignores chmod 000; the file-level checks open the file first
    monkeypatch.setattr(filechecks, "open", denied, raising=False)
    _raises(path, "cannot be opened", "Permission denied")


def test_unknown_extension(tmp_path):
    path = tmp_path / "sub-01_T1w.img"
    path.write_bytes(b"x" * 2000)
    _raises(path, "unsupported file type")


# --------------------------------------------------------------------------------------
# Shapes


def test_2d_refused(tmp_path):
    _raises(_save(tmp_path / "slice.nii.gz", _volume((10, 12))), "2-D")


def test_single_slice_3d_refused(tmp_path):
    _raises(_save(tmp_path / "slice.nii.gz", _volume((10, 12, 1))), "2-D")


def test_4d_single_volume_used_with_warning(tmp_path):
    data = _volume((8, 9, 10, 1))
    loaded = load_image(_save(tmp_path / "t1.nii.gz", data))
    _valid(loaded, (8, 9, 10))
    np.testing.assert_array_equal(loaded.data, data[..., 0])
    assert any("single volume" in w for w in loaded.warnings)


def test_4d_several_volumes_first_used_with_warning(tmp_path):
    data = _volume((8, 9, 10, 3))
    loaded = load_image(_save(tmp_path / "t1.nii.gz", data))
    _valid(loaded, (8, 9, 10))
    np.testing.assert_array_equal(loaded.data, data[..., 0])
    assert any("3 volumes" in w and "first" in w for w in loaded.warnings)


def test_5d_refused(tmp_path):
    _raises(_save(tmp_path / "warp.nii.gz", _volume((8, 8, 8, 1, 3))), "5-D")


def test_5d_with_trailing_singletons_is_one_volume(tmp_path):
    data = _volume((8, 8, 8, 1, 1))
    loaded = load_image(_save(tmp_path / "t1.nii.gz", data))
    np.testing.assert_array_equal(loaded.data, data[..., 0, 0])
    assert loaded.warnings


# --------------------------------------------------------------------------------------
# Values and affines


def test_few_nan_inf_zeroed_with_warning(tmp_path):
    data = _volume(dtype=np.float32)
    data[0, 0, :3] = [np.nan, np.inf, -np.inf]
    loaded = load_image(_save(tmp_path / "t1.nii.gz", data))
    _valid(loaded, data.shape)
    assert np.all(loaded.data[0, 0, :3] == 0)
    assert loaded.data[5, 5, 5] == data[5, 5, 5]
    assert any("3 NaN or infinite" in w for w in loaded.warnings)


def test_mostly_nan_refused(tmp_path):
    data = _volume(dtype=np.float32)
    data[:7] = np.nan
    _raises(_save(tmp_path / "t1.nii.gz", data), "NaN or infinite")


@pytest.mark.parametrize("value", [0.0, 42.0])
def test_constant_image_refused(tmp_path, value):
    data = np.full((8, 8, 8), value, dtype=np.float32)
    _raises(_save(tmp_path / "t1.nii.gz", data), "empty image")


def _patch_header(path: Path, **fields) -> None:
    raw = bytearray(path.read_bytes())
    hdr = np.ndarray((), dtype=nib.nifti1.header_dtype, buffer=raw)
    for key, value in fields.items():
        hdr[key] = value
    path.write_bytes(bytes(raw))


def test_missing_qform_and_sform_warned(tmp_path):
    path = _save(tmp_path / "t1.nii", _volume())
    _patch_header(path, qform_code=0, sform_code=0)
    loaded = load_image(path)
    assert any("neither a qform nor an sform" in w for w in loaded.warnings)


def test_nan_affine_refused(tmp_path):
    path = _save(tmp_path / "t1.nii", _volume())
    _patch_header(path, srow_x=[np.nan, 0, 0, 0], sform_code=1)
    _raises(path, "affine contains NaN")


def test_singular_affine_refused(tmp_path):
    aff = np.array([[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    _raises(_save(tmp_path / "t1.nii.gz", _volume(), aff), "non-invertible affine")


@pytest.mark.parametrize("size", [0.0, 25.0, 1e-4])
def test_absurd_voxel_size_refused(tmp_path, size):
    path = _save(tmp_path / "t1.nii", _volume())
    _patch_header(path, pixdim=[1, size, 1, 1, 1, 1, 1, 1], qform_code=0, sform_code=0)
    _raises(path, "voxel size")


# --------------------------------------------------------------------------------------
# Labels


def _aseg(shape=(12, 12, 12)) -> np.ndarray:
    """Label map with FreeSurfer core codes in blocks."""
    labels = np.zeros(shape, dtype=np.int16)
    for n, code in enumerate((2, 3, 10, 11, 12, 13, 17, 18, 41, 42, 49, 53)):
        labels.flat[n * 40 : n * 40 + 40] = code
    return labels


def test_labels_load_as_int32(tmp_path):
    labels = _aseg()
    loaded = load_labels(_save(tmp_path / "aseg.nii.gz", labels))
    assert loaded.data.dtype == np.int32
    np.testing.assert_array_equal(loaded.data, labels)
    check_freesurfer_codes(loaded.data, loaded.path)


def test_float_stored_integer_labels_accepted(tmp_path):
    labels = _aseg().astype(np.float32)
    loaded = load_labels(_save(tmp_path / "dseg.nii.gz", labels))
    np.testing.assert_array_equal(loaded.data, labels.astype(np.int32))


def test_labels_4d_first_volume(tmp_path):
    labels = np.stack([_aseg(), _aseg() * 0 + 3], axis=-1)
    loaded = load_labels(_save(tmp_path / "aseg.nii.gz", labels))
    np.testing.assert_array_equal(loaded.data, _aseg())
    assert loaded.warnings


def test_probability_map_refused(tmp_path):
    prob = RNG.uniform(size=(8, 8, 8)).astype(np.float32)
    _raises(_save(tmp_path / "label-GM_probseg.nii.gz", prob), "not integers",
            loader=load_labels)


def test_negative_labels_refused(tmp_path):
    labels = _aseg()
    labels[0, 0, 0] = -1
    _raises(_save(tmp_path / "aseg.nii.gz", labels), "negative label", loader=load_labels)


def test_all_zero_labels_refused(tmp_path):
    path = _save(tmp_path / "aseg.nii.gz", np.zeros((8, 8, 8), np.uint8))
    _raises(path, "empty image", loader=load_labels)


def test_labels_share_file_checks(tmp_path):
    path = tmp_path / "aseg.mgz"
    path.touch()
    _raises(path, "0 bytes", loader=load_labels)


def test_non_freesurfer_codes_rejected(tmp_path):
    tissue = np.tile(np.arange(4, dtype=np.int32), 128).reshape(8, 8, 8)  # CSF/GM/WM
    path = tmp_path / "sub-01_dseg.nii.gz"
    with pytest.raises(InputError) as info:
        check_freesurfer_codes(tissue, path)
    assert "codes are not FreeSurfer's" in str(info.value) and path.name in str(info.value)
    assert "--seg-source" in info.value.hint


@pytest.mark.realdata
def test_real_freesurfer_files_load():
    t1 = load_image(shared_path("mne_sample", "T1.mgz"))
    aseg = load_labels(shared_path("mne_sample", "aseg.mgz"))
    _valid(t1, (86, 86, 86))
    check_freesurfer_codes(aseg.data, aseg.path)
    assert nib.aff2axcodes(t1.affine) == ("L", "I", "A")  # FreeSurfer's conformed LIA


# --------------------------------------------------------------------------------------
# Resampling


def test_resample_identity_returns_same_data():
    data = _volume(dtype=np.float32)
    aff = AFFINES["oblique"]
    out = resample_to_grid(data, aff, data.shape, aff, order=1)
    np.testing.assert_array_equal(out, data)
    labels = _aseg().astype(np.int32)
    out = resample_to_grid(labels, aff, labels.shape, aff, order=0)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, labels)


@pytest.mark.parametrize("order", [0, 1])
def test_resample_known_shift(order):
    data = _volume(dtype=np.float32)
    src_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    target_aff = src_aff.copy()
    target_aff[0, 3] = 4.0  # target voxel i lies at source voxel i + 2
    out = resample_to_grid(data, src_aff, data.shape, target_aff, order=order, cval=-1)
    np.testing.assert_allclose(out[:-2], data[2:], atol=1e-4)
    assert np.all(out[-1] == -1)  # beyond the source grid


def test_resample_nearest_keeps_label_values_only():
    labels = _aseg((16, 16, 16)).astype(np.int32)
    target_aff = _oblique() @ np.diag([0.7, 0.7, 0.7, 1.0])
    out = resample_to_grid(labels, np.eye(4), (24, 24, 24), target_aff, order=0)
    assert out.dtype == np.int32
    assert set(np.unique(out)) <= set(np.unique(labels))
    assert len(np.unique(out)) > 5


def test_resample_bool_mask():
    mask = _aseg() > 0
    out = resample_to_grid(mask, np.eye(4), (6, 6, 6), np.diag([2.0, 2, 2, 1]), order=0)
    assert out.dtype == bool and out.any()


def test_world_transform_translation_moves_content():
    data = np.zeros((20, 20, 20), np.float32)
    data[5:8, 6:9, 7:10] = 1.0
    shift = np.eye(4)
    shift[:3, 3] = (3.0, -2.0, 4.0)  # source world -> target world: +3, -2, +4 mm
    out = resample_to_grid(data, np.eye(4), data.shape, np.eye(4), order=1,
                           world_transform=shift)
    np.testing.assert_allclose(out[8:11, 4:7, 11:14], 1.0)
    assert out.sum() == pytest.approx(data.sum())


def test_resample_in_slabs_matches_one_piece(monkeypatch):
    data = RNG.normal(size=(12, 13, 14)).astype(np.float32)
    aff = _oblique()
    whole = resample_to_grid(data, np.eye(4), (15, 12, 11), aff, order=1)
    monkeypatch.setattr(transforms, "_SLAB_VOXELS", 50)
    np.testing.assert_array_equal(resample_to_grid(data, np.eye(4), (15, 12, 11), aff,
                                                   order=1), whole)


def test_segmentation_on_2mm_grid_keeps_volumes_on_1mm_grid():
    """Spheres drawn on a 2 mm grid keep their volumes on the 1 mm T1w grid."""
    t1_aff = np.array([[1.0, 0, 0, -40], [0, 1, 0, -40], [0, 0, 1, -40], [0, 0, 0, 1]])
    seg_aff = np.array([[2.0, 0, 0, -39.5], [0, 2, 0, -39.5], [0, 0, 2, -39.5], [0, 0, 0, 1]])
    ijk = np.indices((40, 40, 40)).reshape(3, -1).T
    world = nib.affines.apply_affine(seg_aff, ijk)
    seg = np.zeros(40**3, np.int32)
    centres = {17: (-15, 0, 0), 53: (15, 0, 0), 10: (0, 15, 5)}
    for code, centre in centres.items():
        seg[np.linalg.norm(world - centre, axis=1) <= 9] = code
    seg = seg.reshape(40, 40, 40)
    out = resample_to_grid(seg, seg_aff, (80, 80, 80), t1_aff, order=0)
    for code in centres:
        vol_2mm = np.count_nonzero(seg == code) * 8
        vol_1mm = np.count_nonzero(out == code)
        assert vol_1mm == pytest.approx(vol_2mm, rel=0.03)
        assert vol_1mm == pytest.approx(4 / 3 * np.pi * 9**3, rel=0.06)


def test_resample_rejects_bad_order():
    with pytest.raises(ValueError):
        resample_to_grid(np.zeros((4, 4, 4)), np.eye(4), (4, 4, 4), np.eye(4), order=3)


# --------------------------------------------------------------------------------------
# Transform files


@pytest.mark.realdata
def test_read_real_talairach_xfm():
    xfm = read_talairach_xfm(shared_path("freesurfer_bert", "mri", "talairach.xfm"))
    assert xfm.shape == (4, 4)
    np.testing.assert_allclose(xfm[0], [1.121802, -0.013186, 0.041252, -6.286606])
    np.testing.assert_allclose(xfm[3], [0, 0, 0, 1])


def test_read_talairach_xfm_synthetic(tmp_path):
    path = tmp_path / "talairach.xfm"
    path.write_text("MNI Transform File\n% test\n\nTransform_Type = Linear;\n"
                    "Linear_Transform =\n1 0 0 10\n0 2 0 -5.5\n0 0 1 1e1;\n")
    np.testing.assert_allclose(read_talairach_xfm(path),
                               [[1, 0, 0, 10], [0, 2, 0, -5.5], [0, 0, 1, 10], [0, 0, 0, 1]])


@pytest.mark.parametrize("body, problem", [
    ("MNI Transform File\nnothing here\n", "malformed .xfm"),
    ("Transform_Type = Linear;\nLinear_Transform =\n1 0 0 0\n0 1 0 0\n0 0 1;\n", "malformed"),
    ("Transform_Type = Linear;\nLinear_Transform =\n1 0 0 0\n0 1 0 0\n0 0 x 0;\n", "malformed"),
    ("Transform_Type = Grid_Transform;\nDisplacement_Volume = a.mnc;\n", "not Linear"),
    ("Linear_Transform =\n1 0 0 0\n0 0 0 0\n0 0 1 0;\n", "not invertible"),
])
def test_malformed_xfm_refused(tmp_path, body, problem):
    path = tmp_path / "talairach.xfm"
    path.write_text(body)
    _raises(path, problem, loader=read_talairach_xfm)


def _known_affine() -> np.ndarray:
    """A moving (T1w) RAS -> template RAS affine with rotation, scaling and shift."""
    aff = _oblique()
    aff[:3, :3] = aff[:3, :3] @ np.array([[1, 0.05, 0], [0, 1, 0], [0.02, 0, 1]])
    aff[:3, 3] = (4.0, -12.0, 20.5)
    return aff


def _itk_params(moving_to_template_ras: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """ITK parameters (fixed=template LPS -> moving LPS, with a centre) for an affine."""
    flip = np.diag([-1.0, -1, 1, 1])
    lps = flip @ np.linalg.inv(moving_to_template_ras) @ flip
    m, offset = lps[:3, :3], lps[:3, 3]
    translation = offset - centre + m @ centre
    return np.concatenate([m.ravel(), translation])


def _itk_point(params: np.ndarray, centre: np.ndarray, fixed_ras: np.ndarray) -> np.ndarray:
    """Map a template RAS point to the moving RAS point the way ITK does (in LPS)."""
    flip = np.array([-1.0, -1, 1])
    m, t = params[:9].reshape(3, 3), params[9:]
    x = fixed_ras * flip
    return (m @ (x - centre) + t + centre) * flip


CENTRE = np.array([1.5, -20.0, 12.0])


@pytest.mark.parametrize("kind", ["AffineTransform_double_3_3",
                                  "MatrixOffsetTransformBase_double_3_3"])
def test_itk_text_round_trip_and_point_mapping(tmp_path, kind):
    aff = _known_affine()
    params = _itk_params(aff, CENTRE)
    path = tmp_path / "xfm.txt"
    path.write_text("#Insight Transform File V1.0\n#Transform 0\n"
                    f"Transform: {kind}\n"
                    f"Parameters: {' '.join(repr(float(p)) for p in params)}\n"
                    f"FixedParameters: {' '.join(repr(float(c)) for c in CENTRE)}\n")
    xfm = read_itk_affine(path)
    np.testing.assert_allclose(xfm, aff, atol=1e-9)
    # Independent check: ITK sends template point q to moving point p; xfm sends p to q.
    q = np.array([10.0, -30.0, 25.0])
    p = _itk_point(params, CENTRE, q)
    np.testing.assert_allclose(nib.affines.apply_affine(xfm, p), q, atol=1e-9)


@pytest.mark.parametrize("key", ["AffineTransform_double_3_3", "AffineTransform_float_3_3"])
def test_itk_mat_round_trip(tmp_path, key):
    aff = _known_affine()
    params = _itk_params(aff, CENTRE)
    path = tmp_path / "sub-01_0GenericAffine.mat"
    scipy.io.savemat(str(path), {key: params.reshape(12, 1), "fixed": CENTRE.reshape(3, 1)},
                     format="4")
    np.testing.assert_allclose(read_itk_affine(path), aff, atol=1e-8)


def test_itk_identity_with_centre_is_identity(tmp_path):
    path = tmp_path / "id.txt"
    path.write_text("#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\n"
                    "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 5 6 7\n")
    np.testing.assert_allclose(read_itk_affine(path), np.eye(4))


def test_itk_lps_translation_becomes_ras(tmp_path):
    """ITK translation +t (template->T1w, LPS) is -t in x and y for T1w->template RAS."""
    path = tmp_path / "shift.txt"
    path.write_text("#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\n"
                    "Parameters: 1 0 0 0 1 0 0 0 1 1 2 3\nFixedParameters: 0 0 0\n")
    np.testing.assert_allclose(read_itk_affine(path)[:3, 3], [1, 2, -3])


@pytest.mark.parametrize("name, body, problem", [
    ("a.txt", "hello\n", "not an ITK transform"),
    ("a.txt", "#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\n"
              "Parameters: 1 0 0 0 1 0 0 0 1 0 0\nFixedParameters: 0 0 0\n", "malformed"),
    ("a.txt", "#Insight Transform File V1.0\nTransform: Euler3DTransform_double_3_3\n"
              "Parameters: 0 0 0 0 0 0\nFixedParameters: 0 0 0\n", "unsupported"),
    ("a.txt", "#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\n"
              "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0 0 0\n"
              "Transform: AffineTransform_double_3_3\n"
              "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0 0 0\n", "2 transforms"),
    ("a.txt", "#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\n"
              "Parameters: 0 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0 0 0\n", "not invertible"),
    ("a.mat", "not matlab", "MATLAB"),
    ("a.h5", "HDF", "composite .h5"),
])
def test_malformed_itk_refused(tmp_path, name, body, problem):
    path = tmp_path / name
    path.write_text(body)
    _raises(path, problem, loader=read_itk_affine)


def test_transform_broken_link(tmp_path):
    link = tmp_path / "talairach.xfm"
    link.symlink_to(tmp_path / "absent")
    _raises(link, "broken symbolic link", "datalad get", loader=read_talairach_xfm)


def test_itk_affine_drives_resample(tmp_path):
    """A T1w->template world transform read from ITK drives resample_to_grid."""
    shift = np.eye(4)
    shift[:3, 3] = (2.0, 0.0, 0.0)
    path = tmp_path / "shift.txt"
    params = _itk_params(shift, np.zeros(3))
    path.write_text("#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\n"
                    f"Parameters: {' '.join(map(str, params))}\nFixedParameters: 0 0 0\n")
    data = _volume(dtype=np.float32)
    out = resample_to_grid(data, np.eye(4), data.shape, np.eye(4), order=0,
                           world_transform=read_itk_affine(path))
    np.testing.assert_array_equal(out[2:], data[:-2])


# --------------------------------------------------------------------------------------
# md5sum


def test_md5sum_follows_links(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(os.urandom(3 * 1024 + 7))
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    expected = hashlib.md5(target.read_bytes()).hexdigest()
    assert md5sum(target, chunk=1000) == expected == md5sum(link)


def test_md5sum_broken_link_and_missing(tmp_path):
    link = tmp_path / "link.nii.gz"
    link.symlink_to(tmp_path / "absent")
    with pytest.raises(InputError, match="datalad get"):
        md5sum(link)
    with pytest.raises(InputError, match="not found"):
        md5sum(tmp_path / "absent")


# --------------------------------------------------------------------------------------
# json_ready and atomic writes


def test_json_ready_converts_recursively(tmp_path):
    obj = {"a": np.float32(1.5), "b": np.int64(3), "c": np.array([[1, 2], [3, 4]]),
           "d": [np.nan, float("inf"), np.float64("nan"), 2.0], "e": tmp_path,
           "f": (np.bool_(True), None), np.int64(7): {"g": np.array([np.nan, 1.0])},
           "h": {3, 1, 2}, "i": np.str_("x")}
    out = json_ready(obj)
    assert out == {"a": 1.5, "b": 3, "c": [[1, 2], [3, 4]], "d": [None, None, None, 2.0],
                   "e": str(tmp_path), "f": [True, None], 7: {"g": [None, 1.0]},
                   "h": [1, 2, 3], "i": "x"}
    assert type(out["b"]) is int and type(out["f"][0]) is bool
    json.dumps(out, allow_nan=False)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_content_and_permissions(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "sub" / "c.json", {"z": 1, "a": np.nan, "m": np.arange(2)})
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    text = (tmp_path / "sub" / "c.json").read_text()
    assert json.loads(text) == {"z": 1, "a": None, "m": [0, 1]}
    assert text.index('"z"') < text.index('"a"')  # insertion order, not sorted
    assert '\n  "z": 1' in text  # indent=2
    for name in ("a.txt", "b.bin", "sub/c.json"):
        assert _mode(tmp_path / name) == 0o644
    assert not list(tmp_path.rglob("*.tmp"))


def test_atomic_json_error_keeps_old_content(tmp_path):
    path = tmp_path / "report.json"
    with pytest.raises(TypeError):
        atomic_write_json(path, {"x": object()})
    assert not path.exists()
    atomic_write_json(path, {"x": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"x": 2, "bad": object()})
    assert json.loads(path.read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_atomic_write_failure_midway_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("name", ["out.nii", "out.nii.gz"])
def test_atomic_save_nifti_round_trip(tmp_path, name):
    img = nib.Nifti1Image(_volume(dtype=np.float32), AFFINES["LIA"])
    path = tmp_path / name
    atomic_save_nifti(img, path)
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.data, _volume(dtype=np.float32))
    np.testing.assert_allclose(loaded.affine, AFFINES["LIA"], atol=1e-6)
    assert _mode(path) == 0o644
    first = md5sum(path)
    atomic_save_nifti(img, path)
    assert md5sum(path) == first  # mtime 0 in the gzip header: reproducible bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_atomic_save_nifti_converts_mgh_and_rejects_other_suffix(tmp_path):
    mgh = nib.MGHImage(_volume(dtype=np.float32), np.eye(4))
    atomic_save_nifti(mgh, tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(load_image(tmp_path / "x.nii.gz").data, mgh.get_fdata())
    with pytest.raises(ValueError):
        atomic_save_nifti(mgh, tmp_path / "x.mgz")


def _writer(path: str, worker: int, rounds: int) -> None:
    payload = {"worker": worker, "values": list(range(worker * 1000, worker * 1000 + 3000))}
    for n in range(rounds):
        payload["round"] = n
        atomic_write_json(path, payload)


def test_concurrent_writers_never_corrupt(tmp_path):
    path = tmp_path / "group.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 25)) for w in range(4)]
    for proc in procs:
        proc.start()
    reads = 0
    while any(p.is_alive() for p in procs):
        if path.exists():
            obj = json.loads(path.read_text())  # must always be a whole document
            assert len(obj["values"]) == 3000
            reads += 1
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0
    obj = json.loads(path.read_text())
    assert obj["round"] == 24 and obj["values"][0] == obj["worker"] * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["group.json"]
    assert reads > 0
