"""nipype interface of ShapeQC: P(FAIL) and flag of each subcortical structure's shape, and
Grad-CAM figures (2D map and mesh) in ``sub-XX/[ses-YY/]figures/``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..inputs import qc_input_from_dict
from ..results import error_record, stage_result
from ..structures import SUBCORTICAL_NAMES
from .seginputs import load_seg_inputs

#: Metric names of this stage, in column order.
SHAPEQC_METRICS: tuple[str, ...] = (
    *(m for n in SUBCORTICAL_NAMES for m in (f"shapeqc_pfail_{n}", f"shapeqc_flag_{n}")),
    "shapeqc_nflagged",
)


#: Besides flagged structures, figures are drawn for this many of the highest P(FAIL).
N_TOP_FIGURES = 3


class _ShapeQCInputSpec(BaseInterfaceInputSpec):
    qc_input = traits.Dict(mandatory=True, desc="QCInput as a dict (see bids_qc.inputs)")
    classic_result = traits.Dict(desc="the classical stage's result (unused by ShapeQC)")
    device = traits.Str("cpu", usedefault=True, desc="torch device (ShapeQC runs on the CPU)")
    thresholds = traits.Dict(desc="flag thresholds; ``shapeqc_pfail_<structure>`` win over "
                             "the shipped ones")
    output_dir = traits.Str(desc="the output dataset (figures go to sub-XX/figures/)")


class _ShapeQCOutputSpec(TraitedSpec):
    result = traits.Dict(desc="stage result (see bids_qc.results)")


def figure_dir(output_dir: Path, subject: str, session: str | None) -> Path:
    """``sub-XX/[ses-YY/]figures`` of the output dataset."""
    folder = Path(output_dir) / f"sub-{subject}"
    return (folder / f"ses-{session}" if session else folder) / "figures"


class ShapeQC(SimpleInterface):
    """``shapeqc_pfail_<structure>``, ``shapeqc_flag_<structure>``, ``shapeqc_nflagged``.

    Thresholds: a ``shapeqc_pfail_<structure>`` entry of ``thresholds`` (from
    ``--thresholds`` or ``--shapeqc-recall``), else the shipped file's. A Grad-CAM figure
    is written for every flagged structure and the :data:`N_TOP_FIGURES` structures of
    highest P(FAIL) (a figure costs about as much as the model; the report shows those of
    flagged structures unless ``--verbose-reports``); without ``output_dir``, none.
    """

    input_spec = _ShapeQCInputSpec
    output_spec = _ShapeQCOutputSpec

    def _run_interface(self, runtime):
        metrics: dict[str, float | int | None] = dict.fromkeys(SHAPEQC_METRICS)
        errors: list[dict] = []
        warnings: list[str] = []
        skipped: list[dict] = []
        provenance: dict = {}
        publish: dict[str, str] = {}
        try:
            row = qc_input_from_dict(self.inputs.qc_input)
            self._predict(row, metrics, warnings, skipped, provenance, Path(runtime.cwd),
                          publish)  # fmt: skip
        except Exception as exc:  # one failed image must not stop the node
            errors.append(error_record("shapeqc", exc))
        self._results["result"] = stage_result(
            "shapeqc", metrics, errors, warnings, skipped, provenance, publish
        )
        return runtime

    def _predict(self, row, metrics, warnings, skipped, provenance, cwd, publish) -> None:
        loaded = load_seg_inputs(row, "shapeqc", warnings, skipped, with_image=False)
        if loaded is None:
            return
        labels = loaded.labels

        from ..models.registry import get_spec
        from ..models.shapeqc import predict, shipped_model, shipped_thresholds

        given = dict(self.inputs.thresholds or {})
        thresholds = shipped_thresholds()
        for s in SUBCORTICAL_NAMES:
            if f"shapeqc_pfail_{s}" in given:
                thresholds[s] = float(given[f"shapeqc_pfail_{s}"])
        results, missing = predict(shipped_model(), labels, np.asarray(loaded.seg_img.affine))
        for s, why in missing.items():
            warnings.append(f"shapeqc: {s} not checked: {why}")
        nflagged = 0
        gradcam = {}
        out_dir = Path(self.inputs.output_dir) if self.inputs.output_dir else None
        top = {r.structure for r in sorted(results, key=lambda r: -r.pfail)[:N_TOP_FIGURES]}
        for r in results:
            flag = int(r.pfail > thresholds[r.structure])
            nflagged += flag
            metrics[f"shapeqc_pfail_{r.structure}"] = round(r.pfail, 4)
            metrics[f"shapeqc_flag_{r.structure}"] = flag
            if out_dir is not None and (flag or r.structure in top):
                from ..reports.shape_figures import gradcam_figure

                name = f"{row.bids_name}_shapeqc_{r.structure}.png"
                rel = str((figure_dir(out_dir, row.subject, row.session) / name)
                          .relative_to(out_dir))  # fmt: skip
                # Drawn in the node's directory; the sink publishes it (bids_qc.sink).
                gradcam_figure(r, cwd / name, f"{r.structure}: P(FAIL) {r.pfail:.2f} "
                               f"(threshold {thresholds[r.structure]:.2f})")
                publish[str(cwd / name)] = rel
                gradcam[r.structure] = rel
        metrics["shapeqc_nflagged"] = nflagged if results else None
        spec = get_spec("shapeqc")
        provenance.update({
            "model": spec.name, "version": spec.version, "weights_sha256": spec.sha256,
            "thresholds": {f"shapeqc_pfail_{s}": round(v, 6) for s, v in thresholds.items()},
            "segmentation": str(row.seg), "gradcam": gradcam,
        })  # fmt: skip
