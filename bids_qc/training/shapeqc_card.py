"""ShapeQC model card from a real evaluation run.

``python -m bids_qc.training.shapeqc_card --cache DIR --train DIR`` builds (or reuses) the
test shapes, scores them with the shipped weights and writes ``bids_qc/models/cards/
shapeqc.md`` (stamped with the weights' sha256) and example figures beside it.

Test data:

- ``test_maps``: shapes from the test-only SynthSeg maps 17-20, made like the training
  shapes (:mod:`bids_qc.training.shapeqc_data`, training families, own seed), with enough
  damaged shapes per crop for >= 20 FAILs per structure;
- the frozen protocol's ``shapeqc_synth`` and ``shapeqc_unseen`` (held-out families
  ``spike``, ``merged``), as far as :mod:`bids_qc.training.shapeqc_frozen` built them;
- FreeSurfer's ``bert`` aseg: 14 real structures, all presumed PASS.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bids_qc.calibrate import roc_auc
from bids_qc.models.shapeqc import ShapeQCNet
from bids_qc.structures import SUBCORTICAL_KINDS, SUBCORTICAL_NAMES
from bids_qc.training.card_sections import environment
from bids_qc.training.eval_protocol import (
    HELDOUT_SHAPE_FAMILIES,
    TRAINING_SHAPE_FAMILIES,
    case_specs,
)
from bids_qc.training.ledger import write_card
from bids_qc.training.shapeqc import SHAPE_FAMILIES_TRAINED, scores
from bids_qc.training.shapeqc_data import assemble_maps, build_split, cached_axes, load_split

TEST_MAPS: tuple[int, ...] = (17, 18, 19, 20)
TEST_SEED = 777
TEST_CROPS = 56
TEST_DAMAGED = 8
#: FAIL share the review-time columns are restated at (the paper's Table 1 range).
REALISTIC_FAIL_SHARE = 0.10


def build_test_maps(cache: Path, log: Any = print) -> list[Path]:
    """The ``test_maps`` shapes (cached, resumable)."""
    axes = cached_axes(cache, log)
    return build_split(cache, "test_maps", list(TEST_MAPS), "eval", TEST_CROPS, TEST_DAMAGED,
                       TRAINING_SHAPE_FAMILIES, axes, TEST_SEED, log)


def load_frozen(cache: Path, name: str) -> tuple[dict[str, np.ndarray], int, int]:
    """The built cases of a frozen set: data, number that could not be meshed, total."""
    rows, errors = [], 0
    for f in sorted((cache / name).glob("case*.npz")):
        if f.name.endswith(".tmp.npz"):
            continue
        z = dict(np.load(f))
        meta = json.loads(str(z["meta"]))
        if "error" in z:
            errors += 1
            continue
        rows.append({"d": z["d"], "log_density": z["log_density"],
                     "log_area": float(z["log_area"]), "scalars": z["scalars"], **meta})
    keys = ("d", "log_density", "log_area", "scalars", "structure", "family", "severity",
            "fail")
    data = {k: np.asarray([r[k] for r in rows]) for k in keys} if rows else {}
    return data, errors, len(case_specs(name))


def _templates(net: ShapeQCNet) -> dict:
    return {k: net.template(k) for k in SUBCORTICAL_KINDS}


def score_set(net: ShapeQCNet, data: dict[str, np.ndarray]) -> np.ndarray:
    """P(FAIL) of cached shapes."""
    if not data:
        return np.zeros(0)
    return scores(net, assemble_maps(data, _templates(net)), data["structure"], data["scalars"])


def structure_table(p: np.ndarray, data: dict[str, np.ndarray], thresholds: dict[str, float]
                    ) -> dict[str, dict[str, Any]]:
    """Per structure: n, FAILs, AUC, F-share and F-recall at the shipped threshold."""
    out = {}
    for s in SUBCORTICAL_NAMES:
        sel = data["structure"] == s if data else np.zeros(0, bool)
        bad = data["fail"][sel].astype(bool) if data else np.zeros(0, bool)
        row: dict[str, Any] = {"n": int(sel.sum()), "n_fail": int(bad.sum())}
        if sel.any():
            flagged = p[sel] > thresholds[s]
            row["f_share"] = float(flagged.mean())
            row["f_recall"] = float(flagged[bad].mean()) if bad.any() else None
            row["fpr"] = float(flagged[~bad].mean()) if (~bad).any() else None
            row["auc"] = roc_auc(p[sel], bad) if bad.any() and (~bad).any() else None
        out[s] = row
    return out


def family_table(p: np.ndarray, data: dict[str, np.ndarray], thresholds: dict[str, float]
                 ) -> dict[str, dict[str, Any]]:
    """Per family: AUC of its FAIL shapes against every PASS shape, recall at threshold."""
    if not data:
        return {}
    thr = np.array([thresholds[str(s)] for s in data["structure"]])
    flagged = p > thr
    bad = data["fail"].astype(bool)
    out = {}
    for fam in sorted(set(data["family"]) - {"none"}):
        sel = (data["family"] == fam) & bad
        if sel.any() and (~bad).any():
            scores_ = np.concatenate([p[sel], p[~bad]])
            truth = np.concatenate([np.ones(sel.sum(), bool), np.zeros((~bad).sum(), bool)])
            out[fam] = {"n_fail": int(sel.sum()), "auc": roc_auc(scores_, truth),
                        "f_recall": float(flagged[sel].mean()),
                        "min_fail_severity": float(data["severity"][sel].min())}
    return out


def overall(p: np.ndarray, data: dict[str, np.ndarray], thresholds: dict[str, float]
            ) -> dict[str, Any]:
    """Pooled AUC, F-share and F-recall."""
    if not data:
        return {"n": 0}
    bad = data["fail"].astype(bool)
    flagged = p > np.array([thresholds[str(s)] for s in data["structure"]])
    return {"n": int(len(bad)), "n_fail": int(bad.sum()),
            "auc": roc_auc(p, bad) if bad.any() and (~bad).any() else None,
            "f_share": float(flagged.mean()),
            "f_recall": float(flagged[bad].mean()) if bad.any() else None,
            "fpr": float(flagged[~bad].mean()) if (~bad).any() else None}


def bert_scores(net: ShapeQCNet, thresholds: dict[str, float]) -> dict[str, Any]:
    """P(FAIL) of bert's 14 real structures, and the CPU time of one subject (median of 3)."""
    from bids_qc.models.shapeqc import predict
    from bids_qc.synth.labelmaps import load_bert

    img = load_bert("aseg")
    labels = np.rint(np.asarray(img.dataobj)).astype(np.int32)
    times = []
    for _ in range(3):
        t0 = time.process_time()
        results, _ = predict(net, labels, np.asarray(img.affine))
        times.append(time.process_time() - t0)
    pf = {r.structure: r.pfail for r in results}
    return {"pfail": pf, "flagged": [s for s, v in pf.items() if v > thresholds[s]],
            "cpu_s": float(np.median(times))}


def example_figures(net: ShapeQCNet, out_dir: Path, structure: str = "right_putamen",
                    map_index: int = 17) -> dict[str, dict[str, Any]]:
    """Per family, the smallest severity counted FAIL on a test map, rendered (PNG)."""
    from bids_qc.models.shapeqc import predict
    from bids_qc.reports.shape_figures import gradcam_figure
    from bids_qc.synth.labelmaps import load_label_map
    from bids_qc.synth.shape_damage import SHAPE_FAMILIES, damage_shape
    from bids_qc.training.shapeqc_data import subcortical_crop

    lm = load_label_map(map_index, "eval")
    crop, caff = subcortical_crop(lm.labels, lm.affine)
    out = {}
    for fam in SHAPE_FAMILIES:
        for sev in np.arange(0.05, 1.0001, 0.05):
            case = damage_shape(crop, structure, fam, 4242, float(sev))
            if case.fail:
                break
        else:
            continue
        results, _ = predict(net, case.labels, caff, (structure,))
        if not results:
            continue
        r = results[0]
        path = out_dir / f"shapeqc_example_{fam}.png"
        gradcam_figure(r, path, f"{fam}, severity {sev:.2f} (Dice {case.dice:.2f}, "
                       f"Hausdorff {case.hausdorff:.1f}): P(FAIL) {r.pfail:.2f}")
        out[fam] = {"severity": round(float(sev), 2), "dice": case.dice,
                    "hausdorff": case.hausdorff, "pfail": r.pfail, "file": path.name}
    return out


def _f(x: Any, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _realistic_share(row: dict[str, Any]) -> float | None:
    """F-share at a 10 % FAIL share: p * recall + (1 - p) * false-positive rate."""
    p, recall, fpr = REALISTIC_FAIL_SHARE, row.get("f_recall"), row.get("fpr")
    return None if recall is None or fpr is None else p * recall + (1 - p) * fpr


def _test_cells(row: dict[str, Any]) -> dict[str, Any]:
    """A test row's figures as the card prints them (F-share, time saved, ... at 10 % FAIL)."""
    saved = None if row.get("f_share") is None else 1 - row["f_share"]
    return {"auc": _f(row.get("auc")), "n": row["n"], "n_fail": row.get("n_fail"),
            "f_share": _f(row.get("f_share"), 2), "f_recall": _f(row.get("f_recall"), 2),
            "saved": _f(saved, 2), "realistic": _f(_realistic_share(row), 2)}


def _missed_goals(t: dict[str, Any]) -> list[str]:
    """Which per-structure goals a test row misses (keys the template words)."""
    return [key for key, missed in (("auc", t.get("auc") is None or t["auc"] < 0.9),
                                    ("f_recall", t.get("f_recall") is None or t["f_recall"] < 0.8),
                                    ("f_share", t.get("f_share") is None or t["f_share"] > 0.3),
                                    ("size", t["n"] < 300 or t["n_fail"] < 20)) if missed]


def _compare_context(c: dict[str, Any] | None) -> dict[str, Any] | None:
    """The shared-versus-per-structure comparison (``shapeqc_compare``), if it was run."""
    if not c:
        return None
    sh, ps = c["shared"], c["per_structure"]

    def pair(split: str, s: str, key: str, nd: int = 3) -> list[str]:
        return [_f(sh[split][s].get(key), nd), _f(ps[split][s].get(key), nd)]

    se, pe, st, pt = (sh["eval_summary"], ps["eval_summary"], sh["test_summary"],
                      ps["test_summary"])
    return {
        "per_epoch": "epochs" in c.get("recipe", {"epochs": 0}),
        "rows": [{"structure": s, "eval_auc": pair("eval", s, "auc"),
                  "test_auc": pair("test", s, "auc"),
                  "test_f_recall": pair("test", s, "f_recall", 2),
                  "test_f_share": pair("test", s, "f_share", 2)} for s in SUBCORTICAL_NAMES],
        "mean": {"eval_auc": [_f(se["mean_auc"]), _f(pe["mean_auc"])],
                 "test_auc": [_f(st["mean_auc"]), _f(pt["mean_auc"])],
                 "test_f_share": [_f(st["mean_f_share"], 2), _f(pt["mean_f_share"], 2)]},
        "auc_ge_09": [st["auc_ge_0.9"], pt["auc_ge_0.9"]],
        "goal_met": [st["recall_ge_0.8_share_le_0.3"], pt["recall_ge_0.8_share_le_0.3"]],
        "shared_better": se["mean_auc"] >= pe["mean_auc"],
    }  # fmt: skip


def _train_context(tr: dict[str, Any], n_params: int) -> dict[str, Any]:
    """The training figures the card states; optional texts only where the record has them."""
    shares = tr["train_fail_share_by_structure"].values()
    out = {k: tr[k] for k in ("maps", "crops_per_map", "damaged_per_crop", "n_train",
                              "n_train_fail", "n_eval", "n_eval_fail", "width", "seed")}
    out.update(fail_share=f"{tr['n_train_fail'] / tr['n_train']:.1%}",
               share_lo=f"{min(shares):.1%}", share_hi=f"{max(shares):.1%}",
               real_data=bool(tr.get("real_data")), real_crops=tr.get("real_crops"),
               n_params=n_params, data_minutes=f"{tr['data_minutes']:.1f}",
               train_minutes=f"{tr['train_minutes']:.1f}")
    if "epochs" not in tr:  # one sitting of steps, not the earlier recipe's epochs
        start = tr.get("start_step", 0)
        out.update(steps=tr["steps"], batch=tr["batch"], start=start, end=start + tr["steps"])
    out.update({k: tr[k] for k in ("epochs", "warm_start", "thresholds_from") if k in tr})
    return out


def card_context(r: dict[str, Any]) -> dict[str, Any]:
    """Everything ``shapeqc_card.md.j2`` shows, from the results :func:`main` gathers."""
    from bids_qc.training.licences import licence_section

    tr, thr, ev, tm = r["train"], r["thresholds"], r["eval"], r["test_maps"]
    es, ts = ev["structures"], tm["structures"]
    structures = [{"structure": s, "eval_auc": _f(es[s].get("auc")), "eval_n": es[s]["n"],
                   "eval_fail": es[s]["n_fail"], "threshold": _f(thr[s]),
                   "missed": _missed_goals(ts[s]), **_test_cells(ts[s])}
                  for s in SUBCORTICAL_NAMES]  # fmt: skip
    frozen = []
    for name in ("shapeqc_synth", "shapeqc_unseen"):
        fz, o = r["frozen"][name], r["frozen"][name].get("overall", {})
        frozen.append({"name": name, "built": fz["built"], "total": fz["total"],
                       "not_measured": bool(fz.get("not_measured")), "errors": fz.get("errors"),
                       "n": o.get("n"), "n_fail": o.get("n_fail", 0), "auc": _f(o.get("auc")),
                       "f_share": _f(o.get("f_share"), 2), "f_recall": _f(o.get("f_recall"), 2)})
    families = [{"set": name, "family": fam, "held_out": fam in HELDOUT_SHAPE_FAMILIES,
                 "n_fail": v["n_fail"], "auc": _f(v["auc"]), "f_recall": _f(v["f_recall"], 2),
                 "severity": f"{v['min_fail_severity']:.2f}"}
                for name in ("test_maps", "shapeqc_synth", "shapeqc_unseen")
                for fam, v in r["families"].get(name, {}).items()]  # fmt: skip
    ev_fail = [v["n_fail"] for v in es.values()]
    with_displaced, b = tm.get("overall_with_displaced", {}), r["bert"]
    return {
        **{k: r[k] for k in ("sha256", "thresholds_sha256", "calibration_sha256", "version",
                             "date")}, "compare": _compare_context(r.get("compare")),
        "test_fail_share": _f(tm["overall"].get("n_fail", 0) / max(tm["overall"]["n"], 1), 2),
        "realistic": f"{REALISTIC_FAIL_SHARE:.0%}", "structures": structures,
        "all": {"eval_auc": _f(ev["overall"].get("auc")), "eval_n": ev["overall"]["n"],
                "eval_fail": ev["overall"].get("n_fail"), **_test_cells(tm["overall"])},
        "goals": [row for row in structures if row["missed"]],
        "bert": {"flagged": b["flagged"], "cpu_s": f"{b['cpu_s']:.2f}", "meets": b["cpu_s"] < 5,
                 "pfail": [(s, f"{v:.2f}") for s, v in b["pfail"].items()]},
        "frozen_partial": any(f["built"] < f["total"] for f in r["frozen"].values()),
        "frozen": frozen, "families": families,
        "examples": [{"family": fam, "severity": f"{v['severity']:.2f}", "file": v["file"],
                      "dice": f"{v['dice']:.3f}", "hausdorff": f"{v['hausdorff']:.1f}",
                      "pfail": f"{v['pfail']:.2f}"} for fam, v in r["examples"].items()],
        "train": _train_context(tr, r["n_params"]),
        "families_trained": SHAPE_FAMILIES_TRAINED, "families_held_out": HELDOUT_SHAPE_FAMILIES,
        "displaced": {k: _f(with_displaced.get(k), 2) for k in ("f_recall", "f_share")},
        # The evaluation split's FAILs per structure, and what one FAIL weighs in F-recall.
        "eval_fail_lo": min(ev_fail), "eval_fail_hi": max(ev_fail),
        "recall_step_lo": f"{100 / max(max(ev_fail), 1):.0f}",
        "recall_step_hi": f"{100 / max(min(ev_fail), 1):.0f}",
        "test_n_min": min(v["n"] for v in ts.values()),
        "test_fail_min": min(v["n_fail"] for v in ts.values()),
        "licences": licence_section(["synthseg_label_maps", "freesurfer_bert",
                                     *(["ixi_dlmuse"] if tr.get("real_data") else [])]),
    }  # fmt: skip


def render_card(r: dict[str, Any]) -> str:
    """The card's markdown (``templates/shapeqc_card.md.j2`` filled from :func:`card_context`)."""
    return environment().get_template("shapeqc_card.md.j2").render(**card_context(r))


def _compare_section(c: dict[str, Any] | None) -> list[str]:
    """The card's comparison part alone (its ``compare`` block), as lines."""
    t = environment().get_template("shapeqc_card.md.j2")
    return "".join(t.blocks["compare"](t.new_context({"compare": _compare_context(c)}))
                   ).split("\n")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--train", type=Path, required=True, help="shapeqc_train.json's folder")
    p.add_argument("--build-only", action="store_true", help="build the test shapes only")
    ns = p.parse_args(argv)
    torch.set_num_threads(1)
    files = build_test_maps(ns.cache)
    if ns.build_only:
        return
    from bids_qc.models.registry import get_spec, sha256sum
    from bids_qc.models.shapeqc import (
        CALIBRATION_FILE,
        THRESHOLDS_FILE,
        shipped_model,
        shipped_thresholds,
    )

    spec = get_spec("shapeqc")
    net = shipped_model()
    thr = shipped_thresholds()
    weights_dir = spec.weights_path().parent
    cal = json.loads((weights_dir / CALIBRATION_FILE).read_text())
    ev_p = np.concatenate([cal["structures"][s]["scores"] for s in SUBCORTICAL_NAMES])
    ev_data = {"structure": np.concatenate([[s] * len(cal["structures"][s]["scores"])
                                            for s in SUBCORTICAL_NAMES]),
               "fail": np.concatenate([cal["structures"][s]["fail"] for s in SUBCORTICAL_NAMES])}
    tm_all = load_split(files)
    tm_all_p = score_set(net, tm_all)
    # Table 2 leaves out displaced structures (same shape, moved: outside a shape check's
    # reach, and not trained on); the family table reports them.
    keep = tm_all["family"] != "displaced"
    tm = {k: v[keep] for k, v in tm_all.items()}
    tm_p = tm_all_p[keep]
    train = json.loads((ns.train / "shapeqc_train.json").read_text())
    train["maps"] = "1-14"
    frozen, families = {}, {"test_maps": family_table(tm_all_p, tm_all, thr)}
    for name in ("shapeqc_synth", "shapeqc_unseen"):
        data, errors, total = load_frozen(ns.cache, name)
        n = (len(data["fail"]) if data else 0) + errors
        if n < total:  # a protocol set is reported in full or not at all
            frozen[name] = {"built": n, "total": total, "errors": errors, "not_measured": True}
            continue
        fp = score_set(net, data)
        frozen[name] = {"built": n, "total": total, "errors": errors,
                        "overall": overall(fp, data, thr),
                        "structures": structure_table(fp, data, thr) if data else {}}
        families[name] = family_table(fp, data, thr)
    card_dir = Path(__file__).resolve().parents[1] / "models" / "cards"
    compare = None
    if (ns.train / "compare.json").is_file():
        # Only a comparison made with the shipped shared network belongs in its card.
        if sha256sum(ns.train / "shapeqc.pt") == spec.sha256:
            compare = json.loads((ns.train / "compare.json").read_text())
        else:
            print("compare.json is of other weights than the shipped ones: left out")
    results = {
        "sha256": spec.sha256, "version": spec.version,
        "thresholds_sha256": sha256sum(weights_dir / THRESHOLDS_FILE),
        "calibration_sha256": sha256sum(weights_dir / CALIBRATION_FILE),
        "date": time.strftime("%Y-%m-%d"), "train": train, "thresholds": thr,
        "n_params": sum(p.numel() for p in net.parameters()),
        "eval": {"structures": structure_table(ev_p, ev_data, thr),
                 "overall": overall(ev_p, ev_data, thr)},
        "test_maps": {"structures": structure_table(tm_p, tm, thr),
                      "overall": overall(tm_p, tm, thr),
                      "overall_with_displaced": overall(tm_all_p, tm_all, thr)},
        "frozen": frozen, "families": families, "compare": compare,
        "bert": bert_scores(net, thr),
        "examples": example_figures(net, card_dir),
    }
    (ns.cache / "card_results.json").write_text(json.dumps(results, indent=1, default=float))
    write_card(card_dir / "shapeqc.md", render_card(results))
    print((card_dir / "shapeqc.md").read_text())


if __name__ == "__main__":
    main()
