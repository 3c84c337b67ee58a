"""Intensity-based affine registration in torch (multi-resolution, global NCC), CPU or GPU.

Used to bring real T1w images (ds002748) into template space, and by
:mod:`bids_qc.synth.fit_affines` (with a multi-channel MSE) to refine label-map affines.

The transform is optimised as a pull map ``T`` (fixed world -> moving world) written as
``T = T0 @ D``, with ``D(x) = c + t + (I + B)(x - c)`` about the fixed image's centre of
mass ``c``, 12 parameters optimised by Adam at each resolution, coarse to fine. Images are
blurred and resampled onto isotropic axis-aligned grids (2-3 mm is enough for an affine).
The result is returned the other way round, moving world -> fixed world, the convention of
the label maps' template affines.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from bids_qc.synth.grids import (
    as_volume,
    gaussian_blur,
    grid_coords,
    normaliser,
    resample_tensor,
    sample,
)


def world_grid(
    shape: tuple[int, ...], affine: np.ndarray, resolution: float
) -> tuple[tuple[int, int, int], np.ndarray]:
    """An isotropic, axis-aligned (RAS) grid covering an image's field of view.

    Returns the grid's shape and voxel-to-world matrix.
    """
    n = np.asarray(shape[:3], dtype=np.float64) - 1
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
    world = corners @ np.asarray(affine, dtype=np.float64).T
    lo, hi = world[:, :3].min(0), world[:, :3].max(0)
    out_shape = tuple(int(np.floor((h - lo_) / resolution)) + 1 for lo_, h in zip(lo, hi))
    out_affine = np.diag([resolution, resolution, resolution, 1.0])
    out_affine[:3, 3] = lo
    return out_shape, out_affine  # type: ignore[return-value]


def to_grid(
    data: np.ndarray | torch.Tensor,
    affine: np.ndarray,
    resolution: float,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, np.ndarray]:
    """Blur (anti-alias) and resample a volume (3-D or ``(C, X, Y, Z)``) onto a world grid.

    Each channel is scaled by its 99th percentile of positive values, so that the metric
    does not depend on the scanner's units.
    """
    vol = as_volume(data, device)
    vox = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    sigma = tuple(float(max(0.0, 0.4 * resolution / v - 0.2)) for v in vox)
    vol = gaussian_blur(vol, sigma)
    shape, grid_affine = world_grid(tuple(vol.shape[2:]), affine, resolution)
    out = resample_tensor(vol, affine, shape, grid_affine)
    for c in range(out.shape[1]):
        positive = out[0, c][out[0, c] > 0]
        scale = (
            float(torch.quantile(positive[:: max(1, positive.numel() // 100_000)], 0.99))
            if (positive.numel())
            else 1.0
        )
        out[0, c] /= max(scale, 1e-6)
    return out, grid_affine


def centre_of_mass(volume: torch.Tensor, affine: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre (world mm) of a ``(1, C, X, Y, Z)`` volume."""
    w = volume[0].clamp(min=0).sum(0).double()
    total = float(w.sum())
    if total <= 0:
        raise ValueError("cannot register an image that is zero everywhere")
    idx = [torch.arange(n, dtype=torch.float64, device=w.device) for n in w.shape]
    c = [
        float((w.sum(dim=tuple(d for d in range(3) if d != a)) * idx[a]).sum()) / total
        for a in range(3)
    ]
    return (np.asarray(affine) @ np.array([*c, 1.0]))[:3]


def _ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum() + 1e-12)


class _Adam:
    """Adam with a cosine learning-rate decay to 0 over ``total`` steps.

    A few lines instead of ``torch.optim``, whose first use imports much of torch's compiler
    stack (over a second on a small CPU).
    """

    def __init__(self, groups: list[tuple[torch.Tensor, float]], total: int) -> None:
        self.groups = groups
        self.total = max(1, total)
        self.n = 0
        self.m = [torch.zeros_like(p) for p, _ in groups]
        self.v = [torch.zeros_like(p) for p, _ in groups]

    @torch.no_grad()
    def step(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.n += 1
        decay = 0.5 * (1 + np.cos(np.pi * (self.n - 1) / self.total))
        for (p, lr), m, v in zip(self.groups, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            m_hat = m / (1 - beta1**self.n)
            v_hat = v / (1 - beta2**self.n)
            p.sub_(lr * decay * m_hat / (v_hat.sqrt() + eps))
            p.grad = None


def optimise_affine(
    moving: torch.Tensor,
    moving_affine: np.ndarray,
    fixed: torch.Tensor,
    fixed_affine: np.ndarray,
    init: np.ndarray,
    *,
    iterations: int = 100,
    lr_mm: float = 1.0,
    lr_linear: float = 0.01,
    metric: str = "ncc",
) -> np.ndarray:
    """Refine a pull map ``init`` (fixed world -> moving world) at one resolution.

    Parameters
    ----------
    moving, fixed : Tensor ``(1, C, X, Y, Z)``
        Volumes on their grids (same channels).
    moving_affine, fixed_affine : ndarray (4, 4)
        Their voxel-to-world matrices.
    metric : {"ncc", "mse"}
        Global normalised cross-correlation (maximised) or mean squared error (minimised).

    Returns
    -------
    ndarray (4, 4)
        The refined pull map.
    """
    if metric not in ("ncc", "mse"):
        raise ValueError(f"metric must be 'ncc' or 'mse', got {metric!r}")
    device = fixed.device
    shape = tuple(int(s) for s in fixed.shape[2:])
    world = grid_coords(shape, fixed_affine, device)
    c = torch.as_tensor(centre_of_mass(fixed, fixed_affine), dtype=torch.float64, device=device)
    to_moving = torch.as_tensor(
        normaliser(tuple(moving.shape[2:])) @ np.linalg.inv(moving_affine) @ init,
        dtype=torch.float64,
        device=device,
    )
    t = torch.zeros(3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.zeros(3, 3, dtype=torch.float64, device=device, requires_grad=True)
    adam = _Adam([(t, lr_mm), (b, lr_linear)], iterations)
    target = fixed.reshape(fixed.shape[1], -1)
    eye = torch.eye(3, dtype=torch.float64, device=device)

    def pulled() -> torch.Tensor:
        # Compose the small matrices first (float64), then one float32 pass over the grid.
        lin = eye + b
        total_lin = to_moving[:3, :3] @ lin
        total_off = to_moving[:3, :3] @ (c + t - lin @ c) + to_moving[:3, 3]
        grid = world @ total_lin.T.float() + total_off.float()
        vals = sample(moving, grid, "bilinear")
        return vals.reshape(moving.shape[1], -1)

    for _ in range(iterations):
        vals = pulled()
        if metric == "ncc":
            loss = -sum(_ncc(vals[k], target[k]) for k in range(vals.shape[0])) / vals.shape[0]
        else:
            loss = ((vals - target) ** 2).mean()
        loss.backward()
        adam.step()
    d = np.eye(4)
    lin = (eye + b).detach().cpu().numpy()
    cc = c.cpu().numpy()
    d[:3, :3] = lin
    d[:3, 3] = cc + t.detach().cpu().numpy() - lin @ cc
    return np.asarray(init) @ d


def register_affine(
    moving_img: nib.spatialimages.SpatialImage,
    fixed_img: nib.spatialimages.SpatialImage,
    *,
    resolutions: tuple[float, ...] = (6.0, 3.0),
    iterations: tuple[int, ...] = (150, 80),
    init: np.ndarray | None = None,
    metric: str = "ncc",
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Affine registration of two images by intensity (same contrast), coarse to fine.

    Parameters
    ----------
    moving_img, fixed_img : nibabel images
        3-D images with their affines (e.g. a T1w and the MNI template).
    resolutions : tuple of float
        Grid spacing of each level, mm, coarse first.
    iterations : tuple of int
        Adam iterations per level.
    init : ndarray (4, 4) or None
        Starting moving-to-fixed matrix; None aligns the centres of mass.
    metric : {"ncc", "mse"}
        Similarity (global NCC for one contrast).
    device : str
        Torch device.

    Returns
    -------
    ndarray (4, 4)
        World-to-world matrix ``M`` with ``x_fixed = M @ x_moving`` (mm). To resample the
        moving image onto the fixed grid, pull through ``inv(M)``.
    """
    if len(resolutions) != len(iterations) or not resolutions:
        raise ValueError("resolutions and iterations must be non-empty and of equal length")
    data = []
    for name, img in (("moving", moving_img), ("fixed", fixed_img)):
        arr = np.asarray(img.dataobj, dtype=np.float32)
        if arr.ndim == 4 and arr.shape[3] == 1:
            arr = arr[..., 0]
        if arr.ndim != 3 or not np.isfinite(arr).all():
            raise ValueError(f"{name} image must be a finite 3-D volume, got shape {arr.shape}")
        data.append((arr, np.asarray(img.affine, dtype=np.float64)))
    pull = None if init is None else np.linalg.inv(np.asarray(init, dtype=np.float64))
    for level, (res, its) in enumerate(zip(resolutions, iterations)):
        mov, mov_aff = to_grid(data[0][0], data[0][1], res, device)
        fix, fix_aff = to_grid(data[1][0], data[1][1], res, device)
        if pull is None:
            pull = np.eye(4)
            pull[:3, 3] = centre_of_mass(mov, mov_aff) - centre_of_mass(fix, fix_aff)
        scale = 1.0 / (level + 1)
        pull = optimise_affine(
            mov, mov_aff, fix, fix_aff, pull, iterations=its, lr_mm=res / 3,
            lr_linear=0.02 * scale, metric=metric,
        )  # fmt: skip
    return np.linalg.inv(pull)
