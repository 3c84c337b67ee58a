"""The participant report: ``OUTPUT_DIR/<bids_name>.html``, one self-contained file.

Sections: summary (each check's verdict, value and threshold; what was skipped and why),
where the image stands in its dataset (:mod:`bids_qc.reports.relative`, filled in by the
group level), registration, segmentation, shape, image quality (the raw T1w's IQMs, each
with how it reads), provenance and errors, and a rating form whose
"download ratings" button saves a JSON locally (``bids_qc-ratings`` merges them).

Figures need files that only the running workflow has (the template-space T1w lives in the
classic stage's work dir): :class:`~bids_qc.interfaces.results.WriteResults` passes the
stage results with their internal keys (``stages``) and the row's inputs (``qc_input``).
Without them (a report re-rendered from the JSON alone) the report says which figure is
missing and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import __version__
from ..io import atomic_write_text
from ..iqms.definitions import GROUPS as IQM_GROUPS
from ..iqms.definitions import IQM_NAMES, IQMS
from ..models.plugin import QCModel, Section
from ..models.plugins import PLUGINS
from ..schema import column
from .checks import Outcome, check_spec, evaluate
from .figures import Figure, embed_file, registration_mosaic, safe_figure, segmentation_mosaic
from .relative import relative_context
from .render import fmt, render

#: Artefacts a rater may tick beside a verdict (the optional checklist of the rating form).
ARTEFACTS = (
    "motion",
    "ringing / Gibbs",
    "low SNR / noise",
    "intensity inhomogeneity",
    "wrap-around / field of view",
    "registration misalignment",
    "segmentation leak",
    "missing or truncated structure",
    "other",
)


def _in_section(outcomes: list[Outcome], section: Section,
                plugins: tuple[QCModel, ...]) -> list[Outcome]:
    """The outcomes of the models whose plugin shows them in ``section`` of the report."""
    models = {p.name for p in plugins if p.report_section == section}
    return [o for o in outcomes if o.spec.model in models]


def _metric_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, value in metrics.items():
        if name in IQM_NAMES:  # their own section, grouped and explained
            continue
        try:
            col = column(name)
            unit, desc = col.unit, col.description
        except ValueError:
            unit, desc = "", ""
        rows.append({"name": name, "value": fmt(value), "unit": unit, "description": desc})
    return rows


def image_quality(result: dict[str, Any]) -> dict[str, Any]:
    """The image quality section: the IQMs by group, each with how it reads, and why some
    are n/a.

    Returns
    -------
    dict
        ``groups`` (heading and rows: name, value, unit, better, description; a group
        whose every value is n/a is left out), ``notes`` (why IQMs are n/a: the stage's
        skipped reasons, then the notes in its provenance) and ``computed`` (whether any
        IQM has a value).
    """
    metrics = result.get("metrics") or {}
    groups = []
    for key, heading in IQM_GROUPS:
        rows = [{"name": q.name, "value": fmt(metrics.get(q.name)), "unit": q.unit,
                 "better": q.better, "description": q.description}
                for q in IQMS if q.group == key]
        if any(metrics.get(r["name"]) is not None for r in rows):
            groups.append({"heading": heading, "rows": rows})
    notes = [s["reason"] for s in result.get("skipped") or [] if s.get("stage") == "iqms"]
    stage = ((result.get("provenance") or {}).get("stages") or {}).get("iqms") or {}
    notes += list(stage.get("notes") or [])
    return {"groups": groups, "notes": notes, "computed": bool(groups)}


def _verdict(o: Outcome) -> dict[str, Any]:
    sign = ">" if o.spec.direction == "above" else "<"
    state = {1: "fail", 0: "pass"}.get(o.flag, "na") if o.flag is not None else "na"
    return {
        "check": o.spec.flag,
        "label": o.spec.label,
        "experimental": o.spec.experimental,
        "value": fmt(o.value),
        "threshold": fmt(o.threshold),
        "rule": f"FAIL when {sign} {fmt(o.threshold)}",
        "state": state,
        "verdict": {"fail": "FAIL", "pass": "PASS"}.get(state, "n/a"),
    }


def _inputs(result: dict[str, Any], qc_input: dict[str, Any] | None) -> dict[str, str | None]:
    """Input role -> path, from the workflow's row or else from the JSON's provenance."""
    if qc_input:
        return {
            k: (str(v) if v else None)
            for k, v in qc_input.items()
            if k in ("t1w", "t1w_preproc", "seg", "seg_reference", "template_t1w")
        }
    inputs = (result.get("provenance") or {}).get("inputs") or {}
    return {role: (info or {}).get("path") for role, info in inputs.items()}


def _stage_prov(
    result: dict[str, Any], stages: list[dict[str, Any]] | None, name: str
) -> dict[str, Any]:
    for stage in stages or []:
        if stage.get("stage") == name:
            return stage.get("provenance") or {}
    return ((result.get("provenance") or {}).get("stages") or {}).get(name) or {}


def _registration(
    result: dict[str, Any], stages: list[dict[str, Any]] | None, outcomes: list[Outcome],
    plugins: tuple[QCModel, ...] = PLUGINS,
) -> dict[str, Any]:
    metrics = result.get("metrics") or {}
    classic = _stage_prov(result, stages, "classic")
    image, template = classic.get("template_space_t1w"), (classic.get("template") or {})
    if image and template.get("file"):
        figure = safe_figure("registration", registration_mosaic, image, template["file"])
    elif result.get("reg_source") is None:
        figure = Figure("registration", note="no registration input: nothing to draw")
    else:
        figure = Figure(
            "registration",
            note="the template-space T1w is only available while "
            "the workflow runs; this report was rendered without it",
        )
    if result.get("reg_source") == "bids_qc":
        # RegQC and the baselines then check bids_qc's own work, not a derivative's: say so.
        template = {**template, "how": "bids_qc's own affine registration of the T1w "
                    "(SimpleITK, through the brain mask of its segmentation)"}
    return {
        "figure": figure,
        "template": template,
        "baselines": [{"name": n, "value": fmt(metrics.get(n))} for n in ("reg_cc", "reg_mi")],
        "verdicts": [_verdict(o) for o in _in_section(outcomes, "registration", plugins)],
    }


def _dice_table(metrics: dict[str, Any], outcomes: list[Outcome],
                plugins: tuple[QCModel, ...] = PLUGINS) -> dict[str, Any]:
    # The segmentation section's checks reduce per-structure values (``prefix*`` metrics).
    models = _in_section(outcomes, "segmentation", plugins)
    names: list[str] = []
    for o in models:
        prefix = o.spec.metric[:-1]
        names += [
            k.removeprefix(prefix)
            for k in metrics
            if k.startswith(prefix) and k.removeprefix(prefix) not in names
        ]
    rows = []
    for s in names:
        cells = []
        for o in models:
            value = metrics.get(o.spec.metric[:-1] + s)
            bad = value is not None and o.spec.fails(float(value), o.threshold)
            cells.append({"value": fmt(value), "flag": bad})
        rows.append({"structure": s.replace("_", " "), "cells": cells})
    return {
        "models": [
            {"name": o.spec.flag.removesuffix("_flag"), "threshold": fmt(o.threshold)}
            for o in models
        ],
        "rows": rows,
    }


def failing_structures(metrics: dict[str, Any], outcomes: list[Outcome],
                       plugins: tuple[QCModel, ...] = PLUGINS) -> list[str]:
    """Subcortical structures a check failed, in check order.

    Parameters
    ----------
    metrics : dict
        The participant's metrics.
    outcomes : list of Outcome
        Its checks (:func:`~bids_qc.reports.checks.evaluate`).
    plugins : tuple of QCModel
        Which models' checks are segmentation checks, and which are per-structure shapes.

    Returns
    -------
    list of str
        Structures whose predicted Dice (SegQC, ManifoldQC) is below its check's threshold,
        then those ShapeQC flagged.
    """
    out: list[str] = []
    segmentation = _in_section(outcomes, "segmentation", plugins)
    shape = _shape_structures(outcomes, plugins)
    for o in outcomes:
        if o in segmentation:
            prefix = o.spec.metric[:-1]
            for key, value in metrics.items():
                s = key.removeprefix(prefix)
                if (key.startswith(prefix) and s != "mean" and value is not None
                        and o.spec.fails(float(value), o.threshold) and s not in out):
                    out.append(s)
        elif o.spec.flag in shape and o.flag == 1:
            s = shape[o.spec.flag]
            if s not in out:
                out.append(s)
    return out


def _shape_structures(outcomes: list[Outcome], plugins: tuple[QCModel, ...]) -> dict[str, str]:
    """Flag -> structure of the per-structure checks of the report's shape section."""
    out = {}
    for o in _in_section(outcomes, "shape", plugins):
        family = next(p.check_family for p in plugins if p.name == o.spec.model)
        structure = family.structure(o.spec.flag) if family is not None else None
        if structure is not None:
            out[o.spec.flag] = structure
    return out


def _segmentation(
    result: dict[str, Any],
    stages: list[dict[str, Any]] | None,
    paths: dict[str, str | None],
    outcomes: list[Outcome],
    plugins: tuple[QCModel, ...] = PLUGINS,
) -> dict[str, Any]:
    seg = paths.get("seg")
    base = paths.get("seg_reference") or paths.get("t1w_preproc") or paths.get("t1w")
    figures = []
    failing = failing_structures(result.get("metrics") or {}, outcomes, plugins)
    if seg and result.get("seg_source"):
        figures.append(
            safe_figure("segmentation", segmentation_mosaic, base, seg, failing=failing)
        )
        surrogate = _stage_prov(result, stages, "manifoldqc").get("surrogate_seg")
        if surrogate:
            figures.append(
                safe_figure(
                    "surrogate",
                    segmentation_mosaic,
                    base,
                    surrogate,
                    title="ManifoldQC surrogate contours",
                    layout_from=seg,
                    failing=failing,
                )
            )
    else:
        figures.append(
            Figure("segmentation", note="no FreeSurfer-coded segmentation: nothing to draw")
        )
    note = ""
    if result.get("seg_source") == "bids_qc":
        # The segmentation checks then judge bids_qc's own work, not a derivative's: say so.
        vinn = next((p.spec for p in plugins if p.name == "vinn"), None)
        made_by = f"VINN {vinn.version}" if vinn else "VINN"
        note = (f"This segmentation is bids_qc's own ({made_by}, from the raw T1w): the "
                "volumes and the segmentation checks below judge bids_qc's work, not a "
                "derivative's.")
    return {
        "figures": figures,
        "note": note,
        "dice": _dice_table(result.get("metrics") or {}, outcomes, plugins),
        "verdicts": [_verdict(o) for o in _in_section(outcomes, "segmentation", plugins)],
    }


def _gradcam_paths(result: dict[str, Any], stages: list[dict[str, Any]] | None) -> dict[str, str]:
    prov = _stage_prov(result, stages, "shapeqc")
    found = prov.get("gradcam") or prov.get("figures") or {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _shape(
    result: dict[str, Any],
    stages: list[dict[str, Any]] | None,
    outcomes: list[Outcome],
    output_dir: Path,
    verbose: bool,
    plugins: tuple[QCModel, ...] = PLUGINS,
) -> list[dict[str, Any]]:
    renders = _gradcam_paths(result, stages)
    structures = _shape_structures(outcomes, plugins)
    rows = []
    for o in outcomes:
        if o.spec.flag not in structures:
            continue
        s = structures[o.spec.flag]
        row = {**_verdict(o), "structure": s.replace("_", " "), "figure": None}
        if (o.flag == 1 or verbose) and s in renders:
            row["figure"] = safe_figure(s, embed_file, renders[s], f"Grad-CAM: {s}", output_dir)
        rows.append(row)
    return rows


def _rating_checks(result: dict[str, Any], outcomes: list[Outcome],
                   plugins: tuple[QCModel, ...] = PLUGINS) -> list[dict[str, str]]:
    """The checks a rater can judge: every model check, and the registration and
    segmentation checks whenever their inputs exist (so ratings can calibrate those models
    before they run on this dataset)."""
    names = [o.spec.flag for o in outcomes]
    if result.get("reg_source") and "regqc_flag" not in names:
        names.insert(0, "regqc_flag")
    if result.get("seg_source") and "segqc_flag" not in names:
        names.insert(1 if "regqc_flag" in names else 0, "segqc_flag")
    return [{"check": n, "label": check_spec(n, plugins).label} for n in names]


def not_checked(result: dict[str, Any]) -> list[str]:
    """What a result's skipped stages and models left unchecked, in order, once each."""
    names = []
    for s in result.get("skipped") or []:
        name = s.get("stage") or (f"model {s['model']}" if s.get("model") else None)
        if name and name not in names:
            names.append(name)
    return names


def participant_context(
    result: dict[str, Any],
    output_dir: Path,
    stages: list[dict[str, Any]] | None = None,
    qc_input: dict[str, Any] | None = None,
    verbose: bool = False,
    relative: dict[str, Any] | None = None,
    plugins: tuple[QCModel, ...] = PLUGINS,
) -> dict[str, Any]:
    """Everything the participant template shows (figures drawn here).

    ``relative`` is the dataset-relative section (:meth:`bids_qc.reports.relative.Strips.
    context`); None at participant level, where the section says the group level fills it.
    ``plugins`` say which checks exist and which section shows each model.
    """
    outcomes = evaluate(result, plugins)
    paths = _inputs(result, qc_input)
    return {
        "result": result,
        "status": "failed" if result.get("qc_error") else "ok",
        "not_checked": not_checked(result),
        "verdicts": [_verdict(o) for o in outcomes],
        "metric_rows": _metric_rows(result.get("metrics") or {}),
        "image_quality": image_quality(result),
        "relative": relative if relative is not None else relative_context(),
        "registration": _registration(result, stages, outcomes, plugins),
        "segmentation": _segmentation(result, stages, paths, outcomes, plugins),
        "shape": _shape(result, stages, outcomes, Path(output_dir), verbose, plugins),
        "rating_checks": _rating_checks(result, outcomes, plugins),
        "artefacts": ARTEFACTS,
        "rating_meta": {
            "format": "bids_qc-ratings",
            "version": 1,
            "bids_name": result["bids_name"],
            "bids_qc_version": __version__,
        },
    }


def write_participant_report(
    result: dict[str, Any],
    output_dir: Path,
    stages: list[dict[str, Any]] | None = None,
    qc_input: dict[str, Any] | None = None,
    verbose: bool = False,
    relative: dict[str, Any] | None = None,
    plugins: tuple[QCModel, ...] = PLUGINS,
) -> Path:
    """Write the HTML report of one participant JSON and return its path.

    Parameters
    ----------
    result : dict
        The participant JSON (:func:`bids_qc.results.assemble`).
    output_dir : Path
        The output dataset; the report is ``<output_dir>/<bids_name>.html``.
    stages : list of dict, optional
        The stage results with their internal keys (work-dir files for the figures).
    qc_input : dict, optional
        The row's inputs (``t1w``, ``t1w_preproc``, ``seg``, ``seg_reference``).
    verbose : bool
        Embed every Grad-CAM rendering, not only those of flagged structures.
    relative : dict, optional
        The dataset-relative strips (group level); None: a note that the group level adds
        them.
    plugins : tuple of QCModel
        The models whose checks the report shows (default: every plugin).
    """
    html = render(
        "participant.html.j2",
        **participant_context(result, output_dir, stages, qc_input, verbose, relative, plugins),
    )
    out = Path(output_dir) / f"{result['bids_name']}.html"
    atomic_write_text(out, html)
    return out
