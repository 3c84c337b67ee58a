"""nipype interface of RegQC: predicted residual misregistration of the template-space T1w."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..results import error_record, stage_result

#: Flag threshold (mm) when ``thresholds`` does not give ``regqc_rmse_mm`` (RegQCNET's).
DEFAULT_THRESHOLD_MM = 10.0


class _RegQCInputSpec(BaseInterfaceInputSpec):
    qc_input = traits.Dict(mandatory=True, desc="QCInput as a dict (see bids_qc.inputs)")
    classic_result = traits.Dict(mandatory=True, desc="the classical stage's result; its "
                                 "provenance names the template-space T1w and the template")
    device = traits.Str("cpu", usedefault=True, desc="torch device")
    thresholds = traits.Dict(desc="flag thresholds by name (regqc_rmse_mm, mm)")


class _RegQCOutputSpec(TraitedSpec):
    result = traits.Dict(desc="stage result (see bids_qc.results)")


class RegQC(SimpleInterface):
    """``regqc_rmse_mm`` and ``regqc_flag`` of one image.

    Reads the T1w that the classical stage already resampled onto the template grid, so the
    image is not resampled twice. A failed classical stage, a missing file or a model error
    is recorded in the result's errors; the interface itself does not raise.
    """

    input_spec = _RegQCInputSpec
    output_spec = _RegQCOutputSpec

    def _run_interface(self, runtime):
        from ..models.registry import get_spec

        metrics: dict[str, float | int | None] = {"regqc_rmse_mm": None, "regqc_flag": None}
        errors: list[dict] = []
        skipped: list[dict] = []
        thresholds = dict(self.inputs.thresholds) if self.inputs.thresholds else {}
        threshold = float(thresholds.get("regqc_rmse_mm", DEFAULT_THRESHOLD_MM))
        provenance: dict = {"model": "regqc", "device": self.inputs.device,
                            "threshold_mm": threshold}  # fmt: skip
        try:
            spec = get_spec("regqc")
            provenance.update(version=spec.version, sha256=spec.sha256)
            prov = (self.inputs.classic_result or {}).get("provenance", {}) or {}
            path, info = prov.get("template_space_t1w"), prov.get("template") or {}
            if not path or not info.get("space"):
                skipped.append({"model": "regqc", "reason": "the classical stage produced no "
                                "template-space T1w (see its errors or skips)"})
            else:
                rmse = predict_file(Path(path), info["space"], self.inputs.device)
                metrics = {"regqc_rmse_mm": rmse, "regqc_flag": int(rmse > threshold)}
                provenance["template_space"] = info["space"]
        except Exception as exc:  # a model failure must not stop the image
            errors.append(error_record("regqc", exc))
        self._results["result"] = stage_result("regqc", metrics, errors, [], skipped,
                                               provenance)  # fmt: skip
        return runtime


def predict_file(path: Path, space: str, device: str = "cpu") -> float:
    """Predicted RMSE (mm) of a template-space T1w file.

    Raises
    ------
    ValueError
        If the template is not installed or the image is not in its world.
    """
    from ..io import load_image
    from ..models.regqc import predict, preprocess
    from ..spatial import load_template
    from ..templates_data import get_template

    template = get_template(space)
    if template is None:
        raise ValueError(f"no template for space {space!r} is installed")
    grid = load_template(template)
    img = load_image(path, role="template-space T1w").img
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    x = preprocess(data, grid, affine=np.asarray(img.affine, dtype=np.float64))
    return float(predict(x[None], device=device)[0])
