"""ManifoldQC: segmentation QC through a learned manifold of good image-segmentation pairs.

After Wang et al. (MICCAI 2020): a small VAE learns only *good* (image, segmentation)
pairs. A pair under QC is projected onto that manifold: its code ``z`` starts at the
encoder's mean and moves by bounded gradient descent (Adam) to minimise the reconstruction
distance between the decoded pair and the input pair; the decoded segmentation at the end
is the *surrogate*, and ``Dice(surrogate, input)`` per structure is the predicted Dice.

Region: the 14 subcortical structures of the contract
(:data:`bids_qc.structures.SUBCORTICAL`). They are the structures a 3-D VAE can model at
low resolution on a CPU (the cortex and white matter need the whole brain at a finer
scale), and the ones ShapeQC and ENIGMA-Shape care about. The crop is :data:`CROP_SHAPE`
voxels of 2 mm (96 x 80 x 80 mm along RAS), centred on the centroid of those structures
in the input segmentation, cut from SegQC's conformed 2 mm box
(:func:`bids_qc.models.segqc.conform`), so any voxel size and orientation works.
Channels: the image and the one-hot segmentation (background + 14 structures).

Plain torch / numpy: no nipype here (the node lives in :mod:`bids_qc.interfaces.manifoldqc`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bids_qc.models.segqc import VOXEL_MM, conform, group_index
from bids_qc.structures import SUBCORTICAL, SUBCORTICAL_NAMES

#: Crop of the model (voxels of :data:`VOXEL_MM` mm, RAS axes): 96 x 80 x 80 mm.
CROP_SHAPE: tuple[int, int, int] = (48, 40, 40)
#: Structures covered, in column order (SegQC's group indices 1..14 are these).
COVERED: tuple[str, ...] = SUBCORTICAL_NAMES
N_STRUCT = len(SUBCORTICAL)
#: Segmentation classes: background (everything else) + the 14 structures.
N_CLASSES = N_STRUCT + 1
#: Default Dice below which a structure is flagged (shared with SegQC).
DEFAULT_THRESHOLD = 0.7
#: Search defaults: bounded number of Adam steps, step size (in units of the training
#: codes' SD per dimension), early stop when the loss improves less than ``tol`` (relative)
#: over ``patience`` steps.
SEARCH_STEPS = 50
SEARCH_LR = 0.1
SEARCH_TOL = 1e-3
SEARCH_PATIENCE = 8


def subcortical_classes(groups: np.ndarray) -> np.ndarray:
    """SegQC group indices -> ManifoldQC classes (0 background, 1..14 the structures)."""
    groups = np.asarray(groups)
    return np.where(groups <= N_STRUCT, groups, 0).astype(np.uint8)


def crop_origin(classes: np.ndarray, shape: tuple[int, int, int] = CROP_SHAPE) -> np.ndarray:
    """Corner (voxel index, may be negative) of the crop centred on the structures' centroid.

    Raises
    ------
    ValueError
        If the segmentation holds none of the 14 subcortical structures.
    """
    mask = np.asarray(classes) > 0
    if not mask.any():
        raise ValueError("the segmentation holds none of the 14 subcortical structures "
                         "(FreeSurfer codes 10-13, 17, 18, 26, 49-54, 58)")  # fmt: skip
    # Centroid from the projections on each axis (cheaper than np.nonzero).
    centre = [float(np.average(np.arange(n), weights=mask.sum(
        axis=tuple(b for b in range(3) if b != a)))) for a, n in enumerate(mask.shape)]
    return np.rint(np.asarray(centre) - (np.asarray(shape) - 1) / 2).astype(int)


def crop(volume: np.ndarray, origin: np.ndarray, shape: tuple[int, int, int] = CROP_SHAPE,
         fill: float = 0) -> np.ndarray:  # fmt: skip
    """``volume[origin : origin + shape]``, padded with ``fill`` where it leaves the volume."""
    out = np.full(shape, fill, dtype=volume.dtype)
    src, dst = [], []
    for o, n, size in zip(origin, shape, volume.shape):
        lo, hi = max(0, int(o)), min(size, int(o) + n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(o), hi - int(o)))
    out[tuple(dst)] = volume[tuple(src)]
    return out


@dataclass
class Prepared:
    """One pair on the model crop.

    Attributes
    ----------
    image : ndarray (CROP_SHAPE) float32
        Intensities scaled as in SegQC (99th percentile inside the segmentation = 1).
    classes : ndarray (CROP_SHAPE) uint8
        0 background, 1..14 the structures of :data:`COVERED`.
    affine : ndarray (4, 4)
        Voxel-to-world matrix of the crop (2 mm, RAS axes).
    """

    image: np.ndarray
    classes: np.ndarray
    affine: np.ndarray


def prepare_from_box(image: np.ndarray, groups: np.ndarray,
                     box_affine: np.ndarray | None = None) -> Prepared:  # fmt: skip
    """The model crop from SegQC's conformed box (image and group indices)."""
    classes = subcortical_classes(groups)
    origin = crop_origin(classes)
    affine = np.eye(4) if box_affine is None else np.asarray(box_affine, dtype=np.float64).copy()
    affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ origin
    return Prepared(crop(np.asarray(image, dtype=np.float32), origin), crop(classes, origin),
                    affine)  # fmt: skip


def preprocess(image: np.ndarray, image_affine: np.ndarray, labels: np.ndarray,
               labels_affine: np.ndarray) -> Prepared:  # fmt: skip
    """The model crop of one image and its FreeSurfer-coded segmentation (any grid).

    Parameters
    ----------
    image : ndarray
        3-D intensity image.
    image_affine : ndarray (4, 4)
        Its voxel-to-world matrix.
    labels : ndarray of int
        3-D FreeSurfer-coded segmentation (its own grid).
    labels_affine : ndarray (4, 4)
        The segmentation's voxel-to-world matrix.
    """
    from bids_qc.models.segqc import box_affine

    img, lab = conform(image, image_affine, labels, labels_affine)
    return prepare_from_box(img, group_index(lab), box_affine(labels, labels_affine))


def to_tensor(image: np.ndarray, classes: np.ndarray) -> torch.Tensor:
    """(1 + N_CLASSES, X, Y, Z) float32: image channel then one-hot classes."""
    out = np.empty((1 + N_CLASSES, *np.shape(classes)), dtype=np.float32)
    out[0] = image
    np.equal(np.asarray(classes)[None],
             np.arange(N_CLASSES, dtype=np.uint8)[:, None, None, None], out=out[1:],
             casting="unsafe")  # fmt: skip
    return torch.from_numpy(out)


#: Negative slope of the network's leaky ReLUs.
SLOPE = 0.2


class ManifoldVAE(nn.Module):
    """3-D convolutional VAE of (image, one-hot segmentation) crops.

    Encoder: three stride-2 convolutions (2^3 patches, then 4^3 kernels; leaky ReLU) and a linear
    layer to the mean and log-variance of ``z``; the decoder mirrors it with transposed
    convolutions and adds a learned per-voxel template. Outputs: the image (sigmoid x 1.5,
    the conformed intensity range) and the segmentation logits.
    """

    def __init__(self, latent: int = 8, widths: tuple[int, int, int] = (8, 16, 32)) -> None:
        super().__init__()
        self.latent = latent
        self.widths = widths
        c0 = 1 + N_CLASSES
        self.enc = nn.Sequential(
            # 2^3 patches in and out at full resolution: 5x cheaper than 4^3 kernels there.
            nn.Conv3d(c0, widths[0], 2, 2), nn.LeakyReLU(SLOPE, inplace=True),
            nn.Conv3d(widths[0], widths[1], 4, 2, 1), nn.LeakyReLU(SLOPE, inplace=True),
            nn.Conv3d(widths[1], widths[2], 4, 2, 1), nn.LeakyReLU(SLOPE, inplace=True),
        )  # fmt: skip
        self.cells = tuple(n // 8 for n in CROP_SHAPE)
        flat = widths[2] * int(np.prod(self.cells))
        self.to_stats = nn.Linear(flat, 2 * latent)
        self.from_z = nn.Linear(latent, flat)
        self.dec = nn.Sequential(
            nn.ConvTranspose3d(widths[2], widths[1], 4, 2, 1), nn.LeakyReLU(SLOPE, inplace=True),
            nn.ConvTranspose3d(widths[1], widths[0], 4, 2, 1), nn.LeakyReLU(SLOPE, inplace=True),
            nn.ConvTranspose3d(widths[0], c0, 2, 2),
        )  # fmt: skip
        # He initialisation keeps the code's spread across inputs of order one (PyTorch's
        # default shrinks it ~100x through the encoder, and a near-constant code is ignored);
        # leaky units cannot all die at once, which collapsed the code of ReLU runs.
        for m in (*self.enc, self.to_stats, self.from_z, *self.dec):
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, SLOPE, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
        # A small last layer: the decoder starts near the template (not at it exactly: zero
        # weights would leave the code without gradient at first, and it would be ignored).
        with torch.no_grad():
            self.dec[-1].weight.mul_(0.1)
        # A per-voxel output bias: the mean image and the log class frequencies of the
        # training crops at start (a probabilistic atlas), so the decoder learns deviations.
        self.template = nn.Parameter(torch.zeros(c0, *CROP_SHAPE))
        # Per-dimension SD of the training codes: the search's step unit (set after training).
        self.register_buffer("z_scale", torch.ones(latent))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``z`` for a batch (B, 1 + N_CLASSES, *CROP_SHAPE)."""
        if x.ndim != 5 or tuple(x.shape[1:]) != (1 + N_CLASSES, *CROP_SHAPE):
            raise ValueError(f"ManifoldVAE expects (B, {1 + N_CLASSES}, "
                             f"{', '.join(map(str, CROP_SHAPE))}), got {tuple(x.shape)}")
        stats = self.to_stats(self.enc(x).flatten(1))
        return stats[:, : self.latent], stats[:, self.latent :].clamp(-10, 10)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (B, X, Y, Z) and segmentation logits (B, N_CLASSES, X, Y, Z)."""
        h = F.leaky_relu(self.from_z(z), SLOPE).view(z.shape[0], self.widths[2], *self.cells)
        out = self.dec(h) + self.template
        return torch.sigmoid(out[:, 0]) * 1.5, out[:, 1:]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                 torch.Tensor]:  # fmt: skip
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        image, logits = self.decode(z)
        return image, logits, mu, logvar


#: Weight of the soft-Dice term of the reconstruction distance (per structure, 0..1): the
#: summed cross-entropy alone is dominated by the background and leaves the small
#: structures (accumbens, amygdala) unlearned in a short run.
DICE_WEIGHT = 1000.0


def recon_loss(image: torch.Tensor, logits: torch.Tensor, x: torch.Tensor,
               target: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Per-sample reconstruction distance: cross-entropy + soft Dice + image squared error.

    The segmentation terms are the categorical cross-entropy of the logits against the input
    classes (the multi-class form of the paper's BCE, 3x cheaper on a CPU than BCE over 15
    one-hot channels), summed over voxels, and :data:`DICE_WEIGHT` x the soft-Dice loss
    summed over the 14 structures; the image term is the squared error summed over voxels
    (the per-voxel mean would let any KL weight dominate). ``target`` (B, X, Y, Z) class
    indices may be given to save recomputing them from the one-hot channels of ``x``.
    """
    if target is None:
        target = x[:, 1:].argmax(1)
    ce = F.cross_entropy(logits, target, reduction="none").flatten(1).sum(1)
    prob = torch.softmax(logits, 1)[:, 1:].flatten(2)
    onehot = x[:, 2:].flatten(2)
    inter = (prob * onehot).sum(2)
    soft_dice = (2 * inter + 1) / (prob.sum(2) + onehot.sum(2) + 1)
    mse = ((image - x[:, 0]) ** 2).flatten(1).sum(1)
    return ce + DICE_WEIGHT * (1 - soft_dice).sum(1) + mse


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(N(mu, sigma^2) || N(0, I)), summed over the latent dimensions."""
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)


def dice_per_structure(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dice of classes 1..14 between two (B, X, Y, Z) class maps; NaN where absent from both."""
    out = torch.empty((a.shape[0], N_STRUCT), dtype=torch.float64)
    for k in range(1, N_CLASSES):
        ma, mb = a == k, b == k
        inter = (ma & mb).flatten(1).sum(1).double()
        total = (ma.flatten(1).sum(1) + mb.flatten(1).sum(1)).double()
        out[:, k - 1] = torch.where(total > 0, 2 * inter / total.clamp(min=1),
                                    torch.full_like(total, float("nan")))  # fmt: skip
    return out


def to_dice(raw: np.ndarray) -> np.ndarray:
    """Dice(surrogate, input) with NaN (absent from both) as 0.

    Every brain has all 14 structures, so a structure missing from the input is wrong
    however the surrogate agrees.
    """
    raw = np.asarray(raw, dtype=np.float64)
    return np.where(np.isfinite(raw), raw, 0.0)


@dataclass
class SearchResult:
    """Outcome of the latent search for a batch.

    Attributes
    ----------
    dice : ndarray (B, 14)
        Dice(surrogate, input) per covered structure (NaN where absent from both).
    surrogate : ndarray (B, *CROP_SHAPE) uint8
        Surrogate segmentation classes on the crop.
    loss_start, loss_end : ndarray (B,)
        Reconstruction distance at the encoder's code and at the end of the search.
    steps : int
        Adam steps taken.
    """

    dice: np.ndarray
    surrogate: np.ndarray
    loss_start: np.ndarray
    loss_end: np.ndarray
    steps: int


def search(net: ManifoldVAE, x: torch.Tensor, steps: int = SEARCH_STEPS, lr: float = SEARCH_LR,
           tol: float = SEARCH_TOL, patience: int = SEARCH_PATIENCE) -> SearchResult:  # fmt: skip
    """Project a batch of pairs onto the learned manifold (bounded latent search).

    ``z = mu + z_scale * u`` with ``u`` from 0, optimised by Adam on the summed
    reconstruction distance; the best code seen per pair is kept. Stops after ``steps``
    or when the batch loss improved less than ``tol`` (relative) over ``patience`` steps.
    """
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        mu, _ = net.encode(x)
    target = x[:, 1:].argmax(1)
    u = torch.zeros_like(mu, requires_grad=True)
    opt = torch.optim.Adam([u], lr=lr)
    best_loss = torch.full((x.shape[0],), float("inf"))
    best_u = u.detach().clone()
    loss_start = None
    history: list[float] = []
    taken = 0
    for taken in range(steps + 1):
        image, logits = net.decode(mu + net.z_scale * u)
        loss = recon_loss(image, logits, x, target)
        per = loss.detach()
        if loss_start is None:
            loss_start = per.clone()
        better = per < best_loss
        best_loss = torch.where(better, per, best_loss)
        best_u[better] = u.detach()[better]
        history.append(float(per.sum()))
        if taken == steps or (len(history) > patience and history[-patience - 1] - history[-1]
                              < tol * abs(history[-patience - 1])):  # fmt: skip
            break
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        _, logits = net.decode(mu + net.z_scale * best_u)
        surrogate = logits.argmax(1)
        dice = dice_per_structure(surrogate, target)
    return SearchResult(dice.numpy(), surrogate.to(torch.uint8).numpy(),
                        loss_start.numpy(), best_loss.numpy(), taken)  # fmt: skip


_CACHE: dict[str, ManifoldVAE] = {}
_LOCK = threading.Lock()


def build(state: dict[str, Any], device: str = "cpu") -> ManifoldVAE:
    """A network from a state dict (fp16 storage computes in fp32); latent size from it."""
    latent = int(state["z_scale"].shape[0])
    net = ManifoldVAE(latent=latent)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net.to(device).eval()


def load_model(device: str = "cpu", state: dict[str, Any] | None = None) -> ManifoldVAE:
    """The trained VAE on ``device``, loaded once per process and device (sha256-checked)."""
    if state is not None:
        return build(state, device)
    with _LOCK:
        if device not in _CACHE:
            from bids_qc.models.registry import get_spec, load_state_dict

            _CACHE[device] = build(load_state_dict(get_spec("manifoldqc")), device)
        return _CACHE[device]


def predict(pairs: list[Prepared], device: str = "cpu", model: ManifoldVAE | None = None,
            steps: int = SEARCH_STEPS) -> SearchResult:  # fmt: skip
    """Predicted Dice of the covered structures for prepared pairs (one batch).

    Returns
    -------
    SearchResult
        ``dice`` columns in :data:`COVERED` order.
    """
    if not pairs:
        raise ValueError("predict needs at least one prepared pair")
    net = model if model is not None else load_model(device)
    x = torch.stack([to_tensor(p.image, p.classes) for p in pairs]).to(device)
    return search(net, x, steps=steps)


def surrogate_to_labels(surrogate: np.ndarray, crop_affine: np.ndarray, shape: tuple[int, ...],
                        affine: np.ndarray) -> np.ndarray:  # fmt: skip
    """Surrogate classes on the crop -> FreeSurfer codes on another grid (nearest)."""
    from bids_qc.transforms import resample_to_grid

    codes = np.zeros(N_CLASSES, dtype=np.int16)
    codes[1:] = [s.codes[0] for s in SUBCORTICAL]
    on_grid = resample_to_grid(np.asarray(surrogate, dtype=np.int32), crop_affine,
                               tuple(shape[:3]), affine, 0)  # fmt: skip
    return codes[np.clip(on_grid, 0, N_STRUCT).astype(np.int64)]


__all__ = ["COVERED", "CROP_SHAPE", "DEFAULT_THRESHOLD", "ManifoldVAE", "Prepared", "VOXEL_MM",
           "load_model", "predict", "prepare_from_box", "preprocess", "search",
           "surrogate_to_labels", "to_dice"]  # fmt: skip
