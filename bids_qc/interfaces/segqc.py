"""nipype interface of SegQC: the predicted Dice of each structure of the segmentation."""

from __future__ import annotations

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..inputs import qc_input_from_dict
from ..results import error_record, stage_result
from ..structures import STRUCTURE_NAMES
from .seginputs import load_seg_inputs

#: Metric names of this stage, in column order.
SEGQC_METRICS: tuple[str, ...] = (
    *(f"segqc_dice_{n}" for n in STRUCTURE_NAMES), "segqc_dice_mean", "segqc_flag",
)  # fmt: skip


class _SegQCInputSpec(BaseInterfaceInputSpec):
    qc_input = traits.Dict(mandatory=True, desc="QCInput as a dict (see bids_qc.inputs)")
    classic_result = traits.Dict(desc="the classical stage's result (unused by SegQC)")
    device = traits.Str("cpu", usedefault=True, desc="torch device")
    thresholds = traits.Dict(desc="flag thresholds; ``segqc_dice`` (default 0.7)")


class _SegQCOutputSpec(TraitedSpec):
    result = traits.Dict(desc="stage result (see bids_qc.results)")


class SegQC(SimpleInterface):
    """``segqc_dice_<structure>``, ``segqc_dice_mean`` and ``segqc_flag`` of one image.

    The segmentation is read with its intensity image (``seg_reference``, the image on the
    segmentation's grid; else the preprocessed or raw T1w). A segmentation not coded with
    FreeSurfer's codes is skipped with the reason; any failure becomes an error record.
    """

    input_spec = _SegQCInputSpec
    output_spec = _SegQCOutputSpec

    def _run_interface(self, runtime):
        from ..models.segqc import DEFAULT_THRESHOLD

        metrics: dict[str, float | int | None] = dict.fromkeys(SEGQC_METRICS)
        errors: list[dict] = []
        warnings: list[str] = []
        skipped: list[dict] = []
        provenance: dict = {}
        thresholds = dict(self.inputs.thresholds or {})
        threshold = float(thresholds.get("segqc_dice", DEFAULT_THRESHOLD))
        try:
            row = qc_input_from_dict(self.inputs.qc_input)
            self._predict(row, threshold, metrics, warnings, skipped, provenance)
        except Exception as exc:  # one failed image must not stop the node
            errors.append(error_record("segqc", exc))
        self._results["result"] = stage_result(
            "segqc", metrics, errors, warnings, skipped, provenance
        )
        return runtime

    def _predict(self, row, threshold, metrics, warnings, skipped, provenance) -> None:
        loaded = load_seg_inputs(row, "segqc", warnings, skipped, with_image=True)
        if loaded is None:
            return
        labels, image_path = loaded.labels, loaded.image_path

        from ..models.registry import get_spec
        from ..models.segqc import predict, preprocess

        x = preprocess(np.asarray(loaded.image_img.dataobj, dtype=np.float32),
                       loaded.image_img.affine, labels, loaded.seg_img.affine)
        dice = predict(x[None], device=self.inputs.device)[0]
        for name, value in zip(STRUCTURE_NAMES, dice):
            metrics[f"segqc_dice_{name}"] = round(float(value), 4)
        metrics["segqc_dice_mean"] = round(float(np.mean(dice)), 4)
        metrics["segqc_flag"] = int(bool(np.any(dice < threshold)))
        spec = get_spec("segqc")
        provenance.update({
            "model": spec.name, "version": spec.version, "weights_sha256": spec.sha256,
            "threshold": threshold, "image": str(image_path), "segmentation": str(row.seg),
        })  # fmt: skip
