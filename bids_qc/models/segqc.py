"""SegQC: a 3D residual network that regresses the Dice of each structure of a segmentation.

The network sees the image and the one-hot segmentation of the contract's structure groups
(:data:`bids_qc.structures.STRUCTURES` without ``whole_brain``, plus one channel for every
other non-zero label), both resampled onto a fixed box: :data:`GRID_SHAPE` voxels of
:data:`VOXEL_MM` mm, axes along world RAS, centred on the segmentation's bounding box. Any
input voxel size and orientation therefore works. It outputs, through a sigmoid, the Dice of
each of the 20 structures against the (unknown) true segmentation.

Plain torch / numpy: no nipype here (the node lives in :mod:`bids_qc.interfaces.segqc`).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
from torch import nn

from bids_qc.structures import STRUCTURE_NAMES, STRUCTURES
from bids_qc.transforms import resample_to_grid

#: Voxel size of the model grid, mm.
VOXEL_MM = 2.0
#: Model grid (RAS axes): 160 x 192 x 160 mm, enough for a brain with cerebellum.
GRID_SHAPE: tuple[int, int, int] = (80, 96, 80)
#: The structures whose masks are input channels (``whole_brain`` is their union plus the
#: "other labels" channel, so it gets no channel of its own).
INPUT_STRUCTURES = tuple(s for s in STRUCTURES if not s.all_nonzero)
#: Group index of non-zero labels outside every input structure (CSF, vessels, skull...).
OTHER_GROUP = len(INPUT_STRUCTURES) + 1
#: Input channels: image, one per input structure, "other labels".
IN_CHANNELS = 1 + len(INPUT_STRUCTURES) + 1
#: Outputs: Dice of every structure of the contract, in the public column order.
N_OUTPUTS = len(STRUCTURE_NAMES)
#: Default Dice below which a structure is flagged.
DEFAULT_THRESHOLD = 0.7


def group_index(labels: np.ndarray) -> np.ndarray:
    """FreeSurfer codes -> group index (0 background, 1..19 structures, 20 other labels).

    Parameters
    ----------
    labels : ndarray of int
        FreeSurfer-coded labels (any shape).

    Returns
    -------
    ndarray of uint8
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.size and int(labels.min()) < 0:
        raise ValueError("labels must not hold negative codes")
    top = int(labels.max()) if labels.size else 0
    lut = np.full(max(top, 2999) + 1, OTHER_GROUP, dtype=np.uint8)
    lut[0] = 0
    for g, s in enumerate(INPUT_STRUCTURES, start=1):
        lut[list(s.codes)] = g
        for lo, hi in s.code_ranges:
            lut[lo : hi + 1] = g
    return lut[labels]


def box_affine(labels: np.ndarray, labels_affine: np.ndarray, shift_vox: np.ndarray | None = None,
               shape: tuple[int, int, int] = GRID_SHAPE) -> np.ndarray:  # fmt: skip
    """Voxel-to-world matrix of the model box centred on the structures' bounding box.

    Parameters
    ----------
    labels : ndarray
        FreeSurfer-coded segmentation.
    labels_affine : ndarray (4, 4)
        Its voxel-to-world matrix.
    shift_vox : ndarray (3,), optional
        Offset of the box centre in model voxels (training augmentation).
    shape : tuple of int
        Box shape in voxels.

    Returns
    -------
    ndarray (4, 4)
    """
    groups = group_index(labels)
    mask = (groups > 0) & (groups < OTHER_GROUP)
    if not mask.any():
        raise ValueError("the segmentation holds none of the contract's structures")
    # Extent along each axis from projections (cheaper than np.nonzero on 256^3).
    extent = [np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))
              for a in range(3)]  # fmt: skip
    lo = np.array([e[0] for e in extent], dtype=np.float64)
    hi = np.array([e[-1] for e in extent], dtype=np.float64)
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                        for c in (lo[2], hi[2])])  # fmt: skip
    world = corners @ np.asarray(labels_affine, dtype=np.float64).T
    centre = (world[:, :3].min(axis=0) + world[:, :3].max(axis=0)) / 2
    if shift_vox is not None:
        centre = centre + VOXEL_MM * np.asarray(shift_vox, dtype=np.float64)
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = centre - VOXEL_MM * (np.asarray(shape, dtype=np.float64) - 1) / 2
    return affine


def _check_volume(data: np.ndarray, affine: np.ndarray, name: str) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"{name} must be a 3-D array, got shape {data.shape}")
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-9:
        raise ValueError(f"{name} affine must be a finite, invertible 4x4 matrix")
    return a


def conform(
    image: np.ndarray,
    image_affine: np.ndarray,
    labels: np.ndarray,
    labels_affine: np.ndarray,
    shift_vox: np.ndarray | None = None,
    shape: tuple[int, int, int] = GRID_SHAPE,
) -> tuple[np.ndarray, np.ndarray]:
    """Image (trilinear) and labels (nearest) on the model box.

    Returns
    -------
    image : ndarray of float32
        Intensities scaled by their 99th percentile inside the segmentation, clipped to
        [0, 1.5] (scanner units and synthetic [0, 1] images look alike).
    labels : ndarray of int32
        FreeSurfer codes on the box.
    """
    ia = _check_volume(image, image_affine, "image")
    la = _check_volume(labels, labels_affine, "labels")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    target = box_affine(labels, la, shift_vox, shape)
    img = resample_to_grid(np.asarray(image, dtype=np.float32), ia, shape, target, 1)
    lab = resample_to_grid(labels.astype(np.int32), la, shape, target, 0)
    img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
    inside = img[lab != 0]
    scale = float(np.percentile(inside, 99)) if inside.size else float(img.max())
    if not scale > 0:
        scale = float(img.max()) or 1.0
    img = np.clip(img / scale, 0.0, 1.5).astype(np.float32)
    return img, lab.astype(np.int32)


def to_tensor(image: np.ndarray, groups: np.ndarray) -> torch.Tensor:
    """(C, X, Y, Z) float32 network input from a conformed image and its group indices."""
    groups = np.asarray(groups)
    out = np.empty((IN_CHANNELS, *groups.shape), dtype=np.float32)
    out[0] = image
    # Comparisons written straight into the float buffer: 5x faster than torch's one_hot.
    np.equal(groups[None], np.arange(1, OTHER_GROUP + 1, dtype=groups.dtype)[:, None, None, None],
             out=out[1:], casting="unsafe")  # fmt: skip
    return torch.from_numpy(out)


def preprocess(image: np.ndarray, image_affine: np.ndarray, labels: np.ndarray,
               labels_affine: np.ndarray) -> torch.Tensor:  # fmt: skip
    """The network input of one image and its segmentation.

    Parameters
    ----------
    image : ndarray
        3-D intensity image (any voxel size, any orientation).
    image_affine : ndarray (4, 4)
        Its voxel-to-world matrix.
    labels : ndarray of int
        3-D FreeSurfer-coded segmentation of that image (its own grid).
    labels_affine : ndarray (4, 4)
        The segmentation's voxel-to-world matrix.

    Returns
    -------
    torch.Tensor
        (:data:`IN_CHANNELS`, \\*:data:`GRID_SHAPE`) float32.
    """
    img, lab = conform(image, image_affine, labels, labels_affine)
    return to_tensor(img, group_index(lab))


class _Block(nn.Module):
    """Pre-activation residual block; ``stride`` 2 halves the grid."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm3d(cin)
        self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.skip = (nn.Conv3d(cin, cout, 1, stride, bias=False)
                     if stride != 1 or cin != cout else nn.Identity())  # fmt: skip
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(x))
        out = self.conv1(y)
        out = self.conv2(self.act(self.bn2(out)))
        return out + self.skip(y)


def structure_statistics(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Per-channel statistics of the one-hot input: 10 numbers per channel.

    Log volume, presence, centroid and spread (world RAS, box units) of each group, and
    the mean and SD of the image inside it: what missing, merged, swapped, shifted or
    grown structures change first. ``coords`` is (3, N) voxel coordinates in [-1, 1].
    """
    b = x.shape[0]
    img = x[:, 0].reshape(b, -1)
    onehot = x[:, 1:].reshape(b, x.shape[1] - 1, -1)
    c = coords.unsqueeze(0).expand(b, -1, -1)
    maps = torch.cat([torch.ones_like(img)[:, None], c, c * c, img[:, None], (img * img)[:, None]],
                     dim=1)  # fmt: skip
    sums = torch.bmm(onehot, maps.transpose(1, 2))  # (B, groups, 9)
    vol = sums[..., :1]
    m = sums / vol.clamp(min=1.0)
    spread = (m[..., 4:7] - m[..., 1:4] ** 2).clamp(min=0).sqrt()
    sd = (m[..., 8:9] - m[..., 7:8] ** 2).clamp(min=0).sqrt()
    feats = [torch.log1p(vol) / 8, (vol > 0).float(), m[..., 1:4], spread, m[..., 7:8], sd]
    return torch.cat(feats, dim=-1).flatten(1)


class SegQCNet(nn.Module):
    """Compact 3D ResNet with a statistics branch.

    Trunk: a 2x2x2 patch stem and three strided residual blocks; its head keeps the coarse
    spatial layout (flatten, not global pooling), so a structure in the wrong place shows.
    Beside it, :func:`structure_statistics` of every input group. Both feed a small MLP.
    """

    def __init__(self, widths: tuple[int, ...] = (12, 24, 32, 48), head: int = 256) -> None:
        super().__init__()
        # A 2x2x2 patch stem: most of the cost of a 3D net on CPU is its first layer.
        self.stem = nn.Conv3d(IN_CHANNELS, widths[0], 2, 2, bias=False)
        self.blocks = nn.Sequential(*[_Block(a, b, 2) for a, b in zip(widths, widths[1:])])
        self.reduce = nn.Sequential(
            nn.BatchNorm3d(widths[-1]), nn.ReLU(inplace=True), nn.Conv3d(widths[-1], 16, 1),
            nn.ReLU(inplace=True),
        )  # fmt: skip
        cells = int(np.prod([n // 2 ** len(widths) for n in GRID_SHAPE]))
        n_stats = 10 * (IN_CHANNELS - 1)
        self.stats_norm = nn.BatchNorm1d(n_stats)
        self.fc = nn.Sequential(nn.Linear(16 * cells + n_stats, head), nn.ReLU(inplace=True),
                                nn.Linear(head, N_OUTPUTS))  # fmt: skip
        axes = [torch.linspace(-1, 1, n) for n in GRID_SHAPE]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij")).reshape(3, -1)
        self.register_buffer("coords", grid, persistent=False)  # not shipped: rebuilt here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or tuple(x.shape[1:]) != (IN_CHANNELS, *GRID_SHAPE):
            raise ValueError(
                f"SegQCNet expects (B, {IN_CHANNELS}, {', '.join(map(str, GRID_SHAPE))}), "
                f"got {tuple(x.shape)}"
            )
        trunk = self.reduce(self.blocks(self.stem(x))).flatten(1)
        stats = self.stats_norm(structure_statistics(x, self.coords))
        return torch.sigmoid(self.fc(torch.cat([trunk, stats], dim=1)))


_CACHE: dict[str, SegQCNet] = {}
_LOCK = threading.Lock()


def load_model(device: str = "cpu", state: dict[str, Any] | None = None) -> SegQCNet:
    """The trained network on ``device``, loaded once per process and device.

    Parameters
    ----------
    device : str
        Torch device.
    state : dict, optional
        A state dict to use instead of the shipped weights (not cached).
    """
    if state is None:
        with _LOCK:
            if device not in _CACHE:
                from bids_qc.models.registry import get_spec, load_state_dict

                _CACHE[device] = _build(load_state_dict(get_spec("segqc")), device)
            return _CACHE[device]
    return _build(state, device)


def _build(state: dict[str, Any], device: str) -> SegQCNet:
    net = SegQCNet()
    # Weights ship as fp16; the network computes in fp32.
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net.to(device).eval()


@torch.no_grad()
def predict(batch: torch.Tensor | np.ndarray, device: str = "cpu",
            model: SegQCNet | None = None) -> np.ndarray:  # fmt: skip
    """Dice of the 20 structures for a batch of preprocessed inputs.

    Parameters
    ----------
    batch : Tensor or ndarray
        (B, C, X, Y, Z) from :func:`preprocess` (stacked), or one (C, X, Y, Z) input.
    device : str
        Torch device.
    model : SegQCNet, optional
        A network to use instead of the shipped one.

    Returns
    -------
    ndarray (B, 20)
        Predicted Dice in [0, 1], columns in :data:`bids_qc.structures.STRUCTURE_NAMES` order.
    """
    x = torch.as_tensor(batch, dtype=torch.float32)
    if x.ndim == 4:
        x = x[None]
    net = model if model is not None else load_model(device)
    return net(x.to(device)).float().cpu().numpy().astype(np.float64)
