"""Head, air and frame masks of a raw T1w, and whether its background can be used.

The morphology runs on a coarse grid (about 2 mm; :class:`Coarse`): a head mask needs no
finer detail, and a 1 mm image would take seconds per operation at full resolution.

Background rule (:func:`background_problem`): the background IQMs need the air around the
head to hold the scanner's noise. They are n/a when

- **skull-stripped**: the bright tissue (above the head threshold and above 20% of the
  brain's median) farther than 5 mm from the brain mask adds up to less than 5% of the
  brain's volume (a whole head has scalp, muscle and neck: typically more than 30%);
- **defaced or zero-filled**: a solid region of voxels exactly at the image's minimum
  (every voxel of a coarse cell, after a 3x3x3 opening of the coarse grid; noise never
  gives that) touches the head over more than 1 cm^3 of head tissue. A defacing mask cuts
  through the face, so tissue borders it directly; so does a scanner or converter that
  zero-fills the air. Whole slices at the image's minimum on its borders (zero padding)
  are the *frame*: they leave the background usable and are excluded from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

#: Edge length (mm) of the coarse grid's cells.
COARSE_MM = 2.0
#: Skull-stripped when bright tissue beyond ``STRIP_DISTANCE_MM`` of the brain is less than
#: ``STRIP_SHARE`` of the brain's volume.
STRIP_DISTANCE_MM = 5.0
STRIP_SHARE = 0.05
#: Defaced/zero-filled when a solid minimum-valued region borders more than this much head
#: tissue (mm^3).
DEFACE_CONTACT_MM3 = 1000.0


@dataclass(frozen=True)
class Coarse:
    """A block-reduced copy of an image grid.

    Parameters
    ----------
    factors : tuple of int
        Voxels per coarse cell along each axis.
    shape : tuple of int
        The full grid's shape.
    zooms : tuple of float
        The full grid's voxel size (mm).
    """

    factors: tuple[int, int, int]
    shape: tuple[int, int, int]
    zooms: tuple[float, float, float]

    @classmethod
    def for_grid(cls, shape: tuple[int, ...], zooms: tuple[float, ...],
                 cell_mm: float = COARSE_MM) -> Coarse:
        """The coarse grid of cells about ``cell_mm`` wide."""
        factors = tuple(max(1, int(round(cell_mm / float(z)))) for z in zooms[:3])
        return cls(factors, tuple(int(n) for n in shape[:3]),  # type: ignore[arg-type]
                   tuple(float(z) for z in zooms[:3]))  # type: ignore[arg-type]

    @property
    def cell_zooms(self) -> np.ndarray:
        """The coarse voxel size (mm)."""
        return np.asarray(self.zooms) * np.asarray(self.factors)

    @property
    def cell_mm3(self) -> float:
        """The volume of one coarse cell (mm^3)."""
        return float(np.prod(self.cell_zooms))

    def reduce(self, data: np.ndarray, how: str = "mean") -> np.ndarray:
        """Block-reduce ``data`` (``mean``, ``max`` or ``min``), padding the edges."""
        f = self.factors
        pad = [(0, (-n) % k) for n, k in zip(data.shape, f)]
        if any(p[1] for p in pad):
            data = np.pad(data, pad, mode="edge")
        # along each axis in turn, combine the k strided slices: whole-array adds and
        # maxima run far faster than a reduction over a short strided axis
        combine = {"mean": np.add, "max": np.maximum, "min": np.minimum}[how]
        out = data
        for axis, k in enumerate(f):
            if k == 1:
                continue
            index = [slice(None)] * 3
            parts = []
            for i in range(k):
                index[axis] = slice(i, None, k)
                parts.append(out[tuple(index)])
            acc = parts[0].astype(np.float32 if how == "mean" else parts[0].dtype)
            for part in parts[1:]:
                combine(acc, part, out=acc)
            out = acc
        if how == "mean":
            out = out / np.float32(np.prod(f))
        return out

    def expand(self, coarse: np.ndarray) -> np.ndarray:
        """Back to the full grid (each cell's value in each of its voxels)."""
        out = coarse
        for axis, k in enumerate(self.factors):
            if k > 1:
                out = np.repeat(out, k, axis=axis)
        return out[: self.shape[0], : self.shape[1], : self.shape[2]]


@dataclass(frozen=True)
class HeadMasks:
    """The masks the IQMs need, on the full grid, and the coarse arrays they came from.

    Parameters
    ----------
    head : ndarray of bool
        The head (everything inside the scalp), brain included.
    air : ndarray of bool
        Background: outside the head dilated by 2 coarse cells, not below the brain, frame
        excluded (:func:`head_masks`).
    air_far : ndarray of bool
        The air farther than 10 mm from the head (Mortamet's QI1 region).
    fov : tuple of slice
        The field of view inside the frame (whole border slices at the image's minimum:
        zero padding).
    threshold : float
        The intensity above which a voxel counts as head tissue.
    coarse_data, coarse_brain, coarse_frame : ndarray
        The block-mean image, the brain (any voxel of a cell) and the frame (every voxel of
        a cell) on the coarse grid.
    """

    head: np.ndarray
    air: np.ndarray
    air_far: np.ndarray
    fov: tuple[slice, slice, slice]
    threshold: float
    coarse_data: np.ndarray
    coarse_brain: np.ndarray
    coarse_frame: np.ndarray

    @property
    def frame(self) -> np.ndarray:
        """The frame on the full grid."""
        out = np.ones(self.head.shape, dtype=bool)
        out[self.fov] = False
        return out


def field_of_view(data: np.ndarray) -> tuple[slice, slice, slice]:
    """The box inside the border slices whose every voxel is at the image's minimum."""
    lo = data.min()
    out = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        filled = np.flatnonzero(data.max(axis=others) > lo)
        out.append(slice(int(filled[0]), int(filled[-1]) + 1) if filled.size else slice(0, 0))
    return out[0], out[1], out[2]


def _head_threshold(smooth: np.ndarray) -> float:
    """Half of Otsu's threshold between air and tissue, and at least the air's level + 5
    robust SDs (the air being the voxels below Otsu's threshold).

    Half of Otsu's threshold (about a fifth of the brain's intensity on T1w) keeps the
    scalp, face and neck, whose holes (skull, sinuses) are filled afterwards, and leaves
    out faint ghosts, which would otherwise join the head and hide from QI1.
    """
    otsu = float(threshold_otsu(smooth))
    low = smooth[smooth < otsu]
    if low.size == 0:
        return otsu
    med = float(np.median(low))
    spread = 1.4826 * float(np.median(np.abs(low - med)))
    return max(0.5 * otsu, min(otsu, med + 5.0 * spread))


def _fill_head(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fill the holes of a head mask that is open where the field of view cuts it.

    The neck (and a tight top) leave the head open at the grid's faces along the
    superior ``axis``, so a plain 3-D fill would miss its inside (mouth, airways, a
    dark skull under a thin scalp). Those two faces are closed with a layer of mask first;
    the air still reaches the other faces, so it stays outside.
    """
    pad = [(0, 0)] * 3
    pad[axis] = (1, 1)
    padded = np.pad(mask, pad, constant_values=True)
    filled = ndimage.binary_fill_holes(padded)
    index = [slice(None)] * 3
    index[axis] = slice(1, -1)
    return filled[tuple(index)]


def superior_side(brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxels not below the brain's lowest voxel, along the axis closest to world
    superior (a boolean array that broadcasts against the grid)."""
    axis = int(np.argmax(np.abs(affine[2, :3])))
    others = tuple(a for a in range(3) if a != axis)
    hit = np.flatnonzero(brain.any(axis=others))
    n = brain.shape[axis]
    keep = np.ones(n, dtype=bool)
    if hit.size:
        if affine[2, axis] > 0:  # index grows upwards: keep from the lowest brain slice up
            keep[: hit[0]] = False
        else:
            keep[hit[-1] + 1:] = False
    shape = [1, 1, 1]
    shape[axis] = n
    return keep.reshape(shape)


def head_masks(data: np.ndarray, brain: np.ndarray, affine: np.ndarray, coarse: Coarse,
               far_mm: float = 10.0) -> HeadMasks:
    """Head, air and frame masks of a raw T1w.

    The head is the largest connected region of the coarse, smoothed image above
    :func:`_head_threshold`, closed, its holes filled slice by slice and joined with the
    brain mask. The air is every voxel beyond 2 coarse cells (about 4 mm) of the head and
    not below the brain's lowest slice: like MRIQC's "hat" (which cuts at a plane through
    the nasion and the cerebellum, from the template), this leaves out the neck and
    shoulders, whose signal fades with the coil and would read as artefacts.

    Parameters
    ----------
    data : ndarray
        The raw image (float32, full grid).
    brain : ndarray of bool
        The brain mask on the same grid.
    affine : ndarray
        The grid's voxel-to-world affine (which way is up).
    coarse : Coarse
        The coarse grid the morphology runs on.
    far_mm : float
        Distance from the head beyond which air counts for QI1.
    """
    fov = field_of_view(data)
    inside = np.zeros(data.shape, dtype=np.float32)
    inside[fov] = 1.0
    frame_c = coarse.reduce(inside, "max") == 0
    del inside
    small = coarse.reduce(data)
    brain_c = coarse.reduce(brain.view(np.uint8), "max") > 0
    smooth = ndimage.gaussian_filter(small, 1.0)
    threshold = _head_threshold(smooth[~frame_c])
    head = smooth > threshold
    labels, n = ndimage.label(head)
    if n > 1:
        sizes = ndimage.sum_labels(head, labels, index=np.arange(1, n + 1))
        head = labels == (int(np.argmax(sizes)) + 1)
    head = ndimage.binary_closing(head, iterations=2, border_value=0) | head | brain_c
    head = _fill_head(head, int(np.argmax(np.abs(affine[2, :3]))))
    near = ndimage.binary_dilation(head, iterations=2)
    far = ndimage.distance_transform_edt(~head, sampling=coarse.cell_zooms) > far_mm
    # one expansion of a coded coarse array (0 head, 1 near, 2 air, 3 far air) to the grid
    code = np.where(head, 0, np.where(near, 1, np.where(far, 3, 2))).astype(np.uint8)
    full = coarse.expand(code)
    not_frame = np.zeros(data.shape, dtype=bool)
    not_frame[fov] = True
    air = (full >= 2) & not_frame & ~brain & superior_side(brain, affine)
    return HeadMasks(head=(full == 0) | brain, air=air, air_far=air & (full == 3), fov=fov,
                     threshold=threshold, coarse_data=small, coarse_brain=brain_c,
                     coarse_frame=frame_c)


def background_problem(data: np.ndarray, brain: np.ndarray, masks: HeadMasks,
                       coarse: Coarse) -> str | None:
    """Why the background cannot be used (skull-stripped, defaced, zero-filled), or None.

    See the module docstring for the rule and its constants.
    """
    brain_c = masks.coarse_brain
    brain_mm3 = float(brain_c.sum()) * coarse.cell_mm3
    if brain_mm3 <= 0:
        return "the brain mask is empty"
    brain_median = float(np.median(data[brain]))
    bright_level = max(masks.threshold, 0.2 * brain_median)
    small = masks.coarse_data
    dist = ndimage.distance_transform_edt(~brain_c, sampling=coarse.cell_zooms)
    outside = float(((small > bright_level) & (dist > STRIP_DISTANCE_MM)).sum())
    if outside * coarse.cell_mm3 < STRIP_SHARE * brain_mm3:
        return (f"skull-stripped image: bright tissue farther than {STRIP_DISTANCE_MM:g} mm "
                f"from the brain is {outside * coarse.cell_mm3 / brain_mm3:.1%} of the "
                f"brain's volume (< {STRIP_SHARE:.0%}); the background IQMs need the air "
                "around a whole head")
    lo = data.min()
    solid = (coarse.reduce(data, "max") <= lo) & ~masks.coarse_frame
    solid = ndimage.binary_opening(solid, structure=np.ones((3, 3, 3), bool))
    if solid.any():
        tissue = small > masks.threshold
        contact = ndimage.binary_dilation(solid, iterations=1) & tissue
        contact_mm3 = float(contact.sum()) * coarse.cell_mm3
        if contact_mm3 > DEFACE_CONTACT_MM3:
            return (f"defaced or zero-filled background: a solid region of voxels at the "
                    f"image's minimum ({lo:g}) borders {contact_mm3 / 1000:.1f} cm^3 of head "
                    "tissue; the background IQMs need the scanner's noise in the air")
    return None
