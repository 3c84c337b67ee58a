"""RegQC: a compact 3-D CNN that predicts the residual misregistration of a T1w to its template.

The target is RegQCNET's registration error (Denis de Senneville et al., 2020, Eq. 1): the mean
over the template's field of view of the norm of the displacement that an affine error causes,
in world mm (called RMSE there and here).

Inputs are two channels on the *model grid*, the template's field of view sampled every
:data:`MODEL_VOXEL_MM` mm (a downsampling by 4 of the 1 mm template): the T1w in template
space and the template. Any input voxel size is conformed to that grid here (box-averaged to
about 4 mm, then trilinear), so a subject given at 0.8, 1.0 or 1.4 mm reaches the network alike.
Both channels are multiplied by the template brain mask and z-scored inside it: fMRIPrep's
template-space T1w is whole-head while the template is a brain, and the mask makes whole-head
and skull-stripped inputs look the same to the network.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..spatial import TemplateGrid
from .registry import ModelSpec, get_spec, load_state_dict

#: Spacing of the model grid, mm.
MODEL_VOXEL_MM = 4.0
#: Inputs are box-averaged to about this spacing before trilinear sampling: anti-aliasing
#: that also makes 1 mm and 2 mm inputs (and trilinear or averaged resamplings) alike.
PREBLUR_MM = 4.0
#: Filters of the encoder levels (24 at the first, doubling).
LEVELS = (24, 48, 96, 192)


class RegQCNet(nn.Module):
    """Encoder of (batch norm, 3x3x3 conv, ReLU, dropout) blocks and three regression layers.

    Parameters
    ----------
    block_dropout : float
        Dropout after each convolutional block.
    head_dropout : float
        Dropout after each hidden regression layer. 0 by default: with 0.5 (tried first),
        the regression shrank towards the mean (slope 0.18 after a 28-minute CPU run);
        the on-the-fly misregistrations already keep the network from memorising.
    """

    def __init__(self, block_dropout: float = 0.1, head_dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 2
        for c_out in LEVELS:
            layers += [
                nn.BatchNorm3d(c_in),
                nn.Conv3d(c_in, c_out, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Dropout3d(block_dropout),
                nn.MaxPool3d(2),
            ]
            c_in = c_out
        # A fixed 3x3x3 map keeps where things are (translations matter) at any grid size.
        layers.append(nn.AdaptiveAvgPool3d(3))
        self.encoder = nn.Sequential(*layers)
        # (intercept mm, slope) applied to the regression's output: fitted by the training
        # recipe on fresh cases of the training anatomies (identity while training).
        self.register_buffer("calibration", torch.tensor([0.0, 1.0]))
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * 27, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(head_dropout),
            nn.Linear(128, 32),
            nn.ReLU(inplace=True),
            nn.Dropout(head_dropout),
            nn.Linear(32, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """RMSE in mm, shape ``(B,)``, from inputs ``(B, 2, X, Y, Z)``."""
        if x.ndim != 5 or x.shape[1] != 2:
            raise ValueError(
                f"RegQCNet needs inputs of shape (B, 2, X, Y, Z), got {tuple(x.shape)}"
            )
        # The network regresses RMSE / 100 (the training range), rescaled here.
        raw = self.head(self.encoder(x))[:, 0] * 100.0
        return self.calibration[0] + self.calibration[1] * raw


def model_grid(template: TemplateGrid) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and voxel-to-world matrix of the model grid of a template (corner voxel kept)."""
    vox = np.linalg.norm(template.affine[:3, :3], axis=0)
    shape = tuple(int(np.floor((n - 1) * v / MODEL_VOXEL_MM)) + 1
                  for n, v in zip(template.data.shape, vox))  # fmt: skip
    affine = np.asarray(template.affine, dtype=np.float64).copy()
    affine[:3, :3] = affine[:3, :3] / vox * MODEL_VOXEL_MM
    return shape, affine  # type: ignore[return-value]


def sampling_grid(
    src_shape: tuple[int, ...], src_affine: np.ndarray, dst_shape: tuple[int, ...],
    dst_affine: np.ndarray, world: np.ndarray | None = None,
) -> torch.Tensor:
    """``grid_sample`` grid (1, X, Y, Z, 3) pulling a source volume onto a destination grid.

    ``world`` (4x4) maps destination world points to the source world points they show
    (``J(x) = I(world @ x)``); None is the identity.
    """
    pull = np.linalg.inv(src_affine) @ (np.eye(4) if world is None else world) @ dst_affine

    def to_norm(shape: tuple[int, ...]) -> np.ndarray:
        # voxel index -> align_corners=True normalised coordinate, axes reversed (z, y, x)
        m = np.zeros((4, 4))
        for row, (axis, n) in enumerate(zip((2, 1, 0), reversed(shape))):
            m[row, axis] = 2.0 / max(n - 1, 1)
            m[row, 3] = -1.0
        m[3, 3] = 1.0
        return m

    theta = to_norm(tuple(src_shape)) @ pull @ np.linalg.inv(to_norm(tuple(dst_shape)))
    theta_t = torch.from_numpy(theta[:3].astype(np.float32))[None]
    return F.affine_grid(theta_t, [1, 1, *(int(n) for n in dst_shape)], align_corners=True)


def _box_average(data: torch.Tensor, affine: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Average blocks of voxels to about :data:`PREBLUR_MM` (integer factors per axis)."""
    vox = np.linalg.norm(affine[:3, :3], axis=0)
    k = [max(1, int(round(PREBLUR_MM / v))) for v in vox]
    if k == [1, 1, 1]:
        return data, affine
    pooled = F.avg_pool3d(data, kernel_size=k, stride=k)
    scale = np.diag([*k, 1.0])
    scale[:3, 3] = [(f - 1) / 2 for f in k]
    return pooled, affine @ scale


def conform(
    data: np.ndarray | torch.Tensor, affine: np.ndarray, shape: tuple[int, ...],
    target_affine: np.ndarray,
) -> torch.Tensor:
    """A volume on the model grid, shape ``(1, 1, X, Y, Z)`` float32 (0 outside its field)."""
    vol = torch.as_tensor(np.asarray(data, dtype=np.float32))[None, None]
    vol, affine = _box_average(vol, np.asarray(affine, dtype=np.float64))
    grid = sampling_grid(tuple(vol.shape[2:]), affine, shape, target_affine)
    return F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def normalise(moving: torch.Tensor, template: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Stack ``(B, 2, ...)``: each channel masked and z-scored inside the template brain mask.

    ``moving`` is ``(B, 1, ...)``; ``template`` and ``mask`` are ``(1, 1, ...)``.
    """
    def zscore(x: torch.Tensor) -> torch.Tensor:
        n = mask.sum()
        mean = (x * mask).sum(dim=(2, 3, 4), keepdim=True) / n
        var = (((x - mean) * mask) ** 2).sum(dim=(2, 3, 4), keepdim=True) / n
        return (x - mean) / (var.sqrt() + 1e-6) * mask

    tmpl = zscore(template).expand(moving.shape[0], -1, -1, -1, -1)
    return torch.cat([zscore(moving), tmpl], dim=1)


_TEMPLATE_CACHE: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def template_channels(template: TemplateGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """The template and its brain mask on the model grid (cached per template object)."""
    key = id(template.data)
    if key not in _TEMPLATE_CACHE:
        shape, affine = model_grid(template)
        tmpl = conform(template.data, template.affine, shape, affine)
        mask = (conform(template.mask.astype(np.float32), template.affine, shape, affine) > 0.5)
        _TEMPLATE_CACHE.clear()  # one template per run: keep memory flat
        _TEMPLATE_CACHE[key] = (tmpl, mask.float())
    return _TEMPLATE_CACHE[key]


def preprocess(
    image_on_template_grid: np.ndarray, template: TemplateGrid, affine: np.ndarray | None = None
) -> torch.Tensor:
    """The network input ``(2, X, Y, Z)`` of one T1w in template space.

    Parameters
    ----------
    image_on_template_grid : ndarray
        3-D T1w resampled into template space (whole-head or skull-stripped).
    template : TemplateGrid
        The template, its brain mask and grid.
    affine : ndarray (4, 4), optional
        Voxel-to-world matrix of the image when it is on another grid of the template's
        world (another voxel size); None means the template's own grid.

    Raises
    ------
    ValueError
        If the image is not 3-D, not finite, or not on the template grid without an affine.
    """
    data = np.asarray(image_on_template_grid)
    if data.ndim != 3:
        raise ValueError(f"RegQC needs a 3-D image, got shape {data.shape}")
    if affine is None:
        if data.shape != template.data.shape:
            raise ValueError(
                f"image of shape {data.shape} is not on the template grid "
                f"{template.data.shape}; pass its affine"
            )
        affine = template.affine
    if not np.isfinite(data).all():
        raise ValueError("RegQC input holds NaN or infinite values")
    tmpl, mask = template_channels(template)
    shape, m_affine = model_grid(template)
    moving = conform(data, np.asarray(affine, dtype=np.float64), shape, m_affine)
    return normalise(moving, tmpl, mask)[0]


_MODELS: dict[str, RegQCNet] = {}


def load_model(device: str = "cpu", spec: ModelSpec | None = None) -> RegQCNet:
    """The trained network on ``device``, loaded once per process (sha256 checked)."""
    if device not in _MODELS:
        spec = spec if spec is not None else get_spec("regqc")
        state = load_state_dict(spec)
        model = RegQCNet()
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in state.items()})  # fmt: skip
        _MODELS[device] = model.to(device).eval()
    return _MODELS[device]


def predict(
    batch: list[np.ndarray] | np.ndarray | torch.Tensor, template: TemplateGrid | None = None,
    device: str = "cpu", model: RegQCNet | None = None,
) -> np.ndarray:
    """Predicted RMSE (mm, clipped at 0) of a batch.

    Parameters
    ----------
    batch : list of ndarray, or tensor
        Images on the template grid (then ``template`` is required), or preprocessed inputs
        ``(B, 2, X, Y, Z)`` as a tensor.
    template : TemplateGrid, optional
        The template the images are in.
    device : str
        torch device.
    model : RegQCNet, optional
        A network to use instead of the shipped one (tests, evaluation).
    """
    if isinstance(batch, torch.Tensor):
        x = batch
    else:
        if template is None:
            raise ValueError("predict needs the template to preprocess raw images")
        x = torch.stack([preprocess(img, template) for img in batch])
    net = model if model is not None else load_model(device)
    with torch.inference_mode():
        out = net(x.to(device, torch.float32))
    return np.clip(out.float().cpu().numpy(), 0.0, None).astype(np.float64)
