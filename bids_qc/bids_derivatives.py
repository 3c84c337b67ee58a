"""Derivative bundles: what each fMRIPrep, FreeSurfer or FastSurfer folder offers for one
set of identity entities, found in discovery order (pairing them with rows is
:mod:`bids_qc.bids`'s job).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import exitcodes
from .bids_layout import fmriprep_files
from .bids_names import NIFTI, extension, identity, read_json
from .derivatives_fs import TALAIRACH_SPACE, FSSubject, find_subjects
from .errors import DatasetError

LOGGER = logging.getLogger("bids_qc.bids")
#: The template bids_qc's checks are built on; preferred where fMRIPrep wrote several.
PREFERRED_SPACE = "MNI152NLin2009cAsym"
#: ``space-`` values that are not templates (native or surface spaces).
_NOT_TEMPLATES = frozenset({"T1w", "anat", "orig", "fsnative"})
#: GeneratedBy names / folder names of pipelines with fMRIPrep's anatomical outputs.
FMRIPREP_FAMILY = ("fmriprep", "smriprep", "nibabies")
_XFM_KINDS = {".txt": "itk", ".mat": "itk", ".h5": "h5"}


@dataclass
class Bundle:
    """What one derivative offers for one set of identity entities."""

    source: str  # fmriprep / freesurfer / fastsurfer
    entities: dict[str, str]
    order: int  # discovery order, the tie-breaker between equally specific matches
    t1w_preproc: Path | None = None
    brain_mask: Path | None = None
    templates: list[tuple[tuple, str, Path]] = field(default_factory=list)  # key, space, path
    seg: dict[str, Path] = field(default_factory=dict)  # SEG_PRECEDENCE key -> path
    seg_reference: Path | None = None
    xfms: list[tuple[str, str, Path]] = field(default_factory=list)  # space, kind, path
    aseg_stats: Path | None = None  # FreeSurfer/FastSurfer stats/aseg.stats (eTIV)

    @property
    def is_anchor(self) -> bool:
        """Whether it holds an image that can name a row when no raw T1w pairs with it."""
        return bool(self.t1w_preproc or self.templates or self.seg)

    def xfm(self, space: str | None = None) -> tuple[str, str, Path] | None:
        """The best transform (to ``space`` if given): preferred template, then ITK.

        ITK text/.mat affines come before ``.h5`` composites, which need ANTs to read.
        """
        usable = [x for x in self.xfms if space is None or x[0] == space]
        return min(usable, default=None,
                   key=lambda x: (x[0] != PREFERRED_SPACE, x[1] != "itk", x[0], str(x[2])))


def _is_fmriprep_family(root: Path) -> bool:
    """Whether a derivative dataset's GeneratedBy name or folder name is fMRIPrep's family."""
    description = read_json(root / "dataset_description.json")
    description = description if isinstance(description, dict) else {}
    names = [root.name]
    generated = description.get("GeneratedBy")
    if isinstance(generated, list) and generated and isinstance(generated[0], dict):
        names.append(str(generated[0].get("Name", "")))
    legacy = description.get("PipelineDescription")  # BIDS < 1.4 (fMRIPrep < 20.2)
    if isinstance(legacy, dict):
        names.append(str(legacy.get("Name", "")))
    return any(tool in name.lower() for name in names for tool in FMRIPREP_FAMILY)


def find_derivatives(bids_dir: Path, given: Iterable[Path] | None, database: Path | None,
                      root_is_derivative: bool, subjects: tuple[str, ...] = ()
                      ) -> list[Bundle]:
    """Every derivative bundle, in discovery order."""
    roots: list[tuple[Path, bool]] = []  # (folder, named by the user)
    if root_is_derivative:
        roots.append((bids_dir, True))
    if given is None:
        base = bids_dir / "derivatives"
        if base.is_dir():
            roots += [(d, False) for d in sorted(base.iterdir())
                      if d.is_dir() and not d.name.startswith(".")]
    else:
        for path in given:
            path = Path(path).expanduser().absolute()
            if not path.is_dir():
                raise DatasetError(f"--derivatives {path}: no such folder. Give folders "
                                   "of fMRIPrep, FreeSurfer or FastSurfer outputs.",
                                   exitcodes.USAGE)
            roots.append((path, True))
    bundles: list[Bundle] = []
    seen: set[Path] = set()
    for root, explicit in roots:
        if root not in seen:  # the same folder twice would pair twice
            seen.add(root)
            _scan(root, explicit, database, bundles, subjects)
    return bundles


def _scan(root: Path, explicit: bool, database: Path | None, bundles: list[Bundle],
          subjects: tuple[str, ...] = ()) -> None:
    """Add the bundles of one derivative folder.

    FreeSurfer/FastSurfer subject folders are used wherever they are found. A folder
    with a ``dataset_description.json`` or ``sub-*/anat`` folders is read as fMRIPrep
    output when the user named it, or when fMRIPrep's family wrote it (MRIQC's or
    another pipeline's outputs are not). A named folder holding neither is scanned as a
    ``derivatives/`` folder.
    """
    before = len(bundles)
    bundles.extend(_fs_bundle(s, before + i) for i, s in enumerate(find_subjects(root)))
    fmriprep_like = ((root / "dataset_description.json").exists()
                     or any(root.glob("sub-*/anat")) or any(root.glob("sub-*/ses-*/anat")))
    if fmriprep_like and (explicit or _is_fmriprep_family(root)):
        bundles.extend(_fmriprep_bundles(root, database, len(bundles), subjects))
    elif fmriprep_like and len(bundles) == before:
        LOGGER.info("%s is not an fMRIPrep/sMRIPrep output; not used (name it with "
                    "--derivatives to use it).", root)
    elif explicit and len(bundles) == before:
        for child in sorted(root.iterdir()):
            if child.is_dir() and not child.name.startswith("."):
                _scan(child, False, database, bundles, subjects)


def _fs_bundle(subject: FSSubject, order: int) -> Bundle:
    bundle = Bundle(subject.source, subject.entities, order,
                     t1w_preproc=subject.t1w_preproc, seg_reference=subject.seg_reference,
                     aseg_stats=subject.aseg_stats)
    if subject.seg is not None:
        bundle.seg[subject.source] = subject.seg
    if subject.xfm is not None:
        bundle.xfms.append((TALAIRACH_SPACE, "talairach", subject.xfm))
    return bundle


def _fmriprep_bundles(root: Path, database: Path | None, order: int,
                      subjects: tuple[str, ...] = ()) -> list[Bundle]:
    """fMRIPrep's anatomical outputs, grouped by identity entities."""
    groups: dict[tuple, Bundle] = {}
    for entities, path in fmriprep_files(root, database, subjects):
        ident = identity(entities)
        if "subject" not in ident:
            continue
        key = tuple(ident.items())
        if key not in groups:
            groups[key] = Bundle("fmriprep", ident, order + len(groups))
        _classify(groups[key], entities, path)
    return [b for b in groups.values() if b.is_anchor or b.brain_mask or b.xfms]


def _classify(bundle: Bundle, entities: Mapping[str, Any], path: Path) -> None:
    """File one fMRIPrep output by its entities (never by its contents)."""
    ext = extension(path.name)
    suffix, desc, space = entities.get("suffix"), entities.get("desc"), entities.get("space")
    space = None if space is None else str(space)
    native = space in (None, "T1w")
    image = ext in NIFTI
    if suffix == "T1w" and image and desc == "preproc":
        if native:
            bundle.t1w_preproc = bundle.t1w_preproc or path
        elif space not in _NOT_TEMPLATES:
            bundle.templates.append(((space != PREFERRED_SPACE, space, _res_key(entities)),
                                     space, path))
    elif suffix == "mask" and image and desc == "brain" and native:
        bundle.brain_mask = bundle.brain_mask or path
    elif suffix == "dseg" and image and native and desc in ("aseg", None):
        # desc-aseg_dseg: FreeSurfer codes; a bare dseg: fMRIPrep's CSF/GM/WM classes
        bundle.seg.setdefault("fmriprep" if desc == "aseg" else "fmriprep_tissue", path)
    elif (suffix == "xfm" and ext in _XFM_KINDS and str(entities.get("from")) == "T1w"
          and str(entities.get("mode", "image")) == "image"
          and str(entities.get("to")) not in _NOT_TEMPLATES):
        bundle.xfms.append((str(entities["to"]), _XFM_KINDS[ext], path))


def _res_key(entities: Mapping[str, Any]) -> tuple:
    """No ``res-`` first, then the finest (lowest) numbered resolution."""
    res = entities.get("res")
    if res is None:
        return (0, 0, "")
    res = str(res)
    return (1, int(res), "") if res.isdigit() else (2, 0, res)
