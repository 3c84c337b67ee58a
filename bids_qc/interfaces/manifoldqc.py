"""nipype interface of ManifoldQC: Dice of the subcortical structures against a surrogate
segmentation found on the learned manifold of good pairs; writes the surrogate."""

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

#: Metric names of this stage, in column order (the 14 subcortical structures it covers).
MANIFOLDQC_METRICS: tuple[str, ...] = (
    *(f"manifoldqc_dice_{n}" for n in SUBCORTICAL_NAMES), "manifoldqc_dice_mean",
    "manifoldqc_flag",
)  # fmt: skip


def surrogate_path(output_dir: str | Path, qc_input: dict) -> Path:
    """``sub-X/[ses-Y/]anat/<entities>_desc-manifoldqc_dseg.nii.gz`` in the outputs."""
    from ..outputs import dseg_path

    return dseg_path(Path(output_dir), qc_input_from_dict(qc_input), "manifoldqc")


class _ManifoldQCInputSpec(BaseInterfaceInputSpec):
    qc_input = traits.Dict(mandatory=True, desc="QCInput as a dict (see bids_qc.inputs)")
    classic_result = traits.Dict(desc="the classical stage's result (unused by ManifoldQC)")
    device = traits.Str("cpu", usedefault=True, desc="torch device")
    thresholds = traits.Dict(desc="flag thresholds; ``manifoldqc_dice`` (else ``segqc_dice``, "
                             "else 0.7)")
    output_dir = traits.Str(desc="output dataset; the sink publishes the surrogate "
                            "segmentation there (else it stays in the node's directory)")


class _ManifoldQCOutputSpec(TraitedSpec):
    result = traits.Dict(desc="stage result (see bids_qc.results)")


class ManifoldQC(SimpleInterface):
    """``manifoldqc_dice_<structure>``, ``manifoldqc_dice_mean``, ``manifoldqc_flag``.

    The segmentation is read with its intensity image (``seg_reference``, else the
    preprocessed or raw T1w), as SegQC reads it. The surrogate segmentation (FreeSurfer
    codes of the 14 structures, on the input segmentation's grid) is written as
    ``<entities>_desc-manifoldqc_dseg.nii.gz`` and named in the provenance
    (``surrogate_seg``) for the report. Any failure becomes an error record.
    """

    input_spec = _ManifoldQCInputSpec
    output_spec = _ManifoldQCOutputSpec

    def _run_interface(self, runtime):
        from ..models.manifoldqc import DEFAULT_THRESHOLD

        metrics: dict[str, float | int | None] = dict.fromkeys(MANIFOLDQC_METRICS)
        errors: list[dict] = []
        warnings: list[str] = []
        skipped: list[dict] = []
        provenance: dict = {}
        publish: dict[str, str] = {}
        thresholds = dict(self.inputs.thresholds or {})
        threshold = float(thresholds.get("manifoldqc_dice",
                                         thresholds.get("segqc_dice", DEFAULT_THRESHOLD)))
        try:
            row = qc_input_from_dict(self.inputs.qc_input)
            self._predict(row, threshold, metrics, warnings, skipped, provenance, runtime.cwd,
                          publish)  # fmt: skip
        except Exception as exc:  # one failed image must not stop the node
            errors.append(error_record("manifoldqc", exc))
        self._results["result"] = stage_result(
            "manifoldqc", metrics, errors, warnings, skipped, provenance, publish
        )
        return runtime

    def _predict(self, row, threshold, metrics, warnings, skipped, provenance, cwd,
                 publish) -> None:  # fmt: skip
        loaded = load_seg_inputs(row, "manifoldqc", warnings, skipped, with_image=True)
        if loaded is None:
            return
        labels, image_path, seg_img = loaded.labels, loaded.image_path, loaded.seg_img

        import nibabel as nib

        from ..io import atomic_save_nifti
        from ..models.manifoldqc import predict, preprocess, surrogate_to_labels, to_dice
        from ..models.registry import get_spec

        prep = preprocess(np.asarray(loaded.image_img.dataobj, dtype=np.float32),
                          loaded.image_img.affine, labels, seg_img.affine)
        res = predict([prep], device=self.inputs.device)
        dice = to_dice(res.dice[0])
        for name, value in zip(SUBCORTICAL_NAMES, dice):
            metrics[f"manifoldqc_dice_{name}"] = round(float(value), 4)
        metrics["manifoldqc_dice_mean"] = round(float(np.mean(dice)), 4)
        metrics["manifoldqc_flag"] = int(bool(np.any(dice < threshold)))

        # Written in the node's directory; the sink publishes it (bids_qc.sink).
        out = Path(cwd) / "surrogate_dseg.nii.gz"
        if self.inputs.output_dir:
            dest = surrogate_path(self.inputs.output_dir, self.inputs.qc_input)
            out = Path(cwd) / dest.name
            publish[str(out)] = str(dest.relative_to(self.inputs.output_dir))
        codes = surrogate_to_labels(res.surrogate[0], prep.affine, labels.shape, seg_img.affine)
        img = nib.Nifti1Image(codes.astype(np.int16), seg_img.affine)
        img.header.set_xyzt_units("mm")
        atomic_save_nifti(img, out)
        spec = get_spec("manifoldqc")
        provenance.update({
            "model": spec.name, "version": spec.version, "weights_sha256": spec.sha256,
            "threshold": threshold, "image": str(image_path), "segmentation": str(row.seg),
            "surrogate_seg": str(out), "search_steps": int(res.steps),
            "search_loss": [float(res.loss_start[0]), float(res.loss_end[0])],
        })  # fmt: skip
