"""VINN on real images: Dice against real references, plausible volumes, the gate record.

``python -m bids_qc.training.vinn_realdata bounds --data ../shared/data``
    Fix the plausible-volume bounds (:data:`bids_qc.models.volumes.BOUNDS_FILE`) from the IXI
    training and calibration people's DLMUSE segmentations only, and measure how DLMUSE's
    protocol differs from FreeSurfer's from reference data alone (SynthSeg's FreeSurfer-
    coded training maps against the same IXI people).
``python -m bids_qc.training.vinn_realdata evaluate --part calibration --out DIR [--weights W]``
    Segment every good real image of one part (:func:`bids_qc.training.real_sets.good_images`,
    exclusions applied) from its raw file as the app does, and store per image: Dice per
    structure where a reference exists (FreeSurfer aseg or DLMUSE mapped to FreeSurfer codes,
    on the reference's grid), brain labels outside the reference brain dilated by 4 mm,
    volumes, plausibility, CPU seconds; a mosaic of each image without a reference.
``python -m bids_qc.training.vinn_realdata record --eval DIR``
    Write the gate record ``realdata/vinn.json`` (``kind: segmenter``) from the stored parts
    of the shipped weights. Weights are chosen on the calibration part; the test part is
    evaluated only for the weights that ship.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from bids_qc.models import volumes as V
from bids_qc.structures import SUBCORTICAL_NAMES
from bids_qc.synth.metrics import subcortical_dice
from bids_qc.training.real_sets import (
    RealImage,
    exclusions,
    good_images,
    load_t1w,
    segmentation,
)
from bids_qc.training.realdata import Part, ixi_people, muse_to_freesurfer

#: Reference protocols: which segmentations count as FreeSurfer's and which as DLMUSE's.
PROTOCOL = {"freesurfer": "freesurfer", "npz": "freesurfer", "muse": "dlmuse"}
#: The VINN issue's targets (mean subcortical Dice per protocol; brain labels outside the
#: reference brain dilated by :data:`OUTSIDE_MM`; whole-brain volume of images without one).
TARGETS = {"freesurfer": 0.85, "dlmuse": 0.80, "outside_cm3": 1.0, "brain_l": (0.9, 1.7)}
OUTSIDE_MM = 4.0
#: Left/right ratios beyond these mark a failed reference segmentation (left out of the bounds).
GROSS_LR = (0.5, 2.0)


def _voxel_mm3(affine: np.ndarray) -> float:
    return float(abs(np.linalg.det(affine[:3, :3])))


def reference_volumes(labels: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """:func:`bids_qc.models.volumes.structure_volumes` on a grid given by its affine."""
    return V.structure_volumes(labels, _voxel_mm3(affine))


def fix_bounds(data_dir: Path) -> dict[str, Any]:
    """Bounds from training and calibration references only (never the test part).

    The issue asks for the IXI people's 1st-99th percentiles; DLMUSE's protocol gives the
    amygdala about half FreeSurfer's volume and the caudate and putamen 0.7 of it (measured
    here from the references alone), so bounds of DLMUSE alone would call a FreeSurfer-like
    segmentation (VINN's target protocol) implausible. Each bound is therefore the wider of
    the two protocols': IXI DLMUSE (training and calibration) and FreeSurfer-coded references
    (SynthSeg's training maps and bert's aseg, calibration).
    """
    from bids_qc.synth.labelmaps import TRAIN_MAPS, load_label_map

    people = [*ixi_people(data_dir, "training"), *ixi_people(data_dir, "calibration")]
    ixi, dropped, lr_fail = [], {}, 0
    for p in people:
        seg = nib.load(str(p.dlmuse))
        vols = reference_volumes(muse_to_freesurfer(np.asarray(seg.dataobj)), seg.affine)
        ratios = V.lr_ratios(vols)
        lr_fail += any(not V.LR_RATIO[0] <= r <= V.LR_RATIO[1] for r in ratios.values())
        # A reference far outside any anatomy is a failed segmentation (e.g. a left
        # thalamus of 0.4 cm³): it would widen the bounds to admit failures.
        gross = {k: round(r, 2) for k, r in ratios.items()
                 if not GROSS_LR[0] <= r <= GROSS_LR[1]}  # fmt: skip
        if gross:
            dropped[p.item] = gross
            continue
        ixi.append(V.scaled(vols))
    fs = []
    for m in TRAIN_MAPS:
        lm = load_label_map(m, "train")
        fs.append(V.scaled(reference_volumes(lm.labels, lm.affine)))
    bert = nib.load(str(data_dir / "freesurfer_bert" / "mri" / "aseg.mgz"))
    fs.append(V.scaled(reference_volumes(np.asarray(bert.dataobj), bert.affine)))

    def pct(rows: list[dict[str, float]], n: str, q: float) -> float:
        return float(np.percentile([v[n] for v in rows], q))

    bounds = {n: [min(pct(ixi, n, 1), pct(fs, n, 1)), max(pct(ixi, n, 99), pct(fs, n, 99))]
              for n in SUBCORTICAL_NAMES}  # fmt: skip
    ratio = {n: float(np.median([v[n] for v in ixi]) / np.median([v[n] for v in fs]))
             for n in SUBCORTICAL_NAMES}  # fmt: skip
    return {
        "source": f"wider of the 1st-99th percentiles of IXI DLMUSE (training and calibration, "
                  f"{len(ixi)} of {len(people)} people) and of FreeSurfer-coded references "
                  f"(SynthSeg training maps {list(TRAIN_MAPS)} and bert, {len(fs)}); volumes "
                  "scaled by the segmented brain volume",
        "fixed": _dt.date.today().isoformat(), "scaled": bounds, "lr_ratio": list(V.LR_RATIO),
        "dropped_failed_references": dropped,
        "references_failing_lr_rule": f"{lr_fail} of {len(people)} IXI DLMUSE references",
        "dlmuse_over_freesurfer": ratio,
    }  # fmt: skip



def outside_cm3(pred: np.ndarray, ref: np.ndarray, affine: np.ndarray) -> float:
    """cm³ of predicted brain labels farther than :data:`OUTSIDE_MM` from the reference brain."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    far = ndi.distance_transform_edt(~V.brain_voxels(ref), sampling=zooms) > OUTSIDE_MM
    return float((V.brain_voxels(pred) & far).sum() * _voxel_mm3(affine) / 1000.0)


def mosaic(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, path: Path,
           title: str) -> None:  # fmt: skip
    """Three orthogonal slices through the brain's centre with the labels drawn over them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    canon = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(image, np.float32), affine))
    img = np.asarray(canon.dataobj)
    lab = np.asarray(nib.as_closest_canonical(
        nib.Nifti1Image(np.asarray(labels, np.int16), affine)).dataobj)  # fmt: skip
    zooms = canon.header.get_zooms()[:3]
    brain = V.brain_voxels(lab)
    centre = [int(c) for c in (ndi.center_of_mass(brain) if brain.any()
                               else np.array(lab.shape) / 2)]  # fmt: skip
    vmax = float(np.percentile(img, 99.5)) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2), dpi=70)
    for ax, axis in zip(axes, range(3)):
        sl = [slice(None)] * 3
        sl[axis] = centre[axis]
        aspect = [zooms[a] for a in range(3) if a != axis]
        ax.imshow(np.rot90(img[tuple(sl)]), cmap="gray", vmin=0, vmax=vmax,
                  aspect=aspect[1] / aspect[0])  # fmt: skip
        over = np.ma.masked_equal(np.rot90(lab[tuple(sl)] % 23), 0)
        ax.imshow(over, cmap="tab20", alpha=0.35, aspect=aspect[1] / aspect[0],
                  interpolation="nearest")  # fmt: skip
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def evaluate_image(model: Any, image: RealImage, bounds: dict[str, Any],
                   mosaic_dir: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """One image's record (see the module docstring)."""
    import resource

    from bids_qc.models.vinn import segment_image

    img = load_t1w(image)
    t0 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.time()
    pred_img = segment_image(img, model=model)
    t1 = resource.getrusage(resource.RUSAGE_SELF)
    pred = np.asarray(pred_img.dataobj)
    vols = V.structure_volumes(pred, _voxel_mm3(img.affine))
    rec: dict[str, Any] = {
        "dataset": image.dataset, "item": image.item, "shape": [int(n) for n in img.shape],
        "voxel_mm": [round(float(z), 3) for z in img.header.get_zooms()[:3]],
        "cpu_s": round((t1.ru_utime + t1.ru_stime) - (t0.ru_utime + t0.ru_stime), 1),
        "wall_s": round(time.time() - wall, 1), "volumes_mm3": vols,
        "brain_l": vols["brain"] / 1e6, "implausible": V.implausible(vols, bounds),
    }  # fmt: skip
    ref = segmentation(image)
    if ref is not None:
        labels, ref_affine = ref
        if labels.shape != pred.shape:
            raise ValueError(f"{image.seg} is not on the grid of {image.t1w}")
        rec["protocol"] = PROTOCOL[image.seg_kind]
        rec["dice"] = subcortical_dice(labels, pred)
        rec["outside_cm3"] = outside_cm3(pred, labels, ref_affine)
        rec["reference_volumes_mm3"] = reference_volumes(labels, ref_affine)
    elif mosaic_dir is not None:
        mosaic_dir.mkdir(parents=True, exist_ok=True)
        name = f"vinn_real_{image.dataset}_{image.item}.png"
        mosaic(np.asarray(img.dataobj, np.float32), pred, img.affine, mosaic_dir / name,
               f"{image.dataset} {image.item}: VINN labels, brain {rec['brain_l']:.2f} L")
        rec["mosaic"] = name
    return rec


def collect(data_dir: Path, part: Part, out: Path, sha: str) -> dict[str, Any]:
    """The part's result from the partial records of one or more processes (e.g. one
    walking the images forward and one backward); every image must be there."""
    rows = [json.loads(line) for line in (out / f"{part}_partial.jsonl").read_text()
            .splitlines() if line.strip()]  # fmt: skip
    by_key = {(r["dataset"], r["item"]): r for r in rows}
    images = []
    for image in good_images(data_dir, part):
        if (image.dataset, image.item) not in by_key:
            raise ValueError(f"{image.dataset}/{image.item} has no record in "
                             f"{out / f'{part}_partial.jsonl'}")
        images.append(by_key[(image.dataset, image.item)])
    result = {"sha256": sha, "part": part, "images": images}
    (out / f"{part}_{sha[:12]}.json").write_text(json.dumps(result, indent=1))
    return result


def evaluate_part(data_dir: Path, part: Part, weights: Path | None, out: Path,
                  mosaic_dir: Path | None = None, reverse: bool = False
                  ) -> dict[str, Any]:  # fmt: skip
    """Evaluate every good image of ``part``; stores and returns ``{sha256, part, images}``."""
    from bids_qc.models.registry import get_spec, sha256sum
    from bids_qc.models.vinn import model_from_file

    path = weights or get_spec("vinn").weights_path()
    model = model_from_file(path)
    bounds = V.load_bounds()
    images = []
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f"{part}_partial.jsonl"  # what a crash or a kill leaves behind
    todo = good_images(data_dir, part)
    for image in reversed(todo) if reverse else todo:
        rec = evaluate_image(model, image, bounds, mosaic_dir)
        images.append(rec)
        with open(partial, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        dice = rec.get("dice", {}).get("subcortical_mean")
        print(f"{image.dataset}/{image.item}: Dice {dice if dice is None else round(dice, 3)} "
              f"brain {rec['brain_l']:.2f} L implausible {len(rec['implausible'])} "
              f"{rec['cpu_s']} CPU s", flush=True)
    result = {"sha256": sha256sum(path), "part": part, "images": images}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{part}_{result['sha256'][:12]}.json").write_text(json.dumps(result, indent=1))
    return result


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Means per protocol, outside-brain and plausibility counts of one evaluated part."""
    left_out = exclusions()  # images excluded after they were evaluated do not count
    images = [im for im in result["images"] if (im["dataset"], im["item"]) not in left_out]
    out: dict[str, Any] = {"n": len(images)}
    for protocol in ("freesurfer", "dlmuse"):
        ds = [im["dice"] for im in images if im.get("protocol") == protocol]
        if ds:
            out[protocol] = {
                "n": len(ds),
                "mean": float(np.mean([d["subcortical_mean"] for d in ds])),
                "structures": {n: float(np.nanmean([d[n] for d in ds]))
                               for n in SUBCORTICAL_NAMES},
            }  # fmt: skip
    outside = [im["outside_cm3"] for im in images if "outside_cm3" in im]
    if outside:
        out["outside_cm3"] = {"max": float(max(outside)), "mean": float(np.mean(outside))}
    out["implausible"] = [f"{im['dataset']}/{im['item']}" for im in images if im["implausible"]]
    out["cpu_s_mean"] = float(np.mean([im["cpu_s"] for im in images]))
    return out


def make_record(eval_dir: Path, sha: str, version: str) -> dict[str, Any]:
    """The gate record of weights ``sha`` from the parts stored in ``eval_dir``."""
    parts = {}
    for path in sorted(eval_dir.glob(f"*_{sha[:12]}.json")):
        res = json.loads(path.read_text())
        if res["sha256"] == sha:
            parts[res["part"]] = res
    if "test" not in parts and "calibration" not in parts:
        raise ValueError(f"no evaluation of {sha[:12]} in {eval_dir}")
    dice, volumes, outside = {}, {}, {}
    for part, res in parts.items():
        s = summarise(res)
        dice[part] = {p: s[p]["mean"] for p in ("freesurfer", "dlmuse") if p in s}
        dice[part]["structures"] = {p: s[p]["structures"] for p in ("freesurfer", "dlmuse")
                                    if p in s}  # fmt: skip
        volumes[part] = {"n": s["n"], "implausible": s["implausible"]}
        outside[part] = s.get("outside_cm3")
    return {
        "model": "vinn", "kind": "segmenter", "version": version, "sha256": sha,
        "date": _dt.date.today().isoformat(), "targets": TARGETS, "dice": dice,
        "volumes": volumes, "outside_cm3": outside, "bounds": V.load_bounds(),
        "images": {part: res["images"] for part, res in parts.items()},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(prog="python -m bids_qc.training.vinn_realdata",
                                description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bounds", help="fix the plausible-volume bounds")
    b.add_argument("--data", type=Path, default=Path("../shared/data"))
    b.add_argument("--out", type=Path, default=V.BOUNDS_FILE)
    e = sub.add_parser("evaluate", help="evaluate one part")
    e.add_argument("--data", type=Path, default=Path("../shared/data"))
    e.add_argument("--part", choices=("calibration", "test"), required=True)
    e.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--mosaics", type=Path, default=None, help="folder of the mosaics")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--reverse", action="store_true",
                   help="walk the images backward (a second process beside a forward one)")
    c = sub.add_parser("collect", help="gather the partial records of one part")
    c.add_argument("--data", type=Path, default=Path("../shared/data"))
    c.add_argument("--part", choices=("calibration", "test"), required=True)
    c.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("record", help="write the gate record of the shipped weights")
    r.add_argument("--eval", type=Path, required=True)
    r.add_argument("--out", type=Path, default=V.BOUNDS_FILE.parent / "vinn.json")
    args = p.parse_args(argv)
    if args.cmd == "bounds":
        args.out.write_text(json.dumps(fix_bounds(args.data), indent=1) + "\n")
    elif args.cmd == "evaluate":
        import torch

        torch.set_num_threads(args.threads)
        res = evaluate_part(args.data, args.part, args.weights, args.out, args.mosaics,
                            args.reverse)
        print(json.dumps(summarise(res), indent=1))
    elif args.cmd == "collect":
        from bids_qc.models.registry import get_spec

        res = collect(args.data, args.part, args.out, get_spec("vinn").sha256)
        print(json.dumps(summarise(res), indent=1))
    else:
        from bids_qc.models.registry import get_spec

        spec = get_spec("vinn")
        rec = make_record(args.eval, spec.sha256, spec.version)
        args.out.write_text(json.dumps(rec, indent=1) + "\n")


if __name__ == "__main__":
    main()
