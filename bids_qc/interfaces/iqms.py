"""nipype interface of the image quality metrics (IQMs) of the raw T1w."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..errors import InputError
from ..inputs import QCInput, qc_input_from_dict
from ..results import error_record, stage_result


class _IQMInputSpec(BaseInterfaceInputSpec):
    qc_input = traits.Dict(mandatory=True, desc="QCInput as a dict (see bids_qc.inputs)")
    classic_result = traits.Dict(desc="the classical stage's result (its provenance holds "
                                 "the template-space T1w, for tpm_overlap_*)")
    threads = traits.Int(1, usedefault=True, desc="CPU threads for N4")


class _IQMOutputSpec(TraitedSpec):
    result = traits.Dict(desc="stage result (see bids_qc.results)")


def _template_image(classic: dict[str, Any], warnings: list[str]):
    """The template-space T1w with the template's mask and TPMs, or None (and why)."""
    prov = (classic or {}).get("provenance") or {}
    path, space = prov.get("template_space_t1w"), (prov.get("template") or {}).get("space")
    if not path or not space:
        return None
    from ..iqms.compute import TemplateImage
    from ..iqms.tpm import load_tpms, tpm_files
    from ..spatial import load_template
    from ..templates_data import get_template

    files, source = tpm_files(space)
    template = get_template(space)
    if template is None or not any(files.values()):
        return None
    try:
        import nibabel as nib
        import numpy as np

        grid = load_template(template)
        image = np.asanyarray(nib.load(path).dataobj, dtype=np.float32)
        tpms = load_tpms(files, grid.data.shape, grid.affine)
        return TemplateImage(image, grid.mask, tpms, source)
    except Exception as exc:  # the overlap is one IQM family: the others still count
        warnings.append(f"tpm_overlap_* not computed ({type(exc).__name__}: {exc})")
        return None


class ImageQualityMetrics(SimpleInterface):
    """MRIQC's IQMs of the raw T1w (:mod:`bids_qc.iqms`), from it and its segmentation.

    Advisory: no flags, and never a failed image. An image without a raw T1w or a
    segmentation, or one whose segmentation cannot seed the tissue classes, gets n/a IQMs
    and a skipped entry saying why; an unexpected failure also leaves them n/a, with a
    warning holding the traceback to report.
    """

    input_spec = _IQMInputSpec
    output_spec = _IQMOutputSpec

    def _run_interface(self, runtime):
        from ..iqms.definitions import IQM_NAMES

        row = qc_input_from_dict(self.inputs.qc_input)
        metrics: dict[str, float | None] = dict.fromkeys(IQM_NAMES)
        warnings: list[str] = []
        skipped: list[dict] = []
        provenance: dict[str, Any] = {}
        reason = missing_input(row)
        if reason:
            skipped.append({"stage": "iqms", "reason": reason})
        else:
            try:
                provenance = self._compute(row, metrics, warnings, skipped)
            except (InputError, ValueError) as exc:
                skipped.append({"stage": "iqms", "reason": f"IQMs not computed: {exc}"})
            except Exception as exc:  # advisory: a bug here must not fail the image
                record = error_record("iqms", exc)
                skipped.append({"stage": "iqms", "reason": "IQMs not computed: unexpected "
                                f"{record['problem']} (please report it with the warning's "
                                "traceback)"})
                warnings.append(f"iqms: {record['traceback']}")
        self._results["result"] = stage_result("iqms", metrics, [], warnings, skipped,
                                               provenance)
        return runtime

    def _compute(self, row: QCInput, metrics: dict, warnings: list[str],
                 skipped: list[dict]) -> dict[str, Any]:
        from ..iqms.bias import N4Settings
        from ..iqms.compute import compute_iqms, load_inputs

        image, affine, labels, warns = load_inputs(row.t1w, row.seg)
        warnings.extend(w for w in warns if w not in warnings)
        template = _template_image(dict(self.inputs.classic_result or {}), warnings)
        result = compute_iqms(image, affine, labels, row.seg_kind or "aseg", template=template,
                              n4=N4Settings(threads=max(1, int(self.inputs.threads))))
        metrics.update(result.metrics)
        # Some IQMs n/a (e.g. the background ones of a skull-stripped image) is not a stage
        # that did not run: the reasons go with the notes, not into ``skipped`` (which the
        # terminal summary counts as "not checked").
        return {**result.provenance, "notes": [*result.skipped, *result.notes],
                "t1w": str(row.t1w),
                "seg": str(row.seg), "seg_kind": row.seg_kind, "seg_source": row.seg_source}


def missing_input(row: QCInput) -> str:
    """Why this row cannot have IQMs ("" when it can)."""
    if row.t1w is None:
        return ("no raw T1w (the IQMs describe the raw image; derivatives' images are "
                "resampled and corrected)")
    if not Path(row.t1w).exists():
        return f"the raw T1w {row.t1w} is not present (a git-annex/DataLad link not fetched?)"
    if row.seg is None:
        return "no segmentation to seed the tissue classes"
    return ""
