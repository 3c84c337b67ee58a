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
from .real_planted import (
    FAIL_MM,
    good_segmentations,
    good_shapes,
    named_cases,
    planted_figures,
    planted_misregistrations,
    planted_segmentations,
    planted_shapes,
    seg_planted_figures,
    shape_planted_figures,
)
from .realdata import Part


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

    from ..models.segqc import load_model

    candidate = load_model("cpu", torch.load(weights, map_location="cpu", weights_only=True))
    out = {}
    for label, model in (("shipped", None), ("candidate", candidate)):
        good = good_segmentations(sets / part, model)
        cases = planted_segmentations(sets / part, part, segqc_model=model, manifold=False)
        out[label] = {"good": false_flags({k: int(v < 0.7) for k, v in good.items()}),
                      "good_min_dice": good,
                      "planted": seg_planted_figures(cases, "segqc")}
    return out


def shapeqc_choice(sets: Path, folder: Path, part: Part = "calibration") -> dict[str, Any]:
    """Shipped ShapeQC against a candidate sitting's folder (weights ``shapeqc.pt`` and
    ``shapeqc_thresholds.json``) on one part: the good people flagged (any structure above
    its threshold) and the planted shape damage's figures."""
    import torch

    from ..models.shapeqc import THRESHOLDS_FILE, load_model, thresholds_from

    candidate = load_model(torch.load(folder / "shapeqc.pt", map_location="cpu",
                                      weights_only=True))  # fmt: skip
    cuts = thresholds_from(json.loads((folder / THRESHOLDS_FILE).read_text()))
    out = {}
    for label, net, thresholds in (("shipped", None, None), ("candidate", candidate, cuts)):
        flagged = good_shapes(sets / part, net, thresholds)
        cases = planted_shapes(sets / part, part, net=net, cuts=thresholds)
        out[label] = {"good": false_flags({k: int(bool(v)) for k, v in flagged.items()}),
                      "flagged_structures": {k: v for k, v in flagged.items() if v},
                      "planted": shape_planted_figures(cases)}  # fmt: skip
    return out


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
    p.add_argument("--shapeqc-candidate", type=Path, default=None,
                   help="only compare a ShapeQC sitting's folder (weights and thresholds) with "
                        "the shipped ones on calibration")  # fmt: skip
    args = p.parse_args(argv)
    if args.shapeqc_candidate is not None:
        print(json.dumps(shapeqc_choice(args.sets, args.shapeqc_candidate), indent=1))
        return
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
