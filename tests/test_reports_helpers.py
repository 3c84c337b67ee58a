"""Builders shared by the report, group, ratings and browser tests (no tests here).

Synthetic participant JSONs carry model columns that no installed model writes yet
(RegQC, SegQC, ManifoldQC, ShapeQC), so every report section can be exercised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bids_qc.results import assemble, stage_result
from bids_qc.structures import STRUCTURE_NAMES, SUBCORTICAL_NAMES

SHAPE_STRUCTURES = ("left_hippocampus", "right_hippocampus", "left_putamen")


def synthetic_result(bids_name: str, *, rmse: float | None = 3.0, dice: float | None = 0.85,
                     pfail: float | None = 0.1, volume: float = 4000.0, error: str | None = None,
                     thresholds: dict[str, float] | None = None,
                     stages: list[dict[str, Any]] | None = None,
                     inputs: dict[str, str] | None = None) -> dict[str, Any]:
    """A participant JSON with classic and model metrics (None leaves a model out)."""
    sub = bids_name.split("_")[0].removeprefix("sub-")
    row = {"bids_name": bids_name, "entities": {"subject": sub}, "reg_source": "fmriprep",
           "seg_source": "fmriprep", "seg_kind": "aseg", "sources": {}, "candidates": {},
           **(inputs or {})}
    metrics: dict[str, Any] = {"reg_cc": 0.9, "reg_mi": 0.7}
    metrics.update({f"vol_{s}": volume for s in STRUCTURE_NAMES})
    if rmse is not None:
        metrics.update({"regqc_rmse_mm": rmse, "regqc_flag": int(rmse > 10)})
    if dice is not None:
        metrics.update({f"segqc_dice_{s}": dice for s in SUBCORTICAL_NAMES})
        metrics["segqc_dice_left_hippocampus"] = dice - 0.05
        metrics["segqc_dice_mean"] = dice
        metrics["segqc_flag"] = int(dice - 0.05 < 0.7)
        metrics.update({f"manifoldqc_dice_{s}": dice for s in SUBCORTICAL_NAMES})
        metrics["manifoldqc_flag"] = int(dice < 0.7)
    if pfail is not None:
        for i, s in enumerate(SHAPE_STRUCTURES):
            p = min(1.0, pfail + 0.3 * i)
            metrics.update({f"shapeqc_pfail_{s}": p, f"shapeqc_flag_{s}": int(p > 0.5)})
    errors = [{"stage": "segmentation", "file": "/data/aseg.mgz", "problem": error,
               "hint": "check it", "message": error}] if error else []
    classic = stage_result("classic", metrics, errors, [], [], {"template": {}})
    fingerprint = {"inputs": {}, "models": {"regqc": "1.0:" + "ab" * 32},
                   "options": {"thresholds": thresholds or {"regqc_rmse_mm": 10.0}}}
    return assemble(row, [classic, *(stages or [])], fingerprint, "cpu")


def write_results(output_dir: Path, results: list[dict[str, Any]]) -> None:
    """Write participant JSONs where the group level looks for them."""
    for res in results:
        sub = res["bids_name"].split("_")[0]
        path = Path(output_dir) / sub / "anat" / f"{res['bids_name']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res))


def tiny_volumes(folder: Path) -> dict[str, Path]:
    """Small NIfTIs: a template, a shifted copy on its grid, an aseg-coded segmentation."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = (40, 48, 40)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid ** 2).sum(0))
    template = np.where(radius < 0.9, 60.0, 0.0) + np.where(radius < 0.5, 40.0, 0.0)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    out = {}
    for name, data in (("template", template), ("t1w_tpl", np.roll(template, 3, axis=0))):
        out[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(out[name]))
    labels = np.zeros(shape, dtype=np.int32)
    labels[radius < 0.9] = 2
    labels[(radius < 0.3) & (grid[0] < 0)] = 17  # left hippocampus
    labels[(radius < 0.3) & (grid[0] >= 0)] = 53
    labels[(np.abs(grid[0] + 0.5) < 0.1) & (np.abs(grid[1]) < 0.2) & (np.abs(grid[2]) < 0.2)] = 10
    out["seg"] = folder / "aseg.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), str(out["seg"]))
    surrogate = np.where(labels == 17, 0, labels)  # the surrogate lost a structure
    out["surrogate"] = folder / "surrogate.nii.gz"
    nib.save(nib.Nifti1Image(surrogate.astype(np.int32), affine), str(out["surrogate"]))
    return out


def tiny_png(path: Path) -> Path:
    """A real (tiny) PNG file, standing in for a Grad-CAM rendering."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(0.4, 0.4), dpi=20)
    fig.add_axes((0, 0, 1, 1)).imshow(np.eye(4))
    fig.savefig(path, format="png")
    return path
