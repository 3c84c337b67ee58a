"""Resampling between voxel grids and readers for linear transform files.

Conventions
-----------
Every affine here is a 4x4 matrix in world RAS millimetres (nibabel's convention).
A *world transform* maps points of a SOURCE world to a TARGET world, e.g. FreeSurfer's
``talairach.xfm`` maps subject scanner RAS to MNI305 RAS, and :func:`read_itk_affine`
returns the map from the moving (T1w) world to the template world. MNI305 is not the
MNI152 world of the app's templates: :func:`read_talairach_mni152` composes
``talairach.xfm`` with FreeSurfer's published MNI305 -> MNI152 affine.

Use these through :mod:`bids_qc.io`, which re-exports them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from bids_qc.errors import InputError
from bids_qc.filechecks import require_file

__all__ = [
    "resample_to_grid",
    "read_talairach_xfm",
    "read_talairach_mni152",
    "talairach_to_mni152",
    "read_itk_affine",
    "LPS_TO_RAS",
    "FS_MNI152_TO_MNI305",
]

#: Target voxels resampled per slab: bounds the coordinate arrays (3 float64 per voxel,
#: about 50 MB) whatever the image size.
_SLAB_VOXELS = 1 << 21

#: ITK works in LPS, nibabel in RAS: flipping x and y converts points either way.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: FreeSurfer's MNI152 RAS -> MNI305 RAS affine, exactly as published (FreeSurfer wiki,
#: https://surfer.nmr.mgh.harvard.edu/fswiki/CoordinateSystems, use case 8b, derived from
#: ``$FREESURFER_HOME/average/mni152.register.dat``). The wiki publishes it in this
#: direction only, so MNI305 -> MNI152 is its inverse (:func:`talairach_to_mni152`); its
#: worked example, (10, -20, 35) -> (9.3131, -21.5849, 33.8345), fixes the direction.
#: Kept as published so the digits can be checked against the wiki.
FS_MNI152_TO_MNI305 = np.array([
    [1.0022, 0.0071, -0.0177, 0.0528],
    [-0.0146, 0.9990, 0.0027, -1.5519],
    [0.0129, 0.0094, 1.0027, -1.2012],
    [0.0, 0.0, 0.0, 1.0],
])  # fmt: skip

_ITK_AFFINE_TYPE = re.compile(r"^(AffineTransform|MatrixOffsetTransformBase)_(double|float)_3_3$")


def resample_to_grid(
    data: np.ndarray,
    affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    order: int,
    world_transform: np.ndarray | None = None,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample a 3-D array onto another voxel grid.

    For each target voxel ``ijk``: ``world = target_affine @ ijk``; with a
    ``world_transform`` (source world -> target world) the source world point is
    ``inv(world_transform) @ world``; the source voxel is ``inv(affine) @ source world``.

    Sampling uses :func:`scipy.ndimage.map_coordinates` (CPU, no torch) over slabs of
    target slices, so memory stays bounded: the output, the float32 input and one
    slab of coordinates. Points within half a voxel outside the source grid take the
    edge voxel's value (the edge voxel covers them); points further out get ``cval``.

    Parameters
    ----------
    data : ndarray
        3-D source array.
    affine : ndarray
        Source voxel-to-world affine (4x4).
    target_shape : sequence of int
        Shape of the output grid (3 values).
    target_affine : ndarray
        Target voxel-to-world affine (4x4).
    order : {0, 1}
        0: nearest neighbour, keeps ``data``'s dtype and values (labels);
        1: trilinear, computed and returned in float32.
    world_transform : ndarray, optional
        4x4 map from the source world to the target world.
    cval : float
        Value outside the source grid.

    Returns
    -------
    ndarray
        Array of ``target_shape``.
    """
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (trilinear), not {order}")
    data = np.asanyarray(data)
    if data.ndim != 3:
        raise ValueError(f"resample_to_grid needs a 3-D array, got shape {data.shape}")
    shape = tuple(int(n) for n in target_shape)
    if len(shape) != 3:
        raise ValueError(f"target_shape must have 3 values, got {target_shape}")
    mapping = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    if world_transform is not None:
        mapping = mapping @ np.linalg.inv(np.asarray(world_transform, dtype=np.float64))
    mapping = mapping @ np.asarray(target_affine, dtype=np.float64)

    if order == 1:
        src = np.asarray(data, dtype=np.float32)
        out_dtype = np.dtype(np.float32)
    else:
        out_dtype = data.dtype
        # map_coordinates takes no booleans; uint8 holds them exactly.
        src = data.view(np.uint8) if data.dtype.kind == "b" else data
    # Same grid: nothing to interpolate (saves time and keeps values bit-exact).
    if shape == data.shape and np.allclose(mapping, np.eye(4), atol=1e-6):
        return np.array(data, dtype=out_dtype)

    out = np.empty(shape, dtype=src.dtype)
    step = max(1, _SLAB_VOXELS // max(1, shape[1] * shape[2]))
    j = np.arange(shape[1], dtype=np.float64)[None, :, None]
    k = np.arange(shape[2], dtype=np.float64)[None, None, :]
    limits = np.array(data.shape, dtype=np.float64) - 0.5
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        i = np.arange(start, stop, dtype=np.float64)[:, None, None]
        coords = np.empty((3, stop - start, shape[1], shape[2]), dtype=np.float64)
        for r in range(3):
            coords[r] = mapping[r, 0] * i + mapping[r, 1] * j + mapping[r, 2] * k
            coords[r] += mapping[r, 3]
        slab = out[start:stop]
        ndimage.map_coordinates(src, coords, output=slab, order=order, mode="nearest")
        outside = np.zeros(slab.shape, dtype=bool)
        for r in range(3):
            outside |= (coords[r] < -0.5) | (coords[r] > limits[r])
        slab[outside] = cval
    return out.view(bool) if out_dtype.kind == "b" else out


# --------------------------------------------------------------------------------------
# Transform files


def _read_text(path: str | Path, role: str) -> tuple[Path, str]:
    path = require_file(path, role)
    try:
        return path, path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(path, f"the {role} file is not readable text ({exc})",
                         "Pass the transform file written by the registration tool") from None


def _check_matrix(path: Path, matrix: np.ndarray, role: str) -> np.ndarray:
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix[:3, :3])) < 1e-8:
        raise InputError(path, f"the {role} matrix is not invertible or holds NaN",
                         "Run the registration again")
    return matrix


def read_talairach_xfm(path: str | Path) -> np.ndarray:
    """Read an MNI ``.xfm`` linear transform (FreeSurfer ``talairach.xfm``).

    Parameters
    ----------
    path : str or Path
        Text file with ``Linear_Transform =`` followed by three rows of four numbers
        and a ``;``.

    Returns
    -------
    ndarray
        4x4 world-to-world RAS affine (for talairach.xfm: subject scanner RAS to
        MNI305 RAS).

    Raises
    ------
    InputError
        Missing file, non-linear transform, missing or malformed matrix.
    """
    path, text = _read_text(path, "talairach.xfm")
    kind = re.search(r"Transform_Type\s*=\s*(\w+)", text)
    if kind and kind.group(1) != "Linear":
        raise InputError(path, f"the .xfm transform is {kind.group(1)}, not Linear",
                         "Pass a linear transform such as FreeSurfer's talairach.xfm")
    blocks = re.findall(r"Linear_Transform\s*=([^;]*);", text)
    if not blocks:
        raise InputError(path, "malformed .xfm file: no `Linear_Transform = ...;` block",
                         "Pass FreeSurfer's mri/transforms/talairach.xfm; re-run "
                         "`recon-all -talairach` if it is damaged")
    if len(blocks) > 1:
        raise InputError(path, f"the .xfm file holds {len(blocks)} transforms, expected 1",
                         "Pass a single linear transform")
    tokens = blocks[0].split()
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        values = []
    if len(values) != 12:
        raise InputError(path, "malformed .xfm file: `Linear_Transform` needs 3 rows of 4 "
                         f"numbers, found {tokens[:16]}",
                         "Re-run `recon-all -talairach` to write it again")
    matrix = np.eye(4)
    matrix[:3, :] = np.reshape(values, (3, 4))
    return _check_matrix(path, matrix, ".xfm")


def talairach_to_mni152(talairach: np.ndarray) -> np.ndarray:
    """Native RAS -> MNI152 RAS from a native RAS -> MNI305 RAS ``talairach.xfm`` matrix.

    ``talairach.xfm`` first, then FreeSurfer's MNI305 -> MNI152 affine (the inverse of
    :data:`FS_MNI152_TO_MNI305`). Without it a FreeSurfer image lands a few mm off MNI152
    (Eq. 1 over the template grid: ``fs_transform_check``), which RegQC would charge to
    the registration.

    Parameters
    ----------
    talairach : ndarray (4, 4)
        The matrix of :func:`read_talairach_xfm`.

    Returns
    -------
    ndarray (4, 4)
        ``inv(FS_MNI152_TO_MNI305) @ talairach``.
    """
    # solve(A, B) = inv(A) @ B, without forming the inverse.
    return np.linalg.solve(FS_MNI152_TO_MNI305, np.asarray(talairach, dtype=np.float64))


def read_talairach_mni152(path: str | Path) -> np.ndarray:
    """Read ``talairach.xfm`` as a native RAS -> MNI152 RAS world transform.

    The app's templates (MNI152NLin2009cAsym) are MNI152, so this, not
    :func:`read_talairach_xfm`, is the world transform for resampling a FreeSurfer image
    onto a template. FreeSurfer's MNI152 is not necessarily the 2009c one; the rest of
    the gap is measured by ``python -m bids_qc.training.fs_transform_check``.

    Parameters
    ----------
    path : str or Path
        FreeSurfer's ``talairach.xfm``.

    Returns
    -------
    ndarray (4, 4)
        :func:`talairach_to_mni152` of :func:`read_talairach_xfm`.

    Raises
    ------
    InputError
        As :func:`read_talairach_xfm`.
    """
    return talairach_to_mni152(read_talairach_xfm(path))


def _itk_to_ras(params: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Moving-to-template RAS affine from ITK's 12 parameters and centre.

    ITK stores ``M`` (3x3, row-major, the first 9 parameters), a translation ``t``
    (the last 3) and a centre ``c`` (FixedParameters); the transform maps a FIXED
    (template) point ``x`` to a MOVING (T1w) point ``M (x - c) + t + c``, all in LPS.
    So fixed LPS -> moving LPS is ``[M | t + c - M c]``; conjugating with
    ``LPS_TO_RAS`` (its own inverse) gives fixed RAS -> moving RAS, and inverting that
    gives the moving (T1w) RAS -> template RAS map returned here.
    """
    m = params[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = m
    lps[:3, 3] = params[9:12] + centre - m @ centre
    fixed_to_moving_ras = LPS_TO_RAS @ lps @ LPS_TO_RAS
    return np.linalg.inv(fixed_to_moving_ras)


def _parse_itk_text(path: Path, text: str) -> tuple[np.ndarray, np.ndarray]:
    if "Transform:" not in text or "Parameters:" not in text:
        raise InputError(path, "not an ITK transform file (no `Transform:`/`Parameters:` "
                         "lines)", "Pass the affine written by ANTs/ITK (.txt, .tfm, .mat)")
    kinds, params, fixed = [], [], []
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Transform":
            kinds.append(value.strip())
        elif key == "Parameters":
            params.append(value.split())
        elif key == "FixedParameters":
            fixed.append(value.split())
    # A composite header carries no parameters; only its members count.
    kinds = [k for k in kinds if not k.startswith("CompositeTransform")]
    if len(kinds) != 1:
        raise InputError(path, f"the ITK file holds {len(kinds)} transforms "
                         f"({', '.join(kinds)}), expected one affine",
                         "Pass a single affine (ANTs *0GenericAffine.mat), or split a "
                         "composite with `CompositeTransformUtil --disassemble`")
    if not _ITK_AFFINE_TYPE.match(kinds[0]):
        raise InputError(path, f"unsupported ITK transform type {kinds[0]}",
                         "Pass a 3-D affine (AffineTransform_double_3_3)")
    try:
        p = np.array([float(v) for v in params[0]])
        c = np.array([float(v) for v in fixed[0]]) if fixed else np.zeros(3)
    except (ValueError, IndexError):
        p, c = np.zeros(0), np.zeros(0)
    return p, c


def _parse_itk_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for non-MATLAB bytes
        raise InputError(path, f"not a readable MATLAB .mat transform ({exc})",
                         "Pass the affine written by ANTs (*0GenericAffine.mat)") from None
    keys = [k for k in mat if _ITK_AFFINE_TYPE.match(k)]
    if len(keys) != 1 or "fixed" not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__"))
        raise InputError(path, f"the .mat file is not an ITK affine (variables: {found})",
                         "Pass the affine written by ANTs (*0GenericAffine.mat)")
    try:
        p = np.asarray(mat[keys[0]], dtype=np.float64).ravel()
        c = np.asarray(mat["fixed"], dtype=np.float64).ravel()
    except (TypeError, ValueError):
        p, c = np.zeros(0), np.zeros(0)
    return p, c


def read_itk_affine(path: str | Path) -> np.ndarray:
    """Read an ITK/ANTs affine as the moving (T1w) RAS -> template RAS world map.

    Parameters
    ----------
    path : str or Path
        ITK text transform (``#Insight Transform File V1.0``, one
        ``AffineTransform_{double,float}_3_3`` or ``MatrixOffsetTransformBase_*_3_3``)
        or the MATLAB v4 ``.mat`` ANTs writes (variables ``AffineTransform_*_3_3`` and
        ``fixed``). ANTs composite ``.h5`` files are refused.

    Returns
    -------
    ndarray
        4x4 RAS world-to-world affine mapping T1w points to template points, ready as
        ``world_transform`` for :func:`resample_to_grid`. See :func:`_itk_to_ras` for
        the LPS and direction conversion.

    Raises
    ------
    InputError
        Missing or malformed file, unsupported transform type, several transforms.
    """
    path = require_file(path, "transform")
    name = path.name.lower()
    if name.endswith((".h5", ".hdf5")):
        raise InputError(path, "ANTs composite .h5 transforms cannot be read without ANTs",
                         "Pass the affine .mat, or split the .h5 with "
                         "`CompositeTransformUtil --disassemble`")
    if name.endswith(".mat"):
        params, centre = _parse_itk_mat(path)
    else:
        path, text = _read_text(path, "transform")
        params, centre = _parse_itk_text(path, text)
    if params.size != 12 or centre.size != 3:
        raise InputError(path, f"malformed ITK affine: {params.size} parameters and "
                         f"{centre.size} fixed parameters (expected 12 and 3)",
                         "Run the registration again")
    if not (np.all(np.isfinite(params)) and np.all(np.isfinite(centre))):
        raise InputError(path, "the ITK affine holds NaN or infinite values",
                         "Run the registration again")
    matrix = np.eye(4)
    matrix[:3, :3] = params[:9].reshape(3, 3)
    _check_matrix(path, matrix, "ITK affine")
    return _itk_to_ras(params, centre)
