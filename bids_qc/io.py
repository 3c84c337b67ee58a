"""Robust reading of images and label maps.

Real BIDS datasets hold empty placeholders, git-annex links without content, spurious
4th dimensions, LPS or oblique images and truncated downloads. Every problem found
here becomes an :class:`~bids_qc.errors.InputError` that names the file, says what is
wrong and what to do; nothing else escapes :func:`load_image` or :func:`load_labels`.

The file-level checks live in :mod:`bids_qc.filechecks`, checksums and atomic writes in
:mod:`bids_qc.atomic`, resampling and transform readers in :mod:`bids_qc.transforms`;
they are re-exported here, so workflows need only this module.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import math
import mmap
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bids_qc.atomic import (
    atomic_save_nifti,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    json_ready,
    md5sum,
)
from bids_qc.errors import InputError
from bids_qc.filechecks import (
    IMAGE_SUFFIXES,
    image_suffix,
    open_checked,
    read_problem,
    require_file,
)
from bids_qc.structures import looks_freesurfer_coded
from bids_qc.transforms import (
    read_itk_affine,
    read_talairach_mni152,
    read_talairach_xfm,
    resample_to_grid,
)

__all__ = [
    "IMAGE_SUFFIXES",
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

#: Non-finite voxels above this share make an image unusable rather than repairable.
MAX_NONFINITE_SHARE = 0.5
#: Label values within this distance of an integer are taken as that integer.
_LABEL_TOLERANCE = 1e-3
#: Bytes decompressed per read: the only buffer besides the image's own array.
_READ_CHUNK = 4 << 20


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
    opener = gzip.open if image_suffix(path) in (".nii.gz", ".mgz") else open
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
    img, path, warnings, first = open_checked(path, role)
    try:
        with np.errstate(all="ignore"):
            data = _scaled_float32(path, *_read_raw(img, path, first))
    except InputError:
        raise
    except Exception as exc:
        raise read_problem(path, exc, "data") from None
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
    img, path, warnings, first = open_checked(path, role)
    try:
        with np.errstate(all="ignore"):
            raw, slope, inter = _read_raw(img, path, first)
            # Integer labels stay integers; scaled or float ones go through float32.
            values = raw if raw.dtype.kind in "biu" and (slope, inter) == (1.0, 0.0) else (
                _scaled_float32(path, raw, slope, inter))
    except InputError:
        raise
    except Exception as exc:
        raise read_problem(path, exc, "data") from None
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
