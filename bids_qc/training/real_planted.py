"""Failures planted in real images, with exact truth, and the figures of the checks on them.

Used by the real-data gate (:mod:`bids_qc.training.real_gate`) and by the tests that replay
a record's named cases: every case carries what replays it (RegQC: the image and the
planted affine; SegQC: the image, structure, family, target Dice and tie-breaking seed;
ShapeQC: the image, structure, family and severity), so a planted case is a pure function
of its record entry and the real set it was planted in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .realdata import Part

#: Planted misregistrations per good image with a registration, per part.
PLANTS_PER_IMAGE = 4
#: RMSE range of the planted misregistrations (mm) and the failure cut-off.
PLANT_RANGE = (0.0, 30.0)
FAIL_MM = 10.0
SEED = 20261207


def template_grid():
    from ..spatial import load_template
    from ..templates_data import get_template
    from .real_sets import SPACE

    return load_template(get_template(SPACE))


def planted_misregistrations(dataset: Path, part: Part, per_image: int = PLANTS_PER_IMAGE,
                             model: Any = None) -> list[dict[str, Any]]:
    """RegQC, ``reg_cc`` and ``reg_mi`` on good registrations with planted errors.

    Each planted case composes the image's registration with an affine drawn to an exact
    Eq. 1 RMSE uniform on :data:`PLANT_RANGE` (on the template grid), resamples the real
    image through the app's resampler and scores it as the app's stages do. The first case
    of every image is its good registration (RMSE 0, ``good`` true), so candidate weights
    (``model``, a :class:`~bids_qc.models.regqc.RegQCNet`; default the shipped one) can be
    judged on good and planted cases alike.
    """
    from ..synth.misregistration import sample_misregistration

    grid = template_grid()
    rng = np.random.default_rng(SEED + (0 if part == "calibration" else 1))
    cases = []
    for xfm in sorted(dataset.glob("derivatives/fmriprep/sub-*/anat/*_xfm.txt")):
        stem = xfm.name.split("_from-")[0]
        for k in range(per_image + 1):
            if k == 0:
                A, rmse = np.eye(4), 0.0
            else:
                A, rmse = sample_misregistration(rng, PLANT_RANGE, grid.data.shape,
                                                 grid.affine)
            case = {"image": stem, "good": k == 0, "rmse_mm": rmse, "A": A.tolist()}
            cases.append({**case, **replay_misregistration(dataset, case, model, grid)})
    return cases


def replay_misregistration(dataset: Path, case: dict[str, Any], model: Any = None,
                           grid: Any = None) -> dict[str, float]:
    """RegQC, ``reg_cc`` and ``reg_mi`` on one planted case (its image and affine ``A``).

    The image is resampled through its registration composed with ``A`` by the app's
    resampler, ``J(x) = I(A x)`` in template space, and scored as the app's stages do.
    """
    import nibabel as nib

    from ..models.classic import registration_metrics
    from ..models.regqc import predict, preprocess
    from ..transforms import read_itk_affine, resample_to_grid

    grid = grid if grid is not None else template_grid()
    stem = case["image"]
    anat = dataset / "derivatives" / "fmriprep" / stem.split("_")[0] / "anat"
    xfm = next(anat.glob(f"{stem}_from-*_xfm.txt"))
    img = nib.load(str(dataset / stem.split("_")[0] / "anat" / f"{stem}_T1w.nii.gz"))
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    A = np.asarray(case["A"], dtype=float)
    moved = resample_to_grid(data, img.affine, grid.data.shape, grid.affine, order=1,
                             world_transform=np.linalg.inv(A) @ read_itk_affine(xfm))
    x = preprocess(moved, grid)[None]
    return {"regqc_rmse_mm": float(predict(x, model=model)[0]),
            **registration_metrics(moved, grid.data, grid.mask)}


def seg_pairs(dataset: Path, pattern: str = "sub-*"):
    """``(stem, image, image affine, labels, labels affine)`` of each image with a segmentation
    (whose stem matches ``pattern``)."""
    import nibabel as nib

    segs = dataset.glob(f"derivatives/fmriprep/sub-*/anat/{pattern}_desc-aseg_dseg.nii.gz")
    for aseg in sorted(segs):
        stem = aseg.name.split("_desc-")[0]
        img = nib.load(str(aseg.parent / f"{stem}_desc-preproc_T1w.nii.gz"))
        seg = nib.load(str(aseg))
        yield (stem, np.asanyarray(img.dataobj, dtype=np.float32), img.affine,
               np.asarray(seg.dataobj).astype(np.int32), seg.affine)


def planted_segmentations(dataset: Path, part: Part, per_image: int = PLANTS_PER_IMAGE,
                          segqc_model: Any = None, manifold: bool = True
                          ) -> list[dict[str, Any]]:  # fmt: skip
    """SegQC and ManifoldQC on real segmentations with one structure damaged to an exact Dice.

    The damaged structure's Dice is uniform on :data:`~bids_qc.training.real_damage.DICE_RANGE`
    (erosion into, or growth over, its neighbours); a case is a failure below
    :data:`~bids_qc.training.real_damage.FAIL_DICE`. Each model's image verdict follows the
    app's rule: flagged when any structure's predicted Dice is below 0.7. Every case also
    keeps the true and predicted Dice of all 20 structures (the neighbours of a damaged
    structure change too), for the mean-Dice and per-structure errors.

    Parameters
    ----------
    segqc_model : SegQCNet, optional
        Candidate SegQC weights (default: the shipped ones).
    manifold : bool
        Also score ManifoldQC (the slow part: a latent search per case).
    """
    from ..structures import SUBCORTICAL
    from .real_damage import DICE_RANGE

    rng = np.random.default_rng(SEED + 10 + (0 if part == "calibration" else 1))
    cases = []
    for stem, image, image_affine, labels, labels_affine in seg_pairs(dataset):
        for _ in range(per_image):
            case = {"image": stem, "structure": str(rng.choice([s.name for s in SUBCORTICAL])),
                    "family": str(rng.choice(["erode", "dilate"])),
                    "target": float(rng.uniform(*DICE_RANGE)),
                    "seed": int(rng.integers(2**31))}  # fmt: skip
            pair = (image, image_affine, labels, labels_affine)
            cases.append({**case, **score_planted_segmentation(pair, case, segqc_model,
                                                               manifold)})
    return cases


def score_planted_segmentation(pair: tuple[np.ndarray, ...], case: dict[str, Any],
                               segqc_model: Any = None, manifold: bool = True
                               ) -> dict[str, Any]:  # fmt: skip
    """Plant one case (structure, family, target Dice, tie-breaking seed) into a real
    ``(image, image affine, labels, labels affine)`` pair and score it."""
    from ..models import manifoldqc, segqc
    from ..structures import STRUCTURE_NAMES, SUBCORTICAL
    from ..synth.metrics import structure_dice
    from .real_damage import plant_dice

    image, image_affine, labels, labels_affine = pair
    structure = case["structure"]
    planted = plant_dice(labels, structure, case["family"], case["target"],
                         np.random.default_rng(case["seed"]))  # fmt: skip
    x = segqc.preprocess(image, image_affine, planted.labels, labels_affine)
    seg_dice = segqc.predict(x[None], model=segqc_model)[0]
    true = list(structure_dice(labels, planted.labels).values())
    out = {"dice": planted.dice,
           "true_all": [None if np.isnan(v) else float(v) for v in true],
           "segqc_all": [float(v) for v in seg_dice],
           "segqc_dice": float(seg_dice[STRUCTURE_NAMES.index(structure)]),
           "segqc_min": float(np.min(seg_dice))}  # fmt: skip
    if manifold:
        prep = manifoldqc.preprocess(image, image_affine, planted.labels, labels_affine)
        man_dice = manifoldqc.to_dice(manifoldqc.predict([prep]).dice[0])
        sub = [s.name for s in SUBCORTICAL]
        out["manifoldqc_dice"] = float(man_dice[sub.index(structure)])
        out["manifoldqc_min"] = float(np.min(man_dice))
    return out


def seg_pair(dataset: Path, stem: str) -> tuple[np.ndarray, ...]:
    """The ``(image, image affine, labels, labels affine)`` of one image of a dataset."""
    return next(pair[1:] for pair in seg_pairs(dataset, stem))


def good_segmentations(dataset: Path, segqc_model: Any = None) -> dict[str, float]:
    """SegQC's lowest predicted Dice on each good real segmentation (image stem to value)."""
    from ..models import segqc

    out = {}
    for stem, image, image_affine, labels, labels_affine in seg_pairs(dataset):
        x = segqc.preprocess(image, image_affine, labels, labels_affine)
        out[stem] = float(np.min(segqc.predict(x[None], model=segqc_model)[0]))
    return out


def good_shapes(dataset: Path, net: Any = None, cuts: dict[str, float] | None = None
                ) -> dict[str, list[str]]:  # fmt: skip
    """The structures ShapeQC flags on each good real segmentation (image stem to names)."""
    from ..models.shapeqc import predict, shipped_model, shipped_thresholds

    net = net if net is not None else shipped_model()
    cuts = cuts if cuts is not None else shipped_thresholds()
    out = {}
    for stem, _, _, labels, labels_affine in seg_pairs(dataset):
        results, _ = predict(net, labels, np.asarray(labels_affine))
        out[stem] = [r.structure for r in results if r.pfail > cuts.get(r.structure, 0.5)]
    return out


def dice_errors(cases: list[dict[str, Any]], model: str = "segqc") -> dict[str, Any]:
    """Mean-Dice MAE and per-structure MAE (over the cases where a structure exists)."""
    from ..structures import STRUCTURE_NAMES

    true = np.array([[np.nan if v is None else v for v in c["true_all"]] for c in cases])
    pred = np.array([c[f"{model}_all"] for c in cases])
    err = np.abs(pred - true)
    per = np.nanmean(err, axis=0)
    worst = int(np.nanargmax(per))
    return {"mean_dice_mae": float(np.mean(np.abs(np.nanmean(pred, 1) - np.nanmean(true, 1)))),
            "structure_mae": float(np.nanmean(err)),
            "worst_structure": STRUCTURE_NAMES[worst],
            "worst_structure_mae": float(per[worst]),
            "per_structure_mae": {n: float(v) for n, v in zip(STRUCTURE_NAMES, per)}}


def planted_shapes(dataset: Path, part: Part, per_image: int = PLANTS_PER_IMAGE,
                   net: Any = None, cuts: dict[str, float] | None = None
                   ) -> list[dict[str, Any]]:  # fmt: skip
    """ShapeQC on real structures damaged by the card's shape families (``displaced`` too).

    Truth is measured as on the card (:func:`bids_qc.synth.shape_damage.damage_shape`); the
    verdict is the damaged structure's P(FAIL) against its shipped threshold (or the
    candidate ``net`` and its thresholds ``cuts``).
    """
    from ..models.shapeqc import predict, shipped_model, shipped_thresholds
    from ..structures import SUBCORTICAL
    from ..synth.shape_damage import SHAPE_FAMILIES, damage_shape

    rng = np.random.default_rng(SEED + 20 + (0 if part == "calibration" else 1))
    net = net if net is not None else shipped_model()
    cuts = cuts if cuts is not None else shipped_thresholds()
    cases = []
    for stem, _, _, labels, labels_affine in seg_pairs(dataset):
        for _ in range(per_image):
            structure = str(rng.choice([s.name for s in SUBCORTICAL]))
            family = str(rng.choice(sorted(SHAPE_FAMILIES)))
            severity = float(rng.uniform(0.0, 1.0))
            case = damage_shape(labels, structure, family, int(rng.integers(1 << 31)),
                                severity)
            results, _ = predict(net, case.labels, np.asarray(labels_affine),
                                 structures=(structure,))
            if not results:
                continue  # the structure vanished (a truncation at full severity)
            cases.append({"image": stem, "structure": structure, "family": family,
                          "severity": severity, "fail": case.fail,
                          "pfail": results[0].pfail, "threshold": cuts.get(structure, 0.5)})
    return cases


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """AUROC of ``scores`` (higher = more likely positive); None with one class."""
    from bids_qc.calibrate import roc_auc

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    return roc_auc(np.asarray(scores), positive)


def planted_figures(cases: list[dict[str, Any]], column: str, threshold: float,
                    higher_fails: bool, error: bool = False) -> dict[str, Any]:
    """AUROC, sensitivity and specificity at ``threshold`` of one check on planted cases
    (and, with ``error``, the mean absolute error of ``column`` against the planted RMSE)."""
    cases = [c for c in cases if not c.get("good")]  # the planted ones only
    values = np.array([c[column] for c in cases], dtype=float)
    truth = np.array([c["rmse_mm"] for c in cases], dtype=float)
    positive = truth > FAIL_MM
    scores = values if higher_fails else -values
    fired = values > threshold if higher_fails else values < threshold
    errors = {"mae_mm": float(np.mean(np.abs(values - truth)))} if error and len(cases) else {}
    return {"n": len(cases), "positives": int(positive.sum()), **errors,
            "auroc": auroc(scores, positive),
            "sensitivity": float(fired[positive].mean()) if positive.any() else None,
            "specificity": float((~fired[~positive]).mean()) if (~positive).any() else None,
            "threshold": threshold, "failure": f"planted misregistration, Eq. 1 RMSE > {FAIL_MM:g}"
            f" mm (RMSE uniform on [{PLANT_RANGE[0]:g}, {PLANT_RANGE[1]:g}] mm)"}


def seg_planted_figures(cases: list[dict[str, Any]], model: str,
                        threshold: float = 0.7) -> dict[str, Any]:
    """AUROC (lowest predicted Dice) and sensitivity of one Dice model on planted damage."""
    from .real_damage import DICE_RANGE, FAIL_DICE

    low = np.array([c[f"{model}_min"] for c in cases])
    positive = np.array([c["dice"] < FAIL_DICE for c in cases])
    fired = low < threshold
    err = np.abs(np.array([c[f"{model}_dice"] - c["dice"] for c in cases]))
    return {"n": len(cases), "positives": int(positive.sum()),
            "auroc": auroc(-low, positive),
            "sensitivity": float(fired[positive].mean()) if positive.any() else None,
            "specificity": float((~fired[~positive]).mean()) if (~positive).any() else None,
            "damaged_structure_mae": float(err.mean()) if len(err) else None,
            **(dice_errors(cases, model) if cases and f"{model}_all" in cases[0] else {}),
            "threshold": threshold,
            "failure": f"one structure eroded/dilated to Dice < {FAIL_DICE:g} (Dice uniform "
                       f"on [{DICE_RANGE[0]:g}, {DICE_RANGE[1]:g}])"}


def shape_planted_figures(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """AUROC of P(FAIL) and sensitivity at the shipped thresholds on planted shape damage."""
    pfail = np.array([c["pfail"] for c in cases])
    positive = np.array([c["fail"] for c in cases])
    fired = pfail > np.array([c["threshold"] for c in cases])
    return {"n": len(cases), "positives": int(positive.sum()),
            "auroc": auroc(pfail, positive),
            "sensitivity": float(fired[positive].mean()) if positive.any() else None,
            "specificity": float((~fired[~positive]).mean()) if (~positive).any() else None,
            "threshold": "shipped per-structure thresholds",
            "failure": "one structure damaged by a ShapeQC card family (displaced included), "
                       "FAIL measured as on the card"}


#: Planted test cases named in a record, replayed by the tests with the shipped weights.
NAMED_CASES = 10


def named_cases(cases: list[dict[str, Any]], model: str) -> dict[str, Any]:
    """Ten planted cases spread over the part, with what replays them and their error.

    RegQC's cases carry their image and planted affine; SegQC's their image, structure,
    family, target Dice and tie-breaking seed. ``mae`` is RegQC's mean absolute RMSE
    error (mm) or SegQC's mean per-structure Dice error over the ten.
    """
    planted = [c for c in cases if not c.get("good")]
    picks = [planted[int(i)] for i in np.linspace(0, len(planted) - 1, NAMED_CASES)]
    if model == "regqc":
        keep = ("image", "A", "rmse_mm", "regqc_rmse_mm")
        mae = float(np.mean([abs(c["regqc_rmse_mm"] - c["rmse_mm"]) for c in picks]))
    else:
        keep = ("image", "structure", "family", "target", "seed", "dice", "true_all",
                f"{model}_all")  # fmt: skip
        mae = dice_errors(picks, model)["structure_mae"]
    return {"cases": [{k: c[k] for k in keep} for c in picks], "mae": mae}
