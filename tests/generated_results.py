"""Generated participant JSONs for group-level scale tests and benchmarks (no tests here).

Every JSON is assembled by :func:`bids_qc.results.assemble`, as participant level does, with
the provenance a real run writes (input paths and hashes, the run's options, per-stage
provenance), so file sizes and parse times match real outputs. Metric values are drawn
for every participant column of :mod:`bids_qc.schema` (and so for the columns later models
add there): a model's flag follows its check (:mod:`bids_qc.reports.checks`) from the drawn
value; about 3 % of the images get a planted problem and 0.5 % a processing error.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from bids_qc.reports.checks import check_spec, is_check
from bids_qc.results import assemble, stage_result
from bids_qc.schema import COLUMNS

_IDENTITY = {"bids_name", "reg_source", "seg_source", "qc_error"}
_METRICS = [c for c in COLUMNS if c.level == "participant" and c.name not in _IDENTITY]


def _value(name: str, rng: np.random.Generator, bad: bool, base: float) -> float:
    """A plausible value of float column ``name`` (a planted problem pushes it out)."""
    if "dice" in name:
        return round(float(rng.beta(3, 4) if bad else rng.beta(30, 3)), 4)
    if "pfail" in name:
        return round(float(rng.beta(5, 2) if bad else rng.beta(1, 12)), 4)
    if "rmse" in name:
        return round(float(rng.gamma(8, 3) if bad else rng.gamma(2, 1.0)), 4)
    if name.startswith("vol_"):
        return float(round(base * rng.normal(0.6 if bad else 1.0, 0.08)))
    return round(float(np.clip(rng.normal(0.4 if bad else 0.8, 0.05), 0, 1)), 6)


def generated_result(index: int, seed: int = 0, root: str = "/data/ukb") -> dict[str, Any]:
    """The participant JSON of image ``index`` of a generated group (deterministic)."""
    rng = np.random.default_rng([seed, index])
    sub = f"{index:07d}"
    name = f"sub-{sub}_T1w"
    bad = rng.random() < 0.03
    failed = rng.random() < 0.005
    deriv = f"{root}/derivatives/fmriprep/sub-{sub}/anat/sub-{sub}"
    paths = {"t1w": f"{root}/sub-{sub}/anat/{name}.nii.gz",
             "t1w_preproc": f"{deriv}_desc-preproc_T1w.nii.gz",
             "template_t1w": f"{deriv}_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz",
             "brain_mask": f"{deriv}_desc-brain_mask.nii.gz",
             "seg": f"{deriv}_desc-aseg_dseg.nii.gz",
             "seg_reference": f"{deriv}_desc-preproc_T1w.nii.gz"}
    qc_input = {"bids_name": name, "entities": {"subject": sub}, "reg_source": "fmriprep",
                "seg_source": "fmriprep", "seg_kind": "aseg", **paths,
                "sources": {role: "raw" if role == "t1w" else "fmriprep" for role in paths},
                "candidates": {"fmriprep": paths["seg"]}}
    thresholds = {"regqc_rmse_mm": 10.0, "segqc_dice": 0.7}
    stages = {}
    for col in _METRICS:
        if col.kind == "flag":
            continue
        base = 1000.0 * (1 + zlib.crc32(col.name.encode()) % 97 / 10)  # a volume's scale
        value = None if failed else _value(col.name, rng, bad and rng.random() < 0.3, base)
        stages.setdefault(col.producer, {})[col.name] = value
    for col in _METRICS:
        if col.kind != "flag":
            continue
        metrics = stages.setdefault(col.producer, {})
        if failed:
            metrics[col.name] = None
        elif is_check(col.name):
            spec = check_spec(col.name)
            value = spec.value(metrics)
            metrics[col.name] = None if value is None else int(spec.fails(value, spec.default))
        else:
            metrics[col.name] = int(rng.random() < 0.02)
    errors = [{"stage": "classic", "file": paths["seg"], "problem": "segmentation is empty",
               "hint": "check the derivative", "message": "segmentation is empty"}
              ] if failed else []
    digest = hashlib.md5(name.encode()).hexdigest()
    results = [stage_result(producer, metrics, errors if producer == "classic" else [], [], [],
                            {"model": producer, "version": "1.0", "weights_sha256": digest * 2,
                             "image": paths["seg_reference"], "segmentation": paths["seg"]})
               for producer, metrics in stages.items()]
    fingerprint = {"bids_qc_version": "0.1.0", "inputs": {role: digest for role in paths},
                   "models": {p: "1.0:" + digest * 2 for p in stages if p != "classic"},
                   "options": {"seg_source": "auto", "device": "cpu",
                               "thresholds": thresholds, "models_skipped": []}}
    return assemble(qc_input, results, fingerprint, "cpu")


def write_generated(output_dir: Path, n: int, seed: int = 0, reports: bool = True) -> int:
    """Write ``n`` generated participant JSONs (and stub reports) where participant level
    would; files already there are kept (generation resumes). Returns how many were written.
    """
    output_dir = Path(output_dir)
    written = 0
    for i in range(n):
        name = f"sub-{i:07d}_T1w"
        path = output_dir / f"sub-{i:07d}" / "anat" / f"{name}.json"
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(generated_result(i, seed), indent=2))
        os.replace(tmp, path)
        if reports:  # participant level writes a report beside every JSON
            (output_dir / f"{name}.html").write_text("<!DOCTYPE html><title>report</title>\n")
        written += 1
    return written
