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
from bids_qc.training.card_sections import write_card
from bids_qc.training.eval_protocol import (
    HELDOUT_DAMAGE_FAMILIES,
    P_CLEAN,
    CaseSpec,
    build_case,
    case_specs,
)
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


def _fmt(x: Any, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _status(value: float | None, target: float, higher: bool = False) -> str:
    if value is None:
        return "not measured"
    return "met" if (value >= target if higher else value <= target) else "missed"


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


def _set_rows(results: dict[str, Any]) -> list[str]:
    rows = ["| set | cases (of protocol) | MAE mean (SD) | constant MAE | r mean | MAE struct "
            "avg / max | r all | acc / sens / spec (structures) | acc / sens / spec (cases) |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results.items():
        d, c = r["detection"], r["detection_case"]
        rows.append(
            f"| {name} | {r['n_cases']} ({r['protocol_cases']}) | {_fmt(r['mae_mean'])} "
            f"({_fmt(r['sd_mean'])}) | {_fmt(r['const_mae_mean'])} | {_fmt(r['r_mean'])} | "
            f"{_fmt(r['mae_structure_avg'])} / {_fmt(r['mae_structure_max'])} | "
            f"{_fmt(r['r_all'])} | {_fmt(d['accuracy'])} / {_fmt(d['sensitivity'])} / "
            f"{_fmt(d['specificity'])} | {_fmt(c['accuracy'])} / {_fmt(c['sensitivity'])} / "
            f"{_fmt(c['specificity'])} |"
        )
    return rows


def _family_rows(results: dict[str, Any]) -> list[str]:
    rows = ["| set | family | held out | cases | MAE mean | MAE struct avg | r all | "
            "acc / sens / spec (structures) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for fam, m in r["by_family"].items():
            d = m["detection"]
            rows.append(f"| {name} | {fam} | {'yes' if fam in HELDOUT_DAMAGE_FAMILIES else 'no'}"
                        f" | {m['n_cases']} | {_fmt(m['mae_mean'])} | "
                        f"{_fmt(m['mae_structure_avg'])} | {_fmt(m['r_all'])} | "
                        f"{_fmt(d['accuracy'])} / {_fmt(d['sensitivity'])} / "
                        f"{_fmt(d['specificity'])} |")  # fmt: skip
    return rows


def _structure_rows(results: dict[str, Any], sets: list[str]) -> list[str]:
    sets = [s for s in sets if s in results]
    rows = ["| structure | " + " | ".join(f"{s} MAE (SD), r" for s in sets) + " |",
            "|---|" + "---|" * len(sets)]  # fmt: skip
    for n in STRUCTURE_NAMES:
        cells = [f"{_fmt(results[s]['per_structure'][n]['mae'])} "
                 f"({_fmt(results[s]['per_structure'][n]['sd'])}), "
                 f"{_fmt(results[s]['per_structure'][n]['r'], 2)}" for s in sets]  # fmt: skip
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    return rows


def _missing_lines(missing: dict[str, list[int]]) -> list[str]:
    if not missing:
        return []
    sets = ", ".join(f"{n} ({b} of {t} cases built)" for n, (b, t) in missing.items())
    return [f"Not measured for these weights (a set is reported only when all its protocol "
            f"cases are built; synthesising them takes about 5 CPU-s a case): {sets}.", ""]


def _real_lines(train: dict[str, Any]) -> list[str]:
    if not train.get("real_people"):
        return []
    return [f"- Real data: the training part's {train['real_people']} IXI people (whole-head "
            "T1w, DLMUSE segmentations mapped to FreeSurfer codes) in "
            f"{train['real_share']:.0%} of the samples, damaged by the same families.",
            f"- Single-structure damage (the real-data gate's failure class) with probability "
            f"{train.get('plant_p', 0):g} per damage: one subcortical structure eroded into, "
            "or grown over, its neighbours to an exact Dice."]


def _recipe_lines(train: dict[str, Any]) -> list[str]:
    """How the weights were trained: one sitting of the step-budget recipe, or the earlier
    time-budgeted one (the shipped 1.x weights)."""
    if "sitting" not in train:
        return ["- Recipe: `python -m bids_qc.training.segqc --minutes N --out DIR` (the "
                "time-budgeted recipe of its day; now `--steps N`, warm-started from the "
                "shipped weights)."]
    start = train.get("start_step", 0)
    return [f"- Sitting: global steps {start}-{start + train['steps']}, from "
            f"{train.get('warm_start', 'scratch')}; recipe "
            "`python -m bids_qc.training.segqc --steps N --out DIR`."]


def render_card(results: dict[str, Any], timing: dict[str, float], train: dict[str, Any],
                sha: str, version: str, missing: dict[str, list[int]] | None = None
                ) -> str:  # fmt: skip
    """The model card (markdown) from the evaluation results (``missing``: the sets not
    measured for these weights, with the cases built and planned)."""
    # The accuracy targets hold "on both": the synthetic protocol set and bert
    # with damage of known Dice.
    target_rows = []
    for name in ("segqc_synth", "bert_damage"):
        if name not in results:
            continue
        res = results[name]
        target_rows += [
            (f"MAE of the mean Dice, {name}", res["mae_mean"], TARGETS["mae_mean"], False),
            (f"worst per-structure MAE, {name}", res["mae_structure_max"],
             TARGETS["mae_structure"], False),
            (f"accuracy of Dice < 0.7 (structures), {name}", res["detection"]["accuracy"],
             TARGETS["accuracy"], True),
        ]  # fmt: skip
    target_rows += [
        ("CPU time per image (2 threads, 256^3 input)", timing["total_s"], TARGETS["cpu_s"],
         False),
        ("GPU time per image", None, TARGETS["gpu_s"], False),
    ]  # fmt: skip
    lines = [
        "# SegQC model card", "",
        f"- Model: `segqc` {version}; weights `segqc.pt`, sha256 `{sha}` (fp16 storage).",
        "- Task: regress the Dice of each of the 20 contract structures "
        "(`bids_qc.structures.STRUCTURES`) of a FreeSurfer-coded segmentation against the "
        "(unknown) true segmentation, from the image and the one-hot segmentation "
        "(method after Robinson et al., 2018).",
        "- Input: image + one-hot of 19 structure groups + one channel of other labels, "
        "resampled (trilinear / nearest) onto an 80 x 96 x 80 box of 2 mm voxels along world "
        "RAS axes centred on the segmentation's bounding box; any voxel size works.",
        "- Network: 2x2x2 patch stem, three strided pre-activation residual blocks (widths "
        "12-24-32-48) flattened at 5 x 6 x 5, beside per-group statistics (log volume, "
        "centroid, spread, image mean and SD), into a 256-unit MLP; trained with MSE.",
        "- Output: sigmoid Dice per structure; `segqc_flag` = 1 when any is below the "
        "threshold (default 0.7).",
        "- Card generated by `python -m bids_qc.training.segqc_card card` from a real "
        "evaluation run; every number below comes from it.", "",
        "## Targets", "", "| target | measured | goal | status |", "|---|---|---|---|",
    ]  # fmt: skip
    for label, value, goal, higher in target_rows:
        sign = ">=" if higher else "<="
        lines.append(f"| {label} | {_fmt(value)} | {sign} {goal} | "
                     f"{_status(value, goal, higher)} |")  # fmt: skip
    lines += [
        "", f"GPU timing: not measured (no GPU in the training session). CPU timing on bert: "
        f"preprocessing {_fmt(timing['preprocess_s'])} s, network {_fmt(timing['network_s'])} s "
        "(median, batch 1, 2 threads).", "",
        "## Results by test set", "",
        "`MAE mean`: absolute error of the per-case mean Dice (`segqc_dice_mean`); `constant "
        "MAE`: a constant predictor (the set's own mean) for comparison; detection counts "
        "`Dice < 0.7` per (case, structure) and per case (any structure). Sets built only in "
        "part show the number of protocol cases used (the first ones, in protocol order, "
        "which cycles over anatomies and families).", "",
        *_set_rows(results), "", *_missing_lines(missing or {}),
        "## Results by damage family (held-out families: "
        f"{', '.join(HELDOUT_DAMAGE_FAMILIES)})", "", *_family_rows(results), "",
        "## Per structure", "",
        *_structure_rows(results, ["segqc_synth", "segqc_unseen_damage", "bert_damage",
                                   "segqc_real_bert"]), "",  # fmt: skip
        "## Training", "",
        f"- Data: {train['pool_cases']} synthesized cases from SynthSeg training label maps "
        f"{train['maps'][0]}-{train['maps'][-1]} (contrasts {', '.join(train['contrasts'])}), "
        "damaged on the fly; per sample 0-3 damages with probabilities "
        f"{train['n_damage_p']}, severities uniform in [0.05, 1].",
        *_real_lines(train),
        f"- Damage families trained: {', '.join(train['training_damage_families'])}.",
        "- Held out of training (frozen protocol): "
        f"{', '.join(train['heldout_damage_families'])}.",
        f"- Size: {train['steps']} steps of batch {train['batch']} = {train['samples']} samples "
        f"({train['epochs_over_pool']:.1f} epochs over the pool), {train['minutes']:.1f} minutes "
        f"on {train['hardware']}; seed {train['seed']}.",
        *_recipe_lines(train), "",
        "## Limitations", "",
        "- Damage is applied on the 2 mm model grid in training; evaluation damage is on the "
        "segmentation's own grid (0.7-1.6 mm synthetic, 1 mm bert), so sub-2 mm boundary "
        "errors are finer than anything seen in training.",
        *_contrast_limit(train), "", "",
    ]
    return "\n".join(lines) + licence_section(LICENCE_SOURCES)


def _contrast_limit(train: dict[str, Any]) -> list[str]:
    """What the training contrasts leave out (real IXI T1w since 1.1.0)."""
    if train.get("real_people"):
        return [f"- Trained on synthetic T1-like contrasts and {train['real_people']} real IXI "
                "T1w people (DLMUSE segmentations mapped to FreeSurfer codes), never on T2w; "
                "see `segqc_t2_shift` for a T2-like contrast."]
    return ["- Trained on synthetic T1-like contrasts only; see `segqc_t2_shift` for a "
            "T2-like contrast."]


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
