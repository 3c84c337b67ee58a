"""Training recipe of ShapeQC: ``python -m bids_qc.training.shapeqc --cache DIR --out DIR``.

1. Shapes (:mod:`bids_qc.training.shapeqc_data`): training maps 1-14, ``--crops`` deformed
   crops per map (the first crop of a map undeformed), each with 14 PASS shapes and
   ``--damaged`` damaged ones from the training shape families of the frozen protocol
   (``spike`` and ``merged`` are held out) except ``displaced`` (see
   :data:`SHAPE_FAMILIES_TRAINED`); the evaluation split (thresholds) from maps 15-16 with
   more damaged shapes per crop. Maps 17-20 and ``bert`` are never seen here.
2. Templates: per structure kind, the mean log area density and log area of the training
   split's undamaged shapes; the LogJac channels are then computed against them.
3. A shared :class:`bids_qc.models.shapeqc.ShapeQCNet`, trained with binary cross-entropy on
   epochs holding every FAIL and a random draw of PASS shapes (one FAIL in three), with
   random smooth deformations of the spherical coordinates (:func:`warp_maps`).
4. Scores of the evaluation split give each structure's threshold (ENIGMA rule:
   :func:`bids_qc.calibrate.enigma_threshold`, F-recall >= 0.8 with the fewest flagged);
   thresholds and calibration data (scores and truth per structure) are written next to
   the fp16 weights.

Every random draw comes from ``--seed``; a checkpoint after each epoch (``OUT/checkpoint.pt``)
makes a run resumable; the log is ``OUT/train.log``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bids_qc.models.shapeqc import ShapeQCNet, kind_index
from bids_qc.structures import SUBCORTICAL_KINDS, SUBCORTICAL_NAMES
from bids_qc.training.common import export_weights, train_logger
from bids_qc.training.eval_protocol import TRAINING_SHAPE_FAMILIES
from bids_qc.training.shapeqc_data import (
    EVAL_SHAPE_MAPS,
    TRAIN_SHAPE_MAPS,
    assemble_maps,
    build_split,
    cached_axes,
    load_split,
    make_templates,
)

DEFAULT_SEED = 20261121
#: Target recall of the shipped thresholds.
RECALL = 0.8
CALIBRATION_FORMAT = "bids_qc-shapeqc-calibration"
#: Families trained on: the protocol's training families except ``displaced``, which moves
#: a structure without changing its shape (invisible to a shape check; a location check's
#: job), so its FAIL labels would only be noise here.
SHAPE_FAMILIES_TRAINED: tuple[str, ...] = tuple(
    f for f in TRAINING_SHAPE_FAMILIES if f != "displaced")


def warp_maps(maps: torch.Tensor, gen: torch.Generator, large: float = 4.0,
              small: float = 0.7) -> torch.Tensor:
    """Resample maps under random smooth deformations of their spherical coordinates.

    The displacement (in cells, latitude and longitude) is a large smooth field (4x4
    control points, std ``large``) plus a small noisy one (16x16, std ``small``); longitude
    wraps around, latitude stops at the poles.
    """
    b, _, h, w = maps.shape
    pad = 16
    field = F.interpolate(torch.randn(b, 2, 4, 4, generator=gen) * large, size=(h, w),
                          mode="bicubic", align_corners=True)
    field = field + F.interpolate(torch.randn(b, 2, 16, 16, generator=gen) * small,
                                  size=(h, w), mode="bilinear", align_corners=True)
    rows = torch.arange(h, dtype=torch.float32).view(1, h, 1) + field[:, 0]
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, w) + field[:, 1].clamp(-pad, pad)
    padded = torch.cat([maps[..., -pad:], maps, maps[..., :pad]], dim=-1)
    grid = torch.stack([(cols + pad) * 2 / (w + 2 * pad - 1) - 1, rows * 2 / (h - 1) - 1], -1)
    return F.grid_sample(padded, grid, mode="bilinear", padding_mode="border",
                         align_corners=True)


def scores(net: ShapeQCNet, maps: np.ndarray, structures: np.ndarray, scalars: np.ndarray,
           batch: int = 64) -> np.ndarray:
    """P(FAIL) of cached maps (no augmentation)."""
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(maps), batch):
            x = torch.as_tensor(maps[i:i + batch].astype(np.float32))
            k = kind_index([str(s) for s in structures[i:i + batch]])
            sc = torch.as_tensor(scalars[i:i + batch], dtype=torch.float32)
            out.append(torch.sigmoid(net(x, k, sc)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def set_templates(net: ShapeQCNet, templates: dict, maps: np.ndarray,
                  data: dict[str, np.ndarray]) -> None:
    """Store templates, per-channel scaling and per-kind scalar statistics (from the
    training split's undamaged shapes) in the network."""
    from bids_qc.models.shapeqc import kind_of

    kinds = np.array([kind_of(str(s)) for s in data["structure"]])
    for i, k in enumerate(SUBCORTICAL_KINDS):
        good = data["scalars"][(kinds == k) & (data["family"] == "none")]
        net.scalar_mean[i] = torch.as_tensor(good.mean(axis=0), dtype=torch.float32)
        # Topology counts are 0 on good shapes: a floor keeps their z-scores finite.
        net.scalar_std[i] = torch.as_tensor(np.maximum(good.std(axis=0), 0.05),
                                            dtype=torch.float32)
        t = templates[k]
        net.template_log_density[i] = torch.as_tensor(t.log_density, dtype=torch.float32)
        net.template_log_area[i] = float(t.log_area)
        net.template_axis[i] = torch.as_tensor(t.axis, dtype=torch.float32)
    sample = maps[:: max(1, len(maps) // 500)].astype(np.float32)
    net.channel_mean[:] = torch.as_tensor(sample.mean(axis=(0, 2, 3)))
    net.channel_std[:] = torch.as_tensor(sample.std(axis=(0, 2, 3)) + 1e-3)


def calibration(scores_: np.ndarray, fail: np.ndarray, structures: np.ndarray,
                recall: float = RECALL) -> dict[str, Any]:
    """The thresholds document (``bids_qc-calibrate`` schema) for one recall target."""
    from dataclasses import asdict

    from bids_qc.calibrate import Calibration, enigma_threshold, roc_auc, thresholds_document

    cals = {}
    for s in SUBCORTICAL_NAMES:
        sel = structures == s
        bad = fail[sel].astype(bool)
        if not bad.any() or bad.all():
            continue
        sc = scores_[sel].astype(float)
        cut = enigma_threshold(sc, bad, recall)
        flagged = sc > cut
        cals[f"shapeqc_flag_{s}"] = Calibration(
            f"shapeqc_pfail_{s}", "above", cut, float(flagged[bad].mean()),
            float(flagged.mean()), roc_auc(sc, bad), int(sel.sum()), int(bad.sum()))
    doc = thresholds_document(cals, recall)
    doc["created_by"] = "bids_qc.training.shapeqc (evaluation split, maps 15-16)"
    doc["checks"] = {k: asdict(v) for k, v in sorted(cals.items())}
    return doc


Split = dict[str, np.ndarray]


def prepare(args: argparse.Namespace, log: Callable[[str], None]
            ) -> tuple[Split, Split, dict, np.ndarray, np.ndarray] | None:
    """Build (or load) the training and evaluation shapes; their templates and maps.

    Returns ``(train, eval, templates, train maps, eval maps)``, or ``None`` with
    ``--data-only``.
    """
    cache = Path(args.cache)
    axes = cached_axes(cache, log)
    train_files = build_split(cache, "train", list(TRAIN_SHAPE_MAPS), "train", args.crops,
                              args.damaged, SHAPE_FAMILIES_TRAINED, axes, args.seed, log)
    eval_files = build_split(cache, "eval", list(EVAL_SHAPE_MAPS), "train", args.eval_crops,
                             args.eval_damaged, SHAPE_FAMILIES_TRAINED, axes, args.seed + 1,
                             log)
    if args.data_only:
        return None
    tr, ev = load_split(train_files), load_split(eval_files)
    templates = make_templates(tr, axes)
    x_tr = assemble_maps(tr, templates).astype(np.float16)
    x_ev = assemble_maps(ev, templates).astype(np.float16)
    return tr, ev, templates, x_tr, x_ev


def fit(net: ShapeQCNet, x_tr: np.ndarray, tr: dict[str, np.ndarray], subset: np.ndarray,
        args: argparse.Namespace, ckpt: Path, log: Callable[[str], None],
        eval_set: tuple[np.ndarray, dict[str, np.ndarray]] | None = None) -> list[dict]:
    """Train ``net`` on the shapes ``subset`` of the training split (resumable from ``ckpt``).

    Each epoch holds every FAIL of the subset and twice as many PASS shapes drawn at random,
    under a cosine learning rate; ``eval_set`` (maps, data) is scored after each epoch for
    the log. Returns the per-epoch history.
    """
    from bids_qc.calibrate import roc_auc

    y_tr = tr["fail"].astype(np.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    epoch0, history = 0, []
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        epoch0, history = state["epoch"], state["history"]
        log(f"resumed after epoch {epoch0}")
    fails = subset[y_tr[subset] == 1]
    passes = subset[y_tr[subset] == 0]
    t0 = time.time()
    for epoch in range(epoch0, args.epochs):
        rng = np.random.default_rng(args.seed * 1000 + epoch)
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        order = rng.permutation(np.concatenate(
            [fails, rng.choice(passes, min(len(passes), 2 * len(fails)), replace=False)]))
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
        for g in opt.param_groups:
            g["lr"] = lr
        net.train()
        total, n = 0.0, 0
        for i in range(0, len(order), args.batch):
            idx = np.sort(order[i:i + args.batch])
            x = warp_maps(torch.as_tensor(x_tr[idx].astype(np.float32)), gen)
            k = kind_index([str(s) for s in tr["structure"][idx]])
            sc = torch.as_tensor(tr["scalars"][idx], dtype=torch.float32)
            loss = F.binary_cross_entropy_with_logits(net(x, k, sc), torch.as_tensor(y_tr[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(idx), n + len(idx)
        auc = None
        if eval_set is not None:
            x_ev, ev = eval_set
            auc = roc_auc(scores(net, x_ev, ev["structure"], ev["scalars"]),
                          ev["fail"].astype(bool))
        history.append({"epoch": epoch + 1, "loss": total / n, "eval_auc": auc, "lr": lr})
        log(f"epoch {epoch + 1}/{args.epochs} loss {total / n:.4f} eval AUC "
            f"{'-' if auc is None else f'{auc:.3f}'} ({time.time() - t0:.0f}s)")
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1,
                    "history": history}, ckpt.with_suffix(".tmp"))
        os.replace(ckpt.with_suffix(".tmp"), ckpt)
    return history


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) the recipe; returns a summary."""
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = train_logger(out)
    t_start = time.time()
    prepared = prepare(args, log)
    t_data = time.time() - t_start
    if prepared is None:
        return {"data_s": t_data}
    tr, ev, templates, x_tr, x_ev = prepared
    y_tr = tr["fail"].astype(np.float32)
    log(f"train {len(y_tr)} shapes ({int(y_tr.sum())} FAIL), eval {len(ev['fail'])} "
        f"({int(ev['fail'].sum())} FAIL)")

    torch.manual_seed(args.seed)
    net = ShapeQCNet(args.width)
    set_templates(net, templates, x_tr, tr)
    t_train = time.time()
    history = fit(net, x_tr, tr, np.arange(len(y_tr)), args, out / "checkpoint.pt", log,
                  (x_ev, ev))

    p_ev = scores(net, x_ev, ev["structure"], ev["scalars"])
    export_weights(net, out / "shapeqc.pt", keep_float32=("template_", "channel_"))
    doc = calibration(p_ev, ev["fail"], ev["structure"])
    (out / "shapeqc_thresholds.json").write_text(json.dumps(doc, indent=1) + "\n")
    cal = {"format": CALIBRATION_FORMAT, "version": 1,
           "note": "P(FAIL) and truth of the evaluation split (maps 15-16), per structure",
           "structures": {s: {"scores": [round(float(v), 6) for v in p_ev[ev["structure"] == s]],
                              "fail": [int(v) for v in ev["fail"][ev["structure"] == s]]}
                          for s in SUBCORTICAL_NAMES}}
    (out / "shapeqc_calibration.json").write_text(json.dumps(cal) + "\n")
    summary = {"seed": args.seed, "epochs": args.epochs, "width": args.width,
               "batch": args.batch, "lr": args.lr,
               "crops_per_map": args.crops, "damaged_per_crop": args.damaged,
               "eval_crops_per_map": args.eval_crops, "eval_damaged_per_crop": args.eval_damaged,
               "n_train": int(len(y_tr)), "n_train_fail": int(y_tr.sum()),
               "n_eval": int(len(ev["fail"])), "n_eval_fail": int(ev["fail"].sum()),
               "train_fail_share_by_structure": {
                   s: float(y_tr[tr["structure"] == s].mean()) for s in SUBCORTICAL_NAMES},
               "data_minutes": t_data / 60, "train_minutes": (time.time() - t_train) / 60,
               "history": history, "threads": torch.get_num_threads()}
    (out / "shapeqc_train.json").write_text(json.dumps(summary, indent=1) + "\n")
    log("done")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, required=True, help="feature cache (outside the repo)")
    p.add_argument("--out", type=Path, required=True, help="where weights and thresholds go")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--crops", type=int, default=8, help="crops per training map")
    p.add_argument("--damaged", type=int, default=3, help="damaged shapes per training crop")
    p.add_argument("--eval-crops", type=int, default=8)
    p.add_argument("--eval-damaged", type=int, default=8)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--data-only", action="store_true", help="build the cached shapes only")
    train(p.parse_args(argv))


if __name__ == "__main__":
    main()
