"""The participant result: one JSON per T1w image, assembled from each stage's result.

Every stage (the classical metrics, each QC model) returns a *stage result*, a plain dict::

    {"stage": name, "metrics": {column: value | None}, "errors": [...], "warnings": [...],
     "skipped": [{"stage"|"model": ..., "reason": ...}], "provenance": {...},
     "publish": {work_path: relative_dest}}  # optional: files for the sink


and :func:`assemble` merges them into the participant JSON.
"""

from __future__ import annotations

import datetime as _dt
import traceback
from typing import Any

from . import __version__
from .errors import InputError
from .schema import column_names

#: Version of the participant JSON layout (bumped when keys move).
RESULT_FORMAT = "1"

#: Stage provenance keys that hand files between nodes inside the work directory; they are
#: not written to the JSON (a work-dir path would make reruns differ byte for byte).
INTERNAL_KEYS = frozenset({"template_space_t1w"})


def stage_result(
    stage: str,
    metrics: dict[str, Any],
    errors: list[dict],
    warnings: list[str],
    skipped: list[dict],
    provenance: dict[str, Any] | None = None,
    publish: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A stage result (see the module docstring); ``publish`` lists the node's work-dir
    files that :mod:`bids_qc.sink` copies into OUTPUT_DIR (``{work_path: relative_dest}``)."""
    result = {
        "stage": stage,
        "metrics": metrics,
        "errors": errors,
        "warnings": warnings,
        "skipped": skipped,
        "provenance": provenance or {},
    }
    if publish:
        result["publish"] = publish
    return result


def error_record(stage: str, exc: BaseException) -> dict[str, Any]:
    """A JSON-ready description of a failed stage: file, problem, hint, message."""
    if isinstance(exc, InputError):
        return {"stage": stage, **exc.as_dict(), "message": str(exc)}
    return {
        "stage": stage,
        "file": None,
        "problem": f"{type(exc).__name__}: {exc}",
        "hint": "Unexpected error: please report it with the traceback below.",
        "message": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc)),
    }


def short_error(errors: list[dict]) -> str:
    """The ``qc_error`` column: the first problem of each failed stage, short."""
    parts = []
    for err in errors:
        where = err.get("file")
        name = where.rsplit("/", 1)[-1] if where else ""
        text = f"{err['stage']}: {name + ' ' if name else ''}{err['problem']}"
        parts.append(text[:200])
    return "; ".join(parts)


def assemble(
    qc_input: dict[str, Any],
    stage_results: list[dict[str, Any]],
    fingerprint: dict[str, Any],
    device: str,
) -> dict[str, Any]:
    """The participant JSON of one image."""
    metrics: dict[str, Any] = {}
    errors: list[dict] = []
    warnings: list[str] = []
    skipped: list[dict] = []
    stages: dict[str, Any] = {}
    for res in stage_results:
        metrics.update(res["metrics"])
        errors.extend(res["errors"])
        warnings.extend(w for w in res["warnings"] if w not in warnings)
        skipped.extend(res["skipped"])
        stages[res["stage"]] = {
            k: v for k, v in res["provenance"].items() if k not in INTERNAL_KEYS
        }
    ordered = {c: metrics[c] for c in column_names("participant") if c in metrics}
    ordered.update({k: v for k, v in metrics.items() if k not in ordered})
    return {
        "bids_name": qc_input["bids_name"],
        "entities": qc_input["entities"],
        "acquisition": qc_input.get("acquisition") or {},
        "reg_source": qc_input.get("reg_source"),
        "seg_source": qc_input.get("seg_source") if qc_input.get("seg_kind") else None,
        "qc_error": short_error(errors),
        "metrics": ordered,
        "errors": errors,
        "warnings": warnings,
        "skipped": skipped,
        "provenance": {
            "format": RESULT_FORMAT,
            "bids_qc_version": __version__,
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": device,
            "fingerprint": fingerprint,
            "inputs": {
                role: {"path": qc_input.get(role), "source": qc_input["sources"].get(role)}
                for role in fingerprint.get("inputs", {})
            },
            "seg_candidates": qc_input.get("candidates", {}),
            "stages": stages,
        },
    }


def failed_result(
    qc_input: dict[str, Any], fingerprint: dict[str, Any], device: str, error: dict[str, Any]
) -> dict[str, Any]:
    """The JSON of an image whose workflow crashed before any stage reported (e.g. killed)."""
    metrics = {c: None for c in column_names("participant")
               if c not in ("bids_name", "reg_source", "seg_source", "qc_error")}
    return assemble(
        qc_input, [stage_result("workflow", metrics, [error], [], [])], fingerprint, device
    )
