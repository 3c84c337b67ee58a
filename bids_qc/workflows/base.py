"""Workflow builders: one nipype workflow per T1w image, gathered into one run workflow."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nibabel as nib
from nipype.interfaces.utility import IdentityInterface, Merge
from nipype.pipeline import engine as pe

from ..inputs import QCInput, qc_input_to_dict
from ..interfaces.classic import ClassicMetrics
from ..interfaces.results import WriteResults
from ..models.registry import ModelSpec

#: Bytes per voxel that the classical stage holds at its peak (float32 image, resampled
#: copy, template, mask and a histogram's temporaries), measured with benchmarks/.
_BYTES_PER_VOXEL = 40
_TEMPLATE_VOXELS = 193 * 229 * 193


def workflow_name(bids_name: str) -> str:
    """A nipype-safe name for an image's workflow."""
    return "qc_" + re.sub(r"\W", "_", bids_name)


def estimate_mem_gb(row: QCInput) -> float:
    """Peak memory of the classical stage for this row, from image headers (no data read)."""
    voxels = _TEMPLATE_VOXELS
    for path in row.input_files().values():
        try:
            shape = nib.load(str(path)).shape
        except Exception:  # unreadable inputs fail later, with their own message
            continue
        n = 1
        for dim in shape[:3]:
            n *= int(dim)
        voxels = max(voxels, n)
    return round(max(0.25, voxels * _BYTES_PER_VOXEL / 1024**3), 2)


def init_image_qc_wf(
    row: QCInput,
    *,
    output_dir: Path,
    fingerprint: dict[str, Any],
    models: tuple[ModelSpec, ...],
    device: str,
    skipped_models: list[dict[str, str]] | None = None,
) -> pe.Workflow:
    """The QC workflow of one T1w image.

    Parameters
    ----------
    row : QCInput
        The image and its derivatives.
    output_dir : Path
        The output dataset.
    fingerprint : dict
        What the result depends on (stored for resuming).
    models : tuple of ModelSpec
        Models to run on this image (those whose inputs it has).
    device : str
        torch device for the model nodes.
    skipped_models : list of dict
        Models not run for the whole dataset, with reasons (recorded in the JSON).

    Notes
    -----
    ``inputnode.qc_input`` holds the row as a dict; ``outputnode`` gives the JSON and
    the report. Model nodes join ``stage_results`` through a Merge node, in registry order.
    """
    wf = pe.Workflow(name=workflow_name(row.bids_name))
    inputnode = pe.Node(IdentityInterface(fields=["qc_input"]), name="inputnode")
    inputnode.inputs.qc_input = qc_input_to_dict(row)
    outputnode = pe.Node(IdentityInterface(fields=["out_json", "out_report"]), name="outputnode")

    mem_gb = estimate_mem_gb(row)
    classic = pe.Node(ClassicMetrics(), name="classic", mem_gb=mem_gb, n_procs=1)
    stages = [classic]
    if models:
        # Model interfaces arrive with their issues; the registry is their single source.
        raise ValueError(
            "This bids_qc build has no interface for models: "
            + ", ".join(m.name for m in models)
        )

    merge = pe.Node(Merge(len(stages)), name="merge_results")
    write = pe.Node(WriteResults(), name="write_results", mem_gb=0.2)
    write.inputs.fingerprint = fingerprint
    write.inputs.device = device
    write.inputs.output_dir = str(output_dir)
    write.inputs.skipped_models = list(skipped_models or [])

    wf.connect([(inputnode, classic, [("qc_input", "qc_input")])])
    for i, node in enumerate(stages, start=1):
        wf.connect([(node, merge, [("result", f"in{i}")])])
    wf.connect([
        (inputnode, write, [("qc_input", "qc_input")]),
        (merge, write, [("out", "stage_results")]),
        (write, outputnode, [("out_json", "out_json"), ("out_report", "out_report")]),
    ])
    return wf


def init_bids_qc_wf(
    rows: list[QCInput],
    *,
    output_dir: Path,
    work_dir: Path,
    fingerprints: dict[str, dict[str, Any]],
    models: tuple[ModelSpec, ...],
    device: str,
    crashdump_dir: Path,
    skipped_models: list[dict[str, str]] | None = None,
) -> pe.Workflow:
    """The run's workflow: one sub-workflow per image, independent of each other."""
    wf = pe.Workflow(name="bids_qc_wf", base_dir=str(work_dir))
    wf.config["execution"] = {
        "crashdump_dir": str(crashdump_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": "false",
        "remove_unnecessary_outputs": "false",
        "use_relative_paths": "false",
    }
    for row in rows:
        wf.add_nodes([
            init_image_qc_wf(
                row, output_dir=output_dir, fingerprint=fingerprints[row.bids_name],
                models=models, device=device, skipped_models=skipped_models,
            )
        ])
    return wf
