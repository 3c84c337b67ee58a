"""VINN: a compact voxel-size independent 2.5D segmentation network (FastSurferVINN-style).

Method (Henschel, Kuegler, Reuter, NeuroImage 2022), in a compact form:

* one 2.5D encoder-decoder per view (axial, coronal, sagittal); its input is a stack of
  :data:`N_SLICES` neighbouring slices as channels, at the image's native voxel size;
* the *resolution normalisation* (:class:`ResNorm`): after the input block, the feature maps
  are resampled bilinearly by ``scale = input voxel size / internal resolution`` (so the
  encoder-decoder always sees :data:`INTERNAL_MM` features), and before the output block
  they are resampled back onto the input grid; at scale 1 it is the identity. In training
  the scale is jittered (Gaussian, sigma :data:`SCALE_SIGMA`);
* views are aggregated by a weighted average of their probabilities (sagittal weighted
  lower, :data:`VIEW_WEIGHTS`); the sagittal network predicts hemisphere-merged labels
  (left and right look alike in a sagittal slice) and its probability of a merged class
  goes to both hemispheres' classes, whose side the other two views decide.

The image is reoriented to RAS by axis permutation and flips only (no resampling), so the
segmentation lands on the T1w's native grid voxel for voxel. Labels are FreeSurfer codes
(:data:`CLASS_CODES`): the 14 subcortical structures of the contract plus what an
``aseg``-style segmentation needs for the tissue groups.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: FreeSurfer codes of the full-label classes (index = class; 0 = background).
CLASS_CODES: tuple[int, ...] = (
    0, 2, 3, 4, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28,
    41, 42, 43, 47, 49, 50, 51, 52, 53, 54, 58, 60,
)  # fmt: skip
#: Source codes folded into a class code (cerebellar white matter into the cerebellum,
#: inferior lateral ventricles into the lateral ventricles, WM hypointensities and the
#: corpus callosum into the white matter: the contract's groups hold them together).
CODE_ALIASES: dict[int, int] = {7: 8, 46: 47, 5: 4, 44: 43, 77: 2, 251: 2, 252: 2, 253: 2,
                                254: 2, 255: 2}  # fmt: skip
#: Left code -> right code of the lateralised classes.
LEFT_RIGHT: dict[int, int] = {2: 41, 3: 42, 4: 43, 8: 47, 10: 49, 11: 50, 12: 51, 13: 52,
                              17: 53, 18: 54, 26: 58, 28: 60}  # fmt: skip
#: Sagittal (hemisphere-merged) classes, as the left (or midline) code of each.
SAGITTAL_CODES: tuple[int, ...] = tuple(c for c in CLASS_CODES if c not in LEFT_RIGHT.values())
#: Full class index -> sagittal class index.
FULL_TO_SAGITTAL: np.ndarray = np.array([
    SAGITTAL_CODES.index({v: k for k, v in LEFT_RIGHT.items()}.get(c, c)) for c in CLASS_CODES
])  # fmt: skip
N_CLASSES = len(CLASS_CODES)
N_SAGITTAL = len(SAGITTAL_CODES)

VIEWS: tuple[str, ...] = ("sagittal", "coronal", "axial")
#: RAS axis each view slices along.
VIEW_AXIS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
#: Weights of the view aggregation (FastSurfer weights sagittal 0.2 against 0.4 and 0.4).
VIEW_WEIGHTS: dict[str, float] = {"sagittal": 0.2, "coronal": 0.4, "axial": 0.4}
#: Neighbouring slices stacked as input channels (the centre one and 2 each side).
N_SLICES = 5
#: Internal resolution of the encoder-decoder, mm.
INTERNAL_MM = 1.0
#: Standard deviation of the training-time jitter of the scale factor.
SCALE_SIGMA = 0.1
#: Channels of the input block and of the encoder levels (the last one the bottom, at 1/8
#: of the internal resolution: 1.0.0 had 2 poolings, too little context to tell cerebellum
#: from cortex or brainstem from thalamus).
WIDTHS: tuple[int, ...] = (12, 16, 24, 32, 48)


def code_to_class(labels: np.ndarray) -> np.ndarray:
    """FreeSurfer codes -> full class indices (aliases folded, unknown codes -> background)."""
    lut = np.zeros(max(max(CLASS_CODES), max(CODE_ALIASES), int(labels.max(initial=0))) + 1,
                   dtype=np.int64)  # fmt: skip
    for i, c in enumerate(CLASS_CODES):
        lut[c] = i
    for src, dst in CODE_ALIASES.items():
        lut[src] = CLASS_CODES.index(dst)
    lab = np.asarray(labels)
    return lut[np.clip(lab, 0, lut.size - 1)] * (lab >= 0)


def class_to_code(classes: np.ndarray) -> np.ndarray:
    """Full class indices -> FreeSurfer codes (int16)."""
    return np.asarray(CLASS_CODES, dtype=np.int16)[np.asarray(classes)]


def normalise_intensity(image: np.ndarray) -> np.ndarray:
    """Robust scaling to about ``[0, 1]``: 0.5th percentile to 0, foreground 99.5th to 1.

    The foreground is every voxel above the image mean, so the scale does not depend on how
    much background the field of view holds. Training and inference use this same function.
    """
    x = np.asarray(image, dtype=np.float32)
    lo = float(np.percentile(x, 0.5))
    fg = x[x > x.mean()]
    hi = float(np.percentile(fg, 99.5)) if fg.size else float(x.max())
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0.0, 1.5).astype(np.float32)


class ResNorm(nn.Module):
    """VINN's network-integrated resolution normalisation.

    Resamples ``(N, C, H, W)`` feature maps bilinearly by a scale factor per in-plane axis,
    or onto a given size (the way back). Scale 1 (and no size) is the identity.
    """

    def forward(
        self,
        x: torch.Tensor,
        scale: Sequence[float] | None = None,
        size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Resample ``x`` by ``scale`` ``(sh, sw)``, or onto ``size`` ``(H, W)``."""
        if size is None:
            if scale is None:
                raise ValueError("ResNorm needs a scale or a size")
            sh, sw = float(scale[0]), float(scale[1])
            if sh <= 0 or sw <= 0:
                raise ValueError(f"scale factors must be positive, got {tuple(scale)}")
            size = (max(1, round(x.shape[-2] * sh)), max(1, round(x.shape[-1] * sw)))
        size = (int(size[0]), int(size[1]))
        if size == tuple(x.shape[-2:]):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout),
    )  # fmt: skip


class VINNView(nn.Module):
    """One view's network: input block, ResNorm, U-Net-style encoder-decoder, ResNorm, output.

    Parameters
    ----------
    n_classes : int
        Output classes.
    widths : tuple of int
        Channels of the input block, then of each encoder level (the last is the bottom);
        ``len(widths) - 2`` poolings.
    """

    def __init__(self, n_classes: int, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        if len(widths) < 3:
            raise ValueError(f"VINNView needs at least 3 widths, got {widths}")
        self.inp = _block(N_SLICES, widths[0])
        self.resnorm = ResNorm()
        self.enc = nn.ModuleList(_block(a, b) for a, b in zip(widths[:-1], widths[1:]))
        # Decoder level i joins the upsampled level i + 1 with encoder level i's input.
        self.dec = nn.ModuleList(_block(widths[i + 1] + widths[i], widths[i])
                                 for i in range(len(widths) - 1))  # fmt: skip
        self.out = nn.Sequential(_block(2 * widths[0], widths[0]),
                                 nn.Conv2d(widths[0], n_classes, 1))  # fmt: skip
        self.stride = 2 ** (len(widths) - 2)

    def forward(self, x: torch.Tensor, scale: Sequence[float] = (1.0, 1.0)) -> torch.Tensor:
        """Logits ``(N, classes, H, W)`` for slices ``(N, N_SLICES, H, W)`` of voxel size
        ``scale * INTERNAL_MM`` (``scale`` per in-plane axis)."""
        skip_native = self.inp(x)
        f = self.resnorm(skip_native, scale=scale)
        size = f.shape[-2:]
        # Pad to a multiple of the poolings' total stride (replicate: no false edges).
        ph, pw = (-size[0]) % self.stride, (-size[1]) % self.stride
        f = F.pad(f, (0, pw, 0, ph), mode="replicate") if ph or pw else f
        levels = [f]
        for i, block in enumerate(self.enc):
            levels.append(block(levels[-1] if i == 0 else F.max_pool2d(levels[-1], 2)))
        d = levels[-1]
        for i in reversed(range(len(self.dec))):
            up = F.interpolate(d, size=levels[i].shape[-2:])
            d = self.dec[i](torch.cat([up, levels[i]], 1))
        back = self.resnorm(d[..., : size[0], : size[1]], size=skip_native.shape[-2:])
        return self.out(torch.cat([back, skip_native], 1))


class VINN(nn.Module):
    """The three views' networks (sagittal with hemisphere-merged classes)."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        self.views = nn.ModuleDict({
            v: VINNView(N_SAGITTAL if v == "sagittal" else N_CLASSES, widths) for v in VIEWS
        })  # fmt: skip


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient an array to RAS by permutation and flips; returns (data, voxel sizes, ornt).

    ``ornt`` is the array's own orientation (nibabel), for :func:`from_ras`.
    """
    src = nib.orientations.io_orientation(affine)
    to = nib.orientations.ornt_transform(src, nib.orientations.axcodes2ornt("RAS"))
    vox = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    out = nib.orientations.apply_orientation(data, to)
    # Source axis i becomes RAS axis src[i, 0]: voxel sizes follow the axes.
    ras_vox = np.empty(3)
    ras_vox[src[:, 0].astype(int)] = vox
    return np.ascontiguousarray(out), ras_vox, src


def from_ras(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_ras` for an array on the RAS grid."""
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    return np.ascontiguousarray(nib.orientations.apply_orientation(data, back))


def slice_stack(volume: torch.Tensor, axis: int) -> torch.Tensor:
    """All slices along ``axis`` of a ``(X, Y, Z)`` volume with their neighbours as channels.

    Returns ``(n_slices, N_SLICES, A, B)``; edges are replicated.
    """
    v = torch.movedim(volume, axis, 0)
    r = N_SLICES // 2
    padded = torch.cat([v[:1].expand(r, -1, -1), v, v[-1:].expand(r, -1, -1)], 0)
    return torch.stack([padded[i : i + v.shape[0]] for i in range(N_SLICES)], 1)


def view_scale(vox: np.ndarray, axis: int) -> tuple[float, float]:
    """In-plane scale factors (input voxel size / internal resolution) of a view."""
    inplane = [float(vox[a]) for a in range(3) if a != axis]
    return inplane[0] / INTERNAL_MM, inplane[1] / INTERNAL_MM


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        return tuple(slice(0, n) for n in mask.shape)
    return tuple(slice(max(0, int(i.min()) - margin), min(n, int(i.max()) + margin + 1))
                 for i, n in zip(idx, mask.shape))  # fmt: skip


@torch.no_grad()
def predict_probs(
    model: VINN,
    image: np.ndarray,
    vox: Sequence[float],
    *,
    batch: int = 16,
    device: str = "cpu",
) -> np.ndarray:
    """View-aggregated class probabilities ``(N_CLASSES, X, Y, Z)`` (float16) of a RAS image.

    ``image`` is already intensity-normalised (:func:`normalise_intensity`); ``vox`` its
    voxel sizes in mm along the RAS axes.
    """
    model.eval()
    vol = torch.as_tensor(image, dtype=torch.float32, device=device)
    vox = np.asarray(vox, dtype=np.float64)
    full_of_sag = torch.as_tensor(FULL_TO_SAGITTAL, device=device)
    # float16 sums: 29 classes of a 0.7 mm head stay near 1 GB.
    total = torch.zeros((N_CLASSES, *vol.shape), dtype=torch.float16, device=device)
    for view in VIEWS:
        axis = VIEW_AXIS[view]
        net = model.views[view]
        stack = slice_stack(vol, axis)
        scale = view_scale(vox, axis)
        out = torch.movedim(total, axis + 1, 1)  # a view of total, slices second
        for start in range(0, stack.shape[0], batch):
            p = torch.softmax(net(stack[start : start + batch], scale).float(), 1)
            if view == "sagittal":
                p = p[:, full_of_sag]  # a merged class's probability to both hemispheres
            out[:, start : start + batch] += (VIEW_WEIGHTS[view] * p.transpose(0, 1)).half()
    return total.cpu().numpy()


def segment_array(
    model: VINN,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    device: str = "cpu",
    batch: int = 16,
) -> np.ndarray:
    """FreeSurfer-coded segmentation (int16) of a T1w array on its own grid.

    The image is reoriented to RAS (no resampling), cropped to the box of voxels above a
    low intensity (plus a margin) to save time, segmented, and put back.
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"VINN segments 3-D images, got shape {data.shape}")
    ras, vox, ornt = to_ras(data, affine)
    norm = normalise_intensity(ras)
    box = _bbox(norm > 0.05, margin=max(3, int(round(8 / float(vox.min())))))
    probs = predict_probs(model, norm[box], vox, batch=batch, device=device)
    out = np.zeros(ras.shape, dtype=np.int16)
    out[box] = class_to_code(probs.argmax(0))
    return from_ras(out, ornt)


_CACHE: dict[str, VINN] = {}
_LOCK = threading.Lock()


def model_from_file(path: str | Path) -> VINN:
    """A VINN in eval mode with the weights of a file (candidate weights of a sitting, for
    evaluation; the app uses :func:`load_model`, whose weights the registry checks)."""
    model = VINN()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def load_model(device: str = "cpu") -> VINN:
    """The shipped model on ``device`` (weights checked against the registry's sha256), in
    eval mode, loaded once per process and device as the other models are: a run of many
    images reads and hashes the weights once."""
    with _LOCK:
        if device not in _CACHE:
            from .registry import get_spec, load_state_dict

            model = VINN()
            state = load_state_dict(get_spec("vinn"))
            model.load_state_dict({k: v.float() for k, v in state.items()})
            _CACHE[device] = model.to(device).eval()
        return _CACHE[device]


def segment_image(path_or_img: str | nib.spatialimages.SpatialImage, *, device: str = "cpu",
                  model: VINN | None = None) -> nib.Nifti1Image:  # fmt: skip
    """Segment a T1w file or image; returns a FreeSurfer-coded NIfTI on its native grid."""
    img = nib.load(str(path_or_img)) if not hasattr(path_or_img, "affine") else path_or_img
    model = model or load_model(device)
    labels = segment_array(model, np.asarray(img.dataobj, dtype=np.float32), img.affine,
                           device=device)  # fmt: skip
    out = nib.Nifti1Image(labels, img.affine)
    out.set_data_dtype(np.int16)
    out.header.set_xyzt_units("mm")
    return out
