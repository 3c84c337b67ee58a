"""Shared versus per-structure ShapeQC networks, on the same data.

``python -m bids_qc.training.shapeqc_compare --cache DIR --train DIR``

The issue leaves the design open: a 2D ResNet per structure, or one shared across
structures with a structure embedding. This script trains, with the recipe's shapes, seed,
batch, width and optimiser (read from ``shapeqc_train.json`` in ``--train``), one network
per structure kind (left and right together, the left mirrored, as the shared network sees
them), each from scratch on its own kind's shapes only, for the kind's share of the shared
sitting's steps, so it sees its kind's shapes about as often as the shared network does;
the seven together cost about what the shared one costs.

Both are scored on the evaluation split (maps 15-16; thresholds by the same ENIGMA rule)
and on the card's ``test_maps`` (maps 17-20, ``displaced`` left out as in the card's
Table 2). Results go to ``--train``/``compare.json``; the card shows them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bids_qc.calibrate import roc_auc
from bids_qc.models.shapeqc import ShapeQCNet, kind_of, load_model
from bids_qc.structures import SUBCORTICAL_KINDS, SUBCORTICAL_NAMES
from bids_qc.training.common import train_logger
from bids_qc.training.shapeqc import calibration, fit, prepare, scores, set_templates
from bids_qc.training.shapeqc_card import build_test_maps, score_set
from bids_qc.training.shapeqc_data import assemble_maps, load_split


def _kinds(data: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([kind_of(str(s)) for s in data["structure"]])


def per_structure(p: np.ndarray, data: dict[str, np.ndarray],
                  thresholds: dict[str, float]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """AUC, F-share and F-recall per structure at the given thresholds."""
    out = {}
    for s in SUBCORTICAL_NAMES:
        sel = data["structure"] == s
        bad = data["fail"][sel].astype(bool)
        row: dict[str, Any] = {"n": int(sel.sum()), "n_fail": int(bad.sum())}
        if bad.any() and (~bad).any():
            flagged = p[sel] > thresholds.get(s, 0.5)
            row.update(auc=roc_auc(p[sel], bad), f_share=float(flagged.mean()),
                       f_recall=float(flagged[bad].mean()))  # fmt: skip
        out[s] = row
    return out


def _thresholds(p: np.ndarray, data: dict[str, np.ndarray]) -> dict[str, float]:
    doc = calibration(p, data["fail"], data["structure"])
    return {k.removeprefix("shapeqc_flag_"): v["threshold"] for k, v in doc["checks"].items()}


def summarise(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean per-structure AUC and the structures meeting the issue's goals."""
    aucs = [r["auc"] for r in rows.values() if r.get("auc") is not None]
    return {
        "mean_auc": float(np.mean(aucs)) if aucs else None,
        "auc_ge_0.9": sum(a >= 0.9 for a in aucs),
        "recall_ge_0.8_share_le_0.3": sum(
            r.get("f_recall", 0) >= 0.8 and r.get("f_share", 1) <= 0.3 for r in rows.values()),
        "mean_f_share": float(np.mean([r["f_share"] for r in rows.values() if "f_share" in r])),
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train the per-kind networks (resumable) and compare them with the shared one."""
    torch.set_num_threads(1)
    train_dir = Path(args.train)
    (train_dir / "compare").mkdir(parents=True, exist_ok=True)
    log = train_logger(train_dir / "compare")
    recipe = json.loads((train_dir / "shapeqc_train.json").read_text())
    if "steps" not in recipe:
        raise ValueError(f"{train_dir / 'shapeqc_train.json'} is of the epoch-based recipe; "
                         "compare a run of the step-budget one")
    # The per-kind networks train from scratch for as many steps as the shared sitting.
    ns = argparse.Namespace(
        cache=args.cache, crops=recipe["crops_per_map"], damaged=recipe["damaged_per_crop"],
        eval_crops=recipe["eval_crops_per_map"], eval_damaged=recipe["eval_damaged_per_crop"],
        steps=recipe["steps"], start_step=0, width=recipe["width"], seed=recipe["seed"],
        batch=recipe.get("batch", 32), lr=recipe.get("lr", 2e-3), threads=1,
        checkpoint_minutes=3.0, pause_after_minutes=None, data_only=False)  # fmt: skip
    prepared = prepare(ns, log)
    if prepared is None:  # pragma: no cover - data_only is False
        raise RuntimeError("no data")
    tr, ev, templates, x_tr, x_ev = prepared
    tm = load_split(build_test_maps(Path(args.cache), log))
    tm = {k: v[tm["family"] != "displaced"] for k, v in tm.items()}
    x_tm = assemble_maps(tm, templates).astype(np.float16)

    shared = load_model(torch.load(train_dir / "shapeqc.pt", map_location="cpu",
                                   weights_only=True))  # fmt: skip
    p_ev_shared = score_set(shared, ev)
    p_tm_shared = score_set(shared, tm)

    kinds_tr, kinds_ev, kinds_tm = _kinds(tr), _kinds(ev), _kinds(tm)
    p_ev_kind, p_tm_kind = np.zeros(len(kinds_ev)), np.zeros(len(kinds_tm))
    minutes = {}
    for k in SUBCORTICAL_KINDS:
        t0 = time.time()
        torch.manual_seed(ns.seed)
        net = ShapeQCNet(ns.width)
        set_templates(net, templates, x_tr, tr)
        sel_ev = kinds_ev == k
        ev_k = {key: v[sel_ev] for key, v in ev.items()}
        subset = np.flatnonzero(kinds_tr == k)
        ns_k = argparse.Namespace(**{**vars(ns), "steps": max(
            1, round(ns.steps * len(subset) / len(kinds_tr)))})
        fit(net, x_tr, tr, subset, ns_k, train_dir / "compare" / k, log, (x_ev[sel_ev], ev_k),
            options={"kind": k})  # fmt: skip
        p_ev_kind[sel_ev] = scores(net, x_ev[sel_ev], ev["structure"][sel_ev],
                                   ev["scalars"][sel_ev])  # fmt: skip
        sel_tm = kinds_tm == k
        p_tm_kind[sel_tm] = scores(net, x_tm[sel_tm], tm["structure"][sel_tm],
                                   tm["scalars"][sel_tm])  # fmt: skip
        minutes[k] = (time.time() - t0) / 60
        log(f"kind {k}: {minutes[k]:.1f} min")

    result: dict[str, Any] = {"recipe": {k: v for k, v in vars(ns).items() if k != "cache"},
                              "n_params_each": sum(p.numel() for p in shared.parameters()),
                              "minutes_per_kind": minutes}  # fmt: skip
    for name, p_ev, p_tm in (("shared", p_ev_shared, p_tm_shared),
                             ("per_structure", p_ev_kind, p_tm_kind)):  # fmt: skip
        thr = _thresholds(p_ev, ev)
        ev_rows = per_structure(p_ev, ev, thr)
        tm_rows = per_structure(p_tm, tm, thr)
        result[name] = {"eval": ev_rows, "test": tm_rows, "thresholds": thr,
                        "eval_summary": summarise(ev_rows), "test_summary": summarise(tm_rows)}
    (train_dir / "compare.json").write_text(json.dumps(result, indent=1, default=float))
    log(f"compare: shared test mean AUC {result['shared']['test_summary']['mean_auc']:.3f}, "
        f"per structure {result['per_structure']['test_summary']['mean_auc']:.3f}")
    return result


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, required=True, help="the recipe's shape cache")
    p.add_argument("--train", type=Path, required=True,
                   help="the recipe's output folder (shapeqc_train.json, shapeqc.pt)")
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
