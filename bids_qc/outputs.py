"""The output dataset: BIDS derivative files, result paths, and resume fingerprints."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import __version__
from .inputs import QCInput
from .io import atomic_write_json, atomic_write_text, md5sum
from .models.registry import ModelSpec

BIDSIGNORE = "\n".join(
    ["*.html", "logs/", "figures/", "group_*.tsv", "ratings_*.tsv", "thresholds_*.json", ""]
)


def container_info() -> dict[str, str] | None:
    """Container type and tag when running in the project's Docker/Singularity image."""
    kind = os.environ.get("BIDS_QC_CONTAINER_TYPE")
    if not kind:
        return None
    info = {"Type": kind}
    tag = os.environ.get("BIDS_QC_CONTAINER_TAG")
    if tag:
        info["Tag"] = tag
    return info


def dataset_description(bids_dir: Path) -> dict[str, Any]:
    """The ``dataset_description.json`` of the output derivative dataset."""
    generated: dict[str, Any] = {
        "Name": "bids_qc",
        "Version": __version__,
        "CodeURL": "https://example.org/bids_qc",
    }
    container = container_info()
    if container:
        generated["Container"] = container
    source: dict[str, str] = {"URL": Path(bids_dir).resolve().as_uri()}
    try:
        raw = json.loads((Path(bids_dir) / "dataset_description.json").read_text())
        if isinstance(raw, dict) and raw.get("DatasetDOI"):
            source["DOI"] = str(raw["DatasetDOI"])
    except (OSError, ValueError):
        pass  # the walker already decided whether the dataset is usable
    return {
        "Name": "bids_qc quality-control outputs",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [source],
    }


def init_output_dir(output_dir: Path, bids_dir: Path) -> None:
    """Create the output dataset's fixed files (atomically; safe for concurrent jobs)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "logs").mkdir(exist_ok=True)
    atomic_write_json(output_dir / "dataset_description.json", dataset_description(bids_dir))
    atomic_write_text(output_dir / ".bidsignore", BIDSIGNORE)


def result_path(output_dir: Path, row: QCInput) -> Path:
    """``sub-X/[ses-Y/]anat/<bids_name>.json`` under the output directory."""
    folder = Path(output_dir) / f"sub-{row.subject}"
    if row.session:
        folder = folder / f"ses-{row.session}"
    return folder / "anat" / f"{row.bids_name}.json"


def dseg_path(output_dir: Path, row: QCInput, desc: str) -> Path:
    """``sub-X/[ses-Y/]anat/<entities>_desc-<desc>_dseg.nii.gz`` beside the image's JSON.

    The ``_T1w`` suffix is dropped, as BIDS derivatives name a segmentation of a T1w
    (fMRIPrep's ``sub-X_desc-aseg_dseg``): ``dseg`` is the file's suffix.
    """
    stem = row.bids_name.removesuffix("_T1w")
    return result_path(output_dir, row).parent / f"{stem}_desc-{desc}_dseg.nii.gz"


def fingerprint(
    row: QCInput, models: tuple[ModelSpec, ...], options: dict[str, Any]
) -> dict[str, Any]:
    """What a result depends on: input contents, versions, models, and output-relevant options.

    A rerun skips an image whose stored fingerprint equals the current one. Unreadable
    inputs (a broken annex link) get ``None`` so that the run itself reports them.
    """
    inputs: dict[str, str | None] = {}
    for role, path in row.input_files().items():
        try:
            inputs[role] = md5sum(path)
        except (OSError, ValueError):
            inputs[role] = None
    return {
        "bids_qc_version": __version__,
        "inputs": inputs,
        "models": {m.name: f"{m.version}:{m.sha256}" for m in models},
        "options": options,
    }


def is_up_to_date(path: Path, current: dict[str, Any]) -> bool:
    """Whether the stored result at ``path`` was computed from the same fingerprint, cleanly.

    An input that could not be read (``None``, e.g. an annexed raw T1w not fetched) was
    either needed, and then the stored result failed and is retried, or not needed, and
    then an equal fingerprint means nothing changed: recomputing it on every rerun would
    give the same result. Fetching the file changes its checksum and so the fingerprint.
    """
    try:
        stored = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(stored, dict) or stored.get("qc_error"):
        return False  # failed images are always retried
    provenance = stored.get("provenance")
    return isinstance(provenance, dict) and provenance.get("fingerprint") == current
