"""Shapes for ShapeQC: PASS and FAIL structures from real label maps, as cached feature maps.

A *crop* is the box around the 14 subcortical structures of a SynthSeg label map (plus a
12 mm margin, so leaks and merges find their neighbours), given mild realistic variation by
the engine's spatial augmentation (:func:`bids_qc.synth.deform.random_affine`: rotation
<= 10 deg, scale 0.9-1.1; :func:`bids_qc.synth.deform.random_deformation`: smooth
diffeomorphism, velocity std <= 3 mm), resampled on a 1 mm grid (nearest neighbour).
Every crop gives 14 undamaged shapes (PASS) and a few damaged copies, one structure each,
from :func:`bids_qc.synth.shape_damage.damage_shape` with a family of the allowed list and a
severity uniform on [0.05, 1]; the truth of a damaged shape is the engine's measurement
(FAIL when Dice < 0.95 or Hausdorff >= 3 voxels), so mild damage stays PASS.

Each crop's shapes are one ``.npz`` in the cache (thickness maps, log area density and log
area, never the LogJac channels, which depend on the template built afterwards from the
training PASS shapes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bids_qc.models.shape_features import (
    ShapeTemplate,
    build_template,
    logjac_maps,
    structure_features,
)
from bids_qc.models.shapeqc import kind_of
from bids_qc.structures import SUBCORTICAL, SUBCORTICAL_KINDS, SUBCORTICAL_NAMES
from bids_qc.synth.deform import random_affine, random_deformation
from bids_qc.synth.grids import as_volume, grid_coords, normaliser, sample
from bids_qc.synth.labelmaps import load_label_map
from bids_qc.synth.shape_damage import damage_shape

#: Margin around the subcortical structures in a crop, voxels (1 mm maps).
MARGIN = 12
_CODES = np.array([c for s in SUBCORTICAL for c in s.codes])


def subcortical_crop(labels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box around the 14 structures (+ margin) and its affine."""
    idx = np.argwhere(np.isin(labels, _CODES))
    lo = np.maximum(idx.min(axis=0) - MARGIN, 0)
    hi = np.minimum(idx.max(axis=0) + MARGIN + 1, labels.shape)
    crop = np.ascontiguousarray(labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return crop, out


def deform_crop(crop: np.ndarray, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The crop under a random mild affine and smooth deformation (nearest neighbour)."""
    shape = tuple(int(n) for n in crop.shape)
    vox = np.linalg.norm(affine[:3, :3], axis=0)
    centre = affine @ np.append((np.asarray(shape) - 1) / 2, 1.0)
    world, _ = random_affine(centre[:3], rng, max_translation=0.0)
    deformation, _ = random_deformation(shape, vox, rng)
    norm = normaliser(shape)
    second = torch.as_tensor((norm @ np.linalg.inv(affine) @ world @ affine
                              @ np.linalg.inv(norm))[:3], dtype=torch.float32)
    grid = deformation.displace(grid_coords(shape, norm))
    grid = grid @ second[:, :3].T + second[:, 3]
    out = sample(as_volume(crop), grid, "nearest")[0, 0]
    return np.rint(out.numpy()).astype(np.int32)


def shape_record(labels: np.ndarray, affine: np.ndarray, structure: str,
                 template: ShapeTemplate) -> dict[str, Any]:
    """The cached part of one shape's features (raises ``ValueError`` if it cannot mesh)."""
    f = structure_features(labels, affine, structure, template)
    return {"d": f.maps[:2].astype(np.float16), "log_density": f.log_density.astype(np.float16),
            "log_area": f.log_area, "scalars": f.scalars}


def reference_axes(maps: list[int]) -> dict[str, np.ndarray]:
    """Per structure kind, the mean principal axis of the undamaged training maps."""
    from bids_qc.models.shape_features import principal_frame

    axes: dict[str, list[np.ndarray]] = {k: [] for k in SUBCORTICAL_KINDS}
    for m in maps:
        lm = load_label_map(m, "train")
        for s in SUBCORTICAL:
            vox = np.argwhere(s.mask(lm.labels)).astype(float) @ lm.affine[:3, :3].T
            if s.name.startswith("left_"):
                vox[:, 0] = -vox[:, 0]
            axes[kind_of(s.name)].append(principal_frame(vox, None)[1][0])
    out = {}
    for k, a in axes.items():
        arr = np.asarray(a)
        first = arr[0] * np.sign(arr[0][np.argmax(np.abs(arr[0]))])
        arr = arr * np.sign(arr @ first)[:, None]
        mean = arr.mean(axis=0)
        out[k] = mean / np.linalg.norm(mean)
    return out


def build_crop(labels: np.ndarray, affine: np.ndarray, seed: int, n_damaged: int,
               families: tuple[str, ...], axes: dict[str, np.ndarray],
               deform: bool = True) -> dict[str, np.ndarray]:
    """All shapes of one crop: 14 undamaged, ``n_damaged`` damaged (arrays, one row each)."""
    rng = np.random.default_rng(seed)
    crop, caff = subcortical_crop(labels, affine)
    if deform:
        crop = deform_crop(crop, caff, rng)
    templates = {k: ShapeTemplate(np.zeros((1, 1)), 0.0, a) for k, a in axes.items()}
    rows: list[dict[str, Any]] = []

    def add(lab: np.ndarray, structure: str, **meta: Any) -> None:
        try:
            rec = shape_record(lab, caff, structure, templates[kind_of(structure)])
        except ValueError:
            return  # a structure too small to mesh (e.g. truncated away): not a case
        rows.append({**rec, "structure": structure, **meta})

    for s in SUBCORTICAL_NAMES:
        add(crop, s, fail=False, family="none", severity=0.0, dice=1.0, hausdorff=0.0)
    for j in range(n_damaged):
        structure = SUBCORTICAL_NAMES[int(rng.integers(len(SUBCORTICAL_NAMES)))]
        family = families[int(rng.integers(len(families)))]
        severity = round(float(rng.uniform(0.05, 1.0)), 4)
        case = damage_shape(crop, structure, family, seed * 100 + j, severity)
        add(case.labels, structure, fail=case.fail, family=family, severity=severity,
            dice=case.dice, hausdorff=min(case.hausdorff, 1e3))
    return {
        "d": np.stack([r["d"] for r in rows]),
        "log_density": np.stack([r["log_density"] for r in rows]),
        "log_area": np.array([r["log_area"] for r in rows]),
        "scalars": np.stack([r["scalars"] for r in rows]),
        "structure": np.array([r["structure"] for r in rows]),
        "fail": np.array([r["fail"] for r in rows]),
        "family": np.array([r["family"] for r in rows]),
        "severity": np.array([r["severity"] for r in rows]),
        "dice": np.array([r["dice"] for r in rows]),
        "hausdorff": np.array([r["hausdorff"] for r in rows]),
    }


def build_split(cache: Path, name: str, maps: list[int], split: str, crops_per_map: int,
                n_damaged: int, families: tuple[str, ...], axes: dict[str, np.ndarray],
                seed: int, log: Callable[[str], None] = print) -> list[Path]:
    """Build (or find cached) every crop of a split; one ``.npz`` per crop (resumable)."""
    def loader(m: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        def load() -> tuple[np.ndarray, np.ndarray]:
            lm = load_label_map(m, split)  # type: ignore[arg-type]
            return lm.labels, lm.affine
        return load

    sources = [(f"map{m:02d}", m, loader(m)) for m in maps]
    return build_crops(cache / name, name, sources, crops_per_map, n_damaged, families, axes,
                       seed, deform_first=split != "train", log=log)  # fmt: skip


def build_crops(out_dir: Path, name: str,
                sources: list[tuple[str, int, Callable[[], tuple[np.ndarray, np.ndarray]]]],
                crops: int, n_damaged: int, families: tuple[str, ...],
                axes: dict[str, np.ndarray], seed: int, deform_first: bool = False,
                log: Callable[[str], None] = print) -> list[Path]:  # fmt: skip
    """Crops of label maps given as ``(key, number, loader)``: ``crops`` per map, the first
    undeformed unless ``deform_first``; a map is loaded only when a crop is missing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for key, number, load in sources:
        labels = None
        for c in range(crops):
            path = out_dir / f"{key}_crop{c:02d}.npz"
            files.append(path)
            if path.is_file():
                continue
            if labels is None:
                labels, affine = load()
            t0 = time.time()
            arrays = build_crop(labels, affine, seed * 10_000 + number * 100 + c, n_damaged,
                                families, axes, deform=c > 0 or deform_first)  # fmt: skip
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, **arrays)
            os.replace(tmp, path)
            log(f"{name} {path.name}: {len(arrays['fail'])} shapes, "
                f"{int(arrays['fail'].sum())} FAIL, {time.time() - t0:.1f}s")
    return files


def real_sources(data_dir: Path, part: str
                 ) -> list[tuple[str, int, Callable[[], tuple[np.ndarray, np.ndarray]]]]:
    """The real segmentations of one part of ``splits.tsv`` (FreeSurfer codes; exclusions
    left out) as :func:`build_crops` sources."""
    from bids_qc.training.real_sets import good_images, segmentation

    images = [im for im in good_images(data_dir, part) if im.seg is not None]  # type: ignore[arg-type]

    def loader(im: Any) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        return lambda: segmentation(im)  # type: ignore[return-value]

    return [(f"{im.dataset}_{im.item}", k, loader(im)) for k, im in enumerate(images)]


def load_split(files: list[Path]) -> dict[str, np.ndarray]:
    """Concatenate cached crops."""
    parts = [dict(np.load(f)) for f in files]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def make_templates(data: dict[str, np.ndarray], axes: dict[str, np.ndarray]
                   ) -> dict[str, ShapeTemplate]:
    """Per kind, the template of the undamaged shapes of a split."""
    out = {}
    for k in SUBCORTICAL_KINDS:
        sel = np.array([kind_of(s) == k for s in data["structure"]]) & (data["family"] == "none")
        t = build_template(list(data["log_density"][sel].astype(np.float64)),
                           list(data["log_area"][sel]), [axes[k]])
        out[k] = t
    return out


def assemble_maps(data: dict[str, np.ndarray], templates: dict[str, ShapeTemplate]
                  ) -> np.ndarray:
    """The 4-channel maps ``(N, 4, 128, 128)`` float32 of cached shapes."""
    out = np.empty((len(data["fail"]), 4, *data["d"].shape[2:]), dtype=np.float32)
    for i, s in enumerate(data["structure"]):
        lj, lj_norm = logjac_maps(data["log_density"][i].astype(np.float64),
                                  float(data["log_area"][i]), templates[kind_of(str(s))])
        out[i, :2] = data["d"][i]
        out[i, 2], out[i, 3] = lj, lj_norm
    return out


#: Training maps (the templates' and the model's); maps 15-16 are the evaluation split that
#: sets the thresholds, maps 17-20 are test only.
TRAIN_SHAPE_MAPS: tuple[int, ...] = tuple(range(1, 15))
EVAL_SHAPE_MAPS: tuple[int, ...] = (15, 16)


def cached_axes(cache: Path, log: Callable[[str], None] = print) -> dict[str, np.ndarray]:
    """The reference axes of the training maps, computed once and kept in the cache."""
    import json

    path = cache / "axes.json"
    if path.is_file():
        return {k: np.asarray(v) for k, v in json.loads(path.read_text()).items()}
    t0 = time.time()
    axes = reference_axes(list(TRAIN_SHAPE_MAPS))
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: v.tolist() for k, v in axes.items()}))
    log(f"reference axes from maps {TRAIN_SHAPE_MAPS}: {time.time() - t0:.0f}s")
    return axes
