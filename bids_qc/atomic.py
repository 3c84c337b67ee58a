"""Checksums, JSON-ready values and atomic writes (temp file, fsync, rename).

Every output of bids_qc is written through these, so a run killed mid-write leaves the
previous file or none, never half of one.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import nibabel as nib
import numpy as np

from bids_qc.errors import InputError
from bids_qc.filechecks import require_file

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
