"""Robust reading of images, label maps and transforms; checksums; atomic writes.

Real BIDS datasets hold empty placeholders, git-annex links without content, spurious
4th dimensions, LPS or oblique images and truncated downloads. Every problem found
here becomes an :class:`~bids_qc.errors.InputError` that names the file, says what is
wrong and what to do; nothing else escapes :func:`load_image` or :func:`load_labels`.

Resampling and transform readers live in :mod:`bids_qc.transforms` and are re-exported
here, so workflows need only this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import math
import mmap
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import nibabel as nib
import numpy as np

from bids_qc.errors import InputError
from bids_qc.structures import looks_freesurfer_coded
from bids_qc.transforms import (
    read_itk_affine,
    read_talairach_mni152,
    read_talairach_xfm,
    resample_to_grid,
)

__all__ = [
    "LoadedImage",
    "load_image",
    "load_labels",
    "check_freesurfer_codes",
    "reorient_ras",
    "resample_to_grid",
    "read_talairach_xfm",
    "read_talairach_mni152",
    "read_itk_affine",
    "require_file",
    "md5sum",
    "json_ready",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_nifti",
]

logger = logging.getLogger(__name__)

#: File name endings load_image accepts, longest first so ``.nii.gz`` wins over ``.gz``.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")
#: Plausible voxel edge lengths in mm (ex-vivo scans reach 0.05 mm, clinical slices 10 mm).
MIN_VOXEL_MM, MAX_VOXEL_MM = 0.01, 20.0
#: Non-finite voxels above this share make an image unusable rather than repairable.
MAX_NONFINITE_SHARE = 0.5
#: Deflate cannot compress better than about 1032:1, so a header promising more data than
#: that is corrupt; checking it first avoids allocating gigabytes for a bogus header.
_GZIP_MAX_RATIO = 1032
#: Label values within this distance of an integer are taken as that integer.
_LABEL_TOLERANCE = 1e-3
#: Bytes decompressed per read: the only buffer besides the image's own array.
_READ_CHUNK = 4 << 20
_NIFTI1_MAGIC = b"n+1\x00"
_NIFTI2_MAGIC = b"n+2\x00"


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """An image that passed every check.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        3-D image held in memory: float32 finite data (:func:`load_image`) or int32
        labels (:func:`load_labels`); the affine is the file's, not reoriented.
    path : Path
        The file it came from.
    warnings : tuple of str
        Problems that were repaired (extra volumes dropped, NaN voxels zeroed).
    """

    img: nib.Nifti1Image
    path: Path
    warnings: tuple[str, ...] = ()

    @property
    def data(self) -> np.ndarray:
        """The voxel array (no copy)."""
        return np.asanyarray(self.img.dataobj)

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world (RAS mm) affine."""
        return self.img.affine


# --------------------------------------------------------------------------------------
# File-level checks


def _datalad_hint(path: Path) -> str:
    return (
        f"Run `datalad get {path}` (or `git annex get`) in the dataset to fetch its "
        "content, then run again"
    )


def require_file(path: str | Path, role: str = "input") -> Path:
    """Check that ``path`` is an existing, non-empty regular file (links followed).

    Parameters
    ----------
    path : str or Path
        The file.
    role : str
        What the file is for, used in messages (``T1w``, ``transform``).

    Returns
    -------
    Path
        ``path`` as a Path.

    Raises
    ------
    InputError
        Missing file, broken symbolic link (git-annex content absent), folder, 0-byte
        file or git-annex pointer file.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.exists():
        raise InputError(
            path,
            f"the {role} file is a broken symbolic link (an annexed file whose content "
            "is not present)",
            _datalad_hint(path),
        )
    if not path.exists():
        raise InputError(path, f"{role} file not found", "Check the path and the dataset")
    if path.is_dir():
        raise InputError(path, f"the {role} path is a folder, not a file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(path, f"the {role} file cannot be opened ({exc.strerror or exc})",
                         "Check the file's permissions and the storage it lives on") from None
    if size == 0:
        raise InputError(
            path,
            f"the {role} file is an empty file (0 bytes)",
            "It is a placeholder or an interrupted copy: fetch or copy it again "
            "(`datalad get`), or remove it from the dataset",
        )
    if size < 1024:
        try:
            with open(path, "rb") as fobj:
                head = fobj.read(1024)
        except OSError:
            return path  # the caller's own read reports it
        # An unlocked annexed file without content is a small text pointer.
        if head.startswith(b"/annex/objects/") or b".git/annex/objects/" in head:
            raise InputError(
                path, f"the {role} file is a git-annex pointer file without content",
                _datalad_hint(path),
            )
    return path


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def _looks_nifti(head: bytes) -> bool:
    return len(head) >= 348 and (head[344:348] == _NIFTI1_MAGIC or head[4:8] == _NIFTI2_MAGIC)


def _sniff(path: Path, role: str) -> tuple[type[nib.spatialimages.SpatialImage], bytes]:
    """Check the file's first bytes; return the nibabel class to open it with and them."""
    suffix = _suffix(path)
    if suffix is None:
        raise InputError(
            path,
            f"unsupported file type for the {role} image (expected .nii, .nii.gz, .mgz "
            "or .mgh)",
            "Convert it to NIfTI, e.g. with dcm2niix or mri_convert",
        )
    with open(path, "rb") as fobj:
        raw = fobj.read(600)
    if suffix in (".nii.gz", ".mgz"):
        if raw[:2] != b"\x1f\x8b":
            if _looks_nifti(raw) or (suffix == ".mgz" and raw[:4] == b"\x00\x00\x00\x01"):
                plain = ".nii" if suffix == ".nii.gz" else ".mgh"
                raise InputError(
                    path, f"the file is named {suffix} but is not gzip-compressed",
                    f"Rename it to {plain} or compress it with gzip",
                )
            what = "an MGZ" if suffix == ".mgz" else "a NIfTI"
            raise InputError(
                path,
                f"not {what} file: named {suffix} but not gzip-compressed (it starts "
                f"with {raw[:16]!r})",
                "Replace it with the real image",
            )
        try:
            with gzip.open(path, "rb") as gz:
                head = gz.read(600)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(
                path, f"the compressed file is truncated or corrupt ({exc})",
                "Download or copy it again",
            ) from None
    else:
        head = raw
    if suffix in (".mgz", ".mgh"):
        if len(head) < 284:
            raise InputError(path, "the file is truncated (shorter than an MGH header)",
                             "Copy or convert it again")
        if struct.unpack(">i", head[:4])[0] != 1:
            raise InputError(path, "not an MGH/MGZ file (wrong version field)",
                             "Replace it with the real image")
        return nib.MGHImage, head
    if len(head) < 348:
        raise InputError(path, "the file is truncated (shorter than a NIfTI header)",
                         "Download or copy it again")
    if head[344:348] == _NIFTI1_MAGIC:
        return nib.Nifti1Image, head
    if head[4:8] == _NIFTI2_MAGIC:
        return nib.Nifti2Image, head
    if head[344:348] == b"ni1\x00":
        raise InputError(path, "not a NIfTI file: it is the header of an .hdr/.img pair",
                         "Convert the pair to a single .nii.gz (e.g. with nibabel)")
    raise InputError(path, "not a NIfTI file (wrong magic bytes in the header)",
                     "Replace it with the real image")


def _read_problem(path: Path, exc: BaseException, stage: str) -> InputError:
    """Turn an exception raised while reading into an InputError saying what happened.

    ``stage`` is ``header`` (nibabel parsing it) or ``data`` (reading the voxels).
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, EOFError) or "ended before" in text or (
            "Expected" in text and "bytes" in text):
        return InputError(path, f"the file is truncated ({text})", "Download or copy it again")
    if isinstance(exc, (zlib.error, gzip.BadGzipFile)):
        return InputError(path, f"the compressed data is corrupt ({text})",
                          "Download or copy it again")
    if isinstance(exc, MemoryError):
        return InputError(path, "the image is too large to load in memory",
                          "Run on a machine with more memory")
    if stage == "header":
        return InputError(path, f"the file has an invalid header ({type(exc).__name__}: "
                          f"{text})", "Convert the image again (dcm2niix, mri_convert)")
    return InputError(path, f"the image data cannot be read ({type(exc).__name__}: {text})",
                      "Check that it is a valid image; convert it again if needed")


def _open_checked(path: str | Path, role: str) -> tuple[Any, Path, list[str], tuple]:
    """Open an image and run every check that does not need its voxels.

    Returns the nibabel image, the path, warnings so far and the index of its first
    3-D volume.
    """
    path = require_file(path, role)
    try:
        klass, head = _sniff(path, role)
    except OSError as exc:  # unreadable (permissions, I/O error on a network mount)
        raise InputError(path, f"the {role} file cannot be opened ({exc.strerror or exc})",
                         "Check the file's permissions and the storage it lives on") from None
    warnings: list[str] = _check_raw_nifti_header(path, klass, head, role)
    try:
        with np.errstate(all="ignore"):
            img = klass.from_filename(str(path))
            shape = tuple(int(n) for n in img.shape)
            dtype = np.dtype(img.get_data_dtype())
            affine = np.asarray(img.affine, dtype=np.float64)
    except InputError:
        raise
    except Exception as exc:  # a corrupt header can raise almost anything in nibabel
        raise _read_problem(path, exc, "header") from None
    dims = "x".join(map(str, shape))
    if not shape or any(n <= 0 for n in shape):
        raise InputError(path, f"the {role} image has no voxels (shape {dims})",
                         "The header is corrupt: convert the image again")
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]  # trailing singletons beyond the 4th dimension carry nothing
    if len(shape) < 3 or any(n == 1 for n in shape[:3]):
        what = f"{len(shape)}-D" if len(shape) < 3 else "2-D (a single slice)"
        raise InputError(path, f"the {role} image is {what} (shape {dims}), a 3-D volume "
                         "is needed", "Pass the 3-D image, not a single slice")
    if len(shape) > 4:
        raise InputError(path, f"the {role} image is {len(shape)}-D (shape {dims}), a 3-D "
                         "volume is needed", "Pass a 3-D image")
    if len(shape) == 4:
        if shape[3] == 1:
            warnings.append(f"4-D image with a single volume (shape {dims}); used as 3-D")
        else:
            warnings.append(f"4-D image with {shape[3]} volumes (shape {dims}); only the "
                            "first volume is checked")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise InputError(path, f"the {role} image has unsupported voxel type {dtype}",
                         "Convert it to a real-valued (integer or float) image")
    # Compare the size the header promises with what the file can hold before reading,
    # so a corrupt header cannot make us allocate (or mmap) absurd amounts of memory.
    full = tuple(int(n) for n in img.shape)
    offset = int(getattr(img.dataobj, "offset", 0))
    if offset < 0:
        raise InputError(path, f"the file has an invalid header (data offset {offset})",
                         "Convert the image again (dcm2niix, mri_convert)")
    need = offset + math.prod(full) * dtype.itemsize
    have = path.stat().st_size
    compressed = _suffix(path) in (".nii.gz", ".mgz")
    if need > (have * _GZIP_MAX_RATIO + 1024 if compressed else have):
        raise InputError(path, f"the file is truncated: its header describes {need} bytes "
                         f"of data but the file holds {have}", "Download or copy it again")
    _check_affine(path, affine, role)
    first = (slice(None),) * 3 + (0,) * (len(full) - 3)
    return img, path, warnings, first


def _check_raw_nifti_header(path: Path, klass: type, head: bytes, role: str) -> list[str]:
    """Check a NIfTI header's geometry fields as stored, before nibabel repairs them.

    nibabel silently turns a zero pixdim into 1 mm and a negative one into its absolute
    value; without an sform those sizes define the geometry, so a zero is refused here.
    A negative size is accepted as its absolute value (as FSL and nibabel do), warned,
    and so is a header with neither qform nor sform (its orientation is a guess).
    """
    if klass not in (nib.Nifti1Image, nib.Nifti2Image):
        return []
    module = nib.nifti1 if klass is nib.Nifti1Image else nib.nifti2
    dtype = module.header_dtype
    size = dtype.itemsize
    if len(head) < size:
        return []
    raw = np.frombuffer(head[:size], dtype=dtype)[0]
    if int(raw["sizeof_hdr"]) != size:
        raw = np.frombuffer(head[:size], dtype=dtype.newbyteorder())[0]
    if 0 < int(raw["sform_code"]) < 5:
        return []  # the sform, checked later, defines the geometry (nibabel zeroes others)
    warnings = []
    if not 0 < int(raw["qform_code"]) < 5:
        warnings.append("the header has neither a qform nor an sform (codes 0): the "
                        "orientation is a guess")
    with np.errstate(all="ignore"):
        pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
        sizes = "x".join(f"{z:.4g}" for z in pixdim)
        raise InputError(path, f"the {role} image has an absurd voxel size ({sizes} mm in "
                         "pixdim)", "Fix the header's pixdim or convert the image again")
    if np.any(pixdim < 0):
        warnings.append("negative voxel sizes in pixdim taken as their absolute values")
    return warnings


def _check_affine(path: Path, affine: np.ndarray, role: str) -> None:
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(path, f"the {role} image's affine contains NaN or infinite values",
                         "Fix the header's qform/sform (e.g. with fslorient) or convert again")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.any(zooms < MIN_VOXEL_MM) or np.any(zooms > MAX_VOXEL_MM):
        sizes = "x".join(f"{z:.4g}" for z in zooms)
        raise InputError(path, f"the {role} image has an absurd voxel size ({sizes} mm; "
                         f"expected {MIN_VOXEL_MM}-{MAX_VOXEL_MM:g} mm)",
                         "Fix the header's pixdim/qform/sform or convert the image again")
    # Columns that are almost parallel make the affine non-invertible at any voxel size.
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6 * float(np.prod(zooms)):
        raise InputError(path, f"the {role} image has a non-invertible affine",
                         "Fix the header's qform/sform or convert the image again")


def _read_raw(img: Any, path: Path, first: tuple) -> tuple[np.ndarray, float, float]:
    """Unscaled first volume, with the slope and intercept still to apply.

    The bytes are streamed into one preallocated array: nibabel would read a gzipped
    image through a second full-size buffer and scale integers in float64, and a 4-D
    file's first volume is its first bytes (Fortran order), so only those are read.
    """
    proxy = img.dataobj
    if not all(hasattr(proxy, a) for a in ("offset", "dtype", "order", "slope", "inter")) \
            or proxy.order != "F":
        return np.asanyarray(proxy[first]), 1.0, 0.0  # nibabel reads and scales it
    shape = tuple(int(n) for n in img.shape[:3])
    out = np.empty(math.prod(shape), dtype=np.dtype(proxy.dtype))
    buf = memoryview(out.view(np.uint8))
    opener = gzip.open if _suffix(path) in (".nii.gz", ".mgz") else open
    with opener(path, "rb") as fobj:
        fobj.seek(int(proxy.offset))
        pos = 0
        while pos < len(buf):
            n_read = fobj.readinto(buf[pos : pos + _READ_CHUNK])
            if not n_read:
                raise EOFError(f"Expected {len(buf)} bytes of data, got {pos} bytes")
            pos += n_read
    return out.reshape(shape, order="F"), float(proxy.slope), float(proxy.inter)


def _as_owned(arr: np.ndarray, dtype: type) -> np.ndarray:
    """``arr`` as native ``dtype`` in writable memory of its own, copying only if needed."""
    owned = arr.flags.writeable
    base: Any = arr
    while owned and base is not None:  # never write into (or keep) a file mapping
        owned = not isinstance(base, (np.memmap, mmap.mmap))
        base = getattr(base, "base", None)
    return arr if owned and arr.dtype == np.dtype(dtype) else arr.astype(dtype)


def _scaled_float32(path: Path, raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """``raw * slope + inter`` in float32, in place where ``raw`` can be reused."""
    if not (np.isfinite(np.float32(slope)) and np.isfinite(np.float32(inter))):
        raise InputError(path, f"the file has an invalid header (scaling slope {slope:g}, "
                         f"intercept {inter:g} exceed float32)",
                         "Convert the image again (dcm2niix, mri_convert)")
    data = _as_owned(raw, np.float32)
    if slope != 1.0:
        data *= np.float32(slope)
    if inter != 0.0:
        data += np.float32(inter)
    return data


def _repair_nonfinite(path: Path, data: np.ndarray, role: str, warnings: list[str]) -> None:
    finite = np.isfinite(data)
    n_bad = data.size - int(np.count_nonzero(finite))
    if n_bad == 0:
        return
    share = n_bad / data.size
    if share > MAX_NONFINITE_SHARE:
        raise InputError(path, f"{share:.0%} of the {role} image's voxels are NaN or "
                         "infinite", "Check how the image was made; it cannot be checked")
    np.logical_not(finite, out=finite)
    data[finite] = 0
    warnings.append(f"{n_bad} NaN or infinite voxels ({share:.2%}) set to 0")


def _nifti_like(data: np.ndarray, affine: np.ndarray, src: Any) -> nib.Nifti1Image:
    """A fresh in-memory Nifti1Image; qform/sform codes of a NIfTI source are kept."""
    out = nib.Nifti1Image(data, affine)
    codes = (1, 1)  # scanner RAS: what MGH vox2ras and a bare affine mean
    if isinstance(src, (nib.Nifti1Image, nib.Nifti2Image)):
        q, s = int(src.header["qform_code"]), int(src.header["sform_code"])
        best = s if 0 < s < 5 else q if 0 < q < 5 else 1
        codes = (best, best)
    out.header.set_qform(affine, code=codes[0])
    out.header.set_sform(affine, code=codes[1])
    out.header.set_xyzt_units("mm")
    return out


def _done(path: Path, data: np.ndarray, affine: np.ndarray, img: Any,
          warnings: list[str]) -> LoadedImage:
    for text in warnings:
        logger.warning("%s: %s", path, text)
    return LoadedImage(_nifti_like(data, affine, img), path, tuple(warnings))


# --------------------------------------------------------------------------------------
# Public loaders


def load_image(path: str | Path, role: str = "T1w") -> LoadedImage:
    """Load a 3-D image (NIfTI-1/2 or MGH/MGZ) as float32, checking everything.

    Parameters
    ----------
    path : str or Path
        ``.nii``, ``.nii.gz``, ``.mgz`` or ``.mgh`` file.
    role : str
        What the image is, used in messages.

    Returns
    -------
    LoadedImage
        3-D float32 finite data with the file's own orientation (use
        :func:`reorient_ras` where RAS axes are needed). A 4-D image gives its first
        volume, NaN/Inf voxels (at most half) become 0; both add a warning.

    Raises
    ------
    InputError
        The file is missing, a broken link, empty, truncated, not an image, 2-D or
        5-D, mostly NaN, constant (empty image), or has a bad affine or voxel size.
    """
    img, path, warnings, first = _open_checked(path, role)
    try:
        with np.errstate(all="ignore"):
            data = _scaled_float32(path, *_read_raw(img, path, first))
    except InputError:
        raise
    except Exception as exc:
        raise _read_problem(path, exc, "data") from None
    _repair_nonfinite(path, data, role, warnings)
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise InputError(path, f"empty image: every voxel of the {role} image is {lo:g}",
                         "The file holds no picture; convert or acquire it again")
    return _done(path, data, np.asarray(img.affine, dtype=np.float64), img, warnings)


def load_labels(path: str | Path, role: str = "segmentation") -> LoadedImage:
    """Load a label map (segmentation, mask) as int32, checking everything.

    Parameters
    ----------
    path : str or Path
        ``.nii``, ``.nii.gz``, ``.mgz`` or ``.mgh`` file.
    role : str
        What the labels are, used in messages.

    Returns
    -------
    LoadedImage
        3-D int32 labels. Float-stored labels within 1e-3 of integers are rounded.

    Raises
    ------
    InputError
        Every file-level problem of :func:`load_image`, plus non-integer values (a
        probability map), negative codes, codes beyond int32, or a single label
        everywhere.
    """
    img, path, warnings, first = _open_checked(path, role)
    try:
        with np.errstate(all="ignore"):
            raw, slope, inter = _read_raw(img, path, first)
            # Integer labels stay integers; scaled or float ones go through float32.
            values = raw if raw.dtype.kind in "biu" and (slope, inter) == (1.0, 0.0) else (
                _scaled_float32(path, raw, slope, inter))
    except InputError:
        raise
    except Exception as exc:
        raise _read_problem(path, exc, "data") from None
    if values.dtype.kind == "f":
        _repair_nonfinite(path, values, role, warnings)
        rounded = np.rint(values)
        err = np.abs(values - rounded)
        if float(err.max()) > _LABEL_TOLERANCE:
            example = float(values.flat[int(np.argmax(err))])
            raise InputError(path, f"the {role} values are not integers (e.g. {example:g}): "
                             "a probability map or an interpolated image, not labels",
                             "Pass an integer label map (aseg.mgz, *_dseg.nii.gz); "
                             "threshold probability maps first")
        values = rounded
    lo, hi = float(values.min()), float(values.max())
    if lo < 0:
        raise InputError(path, f"the {role} has negative label codes (e.g. {lo:g})",
                         "Pass a label map with codes >= 0 (0 = background)")
    if hi > np.iinfo(np.int32).max:
        raise InputError(path, f"the {role} has label codes beyond int32 (e.g. {hi:g})",
                         "Pass a label map with FreeSurfer-style codes")
    if lo == hi:
        what = "empty image: every voxel is 0" if hi == 0 else (
            f"empty image: a single label ({hi:g}) fills every voxel")
        raise InputError(path, f"the {role} is an {what}",
                         "Pass the segmentation itself, not a placeholder")
    labels = _as_owned(values, np.int32)
    return _done(path, labels, np.asarray(img.affine, dtype=np.float64), img, warnings)


def check_freesurfer_codes(labels: np.ndarray, path: str | Path | None) -> None:
    """Refuse a label array not coded with FreeSurfer aseg codes.

    Raises
    ------
    InputError
        ``codes are not FreeSurfer's``, listing some of the codes found.
    """
    if looks_freesurfer_coded(labels):
        return
    codes = np.unique(labels)
    shown = ", ".join(str(int(c)) for c in codes[:12]) + (", ..." if codes.size > 12 else "")
    raise InputError(
        path,
        f"the segmentation's codes are not FreeSurfer's (codes found: {shown})",
        "Pass a FreeSurfer-coded segmentation (aseg.mgz, aparc+aseg, FastSurfer or "
        "SynthSeg output) or use `--seg-source` to pick another",
    )


def reorient_ras(img: Any) -> Any:
    """The image with its voxel axes flipped/permuted to the closest RAS orientation.

    Parameters
    ----------
    img : nibabel image or LoadedImage
        The image; a LoadedImage gives a LoadedImage (same path and warnings).

    Returns
    -------
    nibabel image or LoadedImage
        World coordinates of every voxel are unchanged; an oblique affine stays
        oblique (only the axis order and directions change), no resampling is done.
    """
    if isinstance(img, LoadedImage):
        return dataclasses.replace(img, img=nib.as_closest_canonical(img.img))
    return nib.as_closest_canonical(img)


# --------------------------------------------------------------------------------------
# Checksums and JSON


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file's content (symbolic links followed).

    Raises
    ------
    InputError
        Missing file or broken link (with the ``datalad get`` hint).
    """
    path = Path(path)
    if os.path.lexists(path) and not path.exists():
        require_file(path)  # raises the broken-link error
    if not path.exists():
        raise InputError(path, "file not found (cannot compute its checksum)")
    if not path.is_file():
        raise InputError(path, "not a regular file (cannot compute its checksum)")
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fobj:
        while block := fobj.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _json_key(key: Any) -> Any:
    if isinstance(key, np.generic):
        key = key.item()
    return str(key) if isinstance(key, PurePath) else key


def json_ready(obj: Any) -> Any:
    """Recursively convert ``obj`` into what :func:`json.dumps` accepts.

    numpy scalars and arrays become Python numbers and lists, Paths strings, tuples
    lists, sets sorted lists, NaN and infinite floats ``None``. Anything else is
    returned unchanged, so a truly unserialisable object still makes ``json.dumps`` fail.
    """
    if obj is None or isinstance(obj, (bool, str, int)) and not isinstance(obj, np.generic):
        return obj
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return json_ready(obj.item())
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Mapping):
        return {_json_key(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [json_ready(v) for v in obj]
        with contextlib.suppress(TypeError):
            items.sort()
        return items
    return obj


# --------------------------------------------------------------------------------------
# Atomic writes


@contextlib.contextmanager
def _atomic_target(path: str | Path):
    """Yield an open binary temp file beside ``path``; on success it replaces ``path``.

    The temp file is fsynced, made 0o644 (mkstemp creates 0o600) and moved with
    :func:`os.replace`, which is atomic on POSIX: readers and concurrent writers see
    the old or a new complete file, never a partial one. On any error it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fobj:
            yield fobj
            fobj.flush()
            os.fsync(fobj.fileno())
            os.fchmod(fobj.fileno(), 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable; not possible everywhere (some network mounts).
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename; mode 0o644)."""
    with _atomic_target(path) as fobj:
        fobj.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON (insertion order, ``indent=2``) atomically.

    ``obj`` goes through :func:`json_ready` (NaN becomes ``null``) and is serialised
    with ``allow_nan=False`` before any file is touched, so a serialisation error
    leaves neither a temp file nor a changed target.
    """
    text = json.dumps(json_ready(obj), indent=2, allow_nan=False) + "\n"
    atomic_write_text(path, text)


def atomic_save_nifti(img: nib.spatialimages.SpatialImage, path: str | Path) -> None:
    """Save an image as ``.nii`` or ``.nii.gz`` atomically.

    Non-NIfTI images (MGH) are converted to NIfTI-1. ``.nii.gz`` is written with
    gzip level 1 (nibabel's default) and mtime 0, so identical images give identical
    bytes (stable checksums).
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: atomic_save_nifti writes .nii or .nii.gz only")
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    with _atomic_target(path) as fobj:
        if name.endswith(".gz"):
            with gzip.GzipFile(fileobj=fobj, mode="wb", compresslevel=1, mtime=0) as gz:
                img.to_stream(gz)
        else:
            img.to_stream(fobj)
