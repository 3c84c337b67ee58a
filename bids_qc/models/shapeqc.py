"""ShapeQC: P(FAIL) of each subcortical structure's shape from its 4-channel spherical map.

One small 2D ResNet is shared by the seven structure kinds (left structures are mirrored
into the right's frame by :mod:`bids_qc.models.shape_features`); the kind enters as a
learned embedding added to the pooled features, so rare failures of one kind teach the
others. Grad-CAM on the last residual block says where on the map (and, through every
vertex's ``(theta, phi)``, where on the mesh) the model sees failure.

The weights file holds the network, the per-channel input scaling and the seven structure
templates (:class:`bids_qc.models.shape_features.ShapeTemplate`), so features and model
always travel together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bids_qc.models.shape_features import (
    GRID,
    SCALARS,
    ShapeFeatures,
    ShapeTemplate,
    structure_features,
)
from bids_qc.structures import SUBCORTICAL_KINDS, SUBCORTICAL_NAMES

N_CHANNELS = 4


def kind_of(structure: str) -> str:
    """``left_hippocampus`` -> ``hippocampus``."""
    kind = structure.removeprefix("left_").removeprefix("right_")
    if kind not in SUBCORTICAL_KINDS:
        raise ValueError(f"{structure!r} is not one of the 14 subcortical structures: "
                         f"{', '.join(SUBCORTICAL_NAMES)}")
    return kind


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class ShapeQCNet(nn.Module):
    """A small ResNet on ``(B, 4, 128, 128)`` maps plus a structure-kind index -> logit."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.register_buffer("channel_mean", torch.zeros(N_CHANNELS))
        self.register_buffer("channel_std", torch.ones(N_CHANNELS))
        self.register_buffer("template_log_density", torch.zeros(len(SUBCORTICAL_KINDS), GRID,
                                                                 GRID))
        self.register_buffer("template_log_area", torch.zeros(len(SUBCORTICAL_KINDS)))
        self.register_buffer("template_axis", torch.zeros(len(SUBCORTICAL_KINDS), 3))
        # Whole-shape scalars are standardised per structure kind (good training shapes).
        self.register_buffer("scalar_mean", torch.zeros(len(SUBCORTICAL_KINDS), len(SCALARS)))
        self.register_buffer("scalar_std", torch.ones(len(SUBCORTICAL_KINDS), len(SCALARS)))
        w = width
        self.stem = nn.Sequential(nn.Conv2d(N_CHANNELS, w, 5, 2, 2, bias=False),
                                  nn.BatchNorm2d(w), nn.ReLU())  # 64
        self.blocks = nn.Sequential(_Block(w, w, 2), _Block(w, 2 * w, 2),  # 32, 16
                                    _Block(2 * w, 4 * w, 2))  # 8
        self.embed = nn.Embedding(len(SUBCORTICAL_KINDS), 4 * w)
        self.scalar_fc = nn.Linear(len(SCALARS), 4 * w)
        self.head = nn.Linear(4 * w, 1)

    def normalise(self, maps: torch.Tensor) -> torch.Tensor:
        return (maps - self.channel_mean.view(1, -1, 1, 1)) / self.channel_std.view(1, -1, 1, 1)

    def features(self, maps: torch.Tensor) -> torch.Tensor:
        """The last block's activations ``(B, 4w, 8, 8)`` (Grad-CAM's layer)."""
        return self.blocks(self.stem(self.normalise(maps)))

    def classify(self, feats: torch.Tensor, kind: torch.Tensor, scalars: torch.Tensor
                 ) -> torch.Tensor:
        z = (scalars - self.scalar_mean[kind]) / self.scalar_std[kind]
        pooled = feats.mean(dim=(2, 3))
        return self.head(F.relu(pooled + self.embed(kind) + self.scalar_fc(z.clamp(-20, 20))))[
            :, 0]

    def forward(self, maps: torch.Tensor, kind: torch.Tensor, scalars: torch.Tensor
                ) -> torch.Tensor:
        return self.classify(self.features(maps), kind, scalars)

    def template(self, kind: str) -> ShapeTemplate:
        """The stored template of a structure kind."""
        k = SUBCORTICAL_KINDS.index(kind)
        return ShapeTemplate(self.template_log_density[k].double().numpy(),
                             float(self.template_log_area[k]),
                             self.template_axis[k].double().numpy())


def kind_index(structures: list[str]) -> torch.Tensor:
    """Kind indices of structure names, as a long tensor."""
    return torch.as_tensor([SUBCORTICAL_KINDS.index(kind_of(s)) for s in structures])


def load_model(state: dict[str, Any]) -> ShapeQCNet:
    """A float32 eval-mode network from a (possibly fp16) state dict."""
    width = int(state["stem.0.weight"].shape[0])
    net = ShapeQCNet(width)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net.eval()


def grad_cam(net: ShapeQCNet, maps: torch.Tensor, kind: torch.Tensor, scalars: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and Grad-CAM heat maps ``(B, 128, 128)`` in ``[0, 1]`` (last residual block).

    The heat map is ``relu(sum_c alpha_c A_c)`` with ``alpha_c`` the spatial mean of the
    logit's gradient with respect to channel ``c`` of the activations ``A``, upsampled
    bilinearly to the map and divided by its maximum (zero when nothing points to FAIL).
    """
    with torch.enable_grad():
        feats = net.features(maps).detach().requires_grad_(True)
        logits = net.classify(feats, kind, scalars)
        (grads,) = torch.autograd.grad(logits.sum(), feats)
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((alpha * feats).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=(GRID, GRID), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    return logits.detach(), cam / peak


@dataclass
class StructureResult:
    """ShapeQC's output for one structure."""

    structure: str
    pfail: float
    heat: np.ndarray  # (GRID, GRID)
    features: ShapeFeatures
    vertex_heat: np.ndarray  # (N,)


def _crop_to_structures(labels: np.ndarray, affine: np.ndarray, structures: tuple[str, ...]
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The box around the structures (2 voxels margin) and its affine: every later mask and
    voxel scan works on it instead of the whole volume (same world coordinates)."""
    from bids_qc.structures import get_structure

    codes = [c for s in structures for c in get_structure(s).codes]
    if labels.size == 0 or labels.min() < 0:
        return labels, affine
    lut = np.zeros(int(max(labels.max(), max(codes))) + 1, dtype=bool)
    lut[codes] = True  # a lookup table: far faster than np.isin on a 256^3 volume
    inside = lut[labels]
    hit = [np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != ax)))
           for ax in range(3)]
    if any(h.size == 0 for h in hit):
        return labels, affine
    lo = [max(int(h[0]) - 2, 0) for h in hit]
    hi = [min(int(h[-1]) + 3, n) for h, n in zip(hit, labels.shape)]
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], out


def predict(net: ShapeQCNet, labels: np.ndarray, affine: np.ndarray,
            structures: tuple[str, ...] = SUBCORTICAL_NAMES
            ) -> tuple[list[StructureResult], dict[str, str]]:
    """P(FAIL), Grad-CAM and features of each structure present in a label volume.

    Returns the results and, per structure left out, the reason (absent or too small).
    """
    feats, skipped = [], {}
    labels, affine = _crop_to_structures(labels, affine, structures)
    for s in structures:
        try:
            feats.append((s, structure_features(labels, affine, s, net.template(kind_of(s)))))
        except ValueError as exc:
            skipped[s] = str(exc)
    if not feats:
        return [], skipped
    maps = torch.as_tensor(np.stack([f.maps for _, f in feats]))
    scalars = torch.as_tensor(np.stack([f.scalars for _, f in feats]), dtype=torch.float32)
    logits, cams = grad_cam(net, maps, kind_index([s for s, _ in feats]), scalars)
    out = []
    for (s, f), logit, cam in zip(feats, logits.tolist(), cams.numpy()):
        pfail = 1.0 / (1.0 + math.exp(-logit)) if logit > -60 else 0.0
        out.append(StructureResult(s, pfail, cam, f, f.vertex_values(cam)))
    return out, skipped


#: Files that ship with the weights (sha256 in the registry).
THRESHOLDS_FILE = "shapeqc_thresholds.json"
CALIBRATION_FILE = "shapeqc_calibration.json"
#: Threshold of a structure the shipped file has none for (not calibrated).
FALLBACK_THRESHOLD = 0.5


@lru_cache(maxsize=1)
def shipped_model() -> ShapeQCNet:
    """The installed network (sha256-checked), loaded once per process."""
    from bids_qc.models.registry import get_spec, load_state_dict

    return load_model(load_state_dict(get_spec("shapeqc")))


def shipped_thresholds() -> dict[str, float]:
    """Threshold on P(FAIL) per structure from the shipped thresholds file."""
    from bids_qc.models.registry import get_spec, load_extra_json

    return thresholds_from(load_extra_json(get_spec("shapeqc"), THRESHOLDS_FILE))


def thresholds_from(doc: dict[str, Any]) -> dict[str, float]:
    """Threshold on P(FAIL) per structure from a thresholds document (the fallback for a
    structure it has none for)."""
    out = dict.fromkeys(SUBCORTICAL_NAMES, FALLBACK_THRESHOLD)
    for flag, entry in doc["checks"].items():
        out[flag.removeprefix("shapeqc_flag_")] = float(entry["threshold"])
    return out


def thresholds_for_recall(recall: float) -> dict[str, float]:
    """Per structure, the ENIGMA threshold for an F-recall target, from the shipped
    calibration data (scores and truth of the evaluation split).

    Raises
    ------
    ValueError
        If ``recall`` is not in ``(0, 1]``.
    """
    from bids_qc.calibrate import enigma_threshold
    from bids_qc.models.registry import get_spec, load_extra_json

    if not 0 < recall <= 1:
        raise ValueError(f"--shapeqc-recall must lie in (0, 1], got {recall}")
    doc = load_extra_json(get_spec("shapeqc"), CALIBRATION_FILE)
    out = {}
    for s in SUBCORTICAL_NAMES:
        entry = doc["structures"].get(s) or {}
        scores = np.asarray(entry.get("scores", []), dtype=float)
        bad = np.asarray(entry.get("fail", []), dtype=bool)
        out[s] = (enigma_threshold(scores, bad, recall) if bad.any() and not bad.all()
                  else FALLBACK_THRESHOLD)
    return out
