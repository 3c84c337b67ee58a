"""Workflow builders: one nipype workflow per T1w image, gathered into one run workflow."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import nibabel as nib
from nipype.interfaces.utility import IdentityInterface, Merge
from nipype.pipeline import engine as pe

from ..inputs import QCInput, qc_input_to_dict
from ..interfaces.classic import ClassicMetrics
from ..interfaces.iqms import ImageQualityMetrics
from ..interfaces.register import RegisterT1w
from ..interfaces.results import WriteResults
from ..models.plugin import QCModel
from ..models.plugins import PLUGINS, get_plugin
from ..models.registry import REGISTRY, ModelSpec, installed_models, missing_needs

LOGGER = logging.getLogger("bids_qc")

#: Model name -> its nipype interface class, from the plugins. Every interface takes
#: ``qc_input`` (the row as a dict), ``classic_result`` (the classical stage's result, whose
#: provenance holds the template-space T1w it wrote, so no model resamples it again),
#: ``device`` and ``thresholds`` (dict), and returns ``result``, a stage result
#: (:func:`bids_qc.results.stage_result`). A model enters here when its weights ship.
MODEL_INTERFACES: dict[str, type] = {
    p.name: p.interface_class() for p in PLUGINS if p.role == "qc"
}

#: Memory (GB) and CPU threads each model node declares to the scheduler (its plugin's
#: :class:`~bids_qc.models.plugin.Resources`).
MODEL_RESOURCES: dict[str, tuple[float, int]] = {
    p.name: (p.resources.mem_gb, p.resources.threads) for p in PLUGINS
}

#: Models that produce an input (a segmentation) for the others rather than a QC stage.
SEGMENTERS: tuple[str, ...] = tuple(p.name for p in PLUGINS if p.role == "segmenter")


def _model_node(plugin: QCModel, device: str, max_threads: int) -> pe.Node:
    """A model's node, with the resources its plugin declares."""
    node = pe.Node(plugin.interface_class()(), name=plugin.name, mem_gb=plugin.resources.mem_gb,
                   n_procs=max(1, min(plugin.resources.threads, max_threads)))
    node.inputs.device = device
    if device.startswith("cuda"):
        node.is_gpu_node = True  # MultiProc schedules these on its GPU slots
    return node


def runs_segmenter(row: QCInput, segment: str) -> bool:
    """Whether VINN segments this row: ``always``, or ``auto`` without an ``aseg``-style
    segmentation from a derivative; never without a T1w or with ``never``."""
    if segment == "never" or "t1w" not in available_inputs(row):
        return False
    return segment == "always" or row.seg is None or row.seg_kind != "aseg"


def choose_segmenter(segment: str, requested: tuple[str, ...] | None = None,
                     registry: tuple[ModelSpec, ...] | None = None) -> ModelSpec | None:
    """VINN's spec when it should segment the images that lack a segmentation, else None.

    The segmenter is an input provider, so ``--models`` (which picks QC models) does not
    turn it off; ``--segment never`` does. ``--segment auto`` follows the real-data gate
    (the spec's ``experimental``, :func:`bids_qc.models.plugin.gated_spec`): it uses VINN
    when VINN passes its gate, and while it does not (segmentation checks on a bad
    segmentation would mislead) only when ``--models`` names ``vinn``; ``--segment
    always`` asks for it explicitly. ``registry`` defaults to the installed one.
    """
    if segment == "never":
        return None
    registry = REGISTRY if registry is None else registry
    spec = next((m for m in installed_models(registry) if m.name == "vinn"), None)
    if spec is None:
        LOGGER.warning("--segment %s: VINN's weights are missing from this installation; "
                       "images without a segmentation are not segmented", segment)
        return None
    if spec.experimental and segment == "auto" and "vinn" not in (requested or ()):
        LOGGER.info("VINN is experimental in this release: images without a segmentation are "
                    "not segmented (use --models vinn ... or --segment always)")
        return None
    return spec


def runs_registration(row: QCInput, segmented: bool) -> bool:
    """Whether bids_qc registers this row itself: a T1w and a segmentation (VINN's when
    ``segmented``, or a derivative's) to take a brain mask from, but no template-space T1w
    and no transform the app can read."""
    have = available_inputs(row)
    return ("t1w" in have and "template_t1w" not in have
            and (segmented or row.seg is not None))


def available_inputs(row: QCInput) -> set[str]:
    """The model needs (see :data:`bids_qc.models.registry.Need`) this row can satisfy."""
    have = set()
    if row.t1w is not None or row.t1w_preproc is not None:
        have.add("t1w")
    if row.template_t1w is not None or (
        row.xfm is not None and row.xfm_kind in ("talairach", "itk")
    ):
        have.add("template_t1w")
    if row.seg is not None and row.seg_kind == "aseg":
        have.add("seg")
    return have

#: CPU threads of the IQM node (N4 is multi-threaded; the rest is one thread).
IQM_THREADS = 2

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
    thresholds: dict[str, float] | None = None,
    verbose_reports: bool = False,
    max_threads: int = 1,
    segmenter: ModelSpec | None = None,
    segment: str = "auto",
    plugins: tuple[QCModel, ...] = PLUGINS,
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
    thresholds : dict
        Flag thresholds by name (``regqc_rmse_mm``, ``segqc_dice``, ...).
    verbose_reports : bool
        Show every figure (all Grad-CAM maps), not only those of flagged checks.
    max_threads : int
        Processors the scheduler has: no node may ask for more, or it never runs.
    segmenter : ModelSpec or None
        VINN, when installed and not turned off.
    segment : {"auto", "always", "never"}
        When the segmenter runs (see :func:`runs_segmenter`).
    plugins : tuple of QCModel
        Where each model's interface and resources come from.

    Notes
    -----
    ``inputnode.qc_input`` holds the row as a dict; ``outputnode`` gives the JSON and
    the report. Model nodes join ``stage_results`` through a Merge node, in registry order.
    When VINN runs, every other node takes the row from VINN's node (with its
    segmentation), so the segmentation-based checks run on it. When the row has a
    segmentation but no template-space input (:func:`runs_registration`), a ``register``
    node after it registers the T1w to the template and hands on the row with that
    transform, so the template-space checks run on bids_qc's own registration.
    """
    wf = pe.Workflow(name=workflow_name(row.bids_name))
    inputnode = pe.Node(IdentityInterface(fields=["qc_input"]), name="inputnode")
    inputnode.inputs.qc_input = qc_input_to_dict(row)
    outputnode = pe.Node(IdentityInterface(fields=["out_json", "out_report"]), name="outputnode")

    mem_gb = estimate_mem_gb(row)
    classic = pe.Node(ClassicMetrics(), name="classic", mem_gb=mem_gb, n_procs=1)
    classic.inputs.thresholds = dict(thresholds or {})
    stages = [classic]
    skipped = list(skipped_models or [])
    have = available_inputs(row)
    source, source_field = inputnode, "qc_input"
    if segmenter is not None and runs_segmenter(row, segment):
        seg_node = _model_node(get_plugin(segmenter.name, plugins), device, max_threads)
        seg_node.inputs.output_dir = str(output_dir)
        wf.connect([(inputnode, seg_node, [("qc_input", "qc_input")])])
        source, source_field = seg_node, "qc_input"
        stages.append(seg_node)
        have.add("seg")
    if runs_registration(row, "seg" in have):
        # Its own registration, from the segmentation's brain mask; every later node takes
        # the row with the transform, so the template-space checks run on it.
        reg_node = pe.Node(RegisterT1w(), name="register", mem_gb=max(1.0, mem_gb),
                           n_procs=max(1, min(2, max_threads)))
        reg_node.inputs.output_dir = str(output_dir)
        reg_node.inputs.threads = reg_node.n_procs
        wf.connect([(source, reg_node, [(source_field, "qc_input")])])
        source, source_field = reg_node, "qc_input"
        stages.append(reg_node)
        have.add("template_t1w")
    for spec in models:
        plugin = get_plugin(spec.name, plugins)
        if plugin.role == "segmenter":
            continue
        lacking = missing_needs(spec, have)
        if lacking:
            skipped.append({"model": spec.name, "reason": "this image has no "
                            + " and no ".join(lacking) + " input in the derivatives"})
            continue
        node = _model_node(plugin, device, max_threads)
        node.inputs.thresholds = dict(thresholds or {})
        if "output_dir" in node.inputs.copyable_trait_names():  # models that write figures
            node.inputs.output_dir = str(output_dir)
        wf.connect([
            (source, node, [(source_field, "qc_input")]),
            (classic, node, [("result", "classic_result")]),
        ])
        stages.append(node)

    # The IQMs of the raw T1w: advisory, after the classical stage (whose template-space
    # T1w gives tpm_overlap_*), from the row with the segmentation VINN may have made.
    iqms = pe.Node(ImageQualityMetrics(), name="iqms", mem_gb=mem_gb,
                   n_procs=max(1, min(IQM_THREADS, max_threads)))
    iqms.inputs.threads = max(1, min(IQM_THREADS, max_threads))
    wf.connect([
        (source, iqms, [(source_field, "qc_input")]),
        (classic, iqms, [("result", "classic_result")]),
    ])
    stages.append(iqms)

    merge = pe.Node(Merge(len(stages)), name="merge_results")
    # The report's figures load the row's full-resolution images. The node that writes into
    # OUTPUT_DIR always runs (overwrite): its inputs hash the same when an output was
    # deleted, and a cached node would then write nothing; the stages before it stay cached.
    write = pe.Node(WriteResults(), name="write_results", mem_gb=mem_gb, overwrite=True)
    write.inputs.fingerprint = fingerprint
    write.inputs.device = device
    write.inputs.output_dir = str(output_dir)
    write.inputs.skipped_models = skipped
    write.inputs.verbose_reports = verbose_reports

    wf.connect([(source, classic, [(source_field, "qc_input")])])
    for i, node in enumerate(stages, start=1):
        wf.connect([(node, merge, [("result", f"in{i}")])])
    wf.connect([
        (source, write, [(source_field, "qc_input")]),
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
    thresholds: dict[str, float] | None = None,
    verbose_reports: bool = False,
    max_threads: int = 1,
    segmenter: ModelSpec | None = None,
    segment: str = "auto",
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
                thresholds=thresholds, verbose_reports=verbose_reports,
                max_threads=max_threads, segmenter=segmenter, segment=segment,
            )
        ])
    return wf
