"""nipype interface of the classical metrics (registration baselines, structure volumes)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..derivatives_fs import read_etiv
from ..inputs import qc_input_from_dict
from ..io import check_freesurfer_codes, load_image, load_labels, require_file
from ..models.classic import (
    BASELINES,
    baseline_thresholds,
    registration_flags,
    registration_metrics,
    structure_volumes,
)
from ..results import error_record, stage_result
from ..spatial import load_template, to_template_space
from ..structures import STRUCTURE_NAMES
from ..templates_data import get_template


class _ClassicMetricsInputSpec(BaseInterfaceInputSpec):
    # The whole row travels as a dict of strings (paths are plain strings, not File traits,
    # so that a missing or broken file becomes our own error message rather than a trait error).
    qc_input = traits.Dict(mandatory=True, desc="QCInput as a dict (see bids_qc.inputs)")
    thresholds = traits.Dict(desc="flag thresholds by name (reg_cc, reg_mi override the "
                             "fitted ones)")


class _ClassicMetricsOutputSpec(TraitedSpec):
    result = traits.Dict(desc="stage result: name, metrics, errors, warnings, skipped, "
                         "provenance (see bids_qc.results)")


class ClassicMetrics(SimpleInterface):
    """``reg_cc``, ``reg_mi``, ``vol_<structure>`` and ``etiv_mm3`` of one T1w image.

    Each stage fails on its own: an unreadable segmentation leaves the registration
    metrics intact, and the other way round.
    """

    input_spec = _ClassicMetricsInputSpec
    output_spec = _ClassicMetricsOutputSpec

    def _run_interface(self, runtime):
        row = qc_input_from_dict(self.inputs.qc_input)
        metrics: dict[str, float | None] = {"reg_cc": None, "reg_mi": None,
                                            "reg_cc_flag": None, "reg_mi_flag": None}
        metrics.update({f"vol_{n}": None for n in STRUCTURE_NAMES})
        metrics["etiv_mm3"] = None
        errors: list[dict] = []
        warnings: list[str] = []
        skipped: list[dict] = []
        self._provenance: dict = {"template": {}, "template_space_t1w": None}

        self._check_t1w(row, errors, warnings)
        self._registration(row, metrics, errors, warnings, skipped, Path(runtime.cwd))
        self._segmentation(row, metrics, errors, warnings, skipped)
        self._etiv(row, metrics, warnings)

        self._results["result"] = stage_result(
            "classic", metrics, errors, warnings, skipped, self._provenance
        )
        return runtime

    @staticmethod
    def _check_t1w(row, errors, warnings) -> None:
        # Every selected T1w is opened, even when no model needs its voxels: a corrupt
        # raw file must be an error naming it, not an image counted as processed.
        if row.t1w is None:
            return
        raw = Path(row.t1w)
        if row.t1w_preproc is not None and raw.is_symlink() and not raw.exists():
            # a git-annex/DataLad raw file not fetched, beside a derivative's T1w that the
            # stages read and check: the image is usable, so it is not failed for that
            warnings.append(f"{raw} is a link whose content is not present (git-annex/DataLad "
                            "file not fetched); the derivative's T1w was used")
            return
        try:
            warnings.extend(load_image(row.t1w, role="T1w").warnings)
        except Exception as exc:
            errors.append(error_record("t1w", exc))

    def _registration(self, row, metrics, errors, warnings, skipped, cwd: Path) -> None:
        space = row.template_space
        if row.template_t1w is None and row.xfm is None:
            reason = "no template-space T1w and no transform to a template in the derivatives"
            if row.sources.get("t1w_preproc") in ("freesurfer", "fastsurfer"):
                reason += (" (the FreeSurfer/FastSurfer folder has no mri/transforms/"
                           "talairach.xfm: did recon-all stop before -talairach?)")
            skipped.append({"stage": "registration", "reason": reason})
            return
        template = get_template(space or "")
        if template is None:
            skipped.append({"stage": "registration", "reason": f"no template for space "
                            f"{space!r} is installed (set TEMPLATEFLOW_HOME to a local "
                            "TemplateFlow copy holding it)"})
            return
        self._provenance["template"] = {
            "space": template.space, "file": str(template.t1w), "sha256": template.sha256,
            "source": template.source,
        }
        try:
            grid = load_template(template)
            data, how, warns = to_template_space(row, grid)
            warnings.extend(warns)
            metrics.update(registration_metrics(data, grid.data, grid.mask))
            cuts = {**baseline_thresholds(), **{k: float(v) for k, v in
                                                (self.inputs.thresholds or {}).items()
                                                if k in BASELINES}}
            metrics.update(registration_flags(metrics, cuts))
            self._provenance["thresholds"] = {k: cuts[k] for k in BASELINES if k in cuts}
            out = cwd / "template_space_T1w.nii.gz"
            nib.save(nib.Nifti1Image(data.astype(np.float32), grid.affine), str(out))
            self._provenance["template_space_t1w"] = str(out)
            self._provenance["template"]["how"] = how
        except Exception as exc:  # one failed stage must not stop the image
            errors.append(error_record("registration", exc))

    @staticmethod
    def _etiv(row, metrics, warnings) -> None:
        # eTIV only rescales volumes at group level (which falls back to vol_whole_brain),
        # so an unreadable stats file is a warning, never a failed stage.
        if row.aseg_stats is None:
            return
        try:
            etiv = read_etiv(require_file(row.aseg_stats, role="FreeSurfer aseg.stats"))
        except Exception as exc:
            warnings.append(f"eTIV not read ({exc}); group-level volumes of this image are "
                            "scaled by vol_whole_brain instead")
            return
        if etiv is None:
            warnings.append(f"{row.aseg_stats} has no EstimatedTotalIntraCranialVol (eTIV) "
                            "line; group-level volumes of this image are scaled by "
                            "vol_whole_brain instead")
        metrics["etiv_mm3"] = etiv

    def _segmentation(self, row, metrics, errors, warnings, skipped) -> None:
        if row.seg is None:
            reason = "no segmentation in the derivatives"
            if row.sources.get("t1w_preproc") == "freesurfer":
                reason += (" (the FreeSurfer folder has no mri/aseg.mgz: did recon-all stop "
                           "before -autorecon2?)")
            skipped.append({"stage": "segmentation", "reason": reason})
            return
        if row.seg_kind == "tissue":
            skipped.append({"stage": "segmentation", "reason": "fMRIPrep's 3-class tissue dseg "
                            "has no structures: structure columns are n/a"})
            return
        try:
            loaded = load_labels(row.seg, role="segmentation")
            warnings.extend(loaded.warnings)
            labels = np.asanyarray(loaded.img.dataobj)
            check_freesurfer_codes(labels, row.seg)
            voxel = float(np.prod(loaded.img.header.get_zooms()[:3]))
            metrics.update(structure_volumes(labels, voxel))
        except Exception as exc:
            errors.append(error_record("segmentation", exc))
