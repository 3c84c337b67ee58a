"""Evaluate ManifoldQC beside SegQC on the frozen protocol and write its model card.

Three steps (the slow ones resumable, so they can run in parallel workers):

``python -m bids_qc.training.manifoldqc_card cache --out DIR --sets S... --max N``
    builds the protocol's cases (:func:`bids_qc.training.eval_protocol.build_case`, in
    protocol order) and stores each case's SegQC-conformed box and exact Dice, in the
    format of :mod:`bids_qc.training.segqc_card` (so both caches are interchangeable);
``python -m bids_qc.training.manifoldqc_card predict --eval DIR --sets S... --max N``
    predicts the stored cases with SegQC's shipped model and with ManifoldQC (weights
    ``--weights``), storing both per set;
``python -m bids_qc.training.manifoldqc_card card --eval DIR --train DIR --weights W``
    writes ``bids_qc/models/cards/manifoldqc.md`` (and ``DIR/results.json``) from those
    predictions, stamped with the weights' sha256. No number of the card is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bids_qc.models.manifoldqc import COVERED, DICE_WEIGHT, N_STRUCT, SEARCH_STEPS
from bids_qc.training.eval_protocol import HELDOUT_DAMAGE_FAMILIES, build_case, case_specs
from bids_qc.training.ledger import write_card

#: The comparison's sets: label, protocol set, role.
SETS: dict[str, tuple[str, str]] = {
    "segqc_synth": ("(a) in-domain", "anatomies 17-20, contrasts t1/t1_wide, training damage "
                    "families"),
    "segqc_t2_shift": ("(b) shift: contrast", "T2-like contrast (never trained on)"),
    "segqc_unseen_damage": ("(b) shift: damage", "damage families held out of SegQC's "
                            f"training ({', '.join(HELDOUT_DAMAGE_FAMILIES)})"),
    "segqc_real_bert": ("(c) real", "FreeSurfer bert aseg vs real segmentations and a weak "
                        "segmenter"),
}  # fmt: skip
SHIFT_SETS = ("segqc_t2_shift", "segqc_unseen_damage")
THRESHOLD = 0.7
TARGETS = {"mae_shift": 0.05, "cpu_s": 10.0}


def final_config(train: dict[str, Any]) -> dict[str, Any]:
    """Latent size and beta of the final run: the ablation's best, or a warm-started
    sitting's own (``final_latent``, ``final_beta``) when its ablation is not at hand."""
    if train.get("best") in train.get("ablation", {}):
        return train["ablation"][train["best"]]
    return {"latent": train["final_latent"], "beta": train["final_beta"]}


def _recipe_line(train: dict[str, Any], latent: int, other_latent: bool) -> str:
    """The command that made the weights: a sitting of the step-budget recipe, or the
    time-budgeted one of the shipped 1.x weights."""
    option = f" --final-latent {latent}" if other_latent else ""
    if "sitting" not in train:
        return ("- Recipe: `python -m bids_qc.training.manifoldqc --out DIR"
                f"{option}` (see its docstring; the time-budgeted recipe of its day, now with "
                "`--steps N --from-scratch`).")
    start = train.get("start_step", 0)
    scratch = " --from-scratch" if train.get("warm_start", "scratch") == "scratch" else ""
    return (f"- Sitting: global steps {start}-{start + train['final_steps']}, from "
            f"{train.get('warm_start', 'scratch')}; recipe `python -m "
            f"bids_qc.training.manifoldqc --out DIR --steps {train['final_steps']}{scratch}"
            f"{option}` (see its docstring).")

def build_cache(out: Path, sets: list[str], n: int) -> None:
    """Build and store the first ``n`` cases of each set not yet stored (resumable)."""
    from bids_qc.models.segqc import conform, group_index
    from bids_qc.structures import STRUCTURE_NAMES

    # Interleaved over the sets, so a stopped build leaves them balanced.
    for i in range(n):
        for spec in [case_specs(name)[i] for name in sets if i < len(case_specs(name))]:
            name = spec.test_set
            path = out / name / f"{spec.index:04d}.npz"
            if path.is_file():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            case = build_case(spec)
            img, lab = conform(case.image, case.affine, case.labels, case.affine)
            truth = np.array([case.truth["dice"][s] for s in STRUCTURE_NAMES], dtype=np.float64)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, image=img.astype(np.float16), groups=group_index(lab),
                                truth=truth, spec=json.dumps(spec.__dict__))  # fmt: skip
            tmp.replace(path)
            print(f"{time.strftime('%H:%M:%S')} {name} {spec.index} {time.time() - t0:.1f}s",
                  flush=True)  # fmt: skip


def load_set(folder: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """The first ``n`` stored cases of one set: images, groups, truths, specs."""
    files = sorted(f for f in folder.glob("[0-9]*.npz") if ".tmp" not in f.name)[:n]
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


def manifold_predict(net: Any, images: np.ndarray, groups: np.ndarray, batch: int = 16,
                     steps: int = 50) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """ManifoldQC's Dice (N, 14) and search steps per batch for stored SegQC boxes."""
    from bids_qc.models.manifoldqc import predict as mqc_predict
    from bids_qc.models.manifoldqc import prepare_from_box, to_dice

    out, used = [], []
    for s in range(0, len(images), batch):
        pairs = [prepare_from_box(images[i].astype(np.float32), groups[i])
                 for i in range(s, min(s + batch, len(images)))]  # fmt: skip
        r = mqc_predict(pairs, model=net, steps=steps)
        out.append(to_dice(r.dice))
        used.append(r.steps)
    return np.concatenate(out), np.array(used)


def predict_sets(eval_dir: Path, sets: list[str], n: int, weights: Path,
                 steps: int = 50) -> None:  # fmt: skip
    """Predictions of both models on the first ``n`` stored cases of each set (cached per
    weights file: predictions of other weights, or of fewer cases, are redone)."""
    import torch

    from bids_qc.models.manifoldqc import load_model
    from bids_qc.models.registry import sha256sum
    from bids_qc.models.segqc import load_model as segqc_model
    from bids_qc.training.segqc_card import predict_cached

    torch.set_num_threads(1)
    net = load_model("cpu", torch.load(weights, map_location="cpu", weights_only=True))
    seg_net = segqc_model("cpu")
    sha = sha256sum(weights)
    for name in sets:
        out = eval_dir / "preds" / f"{name}.npz"
        if out.is_file():
            stored = len(list((eval_dir / name).glob("[0-9]*.npz")))
            with np.load(out) as z:
                same = "weights_sha256" in z and str(z["weights_sha256"]) == sha
                if same and len(z["truth"]) >= min(n, stored):
                    continue
        images, groups, truth, specs = load_set(eval_dir / name, n)
        t0 = time.time()
        mqc, used = manifold_predict(net, images, groups, steps=steps)
        t1 = time.time()
        seg = predict_cached(seg_net, images, groups)[:, :N_STRUCT]
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, manifoldqc=mqc, segqc=seg, truth=truth[:, :N_STRUCT],
                 specs=json.dumps(specs), steps=used, max_steps=steps,
                 seconds=t1 - t0, weights_sha256=sha)  # fmt: skip
        print(f"{name}: {len(truth)} cases, {t1 - t0:.0f}s ManifoldQC", flush=True)


def pair_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Pearson r and MAE (SD) over every (image, structure) pair with a finite truth."""
    ok = np.isfinite(truth) & np.isfinite(pred)
    p, t = pred[ok], truth[ok]
    err = np.abs(p - t)
    r = float(np.corrcoef(p, t)[0, 1]) if p.size > 2 and p.std() > 0 and t.std() > 0 else None
    return {"r": r, "mae": float(err.mean()), "sd": float(err.std()), "pairs": int(ok.sum()),
            "const_mae": float(np.abs(t - t.mean()).mean())}  # fmt: skip


def auc(score_good: np.ndarray, score_bad: np.ndarray) -> float | None:
    """Probability that a good case scores higher than a damaged one (ties count half)."""
    from bids_qc.calibrate import roc_auc

    if not len(score_good) or not len(score_bad):
        return None
    scores = np.concatenate([np.asarray(score_good), np.asarray(score_bad)])
    good = np.arange(scores.size) < len(score_good)
    return roc_auc(scores, good)


def evaluate(eval_dir: Path) -> dict[str, Any]:
    """Metrics of both models on every predicted set."""
    results: dict[str, Any] = {}
    for name in SETS:
        f = eval_dir / "preds" / f"{name}.npz"
        if not f.is_file():
            continue
        with np.load(f) as z:
            mqc, seg, truth = z["manifoldqc"], z["segqc"], z["truth"]
            steps, seconds = z["steps"], float(z["seconds"])
            max_steps = int(z["max_steps"])
        mean_t = np.nanmean(truth, axis=1)
        bad = mean_t < 0.999
        res = {"n_cases": int(len(truth)), "protocol_cases": len(case_specs(name)),
               "n_damaged": int(bad.sum()), "mean_search_steps": float(steps.mean()),
               "max_search_steps": max_steps,
               "manifoldqc_s_per_case": seconds / len(truth)}  # fmt: skip
        for model, pred in (("segqc", seg), ("manifoldqc", mqc)):
            m = pair_metrics(pred, truth)
            score = np.nanmean(pred, axis=1)
            m["auc_good_vs_damaged"] = auc(score[~bad], score[bad])
            m["mean_dice_good"] = float(np.mean(score[~bad])) if (~bad).any() else None
            flagged = np.any(pred < THRESHOLD, axis=1)
            m["flag_rate_good"] = float(flagged[~bad].mean()) if (~bad).any() else None
            m["flag_rate_damaged"] = float(flagged[bad].mean()) if bad.any() else None
            err = np.abs(pred - truth)
            m["per_structure_mae"] = {s: float(np.nanmean(err[:, j]))
                                      for j, s in enumerate(COVERED)}  # fmt: skip
            res[model] = m
        results[name] = res
    return results


def cpu_time_per_image(net: Any, repeats: int = 2) -> dict[str, float]:
    """Median CPU wall time (1 thread) of preprocessing + search on bert (256^3, 1 mm)."""
    import torch

    from bids_qc.models.manifoldqc import predict, preprocess
    from bids_qc.synth.labelmaps import load_bert

    torch.set_num_threads(1)
    aseg, norm = load_bert("aseg"), load_bert("norm")
    labels = np.rint(np.asarray(aseg.dataobj)).astype(np.int32)
    image = np.asarray(norm.dataobj, dtype=np.float32)
    pre, net_t, steps = [], [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = preprocess(image, norm.affine, labels, aseg.affine)
        t1 = time.perf_counter()
        steps = predict([x], model=net).steps
        pre.append(t1 - t0)
        net_t.append(time.perf_counter() - t1)
    return {"preprocess_s": float(np.median(pre)), "search_s": float(np.median(net_t)),
            "total_s": float(np.median(np.add(pre, net_t))), "steps": int(steps)}  # fmt: skip


def _f(x: Any, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _ablation_rows(train: dict[str, Any]) -> list[str]:
    rows = ["| latent | beta | val Dice MAE | val r | MAE on good pairs | search loss start -> "
            "end | train + val s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, a in sorted(train["ablation"].items(), key=lambda kv: (kv[1]["latent"],
                                                                     kv[1]["beta"])):
        best = " (best)" if key == train["best"] else ""
        rows.append(f"| {a['latent']} | {a['beta']:g}{best} | {_f(a['mae'])} | {_f(a['r'])} | "
                    f"{_f(a['mae_good'])} | {a['loss_start']:.0f} -> {a['loss_end']:.0f} | "
                    f"{a['train_s'] + a['val_s']:.0f} |")  # fmt: skip
    return rows


def _ablation_note(train: dict[str, Any]) -> list[str]:
    """A paragraph when the ablation ran with an earlier recipe than the final model."""
    recipes = sorted({a.get("recipe", 1) for a in train["ablation"].values()})
    final = train.get("recipe", 1)
    if recipes == [final]:
        return []
    return [f"The ablation ran with recipe {', '.join(map(str, recipes))} of the training "
            f"script and was not re-run for the final model (recipe {final}: leaky ReLUs, He "
            "initialisation, soft-Dice term, faster template) "
            "for lack of CPU time; the final model keeps the configuration it chose, which is "
            "also the paper's latent size. Its numbers rank configurations of the earlier "
            "recipe only.", ""]  # fmt: skip


def _table1(results: dict[str, Any]) -> list[str]:
    rows = ["| set | what | cases (of protocol) | (image, structure) pairs | SegQC r | SegQC MAE "
            "(SD) | ManifoldQC r | ManifoldQC MAE (SD) | constant MAE |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results.items():
        s, m = r["segqc"], r["manifoldqc"]
        label, what = SETS[name]
        rows.append(f"| {label}: `{name}` | {what} | {r['n_cases']} ({r['protocol_cases']}) | "
                    f"{m['pairs']} | {_f(s['r'])} | {_f(s['mae'])} ({_f(s['sd'])}) | "
                    f"{_f(m['r'])} | {_f(m['mae'])} ({_f(m['sd'])}) | {_f(m['const_mae'])} |")
    return rows


def _detection_rows(results: dict[str, Any]) -> list[str]:
    rows = ["| set | damaged cases | SegQC AUC | ManifoldQC AUC | SegQC flag rate at 0.7 "
            "(good / damaged) | ManifoldQC flag rate at 0.7 (good / damaged) | ManifoldQC "
            "mean predicted Dice of good cases | ManifoldQC s/case (batched) | search steps "
            "(mean of batches / bound) |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results.items():
        rows.append(f"| `{name}` | {r['n_damaged']} / {r['n_cases']} | "
                    f"{_f(r['segqc']['auc_good_vs_damaged'])} | "
                    f"{_f(r['manifoldqc']['auc_good_vs_damaged'])} | "
                    f"{_f(r['segqc']['flag_rate_good'], 2)} / "
                    f"{_f(r['segqc']['flag_rate_damaged'], 2)} | "
                    f"{_f(r['manifoldqc']['flag_rate_good'], 2)} / "
                    f"{_f(r['manifoldqc']['flag_rate_damaged'], 2)} | "
                    f"{_f(r['manifoldqc'].get('mean_dice_good'))} | "
                    f"{_f(r['manifoldqc_s_per_case'], 2)} | {r['mean_search_steps']:.0f} / "
                    f"{r['max_search_steps']} |")
    return rows


def _structure_rows(results: dict[str, Any]) -> list[str]:
    names = list(results)
    rows = ["| structure | " + " | ".join(f"{n} SegQC / ManifoldQC" for n in names) + " |",
            "|---|" + "---|" * len(names)]  # fmt: skip
    for s in COVERED:
        cells = [f"{_f(results[n]['segqc']['per_structure_mae'][s])} / "
                 f"{_f(results[n]['manifoldqc']['per_structure_mae'][s])}" for n in names]
        rows.append(f"| {s} | " + " | ".join(cells) + " |")
    return rows


def _final_choice(train: dict[str, Any], others: list[dict[str, Any]]) -> list[str]:
    """How the final latent size was chosen, with the validation of every final run."""
    best = final_config(train)
    latent = train.get("final_latent", best["latent"])
    if latent == best["latent"] and not others:
        return []
    rows = ["", "Final runs compared (same recipe and data, time-bounded, each with its own "
            "configuration; "
            "scored on the validation pairs of maps 15-16, which the final runs also train "
            "on, so this measures fit more than generalisation; search bounded at "
            f"{train['search_steps']} steps):", "",
            "| latent | beta | steps | minutes | val Dice MAE | MAE on good pairs | val r | "
            "shipped |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in sorted([train, *others], key=lambda t: t.get("final_latent", best["latent"])):
        v = t["final_val_on_seen_maps"]
        beta = final_config(t)["beta"]
        rows.append(f"| {t.get('final_latent', best['latent'])} | {beta:g} | {t['final_steps']} | "
                    f"{t['final_minutes']:.1f} | {_f(v['mae'])} | {_f(v['mae_good'])} | "
                    f"{_f(v['r'])} | {'yes' if t is train else 'no'} |")
    return rows


def render_card(results: dict[str, Any], timing: dict[str, float], train: dict[str, Any],
                sha: str, version: str,
                others: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
    """The model card (markdown) from the evaluation results.

    ``others``: summaries of final runs that were trained and not shipped (compared in the
    card's Training section).
    """
    others = others or []
    from bids_qc.training.licences import licence_section

    shift = [results[s] for s in SHIFT_SETS if s in results]
    shift_pairs = sum(r["manifoldqc"]["pairs"] for r in shift)
    mqc_shift = (sum(r["manifoldqc"]["mae"] * r["manifoldqc"]["pairs"] for r in shift)
                 / shift_pairs) if shift_pairs else None  # fmt: skip
    seg_shift = (sum(r["segqc"]["mae"] * r["segqc"]["pairs"] for r in shift)
                 / shift_pairs) if shift_pairs else None  # fmt: skip
    best = final_config(train)
    synth_mqc = results.get("segqc_synth", {}).get("manifoldqc", {})
    latent = train.get("final_latent", best["latent"])
    status = ("met" if mqc_shift is not None and mqc_shift <= TARGETS["mae_shift"]
              and seg_shift is not None and mqc_shift < seg_shift else "missed")  # fmt: skip
    lines = [
        "# ManifoldQC model card", "",
        f"- Model: `manifoldqc` {version}; weights `manifoldqc.pt`, sha256 `{sha}` "
        "(fp16 storage).",
        "- Method (after Wang et al., MICCAI 2020): a VAE learns only good (image, "
        "segmentation) pairs; a pair under QC is projected onto that manifold by Adam on the "
        "latent code (start: the encoder's mean; at most 50 steps, early stop), and the "
        "Dice between the decoded surrogate segmentation and the input is the predicted "
        "Dice of each structure.",
        f"- Structures covered: the 14 subcortical structures ({', '.join(COVERED)}); "
        "columns of the other structures are not produced. Why: a 3-D VAE on a CPU models "
        "them at 2 mm in one 96 x 80 x 80 mm crop; cortex and white matter would need the "
        "whole brain at a finer scale.",
        "- Input: SegQC's conformed 2 mm box (image scaled by its 99th percentile inside the "
        "segmentation, labels nearest), cropped to 48 x 40 x 40 voxels centred on the "
        "centroid of the 14 structures; channels: image + one-hot (background + 14).",
        f"- Network: 3 stride-2 convolutions (8-16-32) and a linear layer to a {latent}-"
        "dimensional latent; mirrored decoder plus a learned per-voxel template (initialised "
        "to the training crops' probabilistic atlas); leaky ReLUs, He initialisation. "
        f"Loss: summed cross-entropy (segmentation) + {DICE_WEIGHT:g} x soft-Dice loss "
        "summed over the 14 structures + summed squared error (image) + beta x KL with "
        f"beta = {best['beta']:g}; the latent search minimises the same reconstruction "
        "distance.",
        "- Card generated by `python -m bids_qc.training.manifoldqc_card card` from a real "
        "evaluation run; every number below comes from it.", "",
        "## Targets", "", "| target | measured | goal | status |", "|---|---|---|---|",
        f"| ManifoldQC MAE under shift (t2 contrast + unseen damage, pooled pairs) | "
        f"{_f(mqc_shift)} (SegQC: {_f(seg_shift)}) | <= {TARGETS['mae_shift']} and below "
        f"SegQC | {status} |",
        f"| CPU time per image (1 thread, bert 256^3: conform + crop + search) | "
        f"{_f(timing['total_s'], 2)} s | <= {TARGETS['cpu_s']:.0f} s | "
        f"{'met' if timing['total_s'] <= TARGETS['cpu_s'] else 'missed'} |", "",
        f"CPU timing on bert: preprocessing {_f(timing['preprocess_s'], 2)} s, search "
        f"{_f(timing['search_s'], 2)} s ({timing['steps']} steps), median of 2, on the shared "
        "2-core training machine (other jobs running). GPU: not measured (no GPU here).", "",
        "## Comparison with SegQC (the form of the paper's Table 1)", "",
        "Pearson r and MAE (SD) of predicted vs true Dice over every (image, structure) pair "
        "of the 14 covered structures with a defined true Dice (SegQC's predictions of the "
        "same 14 structures, from its shipped weights). Cases are the first ones of each "
        "frozen set in protocol order (cycling over anatomies and damage families); "
        "`constant MAE`: predicting the set's mean true Dice. The evaluation bounded "
        f"ManifoldQC's search at {max(r['max_search_steps'] for r in results.values())} "
        f"steps (the app's bound: {SEARCH_STEPS}).", "",
        *_table1(results), "",
        "Detection of damaged cases (true mean Dice of the 14 structures below 0.999) by the "
        "predicted mean Dice (AUC). The seconds per case are those of the evaluation run: "
        "batches of 16 on the loaded training machine (the per-image "
        "timing is the one in Targets):", "", *_detection_rows(results), "",
        "## Ablation (validation maps 15-16, held out of the ablation's training)", "",
        f"Each configuration: {train['ablation_steps']} steps of batch "
        f"{train['ablation_batch']} on "
        f"{train['ablation_train_cases']} good pairs (maps 1-14), the same for all; scored "
        f"by the Dice MAE of a {train['search_steps']}-step search on {train['val_pairs']} "
        "validation pairs (each good pair of maps 15-16 and one damaged copy, training damage "
        f"families). The budget is {train['ablation_steps'] / max(train['final_steps'], 1):.0%} "
        "of the final run's steps, so the table ranks early learning more than the final "
        "capacity of each configuration.", "", *_ablation_note(train),
        *_ablation_rows(train), "",
        "## Per structure MAE", "", *_structure_rows(results), "",
        "## Training", "",
        f"- Data: {train['pool_cases']} good pairs synthesized from SynthSeg training label maps "
        f"{train['maps'][0]}-{train['maps'][-1]} (contrasts {', '.join(train['contrasts'])}; the "
        "engine's random deformation, resolution and skull stripping; SegQC's pool, same keys "
        "and seed), with random shifts of up to 2 voxels and intensity scaling. No damaged "
        "pair is ever trained on.",
        f"- Ablation: {len(train['ablation'])} configurations, {train['ablation_minutes']:.1f} "
        "minutes of wall time summed over configurations.",
        f"- Final: latent {latent}, beta {best['beta']:g}, "
        f"{train['final_steps']} steps of batch {train['batch']} = {train['final_samples']} "
        f"samples on all 16 maps, {train['final_minutes']:.1f} minutes; recipe seed "
        f"{train['seed']} (the final run draws its batches from seed + 1).",
        f"- Where: {train['hardware']}, {train['threads']} torch thread per process; "
        f"{train['total_training_minutes'] + sum(o['final_minutes'] for o in others):.1f} "
        "process-minutes in all (ablation summed over its configurations + final run"
        f"{' + final runs not shipped' if others else ''}).",
        _recipe_line(train, latent, latent != best["latent"]),
        *_final_choice(train, others), "",
        "## Limitations", "",
        "- Trained for minutes on a shared CPU: the surrogates are coarse, so good pairs get a "
        "Dice below 1 (mean predicted Dice of the good in-domain cases: "
        f"{_f(synth_mqc.get('mean_dice_good'))}) "
        "and small structures (accumbens, pallidum, amygdala) suffer most.",
        "- Predicted Dice is measured on the 2 mm crop; the true Dice on the segmentation's "
        "own grid, so boundary errors finer than 2 mm are invisible to it.",
        "- A structure missing from the input scores 0 (every brain has all 14).",
        "- Read the AUC beside the MAE: the predicted Dice ranks cases, but its values are "
        "biased low (coarse surrogates), so the flag at a fixed threshold fires on good "
        "images too: at 0.7 it flagged "
        f"{_f(synth_mqc.get('flag_rate_good'), 2)} of the good and "
        f"{_f(synth_mqc.get('flag_rate_damaged'), 2)} of the damaged in-domain cases. This "
        "is why the model ships as experimental.", "",
        licence_section(["synthseg_label_maps", "freesurfer_bert"]).rstrip("\n"), "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache", help="build the evaluation cases")
    c.add_argument("--out", default="/work/cache/manifoldqc/eval")
    c.add_argument("--sets", nargs="+", default=list(SETS))
    c.add_argument("--max", type=int, default=40)
    k = sub.add_parser("predict", help="predict stored cases with both models")
    k.add_argument("--eval", default="/work/cache/manifoldqc/eval")
    k.add_argument("--sets", nargs="+", default=list(SETS))
    k.add_argument("--max", type=int, default=100)
    k.add_argument("--weights", required=True)
    k.add_argument("--steps", type=int, default=50, help="bound of the latent search")
    w = sub.add_parser("card", help="write the card from the stored predictions")
    w.add_argument("--eval", default="/work/cache/manifoldqc/eval")
    w.add_argument("--train", required=True, help="training output folder (summary.json)")
    w.add_argument("--weights", default=None, help="weights file (default: the shipped one)")
    w.add_argument("--card", default=None, help="card path (default: the package's)")
    w.add_argument("--compare", nargs="*", default=[],
                   help="training folders of final runs not shipped (listed in the card)")
    args = p.parse_args(argv)
    if args.cmd == "cache":
        build_cache(Path(args.out), args.sets, args.max)
        return
    if args.cmd == "predict":
        predict_sets(Path(args.eval), args.sets, args.max, Path(args.weights), args.steps)
        return
    import torch

    from bids_qc.models.manifoldqc import load_model
    from bids_qc.models.registry import get_spec, sha256sum

    here = Path(__file__).resolve().parents[1] / "models"
    weights = Path(args.weights) if args.weights else here / "weights" / "manifoldqc.pt"
    net = load_model("cpu", torch.load(weights, map_location="cpu", weights_only=True))
    results = evaluate(Path(args.eval))
    timing = cpu_time_per_image(net)
    train = json.loads((Path(args.train) / "summary.json").read_text())
    sha = sha256sum(weights)
    others = [json.loads((Path(d) / "summary.json").read_text()) for d in args.compare]
    card = render_card(results, timing, train, sha, get_spec("manifoldqc").version, others)
    card_path = Path(args.card) if args.card else here / "cards" / "manifoldqc.md"
    write_card(card_path, card)
    (Path(args.eval) / "results.json").write_text(json.dumps(
        {"sha256": sha, "timing": timing, "train": train, "results": results}, indent=1))
    print(card)


if __name__ == "__main__":
    main()
