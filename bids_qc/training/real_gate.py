"""The real-data gate: each model's figures on good and misregistered real images.

``python -m bids_qc.training.real_gate --sets DIR`` (DIR holds the ``calibration`` and
``test`` datasets of :mod:`bids_qc.training.real_sets`):

1. runs the app on both datasets as a user would (``bids_qc DIR/<part> ... participant
   --models <all>``), so every verdict comes from the app's own flag rules;
2. fits the ``reg_cc``/``reg_mi`` thresholds at 95% specificity on the good
   **calibration** images (their 5th percentile: lower is worse);
3. plants misregistrations with exact Eq. 1 RMSE uniform on [0, 30] mm (positive above
   10 mm) into the good images' registrations, and scores RegQC, ``reg_cc`` and ``reg_mi``;
4. writes ``bids_qc/models/cards/realdata/<check>.json`` per model and for the classical
   baselines: per-image false-flag rates with Wilson 95% intervals, coverage, AUROC and
   sensitivity at the shipped threshold, computed on the **test** part for the weights that
   ship (their sha256 is recorded), and the gate's decision (:mod:`bids_qc.models.gate`).

A good image on which a model that could run (its inputs are there) gives no verdict counts
as flagged; images without a model's inputs are outside its coverage and not counted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..models.gate import GATE, gate_decision, wilson
from .realdata import Part

#: Planted misregistrations per good image with a registration, per part.
PLANTS_PER_IMAGE = 4
#: RMSE range of the planted misregistrations (mm) and the failure cut-off.
PLANT_RANGE = (0.0, 30.0)
FAIL_MM = 10.0
SEED = 20261207


def run_app(dataset: Path, out: Path, models: list[str], nprocs: int = 2) -> None:
    """``bids_qc dataset out participant --models ...`` in a subprocess (a user's run)."""
    cmd = [sys.executable, "-m", "bids_qc", str(dataset), str(out), "participant",
           "--models", *models, "--nprocs", str(nprocs),
           "-w", str(out.parent / (out.name + "_work"))]
    done = subprocess.run(cmd, capture_output=True, text=True)
    # 1: some images failed, which the figures count; but a run that wrote nothing is broken
    if done.returncode not in (0, 1) or not read_results(out):
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")


def read_results(out: Path) -> dict[str, dict[str, Any]]:
    """``bids_name -> participant JSON`` of an output folder."""
    found = {}
    for path in sorted(out.glob("sub-*/anat/*_T1w.json")) or sorted(out.rglob("sub-*_T1w.json")):
        result = json.loads(path.read_text())
        found[result["bids_name"]] = result
    return found


def verdicts(results: dict[str, dict[str, Any]], model: str) -> dict[str, int | None]:
    """``bids_name -> 1 (flagged) / 0 (passed) / None (no verdict)`` of one model's checks,
    for the images where the model could run (its inputs were there)."""
    from ..reports.checks import evaluate

    out: dict[str, int | None] = {}
    for name, result in results.items():
        skipped = [s for s in result.get("skipped") or [] if s.get("model") == model
                   or s.get("stage") == model]
        outcomes = [o for o in evaluate(result) if o.spec.model == model]
        flags = [o.flag for o in outcomes if o.flag is not None]
        if flags:
            out[name] = int(any(flags))
        elif skipped and all(_missing_input(s) for s in skipped):
            continue  # outside the model's coverage: its inputs are not in the dataset
        else:
            out[name] = None
    return out


def _missing_input(skip: dict[str, Any]) -> bool:
    # The runner's skip for a row that lacks an input the model needs (bids_qc.runner).
    return "input in the derivatives" in str(skip.get("reason", ""))


def false_flags(v: dict[str, int | None]) -> dict[str, Any]:
    """Per-image false-flag figures of one model's verdicts on good images."""
    n = len(v)
    flagged = sum(1 for x in v.values() if x != 0)
    no_verdict = sum(1 for x in v.values() if x is None)
    lo, hi = wilson(flagged, n)
    return {"n": n, "flagged": flagged, "rate": flagged / n if n else None,
            "wilson95": [lo, hi], "no_verdict": no_verdict,
            "coverage": (n - no_verdict) / n if n else None,
            "flagged_images": sorted(k for k, x in v.items() if x != 0)}


def outlier_rate(dataset: Path, out: Path) -> dict[str, Any]:
    """Per-image rate of dataset-relative outliers (``rz_noutliers`` > 0) on good images.

    Runs the group level on the participant outputs, as a user would. Advisory figures,
    reported apart from the models' false flags.
    """
    import pandas as pd

    cmd = [sys.executable, "-m", "bids_qc", str(dataset), str(out), "group"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    table = pd.read_csv(out / "group_T1w.tsv", sep="\t")
    flags = {name: int(n > 0) for name, n in zip(table["bids_name"],
                                                   table["rz_noutliers"].fillna(0))}
    return false_flags(flags)


def _template_grid():
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

    grid = _template_grid()
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

    grid = grid if grid is not None else _template_grid()
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


def _seg_pairs(dataset: Path, pattern: str = "sub-*"):
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
    for stem, image, image_affine, labels, labels_affine in _seg_pairs(dataset):
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
    return next(pair[1:] for pair in _seg_pairs(dataset, stem))


def good_segmentations(dataset: Path, segqc_model: Any = None) -> dict[str, float]:
    """SegQC's lowest predicted Dice on each good real segmentation (image stem to value)."""
    from ..models import segqc

    out = {}
    for stem, image, image_affine, labels, labels_affine in _seg_pairs(dataset):
        x = segqc.preprocess(image, image_affine, labels, labels_affine)
        out[stem] = float(np.min(segqc.predict(x[None], model=segqc_model)[0]))
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


def planted_shapes(dataset: Path, part: Part, per_image: int = PLANTS_PER_IMAGE
                   ) -> list[dict[str, Any]]:
    """ShapeQC on real structures damaged by the card's shape families (``displaced`` too).

    Truth is measured as on the card (:func:`bids_qc.synth.shape_damage.damage_shape`); the
    verdict is the damaged structure's P(FAIL) against its shipped threshold.
    """
    from ..models.shapeqc import predict, shipped_model, shipped_thresholds
    from ..structures import SUBCORTICAL
    from ..synth.shape_damage import SHAPE_FAMILIES, damage_shape

    rng = np.random.default_rng(SEED + 20 + (0 if part == "calibration" else 1))
    net, cuts = shipped_model(), shipped_thresholds()
    cases = []
    for stem, _, _, labels, labels_affine in _seg_pairs(dataset):
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
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, scores))


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


def fit_baseline_thresholds(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``reg_cc``/``reg_mi`` thresholds at 95% specificity on good calibration images."""
    out = {}
    for name in ("reg_cc", "reg_mi"):
        values = [r["metrics"].get(name) for r in results.values()]
        values = np.array([v for v in values if v is not None], dtype=float)
        out[name] = float(np.round(np.quantile(values, 0.05), 4))
    return out


def regqc_choice(sets: Path, weights: Path, part: Part = "calibration") -> dict[str, Any]:
    """Shipped RegQC against candidate weights on one part (calibration: where the choice
    of which weights ship is made): false flags on the good registrations, and the planted
    misregistrations' figures, both at 10 mm."""
    import torch

    from ..models.regqc import RegQCNet

    state = torch.load(weights, map_location="cpu", weights_only=True)
    candidate = RegQCNet()
    candidate.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in state.items()})
    candidate.eval()
    out = {}
    for label, model in (("shipped", None), ("candidate", candidate)):
        cases = planted_misregistrations(sets / part, part, model=model)
        good = {c["image"]: int(c["regqc_rmse_mm"] > FAIL_MM) for c in cases if c["good"]}
        errors = [abs(c["regqc_rmse_mm"] - c["rmse_mm"]) for c in cases]
        out[label] = {"good": false_flags(good),
                      "planted": planted_figures(cases, "regqc_rmse_mm", FAIL_MM, True),
                      "mae_mm": float(np.mean(errors))}
    return out


def segqc_choice(sets: Path, weights: Path, part: Part = "calibration") -> dict[str, Any]:
    """Shipped SegQC against candidate weights on one part (calibration: where the choice
    of which weights ship is made): false flags on the good real segmentations and the
    figures of the planted single-structure damage, at the shipped threshold (0.7)."""
    import torch

    from ..models.segqc import SegQCNet

    state = torch.load(weights, map_location="cpu", weights_only=True)
    candidate = SegQCNet()
    candidate.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in state.items()})
    candidate.eval()
    out = {}
    for label, model in (("shipped", None), ("candidate", candidate)):
        good = good_segmentations(sets / part, model)
        cases = planted_segmentations(sets / part, part, segqc_model=model, manifold=False)
        out[label] = {"good": false_flags({k: int(v < 0.7) for k, v in good.items()}),
                      "good_min_dice": good,
                      "planted": seg_planted_figures(cases, "segqc")}
    return out


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


def _cached(sets: Path, kind: str, part: str, key: str, compute) -> list[dict[str, Any]]:
    """Planted cases of one kind and part, computed once per weights (``key``)."""
    import hashlib

    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = sets / f"planted_{kind}_{part}_{digest}.json"
    if path.is_file():
        return json.loads(path.read_text())
    cases = compute()
    path.write_text(json.dumps(cases))
    return cases


def main(argv: list[str] | None = None) -> None:
    """Command line: evaluate every model on the real sets and write the gate files."""
    from ..models.gate import REALDATA_DIR
    from ..models.registry import REGISTRY

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", type=Path, required=True, help="folder of the real_sets datasets")
    p.add_argument("--write", type=Path, default=REALDATA_DIR, help="where the JSONs go")
    p.add_argument("--rerun", action="store_true", help="run the app again on the sets")
    p.add_argument("--regqc-candidate", type=Path, default=None,
                   help="only compare these RegQC weights with the shipped ones on calibration")
    p.add_argument("--segqc-candidate", type=Path, default=None,
                   help="only compare these SegQC weights with the shipped ones on calibration")
    args = p.parse_args(argv)
    if args.regqc_candidate is not None:
        print(json.dumps(regqc_choice(args.sets, args.regqc_candidate), indent=1))
        return
    if args.segqc_candidate is not None:
        print(json.dumps(segqc_choice(args.sets, args.segqc_candidate), indent=1))
        return
    models = [s.name for s in REGISTRY if s.name != "vinn" and s.is_installed()]
    results = {}
    for part in ("calibration", "test"):
        out = args.sets / f"{part}_out"
        if args.rerun or not out.is_dir():
            t0 = time.time()
            run_app(args.sets / part, out, models)
            print(f"{part}: app run in {time.time() - t0:.0f} s")
        results[part] = read_results(out)
    thresholds = fit_baseline_thresholds(results["calibration"])
    parts: tuple[Part, ...] = ("calibration", "test")
    shas = {s.name: s.sha256 for s in REGISTRY}
    # Planted cases hold the models' predictions: cached per weights, so a rerun after
    # a retrain of one model recomputes only that model's cases.
    cases = {part: _cached(args.sets, "misreg", part, shas["regqc"],
                           lambda part=part: planted_misregistrations(args.sets / part, part))
             for part in parts}
    seg_cases = {part: _cached(args.sets, "seg", part, shas["segqc"] + shas["manifoldqc"],
                               lambda part=part: planted_segmentations(args.sets / part, part))
                 for part in parts}
    shape_cases = {part: _cached(args.sets, "shape", part, shas["shapeqc"],
                                 lambda part=part: planted_shapes(args.sets / part, part))
                   for part in parts}
    args.write.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    for spec in REGISTRY:
        if spec.name not in models:
            continue
        entry: dict[str, Any] = {
            "model": spec.name, "version": spec.version, "sha256": spec.sha256,
            "date": stamp, "targets": GATE,
            "good": {part: false_flags(verdicts(results[part], spec.name))
                     for part in ("calibration", "test")}}
        if spec.name == "regqc":
            entry["planted"] = {part: planted_figures(cases[part], "regqc_rmse_mm", FAIL_MM,
                                                      True, error=True) for part in parts}
            entry["named_cases"] = {"test": named_cases(cases["test"], "regqc")}
        elif spec.name in ("segqc", "manifoldqc"):
            entry["planted"] = {part: seg_planted_figures(seg_cases[part], spec.name)
                                for part in parts}
            if spec.name == "segqc":
                entry["named_cases"] = {"test": named_cases(seg_cases["test"], "segqc")}
        elif spec.name == "shapeqc":
            entry["planted"] = {part: shape_planted_figures(shape_cases[part]) for part in parts}
        entry["gate"] = gate_decision(entry)
        (args.write / f"{spec.name}.json").write_text(json.dumps(entry, indent=1) + "\n")
        print(spec.name, json.dumps(entry["gate"]))
    baseline: dict[str, Any] = {"model": "classic", "date": stamp, "thresholds": thresholds,
                                "fitted_on": "good calibration images, 5th percentile "
                                "(95% specificity)", "planted": {}, "good": {}}
    for name in ("reg_cc", "reg_mi"):
        baseline["planted"][name] = {part: planted_figures(cases[part], name, thresholds[name],
                                                           False) for part in cases}
        baseline["good"][name] = {
            part: false_flags({k: int(r["metrics"][name] < thresholds[name])
                               for k, r in results[part].items()
                               if r["metrics"].get(name) is not None}) for part in results}
    baseline["outliers"] = {part: outlier_rate(args.sets / part, args.sets / f"{part}_out")
                            for part in parts}
    baseline["cases"] = {part: cases[part] for part in cases}
    (args.write / "classic.json").write_text(json.dumps(baseline, indent=1) + "\n")
    print("classic thresholds", thresholds)


if __name__ == "__main__":
    main()
