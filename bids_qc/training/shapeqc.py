"""ShapeQC recipe: ``python -m bids_qc.training.shapeqc --cache DIR --out DIR --steps N``.

1. Shapes (:mod:`bids_qc.training.shapeqc_data`): training maps 1-14, ``--crops`` deformed
   crops per map (the first crop of a map undeformed), each with 14 PASS shapes and
   ``--damaged`` damaged ones from the training shape families of the frozen protocol
   (``spike`` and ``merged`` are held out) except ``displaced`` (see
   :data:`SHAPE_FAMILIES_TRAINED`); the evaluation split (thresholds) from maps 15-16 with
   more damaged shapes per crop. Maps 17-20 and ``bert`` are never seen here.
2. Templates: per structure kind, the mean log area density and log area of the training
   split's undamaged shapes; the LogJac channels are then computed against them.
3. A shared :class:`bids_qc.models.shapeqc.ShapeQCNet`, trained with binary cross-entropy for
   ``--steps`` steps (:mod:`bids_qc.training.loop`: warm start from the shipped weights, with
   their templates and statistics, unless ``--from-scratch``; pause and resume); each batch
   draws FAIL shapes one time in three on average (as the earlier epochs held every FAIL
   and twice as many PASS shapes), under random smooth deformations of the spherical
   coordinates (:func:`warp_maps`), and is a pure function of ``(seed, global step)``.
4. Scores of the evaluation split give each structure's threshold (ENIGMA rule:
   :func:`bids_qc.calibrate.enigma_threshold`, F-recall >= 0.8 with the fewest flagged);
   thresholds and calibration data (scores and truth per structure) are written next to
   the fp16 weights.

Real data (``--real-data``): the training part's real segmentations (IXI people, DLMUSE
mapped to FreeSurfer codes; ``--real-crops`` crops each, the first undeformed) join the
training shapes, damaged by the same families. The evaluation split is then the
**calibration** part's real segmentations (one undeformed crop each, ``--eval-damaged``
damaged shapes), and each structure's threshold is the ENIGMA one raised, where needed, to
the highest P(FAIL) of that structure on the good calibration people (the specificity
floor: a good real person's structure is not flagged at calibration), so the per-person
false-flag goal of the real-data gate is met on calibration.

The log is ``OUT/train.log``; the sitting's record ``OUT/sitting.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bids_qc.models.shapeqc import ShapeQCNet, kind_index
from bids_qc.structures import SUBCORTICAL_KINDS, SUBCORTICAL_NAMES
from bids_qc.training.common import export_state, export_weights, train_logger
from bids_qc.training.eval_protocol import TRAINING_SHAPE_FAMILIES
from bids_qc.training.loop import (
    SittingConfig,
    add_sitting_arguments,
    record_from_checkpoint,
    require_steps,
    run_sitting,
    shipped_state,
)
from bids_qc.training.shapeqc_data import (
    EVAL_SHAPE_MAPS,
    TRAIN_SHAPE_MAPS,
    assemble_maps,
    build_crops,
    build_split,
    cached_axes,
    load_split,
    make_templates,
    real_sources,
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
                recall: float = RECALL, floor: dict[str, float] | None = None,
                source: str = "evaluation split, maps 15-16") -> dict[str, Any]:
    """The thresholds document (``bids_qc-calibrate`` schema) for one recall target.

    With ``floor`` (per structure, the highest P(FAIL) of good people), a structure's
    threshold is at least that value (the specificity floor).
    """
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
        if floor is not None and s in floor:
            cut = max(cut, float(floor[s]))
        flagged = sc > cut
        cals[f"shapeqc_flag_{s}"] = Calibration(
            f"shapeqc_pfail_{s}", "above", cut, float(flagged[bad].mean()),
            float(flagged.mean()), roc_auc(sc, bad), int(sel.sum()), int(bad.sum()))
    doc = thresholds_document(cals, recall)
    doc["created_by"] = f"bids_qc.training.shapeqc ({source})"
    if floor is not None:
        doc["specificity_floor"] = ("each threshold at least the highest P(FAIL) of the "
                                    "structure on the good calibration people, scored as the "
                                    "app scores them (the exported weights, whole "
                                    "segmentations)")
        doc["floor"] = {k: round(float(v), 6) for k, v in sorted(floor.items())}
    doc["checks"] = {k: asdict(v) for k, v in sorted(cals.items())}
    return doc


Split = dict[str, np.ndarray]


def app_floor(net: ShapeQCNet, sources: list) -> dict[str, float]:
    """Per structure, the highest P(FAIL) on good people's whole segmentations, scored as the
    app scores them (:func:`bids_qc.models.shapeqc.predict`)."""
    from bids_qc.models.shapeqc import predict

    floor: dict[str, float] = {}
    for _, _, load in sources:
        labels, affine = load()
        results, _ = predict(net, labels, np.asarray(affine))
        for r in results:
            floor[r.structure] = max(floor.get(r.structure, 0.0), float(r.pfail))
    return floor


def write_thresholds(out: Path, net: ShapeQCNet, ev: Split, x_ev: np.ndarray,
                     real_data: str = "") -> str:
    """Thresholds and calibration data of a sitting's exported weights (``out/shapeqc.pt``);
    returns where the thresholds came from.

    The evaluation split is scored by ``net``; with ``real_data`` the specificity floor is
    taken from the exported weights on the good calibration people (:func:`app_floor`).
    """
    from bids_qc.models.shapeqc import load_model

    p_ev = scores(net, x_ev, ev["structure"], ev["scalars"])
    source = ("real calibration part: IXI and bert, one undeformed crop each"
              if real_data else "evaluation split, maps 15-16")  # fmt: skip
    floor = None
    if real_data:
        exported = load_model(torch.load(out / "shapeqc.pt", map_location="cpu",
                                         weights_only=True))  # fmt: skip
        floor = app_floor(exported, real_sources(Path(real_data), "calibration"))
    doc = calibration(p_ev, ev["fail"], ev["structure"], floor=floor, source=source)
    (out / "shapeqc_thresholds.json").write_text(json.dumps(doc, indent=1) + "\n")
    cal = {"format": CALIBRATION_FORMAT, "version": 1,
           "note": f"P(FAIL) and truth of the evaluation split ({source}), per structure",
           "structures": {s: {"scores": [round(float(v), 6) for v in p_ev[ev["structure"] == s]],
                              "fail": [int(v) for v in ev["fail"][ev["structure"] == s]]}
                          for s in SUBCORTICAL_NAMES}}  # fmt: skip
    (out / "shapeqc_calibration.json").write_text(json.dumps(cal) + "\n")
    return source


def prepare(args: argparse.Namespace, log: Callable[[str], None], templates: dict | None = None
            ) -> tuple[Split, Split, dict, np.ndarray, np.ndarray] | None:  # fmt: skip
    """Build (or load) the training and evaluation shapes; their templates and maps.

    ``templates`` (a warm-started network's own) replace the training split's. Returns
    ``(train, eval, templates, train maps, eval maps)``, or ``None`` with ``--data-only``.
    """
    cache = Path(args.cache)
    axes = cached_axes(cache, log)
    train_files = build_split(cache, "train", list(TRAIN_SHAPE_MAPS), "train", args.crops,
                              args.damaged, SHAPE_FAMILIES_TRAINED, axes, args.seed, log)
    if not args.real_data:
        eval_files = build_split(cache, "eval", list(EVAL_SHAPE_MAPS), "train", args.eval_crops,
                                 args.eval_damaged, SHAPE_FAMILIES_TRAINED, axes, args.seed + 1,
                                 log)  # fmt: skip
    else:
        data_dir = Path(args.real_data)
        train_files += build_crops(cache / "real_train", "real_train",
                                   real_sources(data_dir, "training"), args.real_crops,
                                   args.damaged, SHAPE_FAMILIES_TRAINED, axes, args.seed + 2,
                                   log=log)  # fmt: skip
        eval_files = build_crops(cache / "real_cal", "real_cal",
                                 real_sources(data_dir, "calibration"), 1, args.eval_damaged,
                                 SHAPE_FAMILIES_TRAINED, axes, args.seed + 3, log=log)
    if args.data_only:
        return None
    tr, ev = load_split(train_files), load_split(eval_files)
    if templates is None:
        templates = make_templates(tr, axes)
    x_tr = assemble_maps(tr, templates).astype(np.float16)
    x_ev = assemble_maps(ev, templates).astype(np.float16)
    return tr, ev, templates, x_tr, x_ev


def fit(net: ShapeQCNet, x_tr: np.ndarray, tr: dict[str, np.ndarray], subset: np.ndarray,
        args: argparse.Namespace, out: Path, log: Callable[[str], None],
        eval_set: tuple[np.ndarray, dict[str, np.ndarray]] | None = None,
        warm_start: str = "scratch", options: dict[str, Any] | None = None
        ) -> dict[str, Any] | None:  # fmt: skip
    """One sitting of ``net`` on the shapes ``subset`` of the training split, in ``out``.

    ``args`` holds the sitting's settings (``steps``, ``start_step``, ``seed``, ``lr``,
    ``batch``, ``threads``, ``checkpoint_minutes``, ``pause_after_minutes``); a checkpoint in
    ``out`` of the same sitting is resumed. Each batch draws a FAIL with the share an epoch
    of every FAIL and twice as many PASS shapes would have, then a shape uniformly from its
    class, all from ``(seed, global step)``. Returns the sitting's record (with the AUC of
    ``eval_set``, maps and data, when given), or None when it paused.
    """
    from bids_qc.calibrate import roc_auc

    y_tr = tr["fail"].astype(np.float32)
    fails = np.sort(subset[y_tr[subset] == 1])
    passes = np.sort(subset[y_tr[subset] == 0])
    if not len(fails) or not len(passes):
        raise ValueError("the training subset needs FAIL and PASS shapes")
    share = len(fails) / (len(fails) + min(len(passes), 2 * len(fails)))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)

    def step(gstep: int) -> dict[str, float]:
        rng = np.random.default_rng([args.seed, gstep])
        is_fail = rng.random(args.batch) < share
        idx = np.sort(np.where(is_fail, fails[rng.integers(len(fails), size=args.batch)],
                               passes[rng.integers(len(passes), size=args.batch)]))
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        x = warp_maps(torch.as_tensor(x_tr[idx].astype(np.float32)), gen)
        k = kind_index([str(s) for s in tr["structure"][idx]])
        sc = torch.as_tensor(tr["scalars"][idx], dtype=torch.float32)
        loss = F.binary_cross_entropy_with_logits(net(x, k, sc), torch.as_tensor(y_tr[idx]))
        loss.backward()
        return {"loss": float(loss.detach()), "samples": len(idx)}

    config = SittingConfig(
        model="shapeqc", out=Path(out), steps=args.steps, lr=args.lr, seed=args.seed,
        start_step=args.start_step, warm_start=warm_start, threads=args.threads,
        options={"batch": args.batch, "subset": int(len(subset)), **(options or {})})
    record = run_sitting(config, net, opt, step,
                         lambda p: export_weights(net, p, keep_float32=("template_", "channel_")),
                         weights_name="shapeqc.pt", log=log,
                         checkpoint_minutes=args.checkpoint_minutes,
                         pause_after_minutes=args.pause_after_minutes)  # fmt: skip
    if record is not None and eval_set is not None:
        x_ev, ev = eval_set
        record["eval_auc"] = roc_auc(scores(net, x_ev, ev["structure"], ev["scalars"]),
                                     ev["fail"].astype(bool))  # fmt: skip
        log(f"eval AUC {record['eval_auc']:.3f}")
    return record


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) the recipe's sitting; returns a summary (``{"paused": True}`` when it
    paused)."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = train_logger(out)
    torch.manual_seed(args.seed)
    warm, templates = "scratch", None
    if args.from_scratch:
        net = ShapeQCNet(args.width)
    else:  # the shipped network keeps its own templates and statistics (its inputs' frame)
        state, warm = shipped_state("shapeqc")
        net = ShapeQCNet(int(state["stem.0.weight"].shape[0]))
        net.load_state_dict(state)
        templates = {k: net.template(k) for k in SUBCORTICAL_KINDS}
    t_start = time.time()
    prepared = prepare(args, log, templates)
    t_data = time.time() - t_start
    if prepared is None:
        return {"data_s": t_data}
    tr, ev, templates, x_tr, x_ev = prepared
    y_tr = tr["fail"].astype(np.float32)
    log(f"train {len(y_tr)} shapes ({int(y_tr.sum())} FAIL), eval {len(ev['fail'])} "
        f"({int(ev['fail'].sum())} FAIL)")
    if args.from_scratch:
        set_templates(net, templates, x_tr, tr)
    width = int(net.stem[0].weight.shape[0])
    shapes = {"crops": args.crops, "damaged": args.damaged, "eval_crops": args.eval_crops,
              "eval_damaged": args.eval_damaged, "width": width,
              "families": list(SHAPE_FAMILIES_TRAINED), "real_data": bool(args.real_data),
              "real_crops": args.real_crops if args.real_data else 0}  # fmt: skip
    record = fit(net, x_tr, tr, np.arange(len(y_tr)), args, out, log, (x_ev, ev), warm, shapes)
    if record is None:
        return {"paused": True}

    source = write_thresholds(out, net, ev, x_ev, args.real_data)
    summary = {"seed": args.seed, "steps": args.steps, "start_step": args.start_step,
               "width": width, "batch": args.batch, "lr": args.lr,
               "warm_start": record["warm_start"],
               "crops_per_map": args.crops, "damaged_per_crop": args.damaged,
               "eval_crops_per_map": args.eval_crops, "eval_damaged_per_crop": args.eval_damaged,
               "n_train": int(len(y_tr)), "n_train_fail": int(y_tr.sum()),
               "n_eval": int(len(ev["fail"])), "n_eval_fail": int(ev["fail"].sum()),
               "train_fail_share_by_structure": {
                   s: float(y_tr[tr["structure"] == s].mean()) for s in SUBCORTICAL_NAMES
                   if (tr["structure"] == s).any()},
               "data_minutes": t_data / 60, "train_minutes": record["wall_hours"] * 60,
               "eval_auc": record["eval_auc"], "final_losses": record["final_losses"],
               "threads": args.threads, "real_data": bool(args.real_data),
               "real_crops": args.real_crops if args.real_data else 0,
               "thresholds_from": source}  # fmt: skip
    (out / "shapeqc_train.json").write_text(json.dumps(summary, indent=1) + "\n")
    log("done")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, required=True, help="feature cache (outside the repo)")
    p.add_argument("--out", type=Path, required=True, help="where weights and thresholds go")
    add_sitting_arguments(p, lr=2e-3, seed=DEFAULT_SEED, steps_required=False)
    p.add_argument("--crops", type=int, default=8, help="crops per training map")
    p.add_argument("--damaged", type=int, default=3, help="damaged shapes per training crop")
    p.add_argument("--eval-crops", type=int, default=8)
    p.add_argument("--eval-damaged", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=16,
                   help="network width (with --from-scratch; a warm start keeps the shipped)")
    p.add_argument("--data-only", action="store_true", help="build the cached shapes only")
    p.add_argument("--real-data", default="",
                   help="shared data folder: real training shapes, real calibration thresholds")
    p.add_argument("--real-crops", type=int, default=2, help="crops per real training person")
    p.add_argument("--thresholds-only", action="store_true",
                   help="recompute the thresholds of the weights in --out and exit")
    args = p.parse_args(argv)
    if args.record_only:  # weights and record; thresholds come with a finished sitting
        print(json.dumps(record_from_checkpoint(args.out, "shapeqc.pt", lambda st, path: (
            export_state(st, path, keep_float32=("template_", "channel_"))))))
        return
    if args.thresholds_only:
        from bids_qc.models.shapeqc import load_model

        log = train_logger(args.out)
        net = load_model(torch.load(args.out / "shapeqc.pt", map_location="cpu",
                                    weights_only=True))  # fmt: skip
        prepared = prepare(args, log, {k: net.template(k) for k in SUBCORTICAL_KINDS})
        assert prepared is not None
        _, ev, _, _, x_ev = prepared
        log(f"thresholds from {write_thresholds(args.out, net, ev, x_ev, args.real_data)}")
        return
    if not args.data_only:
        require_steps(p, args)
    train(args)


if __name__ == "__main__":
    main()
