"""Property-based tests of load_image: corrupt headers and data never crash it.

A small valid NIfTI is serialised to bytes, its header fields and bytes are mutated
through a writable structured view, and the result is loaded. Whatever the mutation,
``load_image`` returns a valid image or raises InputError; mutations that keep the file
valid must load with the expected values.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bids_qc.errors import InputError
from bids_qc.io import LoadedImage, load_image, load_labels, reorient_ras

SHAPE = (8, 9, 10)
HDR_DTYPE = nib.nifti1.header_dtype
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _base(dtype=np.int16) -> tuple[np.ndarray, nib.Nifti1Image]:
    data = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 251 + 1).astype(dtype)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    # nibabel may choose its own scaling for some types; the tests set it themselves.
    img.header.set_slope_inter(1.0, 0.0)
    return data, img


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One folder for every example (module scope: hypothesis reruns the test body)."""
    return tmp_path_factory.mktemp("io_property")


def _write(folder: Path, raw: bytes | bytearray, gz: bool) -> Path:
    path = folder / ("sub-01_T1w.nii.gz" if gz else "sub-01_T1w.nii")
    path.write_bytes(gzip.compress(bytes(raw), compresslevel=1) if gz else bytes(raw))
    return path


def _check_valid(loaded: LoadedImage) -> None:
    data = np.asanyarray(loaded.img.dataobj)
    assert data.ndim == 3 and data.dtype == np.float32
    assert np.all(np.isfinite(data))
    assert np.all(np.isfinite(loaded.affine))
    assert abs(np.linalg.det(loaded.affine[:3, :3])) > 0


def _load_or_input_error(path: Path, loader=load_image) -> LoadedImage | None:
    try:
        loaded = loader(path)
    except InputError as exc:
        assert path.name in str(exc)
        return None
    finally:
        path.unlink(missing_ok=True)
    return loaded


# --------------------------------------------------------------------------------------
# Arbitrary corruption

FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 1e-30, 1e30, 3.4e38, float("nan"),
                     float("inf"), float("-inf")]),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)
DATATYPES = st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280,
                             1536, 1792, 2048, 2304, 3, 99, -1, 32767])
FIELD_MUTATION = st.one_of(
    st.tuples(st.just("datatype"), DATATYPES),
    st.tuples(st.just("bitpix"), st.integers(-8, 256)),
    st.tuples(st.sampled_from(["scl_slope", "scl_inter", "quatern_b", "quatern_c",
                               "quatern_d", "qoffset_x", "vox_offset", "cal_max"]), FLOATS),
    st.tuples(st.sampled_from(["qform_code", "sform_code"]), st.integers(-3, 300)),
    st.tuples(st.sampled_from(["srow_x", "srow_y", "srow_z"]),
              st.lists(FLOATS, min_size=4, max_size=4)),
    st.tuples(st.just("dim"), st.tuples(st.integers(0, 7),
                                        st.integers(-5, 40) | st.integers(-32768, 32767))),
    st.tuples(st.just("pixdim"), st.tuples(st.integers(0, 7), FLOATS)),
    st.tuples(st.just("sizeof_hdr"), st.integers(-1000, 1000)),
)
MUTATION = st.one_of(
    FIELD_MUTATION,
    st.tuples(st.just("bytes"), st.tuples(st.integers(0, 347), st.binary(min_size=1,
                                                                          max_size=24))),
    st.tuples(st.just("truncate"), st.integers(0, 352 + 2 * np.prod(SHAPE))),
    st.tuples(st.just("nan"), st.integers(1, int(np.prod(SHAPE)))),
)


def _mutate(raw: bytearray, kind: str, value, rng: np.random.Generator) -> bytearray:
    if kind in ("dim", "pixdim"):
        hdr = np.ndarray((), dtype=HDR_DTYPE, buffer=raw)
        index, item = value
        arr = hdr[kind].copy()
        arr[index] = item
        hdr[kind] = arr
    elif kind == "bytes":
        offset, blob = value
        blob = blob[: 348 - offset]  # stay inside the header, keep the file's length
        raw[offset : offset + len(blob)] = blob
    elif kind == "truncate":
        del raw[value:]
    elif kind == "nan":
        # Overwrite voxels with NaN (the base image is float32, data at offset 352).
        flat = np.frombuffer(raw, dtype=np.float32, count=int(np.prod(SHAPE)), offset=352)
        flat[rng.choice(flat.size, size=value, replace=False)] = np.nan
    else:
        hdr = np.ndarray((), dtype=HDR_DTYPE, buffer=raw)
        with np.errstate(all="ignore"):
            hdr[kind] = value
    return raw


def _apply(raw: bytearray, mutations: list, rng: np.random.Generator) -> bytearray:
    """Apply mutations, truncations last (the others need the whole file)."""
    for kind, value in sorted(mutations, key=lambda m: m[0] == "truncate"):
        raw = _mutate(raw, kind, value, rng)
    return raw


@SETTINGS
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4), gz=st.booleans(),
       seed=st.integers(0, 2**16))
def test_mutated_nifti_loads_validly_or_raises_input_error(workdir, mutations, gz, seed):
    rng = np.random.default_rng(seed)
    _, img = _base(np.float32)
    raw = _apply(bytearray(img.to_bytes()), mutations, rng)
    loaded = _load_or_input_error(_write(workdir, raw, gz))
    if loaded is not None:
        _check_valid(loaded)


@SETTINGS
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3), gz=st.booleans())
def test_mutated_labels_load_validly_or_raise_input_error(workdir, mutations, gz):
    rng = np.random.default_rng(0)
    _, img = _base(np.float32)
    raw = _apply(bytearray(img.to_bytes()), mutations, rng)
    loaded = _load_or_input_error(_write(workdir, raw, gz), loader=load_labels)
    if loaded is not None:
        labels = np.asanyarray(loaded.img.dataobj)
        assert labels.ndim == 3 and labels.dtype == np.int32 and labels.min() >= 0


@SETTINGS
@given(data=st.binary(min_size=0, max_size=2000), name=st.sampled_from(
    ["x.nii", "x.nii.gz", "x.mgz", "x.mgh"]))
def test_random_bytes_never_crash(workdir, data, name):
    path = workdir / name
    path.write_bytes(data)
    loaded = _load_or_input_error(path)
    if loaded is not None:
        _check_valid(loaded)


# --------------------------------------------------------------------------------------
# Mutations that keep the image valid


@st.composite
def orientations(draw) -> np.ndarray:
    """A random axis permutation and flips, optionally rotated off-axis (oblique)."""
    perm = draw(st.permutations([0, 1, 2]))
    flips = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3))
    zooms = draw(st.lists(st.sampled_from([0.8, 1.0, 1.5, 3.0]), min_size=3, max_size=3))
    angle = draw(st.sampled_from([0.0, 0.0, 0.2, -0.35]))
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)],
                    [0, np.sin(angle), np.cos(angle)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.eye(3)[:, perm] @ np.diag(np.array(flips) * zooms)
    aff[:3, 3] = draw(st.lists(st.floats(-100, 100), min_size=3, max_size=3))
    return aff


@SETTINGS
@given(aff=orientations(), gz=st.booleans())
def test_orientations_load_and_reorient_back(workdir, aff, gz):
    data, _ = _base()
    img = nib.Nifti1Image(data, aff)
    loaded = _load_or_input_error(_write(workdir, img.to_bytes(), gz))
    assert loaded is not None
    np.testing.assert_array_equal(loaded.img.dataobj, data)
    np.testing.assert_allclose(loaded.affine, aff, atol=1e-4)
    # Reoriented, every value still sits at the same world point.
    ras = reorient_ras(loaded.img)
    rdata = np.asanyarray(ras.dataobj)
    for value in (1, 100, 251):
        src = np.argwhere(data == value)[0]
        dst = np.argwhere(rdata == value)
        worlds = nib.affines.apply_affine(ras.affine, dst)
        target = nib.affines.apply_affine(aff, src)
        assert np.min(np.linalg.norm(worlds - target, axis=1)) < 1e-3


@SETTINGS
@given(dtype=st.sampled_from([np.int16, np.uint8, np.float64, np.float32, np.int32,
                              np.uint16]),
       scaled=st.booleans(), singleton_4d=st.booleans(), gz=st.booleans())
def test_valid_variants_load_with_expected_values(workdir, dtype, scaled, singleton_4d, gz):
    data, img = _base()
    img = nib.Nifti1Image(data.astype(dtype), img.affine)
    img.header.set_data_dtype(dtype)
    raw = bytearray(img.to_bytes())
    hdr = np.ndarray((), dtype=HDR_DTYPE, buffer=raw)
    hdr["scl_slope"], hdr["scl_inter"] = (2.0, 10.0) if scaled else (1.0, 0.0)
    if singleton_4d:
        dim = hdr["dim"].copy()
        dim[0], dim[4] = 4, 1
        hdr["dim"] = dim
    loaded = _load_or_input_error(_write(workdir, raw, gz))
    assert loaded is not None
    _check_valid(loaded)
    expected = data.astype(np.float32) * 2 + 10 if scaled else data.astype(np.float32)
    np.testing.assert_array_equal(loaded.img.dataobj, expected)
    assert bool(loaded.warnings) == singleton_4d


@SETTINGS
@given(edits=st.lists(st.tuples(st.integers(0, 283), st.binary(min_size=1, max_size=12)),
                      min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 284 + 4 * int(np.prod(SHAPE))),
       suffix=st.sampled_from([".mgz", ".mgh"]))
def test_mutated_mgh_header_loads_validly_or_raises_input_error(workdir, edits, cut, suffix):
    data, img = _base(np.float32)
    raw = bytearray(nib.MGHImage(data, img.affine).to_bytes())
    for offset, blob in edits:
        blob = blob[: 284 - offset]
        raw[offset : offset + len(blob)] = blob
    if cut is not None:
        del raw[cut:]
    path = workdir / f"orig{suffix}"
    path.write_bytes(gzip.compress(bytes(raw)) if suffix == ".mgz" else bytes(raw))
    loaded = _load_or_input_error(path)
    if loaded is not None:
        _check_valid(loaded)
