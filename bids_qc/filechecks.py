"""File-level checks of an input image, before any voxel is read.

Empty placeholders, git-annex links without content, wrong magic bytes, truncated
downloads, corrupt or implausible headers: each becomes an
:class:`~bids_qc.errors.InputError` naming the file, what is wrong and what to do.
:func:`open_checked` runs them all and is what :mod:`bids_qc.io`'s loaders start with.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bids_qc.errors import InputError

#: File name endings load_image accepts, longest first so ``.nii.gz`` wins over ``.gz``.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")
#: Plausible voxel edge lengths in mm (ex-vivo scans reach 0.05 mm, clinical slices 10 mm).
MIN_VOXEL_MM, MAX_VOXEL_MM = 0.01, 20.0
#: Deflate cannot compress better than about 1032:1, so a header promising more data than
#: that is corrupt; checking it first avoids allocating gigabytes for a bogus header.
_GZIP_MAX_RATIO = 1032
_NIFTI1_MAGIC = b"n+1\x00"
_NIFTI2_MAGIC = b"n+2\x00"


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


def image_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def _looks_nifti(head: bytes) -> bool:
    return len(head) >= 348 and (head[344:348] == _NIFTI1_MAGIC or head[4:8] == _NIFTI2_MAGIC)


def _sniff(path: Path, role: str) -> tuple[type[nib.spatialimages.SpatialImage], bytes]:
    """Check the file's first bytes; return the nibabel class to open it with and them."""
    suffix = image_suffix(path)
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


def read_problem(path: Path, exc: BaseException, stage: str) -> InputError:
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


def open_checked(path: str | Path, role: str) -> tuple[Any, Path, list[str], tuple]:
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
        raise read_problem(path, exc, "header") from None
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
    compressed = image_suffix(path) in (".nii.gz", ".mgz")
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
