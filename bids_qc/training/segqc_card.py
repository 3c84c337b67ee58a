"""Evaluate SegQC on the frozen protocol and write its model card from that run.

Two steps, so the slow part (building the evaluation cases: synthesis, damage) can run
while the network trains:

``python -m bids_qc.training.segqc_card cache --out /tmp/segqc_eval``
    builds the protocol's SegQC cases (:mod:`bids_qc.training.eval_protocol`) in a fixed
    order and stores each case's conformed model input and exact Dice (resumable);
``python -m bids_qc.training.segqc_card card --eval /tmp/segqc_eval --train DIR --weights W``
    predicts every stored case with the weights ``W``, measures the CPU time per image and
    writes ``bids_qc/models/cards/segqc.md`` (and ``results.json`` of every number in the
    evaluation folder) stamped with the weights' sha256. No number of the card is typed by hand;
``python -m bids_qc.training.segqc_card render --results /tmp/segqc_eval/results.json``
    re-renders the card from that saved JSON (after a change of the card's text or licence
    terms), measuring nothing again.

Besides the protocol's sets, ``bert_damage`` applies every damage family (training and
held-out), with a known Dice, to the real FreeSurfer ``aseg`` of ``bert`` (seed 105).
"""

from __future__ import annotations

import argparse
import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bids_qc.models.segqc import conform, group_index
from bids_qc.structures import STRUCTURE_NAMES
from bids_qc.training.card_sections import environment
from bids_qc.training.eval_protocol import (
    HELDOUT_DAMAGE_FAMILIES,
    P_CLEAN,
    CaseSpec,
    build_case,
    case_specs,
)
from bids_qc.training.ledger import write_card
from bids_qc.training.licences import licence_section

#: Protocol test sets used, with how many of their cases (in protocol order) to build.
PROTOCOL_SETS: dict[str, int] = {
    "segqc_synth": 320, "segqc_unseen_damage": 320, "segqc_real_bert": 301,
    "segqc_t2_shift": 40,
}  # fmt: skip
BERT_DAMAGE_SEED = 105
BERT_DAMAGE_CASES = 100
THRESHOLD = 0.7
#: Data the shipped weights were trained (maps 1-16) or evaluated (maps 17-20, bert) on.
# IXI (DLMUSE) trains SegQC since 1.1.0 and is the real-data section's test part.
LICENCE_SOURCES = ("synthseg_label_maps", "freesurfer_bert", "ixi_dlmuse")
TARGETS = {"mae_mean": 0.05, "mae_structure": 0.08, "accuracy": 0.95, "cpu_s": 0.6,
           "gpu_s": 0.04}  # fmt: skip


def model_version() -> str:
    """The registry's SegQC version (the card describes the shipped weights)."""
    from bids_qc.models.registry import get_spec

    return get_spec("segqc").version


def bert_damage_specs(n: int = BERT_DAMAGE_CASES) -> tuple[CaseSpec, ...]:
    """Every damage family on bert's real aseg, severities drawn as in the protocol."""
    from bids_qc.synth.damage import DAMAGE_FAMILIES

    rng = np.random.default_rng(BERT_DAMAGE_SEED)
    families = list(DAMAGE_FAMILIES)
    specs = []
    for i in range(n):
        clean = rng.random() < P_CLEAN
        severity = 0.0 if clean else round(float(rng.uniform(0.05, 1.0)), 4)
        specs.append(CaseSpec("bert_damage", i, "freesurfer:bert", BERT_DAMAGE_SEED * 100_000 + i,
                              None, families[i % len(families)], severity))  # fmt: skip
    return tuple(specs)


@lru_cache(maxsize=1)
def _bert_volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from bids_qc.synth.labelmaps import load_bert

    aseg, norm = load_bert("aseg"), load_bert("norm")
    labels = np.rint(np.asarray(aseg.dataobj)).astype(np.int32)
    return np.asarray(norm.dataobj, dtype=np.float32), np.asarray(aseg.affine), labels


def _bert_damage_case(spec: CaseSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Image, affine, damaged aseg and exact Dice of a ``bert_damage`` case."""
    from bids_qc.synth.damage import damage

    norm, affine, aseg = _bert_volumes()
    case = damage(aseg, spec.failure_family, spec.seed, spec.severity, image=norm)
    return norm, affine, case.labels, case.dice


def _schedule() -> list[CaseSpec]:
    """All cases in build order: the main synthetic set first, then the others interleaved."""
    first = list(case_specs("segqc_synth")[: PROTOCOL_SETS["segqc_synth"]])
    others = [list(case_specs(n)[:k]) for n, k in PROTOCOL_SETS.items() if n != "segqc_synth"]
    others.append(list(bert_damage_specs()))
    for i in range(max(len(o) for o in others)):
        first.extend(o[i] for o in others if i < len(o))
    return first


def build_cache(out: Path, sets: list[str] | None = None) -> None:
    """Build and store every scheduled case not yet stored (resumable), of ``sets`` only
    when given (e.g. the quick real-bert sets first)."""
    for spec in _schedule():
        if sets and spec.test_set not in sets:
            continue
        path = out / spec.test_set / f"{spec.index:04d}.npz"
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        if spec.test_set == "bert_damage":
            image, affine, labels, dice = _bert_damage_case(spec)
        else:
            case = build_case(spec)
            image, affine, labels, dice = case.image, case.affine, case.labels, case.truth["dice"]
        img, lab = conform(image, affine, labels, affine)
        truth = np.array([dice[n] for n in STRUCTURE_NAMES], dtype=np.float64)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, image=img.astype(np.float16), groups=group_index(lab),
                            truth=truth, spec=json.dumps(spec.__dict__))  # fmt: skip
        tmp.replace(path)
        print(f"{time.strftime('%H:%M:%S')} {spec.test_set} {spec.index} "
              f"{spec.failure_family} {time.time() - t0:.1f}s", flush=True)  # fmt: skip


def load_set(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """Stored cases of one set: images, groups, truths, specs (in index order)."""
    files = sorted(folder.glob("[0-9]*.npz"))
    if not files:
        raise ValueError(f"no evaluation cases stored in {folder}")
    imgs, groups, truths, specs = [], [], [], []
    for f in files:
        with np.load(f) as z:
            imgs.append(z["image"])
            groups.append(z["groups"])
            truths.append(z["truth"])
            specs.append(json.loads(str(z["spec"])))
    return np.stack(imgs), np.stack(groups), np.stack(truths), specs


def predict_cached(net: Any, images: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Predictions of the network's standard forward on stored cases, 16 at a time."""
    import torch

    from bids_qc.models.segqc import predict, to_tensor

    out = []
    for s in range(0, len(images), 16):
        batch = torch.stack([to_tensor(images[i].astype(np.float32), groups[i])
                             for i in range(s, min(s + 16, len(images)))])  # fmt: skip
        out.append(predict(batch, model=net))
    return np.concatenate(out)


def metrics(pred: np.ndarray, truth: np.ndarray, thr: float = THRESHOLD) -> dict[str, Any]:
    """MAE/SD per structure and of the mean, Pearson r, detection of ``Dice < thr``."""
    valid = np.isfinite(truth)
    err = np.where(valid, np.abs(pred - np.nan_to_num(truth)), np.nan)
    per = {}
    for j, name in enumerate(STRUCTURE_NAMES):
        e, t, p = err[valid[:, j], j], truth[valid[:, j], j], pred[valid[:, j], j]
        r = float(np.corrcoef(p, t)[0, 1]) if e.size > 2 and t.std() > 0 and p.std() > 0 else None
        per[name] = {"mae": float(e.mean()), "sd": float(e.std()), "r": r,
                     "true_mean": float(t.mean()), "n": int(e.size)}  # fmt: skip
    true_mean = np.nanmean(truth, axis=1)
    pred_mean = np.array([p[v].mean() for p, v in zip(pred, valid)])
    em = np.abs(pred_mean - true_mean)
    const = np.abs(true_mean - true_mean.mean())
    pos, hit = (truth < thr)[valid], (pred < thr)[valid]
    cpos, chit = np.any(valid & (truth < thr), 1), np.any(pred < thr, 1)
    return {
        "n_cases": int(len(truth)),
        "mae_mean": float(em.mean()), "sd_mean": float(em.std()),
        "r_mean": float(np.corrcoef(pred_mean, true_mean)[0, 1]) if true_mean.std() > 0 else None,
        "const_mae_mean": float(const.mean()),
        "mae_structure_avg": float(np.nanmean(err)), "mae_structure_max": max(
            v["mae"] for v in per.values()),
        "r_all": float(np.corrcoef(pred[valid], truth[valid])[0, 1]),
        "per_structure": per,
        "detection": _detect(pos, hit), "detection_case": _detect(cpos, chit),
    }  # fmt: skip


def _detect(pos: np.ndarray, hit: np.ndarray) -> dict[str, Any]:
    tp, tn = int(np.sum(pos & hit)), int(np.sum(~pos & ~hit))
    fp, fn = int(np.sum(~pos & hit)), int(np.sum(pos & ~hit))
    return {"accuracy": (tp + tn) / max(1, pos.size),
            "sensitivity": tp / (tp + fn) if tp + fn else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "positives": tp + fn, "negatives": tn + fp}  # fmt: skip


def cpu_time_per_image(net: Any, repeats: int = 5) -> dict[str, float]:
    """Median CPU wall time (2 threads) of preprocessing + network on bert (256^3, 1 mm)."""
    import torch

    from bids_qc.models.segqc import predict, preprocess
    from bids_qc.synth.labelmaps import load_bert

    torch.set_num_threads(2)
    aseg, norm = load_bert("aseg"), load_bert("norm")
    labels = np.rint(np.asarray(aseg.dataobj)).astype(np.int32)
    image = np.asarray(norm.dataobj, dtype=np.float32)
    pre, net_t = [], []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        x = preprocess(image, norm.affine, labels, aseg.affine)
        t1 = time.perf_counter()
        predict(x, model=net)
        pre.append(t1 - t0)
        net_t.append(time.perf_counter() - t1)
    pre, net_t = pre[1:], net_t[1:]  # the first call warms up
    return {"preprocess_s": float(np.median(pre)), "network_s": float(np.median(net_t)),
            "total_s": float(np.median(np.add(pre, net_t)))}  # fmt: skip


def evaluate(eval_dir: Path, net: Any) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Metrics of every fully built set (and of the held-out families within them), and
    ``[built, planned]`` of each set not fully built: those are not measured (a protocol is
    run in full or not reported)."""
    results: dict[str, Any] = {}
    missing: dict[str, list[int]] = {}
    for name in [*PROTOCOL_SETS, "bert_damage"]:
        folder = eval_dir / name
        planned = PROTOCOL_SETS.get(name, BERT_DAMAGE_CASES)
        built = len(list(folder.glob("[0-9]*.npz"))) if folder.is_dir() else 0
        if built < planned:
            missing[name] = [built, planned]
            continue
        images, groups, truth, specs = load_set(folder)
        pred = predict_cached(net, images, groups)
        res = metrics(pred, truth)
        fams = np.array([s["failure_family"] for s in specs])
        res["families"] = sorted(set(fams.tolist()))
        res["by_family"] = {f: metrics(pred[fams == f], truth[fams == f])
                            for f in res["families"] if np.sum(fams == f) >= 1}  # fmt: skip
        res["protocol_cases"] = planned
        results[name] = res
    return results, missing


def _fmt(x: Any, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _target(value: float | None, goal: float, higher: bool = False) -> dict[str, Any]:
    """One row of the targets table: the measured figure, its goal and whether it is met."""
    met = value is not None and (value >= goal if higher else value <= goal)
    status = "not measured" if value is None else "met" if met else "missed"
    return {"measured": _fmt(value), "goal": goal, "status": status}


def _figures(m: dict[str, Any]) -> dict[str, Any]:
    """The figures of one :func:`metrics` result as the card prints them."""
    keys = ("mae_mean", "sd_mean", "const_mae_mean", "r_mean", "mae_structure_avg",
            "mae_structure_max", "r_all")  # fmt: skip
    rates = ("accuracy", "sensitivity", "specificity")
    return {"n_cases": m["n_cases"], **{k: _fmt(m[k]) for k in keys},
            "structures": {k: _fmt(m["detection"][k]) for k in rates},
            "cases": {k: _fmt(m["detection_case"][k]) for k in rates}}  # fmt: skip


def _training(train: dict[str, Any]) -> dict[str, Any]:
    """The training summary with the figures the card prints formatted."""
    start, real = train.get("start_step", 0), train.get("real_people")
    return {**train, "first_map": train["maps"][0], "last_map": train["maps"][-1],
            "real_people": real, "real_share": f"{train['real_share']:.0%}" if real else None,
            "plant_p": f"{train.get('plant_p', 0):g}" if real else None,
            "sitting": "sitting" in train, "start_step": start,
            "end_step": start + train["steps"], "warm_start": train.get("warm_start", "scratch"),
            "epochs_over_pool": f"{train['epochs_over_pool']:.1f}",
            "minutes": f"{train['minutes']:.1f}"}  # fmt: skip


def card_context(results: dict[str, Any], timing: dict[str, float], train: dict[str, Any],
                 sha: str, version: str, missing: dict[str, list[int]] | None = None
                 ) -> dict[str, Any]:  # fmt: skip
    """Everything ``templates/segqc_card.md.j2`` shows, every figure formatted.

    Parameters
    ----------
    results, timing, train : dict
        Metrics of each measured set (:func:`evaluate`, in the card's order), CPU times
        (:func:`cpu_time_per_image`) and the training run's ``summary.json``.
    sha, version : str
        The weights' sha256 and the model's version.
    missing : dict, optional
        ``[built, planned]`` cases of each set not measured for these weights.
    """
    target_sets = [  # the accuracy targets hold on both the synthetic set and bert_damage
        {"name": name, "mae_mean": _target(results[name]["mae_mean"], TARGETS["mae_mean"]),
         "mae_structure": _target(results[name]["mae_structure_max"], TARGETS["mae_structure"]),
         "accuracy": _target(results[name]["detection"]["accuracy"], TARGETS["accuracy"], True)}
        for name in ("segqc_synth", "bert_damage") if name in results
    ]  # fmt: skip
    structure_sets = [s for s in ("segqc_synth", "segqc_unseen_damage", "bert_damage",
                                  "segqc_real_bert") if s in results]  # fmt: skip
    structures = [
        {"name": n, "cells": [{"mae": _fmt(c["mae"]), "sd": _fmt(c["sd"]), "r": _fmt(c["r"], 2)}
                              for c in (results[s]["per_structure"][n] for s in structure_sets)]}
        for n in STRUCTURE_NAMES
    ]  # fmt: skip
    return {
        "version": version, "sha": sha, "target_sets": target_sets,
        "cpu": _target(timing["total_s"], TARGETS["cpu_s"]),
        "gpu": _target(None, TARGETS["gpu_s"]),
        "preprocess_s": _fmt(timing["preprocess_s"]), "network_s": _fmt(timing["network_s"]),
        "sets": [{"name": name, "protocol_cases": r["protocol_cases"], **_figures(r)}
                 for name, r in results.items()],
        "missing": [{"name": n, "built": b, "planned": t}
                    for n, (b, t) in (missing or {}).items()],
        "heldout_families": HELDOUT_DAMAGE_FAMILIES, "structure_sets": structure_sets,
        "families": [{"set": name, "family": fam, "heldout": fam in HELDOUT_DAMAGE_FAMILIES,
                      **_figures(m)}
                     for name, r in results.items() for fam, m in r["by_family"].items()],
        "structures": structures, "train": _training(train),
        "licence": licence_section(LICENCE_SOURCES),
    }  # fmt: skip


def render_card(results: dict[str, Any], timing: dict[str, float], train: dict[str, Any],
                sha: str, version: str, missing: dict[str, list[int]] | None = None
                ) -> str:  # fmt: skip
    """The model card (markdown) from the evaluation results (``missing``: the sets not
    measured for these weights, with the cases built and planned); see :func:`card_context`."""
    return environment().get_template("segqc_card.md.j2").render(
        **card_context(results, timing, train, sha, version, missing))


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache", help="build the evaluation cases")
    c.add_argument("--out", default="/tmp/segqc_eval")
    c.add_argument("--sets", nargs="+", default=None,
                   choices=[*PROTOCOL_SETS, "bert_damage"], help="build these sets only")
    k = sub.add_parser("card", help="evaluate and write the card")
    k.add_argument("--eval", default="/tmp/segqc_eval")
    k.add_argument("--train", required=True, help="training output folder (summary.json)")
    k.add_argument("--weights", default=None, help="weights file (default: the shipped one)")
    k.add_argument("--card", default=None, help="card path (default: the package's)")
    r = sub.add_parser("render", help="re-render the card from a saved results.json")
    r.add_argument("--results", default="/tmp/segqc_eval/results.json")
    r.add_argument("--card", default=None, help="card path (default: the package's)")
    args = p.parse_args(argv)
    here = Path(__file__).resolve().parents[1] / "models"
    if args.cmd == "render":
        saved = json.loads(Path(args.results).read_text())
        card = render_card(saved["results"], saved["timing"], saved["train"], saved["sha256"],
                           saved.get("version", model_version()), saved.get("missing"))
        write_card(Path(args.card or here / "cards" / "segqc.md"), card)
        return
    if args.cmd == "cache":
        import torch

        torch.set_num_threads(1)
        build_cache(Path(args.out), args.sets)
        return
    import torch

    from bids_qc.models.registry import sha256sum
    from bids_qc.models.segqc import load_model

    weights = Path(args.weights) if args.weights else here / "weights" / "segqc.pt"
    torch.set_num_threads(2)
    net = load_model("cpu", torch.load(weights, map_location="cpu", weights_only=True))
    results, missing = evaluate(Path(args.eval), net)
    timing = cpu_time_per_image(net)
    train = json.loads((Path(args.train) / "summary.json").read_text())
    sha = sha256sum(weights)
    version = model_version()
    card = render_card(results, timing, train, sha, version, missing)
    card_path = Path(args.card) if args.card else here / "cards" / "segqc.md"
    write_card(card_path, card)
    (Path(args.eval) / "results.json").write_text(json.dumps(
        {"sha256": sha, "version": version, "timing": timing, "train": train,
         "results": results, "missing": missing}, indent=1))  # fmt: skip
    print(card)


if __name__ == "__main__":
    main()
