"""FreeSurfer and FastSurfer subject folders, found by path.

FreeSurfer's ``SUBJECTS_DIR`` is not BIDS (no entities in file names, no
``dataset_description.json``), so pybids cannot index it; this module finds subject
folders by their names alone and never imports pybids. :mod:`bids_qc.bids` pairs the
folders with T1w images.

Where the folders are looked for (see :func:`subjects_dirs`): a derivative folder
itself (``derivatives/freesurfer/sub-01/mri/``) and its ``sourcedata/freesurfer``
(where fMRIPrep puts FreeSurfer: ``derivatives/fmriprep/sourcedata/freesurfer/``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

LOGGER = logging.getLogger("bids_qc.bids")

FSSource = Literal["freesurfer", "fastsurfer"]

#: ``sub-01`` or ``sub-01_ses-A``. Longitudinal folders (``sub-01_ses-A.long.sub-01``)
#: and FreeSurfer's own subjects (``fsaverage``, ``bert``) do not match and are not used.
SUBJECT_FOLDER = re.compile(r"^sub-([a-zA-Z0-9]+)(?:_ses-([a-zA-Z0-9]+))?$")

#: Native-space volumes in order of preference. ``norm.mgz`` is the bias-corrected,
#: intensity-normalised volume that ``aseg.mgz`` was computed on, so it is the best
#: reference for segmentation and registration checks; ``T1.mgz`` (normalised, white
#: matter at 110) and ``orig.mgz`` (the conformed raw image) are fallbacks for runs
#: that stopped early. All three share the conformed grid of ``aseg.mgz`` and the
#: space that ``talairach.xfm`` maps from.
FREESURFER_T1 = ("norm.mgz", "T1.mgz", "orig.mgz")
#: FastSurfer's segmentations, in order of preference.
FASTSURFER_SEGS = ("aparc.DKTatlas+aseg.deep.mgz", "aseg.auto_noCCseg.mgz")

#: ``talairach.xfm`` maps to MNI305, not MNI152; the app composes it with FreeSurfer's
#: MNI305 -> MNI152 affine (:func:`bids_qc.transforms.read_talairach_mni152`), so rows say
#: the MNI152 template's space.
TALAIRACH_SPACE = "MNI152NLin2009cAsym"

#: Where ``mri_segstats --etiv`` writes the estimated total intracranial volume.
ASEG_STATS = "stats/aseg.stats"
#: The ``# Measure`` line of ``aseg.stats`` that holds eTIV (FreeSurfer 5.3 to 7.x, and
#: FastSurfer's surface pipeline, which runs the same ``mri_segstats``).
_ETIV = re.compile(r"^#\s*Measure\s+EstimatedTotalIntraCranialVol\s*,\s*eTIV\s*,[^,]*,"
                   r"\s*([-+0-9.eE]+)\s*,\s*mm\^3\s*$", re.MULTILINE)


@dataclass(frozen=True)
class FSSubject:
    """One FreeSurfer or FastSurfer subject folder.

    Parameters
    ----------
    source : {"freesurfer", "fastsurfer"}
        The tool that wrote the folder.
    path : Path
        The subject folder (``.../sub-01_ses-A``).
    subject, session : str, str or None
        Labels from the folder name, without prefixes.
    t1w_preproc : Path or None
        ``norm.mgz``/``T1.mgz``/``orig.mgz`` (FreeSurfer) or ``orig.mgz`` (FastSurfer).
    seg : Path or None
        ``aseg.mgz`` (FreeSurfer) or FastSurfer's ``aparc.DKTatlas+aseg.deep.mgz``
        (else ``aseg.auto_noCCseg.mgz``); FreeSurfer-coded either way.
    seg_reference : Path or None
        The volume on the segmentation's grid (the same file as ``t1w_preproc``).
    xfm : Path or None
        ``mri/transforms/talairach.xfm`` (or ``mri/talairach.xfm``).
    aseg_stats : Path or None
        ``stats/aseg.stats``, which holds eTIV (:func:`read_etiv`).
    """

    source: FSSource
    path: Path
    subject: str
    session: str | None
    t1w_preproc: Path | None
    seg: Path | None
    seg_reference: Path | None
    xfm: Path | None
    aseg_stats: Path | None = None

    @property
    def entities(self) -> dict[str, str]:
        """The folder's BIDS entities (``subject``, and ``session`` where named)."""
        out = {"subject": self.subject}
        if self.session is not None:
            out["session"] = self.session
        return out


def present(path: Path) -> bool:
    """Whether a file is there, counting a dangling symlink (git-annex content not fetched).

    A row must still name such a file so that the run can say "run datalad get".
    """
    return path.is_symlink() or path.exists()


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if present(folder / name):
            return folder / name
    return None


def read_etiv(path: Path | str) -> float | None:
    """The estimated total intracranial volume (eTIV, mm^3) of a FreeSurfer ``aseg.stats``.

    Parameters
    ----------
    path : Path or str
        A ``stats/aseg.stats`` written by ``mri_segstats --etiv`` (``recon-all``).

    Returns
    -------
    float or None
        eTIV in mm^3; None when the file has no eTIV line (``mri_segstats`` run without
        ``--etiv``, e.g. FastSurfer's segmentation-only stats) or a value that is not
        positive.

    Raises
    ------
    OSError
        If the file cannot be read (a git-annex link whose content is not fetched).
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    match = _ETIV.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    return value if value > 0 else None


def is_fastsurfer(mri: Path) -> bool:
    """Whether an ``mri/`` folder was written by FastSurfer rather than FreeSurfer.

    FastSurfer writes ``aparc.DKTatlas+aseg.deep.mgz``; FreeSurfer never does. Without
    it, an ``aseg.auto_noCCseg.mgz`` with no ``aseg.mgz`` is a FastSurfer
    segmentation-only run (FreeSurfer writes both or neither of those two).
    """
    if present(mri / FASTSURFER_SEGS[0]):
        return True
    return present(mri / FASTSURFER_SEGS[1]) and not present(mri / "aseg.mgz")


def read_subject(folder: Path) -> FSSubject | None:
    """The FreeSurfer/FastSurfer subject in ``folder``, or None if it is not one.

    A folder counts when its name is ``sub-X[_ses-Y]`` and its ``mri/`` holds a
    usable T1-like volume or segmentation.
    """
    match = SUBJECT_FOLDER.match(folder.name)
    mri = folder / "mri"
    if match is None or not mri.is_dir():
        return None
    xfm = _first(mri, ("transforms/talairach.xfm", "talairach.xfm"))
    if is_fastsurfer(mri):
        source: FSSource = "fastsurfer"
        # orig.mgz is the conformed input FastSurfer segmented, kept at the native voxel
        # size when that is sub-millimetre; the segmentations are on its grid.
        t1w = _first(mri, ("orig.mgz",))
        seg = _first(mri, FASTSURFER_SEGS)
    else:
        source = "freesurfer"
        t1w = _first(mri, FREESURFER_T1)
        seg = _first(mri, ("aseg.mgz",))
    if t1w is None and seg is None:
        LOGGER.debug("%s: no usable volume in mri/, not used", folder)
        return None
    return FSSubject(
        source=source,
        path=folder,
        subject=match.group(1),
        session=match.group(2),
        t1w_preproc=t1w,
        seg=seg,
        seg_reference=t1w if seg is not None else None,
        xfm=xfm,
        aseg_stats=folder / ASEG_STATS if present(folder / ASEG_STATS) else None,
    )


def subjects_dirs(root: Path) -> list[Path]:
    """The folders under a derivative ``root`` that may hold subject folders."""
    return [d for d in (root, root / "sourcedata" / "freesurfer") if d.is_dir()]


def find_subjects(root: Path) -> list[FSSubject]:
    """Every FreeSurfer/FastSurfer subject folder in or under a derivative ``root``.

    ``root`` may also be a single subject folder. Results are in path order.
    """
    single = read_subject(root)
    if single is not None:
        return [single]
    found = []
    for subjects_dir in subjects_dirs(root):
        for folder in sorted(subjects_dir.glob("sub-*")):
            subject = read_subject(folder)
            if subject is not None:
                found.append(subject)
    return found
