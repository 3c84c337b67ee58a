"""Synthetic MR images from label maps, with their exact segmentation (SynthSeg-style).

One case, in order (every draw from one ``numpy.random.Generator`` seeded with ``seed``;
per-voxel noise from a ``torch.Generator`` seeded from it):

1. skull stripping: with probability 0.5 (or as asked) drop SynthSeg's extra-cerebral codes
   (500-599) and, half of those times, the extra-cerebral CSF (24), so both whole-head and
   skull-stripped images occur;
2. crop to the remaining labels plus a margin; the image covers this field of view at the
   drawn resolution (0.7-1.6 mm per axis, isotropic half of the time), axes as the input's;
3. spatial transform: a mild random affine and a diffeomorphic deformation
   (:mod:`bids_qc.synth.deform`), applied to image and labels together;
4. a Gaussian intensity per label from the contrast family, on the input's (fine) grid;
5. partial-volume blur there (Gaussian, FWHM about the output voxel size), then image and
   labels are pulled through the transform onto the output grid in one pass (trilinear and
   nearest), then a smooth multiplicative bias field, Gaussian noise, min-max normalisation
   and a random gamma.

The true segmentation is the label map pulled through the same transform onto the output
grid (nearest neighbour), so it is aligned with the image voxel for voxel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bids_qc.synth.contrast import check_family, is_extra_cerebral, sample_intensities
from bids_qc.synth.deform import Deformation, random_affine, random_deformation
from bids_qc.synth.grids import (
    CHUNK_VOXELS,
    as_volume,
    gaussian_blur,
    grid_coords,
    normaliser,
    sample,
)

#: Range of the random resolution, mm per axis.
RESOLUTION_RANGE = (0.7, 1.6)
#: Extra-cerebral CSF, dropped in half of the skull-stripped cases.
CSF_CODE = 24


@dataclass
class SynthCase:
    """One synthetic case.

    Attributes
    ----------
    image : ndarray of float32
        Intensities in ``[0, 1]``.
    labels : ndarray of int32
        True segmentation on the image grid.
    affine : ndarray (4, 4)
        Image voxel-to-world matrix, in the input label map's world frame.
    params : dict
        Everything drawn (JSON-ready). ``params["image_to_source"]`` is the affine part of
        the spatial transform (image world mm to label-map world mm); compose it with a
        label map's template affine to place the case in template space.
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


def _check_inputs(labels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be a 3-D array, got shape {labels.shape}")
    if min(labels.shape) < 2:
        raise ValueError(f"labels must be at least 2 voxels along each axis, got {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.rint(labels)):
            raise ValueError("labels must hold integer codes")
    elif labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError("affine is singular")
    return labels.astype(np.int32), affine


def _resolution(
    resolution: None | float | tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    iso, per_axis = rng.uniform(*RESOLUTION_RANGE), rng.uniform(*RESOLUTION_RANGE, 3)
    anisotropic = rng.random() < 0.5
    if resolution is None:
        return per_axis if anisotropic else np.full(3, iso)
    res = np.broadcast_to(np.asarray(resolution, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(res)) or np.any(res <= 0):
        raise ValueError(
            f"resolution must be positive mm (a number or 3 numbers), got {resolution}"
        )
    return res


def _crop(labels: np.ndarray, margin: np.ndarray) -> tuple[slice, ...]:
    idx = np.nonzero(labels)
    if idx[0].size == 0:
        raise ValueError("label map is empty (no non-zero label to synthesize from)")
    return tuple(
        slice(max(0, int(i.min()) - int(m)), min(n, int(i.max()) + int(m) + 1))
        for i, m, n in zip(idx, margin, labels.shape)
    )


def _pull(
    volumes: list[tuple[torch.Tensor, str]],
    shape: tuple[int, int, int],
    to_box: np.ndarray,
    deformation: Deformation | None,
    box_to_src: np.ndarray,
) -> list[torch.Tensor]:
    """Sample volumes of the box's grid: voxel -> box -> deformed -> source, in chunks.

    ``to_box`` maps output voxels to box voxels and ``box_to_src`` box voxels to source
    voxels (the source is the box itself, so both share one normaliser).
    """
    device = volumes[0][0].device
    norm = normaliser(tuple(volumes[0][0].shape[2:]))
    first = norm @ to_box
    second = torch.as_tensor(
        (norm @ box_to_src @ np.linalg.inv(norm))[:3], dtype=torch.float32, device=device
    )
    outs = [torch.empty(shape, dtype=torch.float32, device=device) for _ in volumes]
    step = max(1, CHUNK_VOXELS // (shape[1] * shape[2]))
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        grid = grid_coords(shape, first, device, start, stop)
        if deformation is not None:
            grid = deformation.displace(grid)
        grid = grid @ second[:, :3].T + second[:, 3]
        for out, (vol, mode) in zip(outs, volumes):
            out[start:stop] = sample(vol, grid, mode)[0, 0]
    return outs


def synthesize(
    labels: np.ndarray,
    affine: np.ndarray,
    seed: int,
    family: str = "t1",
    *,
    resolution: None | float | tuple[float, float, float] = None,
    deform: bool = True,
    skull_strip: bool | None = None,
    device: str | torch.device = "cpu",
    split: str = "train",
    affine_aug: bool | None = None,
    margin_mm: float = 8.0,
) -> SynthCase:
    """Synthesize one image and its true segmentation from a label map.

    Parameters
    ----------
    labels : ndarray
        3-D FreeSurfer-coded label map (integer codes; float arrays of integers accepted).
    affine : ndarray (4, 4)
        The label map's voxel-to-world matrix.
    seed : int
        Seed of every random draw: equal seeds give identical cases (on one device).
    family : str
        Contrast family (:data:`bids_qc.synth.contrast.CONTRAST_FAMILIES`).
    resolution : None, float or (float, float, float)
        Output voxel size in mm along the input's axes; None draws it (0.7-1.6 mm,
        anisotropic half of the time).
    deform : bool
        Apply the random diffeomorphic deformation.
    skull_strip : bool or None
        Drop extra-cerebral labels; None draws it (probability 0.5).
    device : str
        Torch device of the resampling work.
    split : {"train", "eval"}
        What the case is for; ``"train"`` refuses evaluation-only contrast families (``t2``).
    affine_aug : bool or None
        Apply the mild random affine (rotation <= 10 deg, scale 0.9-1.1, shift <= 5 mm);
        None follows ``deform``.
    margin_mm : float
        Margin kept around the labels when cropping the field of view.

    Returns
    -------
    SynthCase

    Raises
    ------
    ValueError
        For a bad label map, affine, resolution, family, or ``t2`` in a training split.
    """
    fam = check_family(family, split)
    labels, affine = _check_inputs(labels, affine)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    tgen = torch.Generator(device=device)
    tgen.manual_seed(int(rng.integers(2**62)))
    params: dict[str, Any] = {"seed": int(seed), "family": family, "split": split}

    # 1. Skull stripping (always draw, so the stream does not depend on the arguments).
    strip_draw, csf_draw = rng.random(), rng.random()
    extra = is_extra_cerebral(labels)
    strip = (strip_draw < 0.5) if skull_strip is None else bool(skull_strip)
    dropped: list[int] = []
    if strip:
        dropped = sorted(int(c) for c in np.unique(labels[extra]))
        if csf_draw < 0.5 and np.any(labels == CSF_CODE):
            dropped.append(CSF_CODE)
        labels = np.where(np.isin(labels, dropped), 0, labels).astype(np.int32)
    params.update(skull_strip=strip, dropped_codes=dropped)

    # 2. Field of view and output grid.
    vox = np.linalg.norm(affine[:3, :3], axis=0)
    box = _crop(labels, np.ceil(margin_mm / vox))
    src = np.ascontiguousarray(labels[box])
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ [s.start for s in box] + affine[:3, 3]
    res = _resolution(resolution, rng)
    out_shape = tuple(max(2, int(round(n * v / r))) for n, v, r in zip(src.shape, vox, res))
    to_box = np.diag([*(res / vox), 1.0])
    to_box[:3, 3] = -0.5 + 0.5 * res / vox  # output and box share the field of view's edges
    out_affine = crop_affine @ to_box
    params.update(resolution=res.tolist(), shape=list(out_shape),
                  crop=[[s.start, s.stop] for s in box])  # fmt: skip

    # 3. Spatial transform: box voxel p -> p + u(p) -> source voxel via the affine.
    centre = crop_affine @ np.append((np.asarray(src.shape) - 1) / 2, 1.0)
    world_aug, aug_params = random_affine(centre[:3], rng)
    if not (deform if affine_aug is None else affine_aug):
        world_aug, aug_params = np.eye(4), {}
    deformation, def_params = random_deformation(src.shape, vox, rng, device=device)
    if not deform:
        deformation, def_params = None, {}
    box_to_src = np.linalg.inv(crop_affine) @ world_aug @ crop_affine
    params.update(
        image_to_source=world_aug.tolist(), affine_aug=aug_params, deformation=def_params
    )

    # 4. Intensities per label, and 5. partial-volume blur, on the source grid: the spatial
    # transform is mild, so blurring before it is blurring along the image axes.
    codes = np.unique(src)
    means, stds = sample_intensities(codes, fam, rng)
    params["intensities"] = {int(c): [float(m), float(s)] for c, m, s in zip(codes, means, stds)}
    src_t = as_volume(src, device)
    idx = torch.bucketize(src_t, torch.as_tensor(codes, dtype=torch.float32, device=device))
    mean_t = torch.as_tensor(means, dtype=torch.float32, device=device)
    std_t = torch.as_tensor(stds, dtype=torch.float32, device=device)
    image = (
        torch.randn(idx.shape, generator=tgen, device=device).mul_(std_t[idx]).add_(mean_t[idx])
    )
    del idx
    blur_mm = 0.42 * res * rng.uniform(0.85, 1.15, 3)
    image = gaussian_blur(image, tuple(float(s) for s in blur_mm / vox))
    true_out, out = _pull(
        [(src_t, "nearest"), (image, "bilinear")], out_shape, to_box, deformation, box_to_src
    )
    del src_t, image

    # Bias field, noise, normalisation and gamma on the output grid.
    bias_std = float(rng.uniform(0, 0.3))
    bias = torch.as_tensor(rng.standard_normal((4, 4, 4)) * bias_std, dtype=torch.float32)
    bias = F.interpolate(as_volume(bias, device), size=out_shape, mode="trilinear",
                         align_corners=True)[0, 0]  # fmt: skip
    noise_std = float(rng.uniform(0, 8))
    out = out * torch.exp(bias) + noise_std * torch.randn(out_shape, generator=tgen, device=device)
    out = torch.clamp(out, min=0)
    lo, hi = float(out.min()), float(out.max())
    out = (out - lo) / max(hi - lo, 1e-6)
    gamma = float(np.exp(rng.normal(0, fam.gamma_std)))
    out = out**gamma
    params.update(blur_sigma_mm=blur_mm.tolist(), bias_std=bias_std, noise_std=noise_std,
                  gamma=gamma)  # fmt: skip
    return SynthCase(
        image=out.cpu().numpy().astype(np.float32),
        labels=np.rint(true_out.cpu().numpy()).astype(np.int32),
        affine=out_affine,
        params=params,
    )
