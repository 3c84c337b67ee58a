"""What the dataset walker hands to the workflows: plain paths and entities.

:mod:`bids_qc.bids` builds :class:`QCInput` objects; nothing downstream sees pybids.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

#: Where a derivative came from (values of the ``reg_source`` / ``seg_source`` columns).
Source = Literal["raw", "fmriprep", "freesurfer", "fastsurfer", "bids_qc"]
#: ``aseg``: FreeSurfer-coded labels; ``tissue``: fMRIPrep's 3-class dseg (CSF/GM/WM).
SegKind = Literal["aseg", "tissue"]
#: ``itk``: an ITK/ANTs affine text or .mat file; ``talairach``: FreeSurfer/MNI ``talairach.xfm``
#: (world RAS to world RAS); ``h5``: an ANTs composite (not readable without ANTs).
XfmKind = Literal["itk", "talairach", "h5"]


@dataclass(frozen=True)
class QCInput:
    """Everything known about one T1w image (one row of the group table).

    Parameters
    ----------
    bids_name : str
        ``sub-X[_ses-Y][_acq-Z][_rec-W][_run-N]_T1w``, from the raw image's entities,
        or from a derivative's source entities when there is no raw image.
    entities : dict
        BIDS entities of the row (``subject``, and ``session``, ``acquisition``,
        ``reconstruction``, ``run`` where present), values without prefixes.
    t1w : Path or None
        The raw T1w image (None when only derivatives hold this image).
    t1w_preproc : Path or None
        A preprocessed native-space T1w (fMRIPrep ``desc-preproc_T1w``, FreeSurfer
        ``norm.mgz``/``T1.mgz``/``orig.mgz``, FastSurfer ``orig.mgz``).
    template_t1w : Path or None
        The T1w resampled into a template space (fMRIPrep ``space-<tpl>_desc-preproc_T1w``).
    template_space : str or None
        That template's name (``MNI152NLin2009cAsym``), or the target of ``xfm``.
    brain_mask : Path or None
        A native-space brain mask (``desc-brain_mask``).
    seg : Path or None
        The segmentation chosen by the precedence rules (or ``--seg-source``).
    seg_kind : {"aseg", "tissue"} or None
        ``tissue`` for fMRIPrep's bare 3-class ``dseg``: structure columns are ``n/a``.
    seg_reference : Path or None
        The intensity image on the segmentation's grid (``norm.mgz`` beside ``aseg.mgz``,
        FastSurfer's ``orig.mgz``, fMRIPrep's ``desc-preproc_T1w`` beside its dseg).
    xfm : Path or None
        A transform from this image's space to ``template_space``.
    xfm_kind : {"itk", "talairach", "h5"} or None
        How to read ``xfm``.
    aseg_stats : Path or None
        FreeSurfer's (else FastSurfer's) ``stats/aseg.stats``, the source of ``etiv_mm3``.
    reg_source, seg_source : str or None
        Which derivative supplied the registration and the segmentation inputs.
    sources : dict
        Input role (``t1w``, ``template_t1w``, ``seg``, ...) -> the derivative
        (``raw``, ``fmriprep``, ``freesurfer``, ``fastsurfer``) that supplied it.
    candidates : dict
        Every segmentation found, by source (``freesurfer``, ``fastsurfer``, ``fmriprep``,
        ``fmriprep_tissue``), so a user can see what was not chosen.
    acquisition : dict
        The raw image's sidecar fields that tell scanners apart (``Manufacturer``,
        ``MagneticFieldStrength``) where its sidecars hold them.
    """

    bids_name: str
    entities: dict[str, str]
    t1w: Path | None = None
    t1w_preproc: Path | None = None
    template_t1w: Path | None = None
    template_space: str | None = None
    brain_mask: Path | None = None
    seg: Path | None = None
    seg_kind: SegKind | None = None
    seg_reference: Path | None = None
    xfm: Path | None = None
    xfm_kind: XfmKind | None = None
    aseg_stats: Path | None = None
    reg_source: Source | None = None
    seg_source: Source | None = None
    sources: dict[str, str] = field(default_factory=dict)
    candidates: dict[str, str] = field(default_factory=dict)
    acquisition: dict[str, str | float] = field(default_factory=dict)

    def input_files(self) -> dict[str, Path]:
        """Role -> path of every input file this row uses (for md5 provenance and resume)."""
        return {r: getattr(self, r) for r in _PATH_FIELDS if getattr(self, r) is not None}

    @property
    def subject(self) -> str:
        """The subject label, without ``sub-``."""
        return self.entities["subject"]

    @property
    def session(self) -> str | None:
        """The session label, without ``ses-``, or None."""
        return self.entities.get("session")


_PATH_FIELDS = ("t1w", "t1w_preproc", "template_t1w", "brain_mask", "seg", "seg_reference", "xfm",
                "aseg_stats")


def qc_input_to_dict(row: QCInput) -> dict:
    """JSON-ready form of a QCInput (paths as strings); inverse of :func:`qc_input_from_dict`."""
    out = dataclasses.asdict(row)
    for key in _PATH_FIELDS:
        if out[key] is not None:
            out[key] = str(out[key])
    return out


def qc_input_from_dict(data: dict) -> QCInput:
    """Rebuild a QCInput from its dict form (paths back to ``Path``)."""
    kwargs = {k: (Path(v) if k in _PATH_FIELDS and v is not None else v) for k, v in data.items()}
    return QCInput(**kwargs)
