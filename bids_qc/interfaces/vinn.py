"""nipype interface of VINN: segment the T1w when no derivative supplies a segmentation.

The node sits upstream of every other stage of an image: it writes
``<entities>_desc-vinn_dseg.nii.gz`` (FreeSurfer codes, on the T1w's native grid) into its
own directory, for the sink to publish into the output dataset, and hands on the row with
that file as its segmentation (``seg_source = "bids_qc"``), so the classical volumes, SegQC
and any later segmentation-based model check it. When it fails, the row goes on unchanged
(those checks then skip for want of a segmentation) and the error is recorded.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..inputs import QCInput, qc_input_from_dict, qc_input_to_dict
from ..results import error_record, stage_result

#: Smallest field of view (mm, every axis) that VINN segments: a head is larger.
MIN_FOV_MM = 64.0


class _VINNInputSpec(BaseInterfaceInputSpec):
    qc_input = traits.Dict(mandatory=True, desc="QCInput as a dict (see bids_qc.inputs)")
    output_dir = traits.Str(mandatory=True, desc="the output dataset")
    device = traits.Str("cpu", usedefault=True, desc="torch device")


class _VINNOutputSpec(TraitedSpec):
    qc_input = traits.Dict(desc="the row, with VINN's segmentation as its seg when written")
    result = traits.Dict(desc="stage result (see bids_qc.results)")


def dseg_path(output_dir: Path, row: QCInput) -> Path:
    """``sub-X/[ses-Y/]anat/<entities>_desc-vinn_dseg.nii.gz`` (the ``_T1w`` suffix dropped)."""
    from ..outputs import dseg_path as derivative_dseg

    return derivative_dseg(output_dir, row, "vinn")


class VINNSegment(SimpleInterface):
    """Segment one T1w with VINN and hand the row on with the segmentation."""

    input_spec = _VINNInputSpec
    output_spec = _VINNOutputSpec

    def _run_interface(self, runtime):
        errors: list[dict] = []
        warnings: list[str] = []
        skipped: list[dict] = []
        provenance: dict = {}
        publish: dict[str, str] = {}
        row = qc_input_from_dict(self.inputs.qc_input)
        try:
            row = self._segment(row, warnings, skipped, provenance, Path(runtime.cwd), publish)
        except Exception as exc:  # one failed image must not stop the run
            errors.append(error_record("vinn", exc))
        self._results["qc_input"] = qc_input_to_dict(row)
        self._results["result"] = stage_result("vinn", {}, errors, warnings, skipped,
                                               provenance, publish)  # fmt: skip
        return runtime

    def _segment(self, row: QCInput, warnings: list[str], skipped: list[dict],
                 provenance: dict, cwd: Path, publish: dict[str, str]) -> QCInput:  # fmt: skip
        import nibabel as nib
        import numpy as np

        from ..io import atomic_save_nifti, load_image
        from ..models.registry import get_spec
        from ..models.vinn import load_model, segment_array
        from ..structures import looks_freesurfer_coded

        source = row.t1w or row.t1w_preproc
        if source is None:
            raise ValueError(f"{row.bids_name}: no T1w image to segment")
        image = load_image(source, role="T1w")
        warnings.extend(image.warnings)
        fov = np.asarray(image.img.shape[:3]) * np.asarray(image.img.header.get_zooms()[:3])
        if fov.min() < MIN_FOV_MM:
            skipped.append({"stage": "vinn", "reason": f"the T1w's field of view "
                            f"({' x '.join(f'{f:.0f}' for f in fov)} mm) is too small for a "
                            f"head (VINN needs {MIN_FOV_MM:.0f} mm along each axis)"})
            return row
        t0 = time.process_time()
        model = load_model(self.inputs.device)
        labels = segment_array(model, np.asarray(image.img.dataobj, dtype=np.float32),
                               image.img.affine, device=self.inputs.device)  # fmt: skip
        if not looks_freesurfer_coded(labels):
            found = ", ".join(str(int(c)) for c in np.unique(labels))
            skipped.append({"stage": "vinn", "reason": "VINN found no brain in the T1w (its "
                            f"segmentation holds only codes {found}); nothing written"})
            return row
        out = nib.Nifti1Image(labels.astype(np.int16), image.img.affine)
        out.set_data_dtype(np.int16)
        out.header.set_xyzt_units("mm")
        # Written here, in the node's directory; the sink publishes it (bids_qc.sink).
        dest = dseg_path(Path(self.inputs.output_dir), row)
        path = cwd / dest.name
        atomic_save_nifti(out, path)
        publish[str(path)] = str(dest.relative_to(self.inputs.output_dir))
        spec = get_spec("vinn")
        provenance.update({
            "model": spec.name, "version": spec.version, "weights_sha256": spec.sha256,
            "image": str(source), "segmentation": str(path),
            "replaced_seg": str(row.seg) if row.seg is not None else None,
            "cpu_seconds": round(time.process_time() - t0, 1),
        })  # fmt: skip
        return dataclasses.replace(
            row, seg=path, seg_kind="aseg", seg_reference=source, seg_source="bids_qc",
            sources={**row.sources, "seg": "bids_qc", "seg_reference": row.sources.get(
                "t1w" if row.t1w is not None else "t1w_preproc", "raw")},
            candidates={**row.candidates, "bids_qc": str(path)},
        )  # fmt: skip
