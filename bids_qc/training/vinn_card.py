"""Evaluate VINN and write its model card from that run.

``python -m bids_qc.training.vinn_card cache --out /tmp/vinn_eval``
    synthesizes the held-out cases (label maps 17-20, contrast ``t1``, skull-stripped,
    isotropic :data:`SYNTH_RESOLUTIONS`; seeds :data:`SYNTH_SEED` + map) with their exact
    segmentation (resumable);
``python -m bids_qc.training.vinn_card card --eval /tmp/vinn_eval --train DIR --weights W``
    segments every cached case and FreeSurfer's ``bert`` (``norm.mgz`` at 1 mm and
    resampled to :data:`BERT_RESOLUTIONS`) with the weights ``W``, measures the CPU time of
    a 1 mm image, and writes ``bids_qc/models/cards/vinn.md`` (and a JSON of every number)
    stamped with the weights' sha256. No number of the card is typed by hand.
``python -m bids_qc.training.vinn_card part {bert,synth} --eval /tmp/vinn_eval --weights W``
    runs one half of that evaluation and stores it (``<part>.json``, with the weights'
    sha256), so the halves can run in two processes; ``card`` then uses the stored halves
    whose sha256 matches.

Dice is measured on the reference segmentation's grid: the synthetic truth is on the
image's own grid; bert's predictions at other resolutions are brought back onto the
``aseg.mgz`` grid by nearest-neighbour resampling.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bids_qc.structures import STRUCTURE_NAMES
from bids_qc.synth.metrics import subcortical_dice
from bids_qc.training.ledger import write_card

SYNTH_RESOLUTIONS: tuple[float, ...] = (0.7, 1.0, 1.4)
BERT_RESOLUTIONS: tuple[float, ...] = (0.8, 1.4)
SYNTH_SEED = 17_000
HELDOUT_MAPS: tuple[int, ...] = (17, 18, 19, 20)
TARGETS = {"bert_subcortical": 0.85, "resolution_change": 0.02, "cpu_s": 60.0, "gpu_s": 5.0,
           "ci_synth_subcortical": 0.6}  # fmt: skip


def synth_case(m: int, res: float) -> Any:
    """The held-out synthetic case of map ``m`` at ``res`` mm (deterministic)."""
    from bids_qc.synth.labelmaps import load_label_map
    from bids_qc.synth.synthesize import synthesize

    lm = load_label_map(m, "eval")
    return synthesize(lm.labels, lm.affine, SYNTH_SEED + m, "t1", resolution=res,
                      skull_strip=True, split="eval")  # fmt: skip


def build_cache(out: Path) -> None:
    """Synthesize (or find) every held-out case."""
    out.mkdir(parents=True, exist_ok=True)
    for res in SYNTH_RESOLUTIONS:
        for m in HELDOUT_MAPS:
            path = out / f"map{m:02d}_{res:.1f}mm.npz"
            if path.is_file():
                continue
            case = synth_case(m, res)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, image=case.image, labels=case.labels.astype(np.int16),
                                affine=case.affine)  # fmt: skip
            tmp.rename(path)
            print(f"{path.name} {case.image.shape}", flush=True)



def evaluate_synth(eval_dir: Path, model: Any, maps: tuple[int, ...] = HELDOUT_MAPS
                   ) -> dict[str, Any]:  # fmt: skip
    """Dice per structure of every cached case, and means per resolution."""
    from bids_qc.models.vinn import segment_array

    out: dict[str, Any] = {}
    for res in SYNTH_RESOLUTIONS:
        cases = {}
        for m in maps:
            path = eval_dir / f"map{m:02d}_{res:.1f}mm.npz"
            if not path.is_file():
                continue
            with np.load(path) as z:
                pred = segment_array(model, z["image"], z["affine"])
                cases[m] = subcortical_dice(z["labels"].astype(np.int32), pred)
            print(f"synth map {m} {res} mm: subcortical {cases[m]['subcortical_mean']:.3f}",
                  flush=True)
        if cases:
            keys = list(next(iter(cases.values())))
            out[f"{res:.1f}"] = {"cases": cases, "mean": {
                k: float(np.nanmean([c[k] for c in cases.values()])) for k in keys}}
    return out


def merge_synth(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Stored synth parts (disjoint maps) as one result, means recomputed over all cases."""
    out: dict[str, Any] = {}
    for res in SYNTH_RESOLUTIONS:
        cases = {str(m): c for p in parts for m, c in p.get(f"{res:.1f}", {}).get(
            "cases", {}).items()}  # fmt: skip
        if cases:
            keys = list(next(iter(cases.values())))
            out[f"{res:.1f}"] = {"cases": dict(sorted(cases.items())), "mean": {
                k: float(np.nanmean([c[k] for c in cases.values()])) for k in keys}}
    return out


def resumes(train_dir: Path) -> list[str]:
    """The ``resumed at step N`` lines of the training log (a budget change is one)."""
    log = train_dir / "train.log"
    if not log.is_file():
        return []
    return [line.strip() for line in log.read_text().splitlines() if "resumed at step" in line]


def evaluate_bert(model: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """Dice against bert's aseg at 1 mm and resampled, and the CPU time at 1 mm."""
    import torch

    from bids_qc.models.vinn import segment_array
    from bids_qc.synth.grids import resample
    from bids_qc.synth.labelmaps import load_bert

    aseg, norm = load_bert("aseg"), load_bert("norm")
    truth = np.rint(np.asarray(aseg.dataobj)).astype(np.int32)
    image = np.asarray(norm.dataobj, dtype=np.float32)
    out: dict[str, Any] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    c0, w0 = time.process_time(), time.perf_counter()
    pred = segment_array(model, image, norm.affine)
    timing = {"cpu_s_1thread": time.process_time() - c0, "wall_s_1thread":
              time.perf_counter() - w0, "shape": list(image.shape),
              "cpus": os.cpu_count()}  # fmt: skip
    torch.set_num_threads(threads)
    out["1.0"] = subcortical_dice(truth, pred)
    out["confusion"] = confusion(truth, pred)
    print(f"bert 1.0 mm: subcortical {out['1.0']['subcortical_mean']:.3f}", flush=True)
    vox = np.linalg.norm(norm.affine[:3, :3], axis=0)
    for res in BERT_RESOLUTIONS:
        shape = tuple(int(round(n * v / res)) for n, v in zip(image.shape, vox))
        aff = norm.affine.copy()
        aff[:3, :3] = norm.affine[:3, :3] * (res / vox)
        # Same field of view: voxel edges of the first voxel coincide.
        aff[:3, 3] = norm.affine[:3, :3] @ (-0.5 + 0.5 * res / vox) + norm.affine[:3, 3]
        img_r = resample(image, norm.affine, shape, aff, order=1)
        pred_r = segment_array(model, img_r, aff)
        back = resample(pred_r.astype(np.int32), aff, truth.shape, aseg.affine, order=0)
        out[f"{res:.1f}"] = subcortical_dice(truth, back)
        print(f"bert {res} mm: subcortical {out[f'{res:.1f}']['subcortical_mean']:.3f}",
              flush=True)
    return out, timing


#: FreeSurfer's names (FreeSurferColorLUT) of the codes VINN writes.
FS_NAMES: dict[int, str] = {
    0: "background", 2: "Left-Cerebral-White-Matter", 3: "Left-Cerebral-Cortex",
    4: "Left-Lateral-Ventricle", 8: "Left-Cerebellum-Cortex", 10: "Left-Thalamus",
    11: "Left-Caudate", 12: "Left-Putamen", 13: "Left-Pallidum", 14: "3rd-Ventricle",
    15: "4th-Ventricle", 16: "Brain-Stem", 17: "Left-Hippocampus", 18: "Left-Amygdala",
    24: "CSF", 26: "Left-Accumbens-area", 28: "Left-VentralDC",
    41: "Right-Cerebral-White-Matter", 42: "Right-Cerebral-Cortex",
    43: "Right-Lateral-Ventricle", 47: "Right-Cerebellum-Cortex", 49: "Right-Thalamus",
    50: "Right-Caudate", 51: "Right-Putamen", 52: "Right-Pallidum",
    53: "Right-Hippocampus", 54: "Right-Amygdala", 58: "Right-Accumbens-area",
    60: "Right-VentralDC",
}  # fmt: skip


def confusion(truth: np.ndarray, pred: np.ndarray) -> dict[str, list[Any]]:
    """Per subcortical structure: the share of its voxels labelled as itself, and the code
    (and share) that takes most of the rest, from the FreeSurfer-coded ``pred``."""
    from bids_qc.structures import SUBCORTICAL

    out: dict[str, list[Any]] = {}
    for s in SUBCORTICAL:
        sel = np.isin(truth, s.codes)
        if not sel.any():
            continue
        codes, counts = np.unique(pred[sel], return_counts=True)
        share = counts / sel.sum()
        own = float(share[np.isin(codes, s.codes)].sum())
        other = ~np.isin(codes, s.codes)
        top = int(np.argmax(np.where(other, share, -1.0))) if other.any() else None
        out[s.name] = [own, int(codes[top]) if top is not None else None,
                       float(share[top]) if top is not None else 0.0]  # fmt: skip
    return out


def _f(x: Any, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def _status(value: float | None, target: float, higher: bool = False) -> str:
    if value is None:
        return "not measured"
    return "met" if (value >= target if higher else value <= target) else "missed"


def worst_change(bert: dict[str, Any]) -> float:
    """Largest change of bert's mean subcortical Dice at the other resolutions vs 1 mm."""
    one = bert["1.0"]["subcortical_mean"]
    return max(abs(bert[f"{r:.1f}"]["subcortical_mean"] - one) for r in BERT_RESOLUTIONS)


def previous_section(prev: dict[str, Any], bert: dict[str, Any], synth: dict[str, Any]
                     ) -> list[str]:  # fmt: skip
    """Markdown rows comparing the headline numbers with the weights this run replaced."""

    rows = [("bert 1 mm, mean subcortical Dice", prev["bert"]["1.0"]["subcortical_mean"],
             bert["1.0"]["subcortical_mean"]),
            ("bert, largest change across 0.8-1.4 mm", worst_change(prev["bert"]),
             worst_change(bert))]
    for r in SYNTH_RESOLUTIONS:
        key = f"{r:.1f}"
        if key in synth and key in prev.get("synth", {}):
            rows.append((f"held-out synthetic {r} mm, mean subcortical Dice",
                         prev["synth"][key]["mean"]["subcortical_mean"],
                         synth[key]["mean"]["subcortical_mean"]))
    for n in ("cerebellum", "brainstem"):
        rows.append((f"bert 1 mm, {n} Dice", prev["bert"]["1.0"][n], bert["1.0"][n]))
    out = ["", "## Against the weights replaced", "",
           f"The previous weights (sha256 `{prev['sha256'][:12]}...`), evaluated on the same "
           "cases by the same script.", "",
           "| | previous | this |", "|---|---|---|"]
    out += [f"| {name} | {_f(a)} | {_f(b)} |" for name, a, b in rows]
    return out


def _gamma_line(train: dict[str, Any]) -> str:
    """The training section's line on the random gamma augmentation."""
    std, start = train.get("gamma_std"), train.get("gamma_from", 0)
    if not std:
        return "- Intensity augmentation: none beyond the engine's."
    when = "on every step" if not start else (
        f"from step {start} of {train.get('steps')} on (the run was resumed at that step "
        "with the augmentation switched on: before it, bert's grey matter came out as white "
        "matter)")
    return (f"- Intensity augmentation: a random gamma per patch (log-normal, sigma {std}) "
            f"{when}.")


def _class_weight_bounds(train: dict[str, Any]) -> Any:
    # An old run's summary has them at the top; a sitting's record among its options.
    return train.get("class_weight_bounds") or train.get("options", {}).get(
        "class_weight_bounds", "n/a")


def _summary_lines(train: dict[str, Any]) -> list[str]:
    """The training section of a one-sitting run before the shared loop (``summary.json``)."""
    return [
        f"- Where: {train.get('hardware')}; {train.get('minutes', 0):.1f} minutes of wall "
        f"time (torch threads: {train.get('threads')}), {train.get('steps')} steps of "
        f"{train.get('batch_per_view')} patches per view ({train.get('patches')} 2.5D "
        f"patches of {train.get('patch_mm')} mm in all).",
        f"- Data: {train.get('pool_cases')} images synthesized by `bids_qc.synth` from "
        "SynthSeg label maps 1-16 (maps 17-20 never seen), contrast families "
        f"{', '.join(train.get('contrasts', []))} in turn (`random`: a random mean per label, "
        "SynthSeg's domain randomisation), random resolution 0.7-1.6 mm (anisotropic half "
        "of the time), random deformation and skull stripping. No real image "
        "was used for training.",
        "- Resumed from a checkpoint: " + ("; ".join(train["resumes"]) + " (stopped right "
        "after a checkpoint and resumed; the learning-rate schedule follows the elapsed "
        "fraction of the time budget)." if train.get("resumes") else "never."),
        _gamma_line(train),
        f"- A short CPU run ({train.get('minutes', 0):.0f} min); the numbers below are what "
        "it reached.",
    ]


def _sitting_lines(sitting: dict[str, Any]) -> list[str]:
    """The training section of a sitting of the shared loop (``sitting.json``); the ledger
    section lists every sitting."""
    o = sitting.get("options", {})
    real = (f"the {o.get('real_people')} IXI training people (real whole-head T1w at 2 mm, "
            "their DLMUSE labels mapped to FreeSurfer codes, everything outside the brain "
            f"background) in {o.get('real_share', 0):.0%} of the batches, beside "
            if o.get("real_data") else "")
    return [
        f"- This sitting: global steps {sitting['start_step']} to {sitting['end_step']} "
        f"({sitting['steps']} steps"
        + ("" if sitting.get("completed", True) else
           f" of a planned {sitting['planned_steps']}: stopped at the end of a session, to be "
           "resumed; these weights are the last checkpoint's, before the learning rate "
           "decayed")
        + f", {sitting['samples']} 2.5D patches of "
        f"{o.get('patch_mm')} mm), {sitting['cpu_hours']:.2f} CPU-hours "
        f"({sitting['wall_hours']:.2f} h wall, {sitting['threads']} torch thread(s), "
        f"{'bf16 autocast' if o.get('bf16') else 'fp32'}) on {sitting['machine']}; "
        f"warm start: {sitting['warm_start']}; peak learning rate {sitting['lr']}, warm-up "
        "then cosine decay over the sitting.",
        f"- Data: {real}{sitting.get('pool_cases', 'n/a')} pool images synthesized by "
        "`bids_qc.synth` from SynthSeg label maps 1-16 (maps 17-20 never seen), contrast "
        f"families {', '.join(o.get('contrasts', []))} in turn, random resolution 0.7-1.6 mm, "
        "deformation and skull stripping (whole-head half of the time, non-brain labelled "
        "background).",
        f"- Intensity augmentation: a random gamma per patch (log-normal, sigma "
        f"{o.get('gamma_std')}) on every step.",
        f"- Resumed within the sitting: {sitting.get('resumes', 0)} time(s) (a resumed "
        "sitting gives the weights an uninterrupted one would).",
    ]


def render_card(synth: dict[str, Any], bert: dict[str, Any], timing: dict[str, Any],
                train: dict[str, Any], sha: str, version: str,
                previous: dict[str, Any] | None = None) -> str:  # fmt: skip
    """The model card's markdown (``previous``: the results JSON of the weights replaced)."""
    from bids_qc.models.vinn import VINN, WIDTHS
    from bids_qc.training.licences import licence_section

    n_params = sum(p.numel() for p in VINN().parameters())

    names = [*STRUCTURE_NAMES, "subcortical_mean"]
    b1 = bert["1.0"]["subcortical_mean"]
    worst = worst_change(bert)
    s_means = {r: v["mean"]["subcortical_mean"] for r, v in synth.items()}
    worst_synth = min(s_means.values()) if s_means else None
    lines = [
        "# VINN model card",
        "",
        f"- Model: `vinn` {version}; weights `vinn.pt`, sha256 `{sha}` (fp16 storage).",
        "- Task: segment a T1w image into FreeSurfer-coded labels (the 14 subcortical "
        "structures of `bids_qc.structures` plus cerebral white matter, cortex, lateral, 3rd "
        "and 4th ventricles, cerebellum, brainstem, ventral DC and CSF) on the image's own "
        "grid, when no derivative supplies a segmentation.",
        "- Method after FastSurferVINN (Henschel, Kuegler, Reuter, NeuroImage 2022), compact: "
        "one 2.5D encoder-decoder per view (5 neighbouring slices as channels; widths "
        f"{'-'.join(map(str, WIDTHS))}, {n_params} parameters in all three) with the "
        "network-integrated resolution "
        "normalisation (bilinear feature-map resampling by input voxel size / 1 mm after "
        "the input block, and back before the output block; scale jitter sigma 0.1 in "
        "training); views averaged with weights 0.4 (axial, coronal) and 0.2 (sagittal, "
        "hemisphere-merged labels whose side the other views decide). Loss: median-frequency "
        "and boundary weighted logistic loss plus soft Dice (class weights kept within "
        f"{_class_weight_bounds(train)}).",
        "- Card generated by `python -m bids_qc.training.vinn_card card` from a real "
        "evaluation run; every number below comes from it.",
        "",
        "## Training",
        "",
        *(_sitting_lines(train) if "start_step" in train else _summary_lines(train)),
        "",
        "## Targets",
        "",
        "| target | measured | goal | status |",
        "|---|---|---|---|",
        f"| mean subcortical Dice vs FreeSurfer, bert 1 mm | {_f(b1)} | >= "
        f"{TARGETS['bert_subcortical']} | "
        f"{_status(b1, TARGETS['bert_subcortical'], True)} |",
        f"| resolution independence: largest change of bert's mean subcortical Dice "
        f"(0.8 / 1.4 mm vs 1 mm) | {_f(worst)} | <= {TARGETS['resolution_change']} "
        f"| {_status(worst, TARGETS['resolution_change'])} |",
        f"| held-out synthetic mean subcortical Dice (worst resolution) | "
        f"{_f(worst_synth)} | > {TARGETS['ci_synth_subcortical']} (CI) | "
        f"{_status(worst_synth, TARGETS['ci_synth_subcortical'], True)} |",
        f"| CPU time, bert 1 mm (1 thread, process CPU s) | {_f(timing['cpu_s_1thread'], 1)} "
        f"| < {TARGETS['cpu_s']:.0f} s | {_status(timing['cpu_s_1thread'], TARGETS['cpu_s'])} |",
        f"| GPU time, 1 mm | n/a | < {TARGETS['gpu_s']:.0f} s | not measured |",
        "",
        f"GPU time: not measured (no GPU in this session). CPU: bert `norm.mgz` "
        f"({'x'.join(map(str, timing['shape']))}), cropped to the head's box, one torch "
        f"thread, {_f(timing['cpu_s_1thread'], 1)} s of process CPU time and "
        f"{_f(timing['wall_s_1thread'], 1)} s wall on a {timing.get('cpus', '?')}-core "
        "machine.",
        "",
        "## FreeSurfer's bert (real data, evaluation only)",
        "",
        "`norm.mgz` segmented at 1 mm, and resampled (trilinear, same field of view) to "
        "0.8 and 1.4 mm; every prediction is compared with `aseg.mgz` on its grid "
        "(predictions at other resolutions brought back by nearest neighbour).",
        "",
        "| structure | 1.0 mm | 0.8 mm | change | 1.4 mm | change |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        a, b, c = bert["1.0"][n], bert["0.8"][n], bert["1.4"][n]
        lines.append(f"| {n} | {_f(a)} | {_f(b)} | {_f(b - a)} | {_f(c)} | {_f(c - a)} |")
    if bert.get("confusion"):
        lines += [
            "",
            "What bert's subcortical voxels were labelled at 1 mm: the share labelled as the "
            "structure itself, and the label (FreeSurfer code) that took most of the rest.",
            "",
            "| structure | as itself | most often instead | share |",
            "|---|---|---|---|",
        ]
        for n, (own, code, share) in bert["confusion"].items():
            other = "-" if code is None else f"{FS_NAMES.get(code, '?')} ({code})"
            lines.append(f"| {n} | {_f(own, 2)} | {other} | {_f(share, 2)} |")
    if previous:
        lines += previous_section(previous, bert, synth)
    lines += [
        "",
        "## Held-out synthetic images (label maps 17-20)",
        "",
        "Contrast t1, skull-stripped, deformed, isotropic at each resolution; mean Dice over "
        "the maps evaluated, on the image's grid (the exact segmentation's).",
        "",
    ]
    missing = [f"map {m} at {r} mm" for r in SYNTH_RESOLUTIONS for m in HELDOUT_MAPS
               if str(m) not in {str(k) for k in synth.get(f"{r:.1f}", {}).get("cases", {})}]
    if missing:
        lines += ["Not measured (the evaluation did not finish in the session's time): "
                  + ", ".join(missing) + ".", ""]
    if synth:
        lines += ["| structure | " + " | ".join(f"{r} mm" for r in synth) + " |",
                  "|---|" + "---|" * len(synth)]
    for n in names if synth else []:
        lines.append(f"| {n} | " + " | ".join(_f(v["mean"][n]) for v in synth.values()) + " |")
    lines += [
        "",
        "Per case, mean subcortical Dice: " + "; ".join(
            f"{r} mm: " + ", ".join(f"map {m} {_f(c['subcortical_mean'])}"
                                    for m, c in v["cases"].items())
            for r, v in synth.items()) + ".",
        "",
        "## Goals missed",
        "",
    ]  # fmt: skip
    missed = []
    if not b1 >= TARGETS["bert_subcortical"]:
        missed.append(f"- Mean subcortical Dice on bert is {_f(b1)}, below the "
                      f"{TARGETS['bert_subcortical']} goal.")
    if not worst <= TARGETS["resolution_change"]:
        missed.append(f"- Resolution independence: bert's mean subcortical Dice changes by "
                      f"up to {_f(worst)} across 0.8-1.4 mm (goal <= "
                      f"{TARGETS['resolution_change']}).")
    if worst_synth is None or not worst_synth > TARGETS["ci_synth_subcortical"]:
        missed.append(f"- Held-out synthetic mean subcortical Dice {_f(worst_synth)} at its "
                      f"worst resolution, not above {TARGETS['ci_synth_subcortical']}.")
    if not timing["cpu_s_1thread"] < TARGETS["cpu_s"]:
        missed.append(f"- CPU time {_f(timing['cpu_s_1thread'], 1)} s for a 1 mm image, "
                      f"above {TARGETS['cpu_s']:.0f} s.")
    missed.append("- GPU time: not measured (no GPU).")
    lines += missed
    sources = ["synthseg_label_maps", "freesurfer_bert"]
    if train.get("options", {}).get("real_data"):
        sources.append("ixi_dlmuse")
    lines += ["", licence_section(sources)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache", help="synthesize the held-out cases")
    c.add_argument("--out", default="/tmp/vinn_eval")
    k = sub.add_parser("card", help="evaluate and write the card")
    k.add_argument("--eval", default="/tmp/vinn_eval")
    k.add_argument("--train", required=True,
                   help="training output folder (sitting.json, or an older run's summary.json)")
    k.add_argument("--weights", default=None, help="weights file (default: the shipped one)")
    k.add_argument("--card", default=None, help="card path (default: the package's)")
    k.add_argument("--threads", type=int, default=1, help="torch threads of the Dice runs")
    k.add_argument("--previous", default=None,
                   help="results.json of the weights this run replaces, for a comparison")
    k.add_argument("--stored-only", action="store_true",
                   help="use the stored synth parts only; the card says which are missing")
    q = sub.add_parser("part", help="run one half of the evaluation and store it")
    q.add_argument("which", choices=["bert", "synth"])
    q.add_argument("--maps", type=int, nargs="+", default=list(HELDOUT_MAPS),
                   help="held-out maps of a synth part (parts of several maps are merged)")
    q.add_argument("--eval", default="/tmp/vinn_eval")
    q.add_argument("--weights", default=None, help="weights file (default: the shipped one)")
    q.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    import torch

    if args.cmd == "cache":
        torch.set_num_threads(1)
        build_cache(Path(args.out))
        return
    from bids_qc.models.registry import sha256sum
    from bids_qc.models.vinn import model_from_file

    here = Path(__file__).resolve().parents[1] / "models"
    weights = Path(args.weights) if args.weights else here / "weights" / "vinn.pt"
    torch.set_num_threads(args.threads)
    model = model_from_file(weights)
    sha = sha256sum(weights)
    eval_dir = Path(args.eval)
    if args.cmd == "part":
        if args.which == "bert":
            part, name = dict(zip(("bert", "timing"), evaluate_bert(model))), "bert"
        else:
            maps = tuple(sorted(args.maps))
            part = {"synth": evaluate_synth(eval_dir, model, maps)}
            name = "synth_" + "_".join(map(str, maps))
        (eval_dir / f"{name}.json").write_text(json.dumps({"sha256": sha, **part}))
        return
    stored: dict[str, Any] = {}
    for path in sorted(eval_dir.glob("bert.json")):
        if json.loads(path.read_text())["sha256"] == sha:
            stored.update(json.loads(path.read_text()))
    parts = [json.loads(p.read_text()) for p in sorted(eval_dir.glob("synth_*.json"))]
    parts = [p["synth"] for p in parts if p["sha256"] == sha]
    if parts:
        stored["synth"] = merge_synth(parts)
    if "bert" not in stored:
        stored["bert"], stored["timing"] = evaluate_bert(model)
    if "synth" not in stored:
        stored["synth"] = {} if args.stored_only else evaluate_synth(eval_dir, model)
    bert, timing, synth = stored["bert"], stored["timing"], stored["synth"]
    sitting = Path(args.train) / "sitting.json"
    if sitting.is_file():
        train = json.loads(sitting.read_text())
    else:
        train = json.loads((Path(args.train) / "summary.json").read_text())
        train["resumes"] = resumes(Path(args.train))
    from bids_qc.models.registry import get_spec

    previous = json.loads(Path(args.previous).read_text()) if args.previous else None
    card = render_card(synth, bert, timing, train, sha, get_spec("vinn").version, previous)
    card_path = Path(args.card) if args.card else here / "cards" / "vinn.md"
    write_card(card_path, card)
    (Path(args.eval) / "results.json").write_text(json.dumps(
        {"sha256": sha, "timing": timing, "train": train, "bert": bert, "synth": synth},
        indent=1))  # fmt: skip
    print(card)


if __name__ == "__main__":
    main()
