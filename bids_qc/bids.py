"""Find the T1w images of a BIDS dataset and their derivatives, paired into rows.

:func:`collect_inputs` turns a dataset into :class:`~bids_qc.inputs.QCInput` rows, one
per T1w image; nothing downstream sees pybids. Raw images and fMRIPrep-family
derivatives are indexed with pybids (no validation, no sidecar metadata, only ``anat``
folders) through :mod:`bids_qc.bids_layout`, the only module that imports it; the
derivative folders are read into bundles by :mod:`bids_qc.bids_derivatives`
(FreeSurfer and FastSurfer folders by path, :mod:`bids_qc.derivatives_fs`). This module
pairs the bundles with the raw images and applies the precedence rules.

Pairing rules
-------------
A derivative pairs with a row when every identity entity it names (subject, session,
acquisition, ...) equals the row's, so fMRIPrep's run-less ``sub-01_desc-preproc_T1w``
pairs with every run of sub-01. Per source, the most specific match wins. A derivative
without a session pairs with a subject's session rows only when that source has
nothing session-specific for the subject (a FreeSurfer ``sub-01`` beside
``sub-01_ses-A`` is a longitudinal base, not an image of session B). A derivative that
pairs with no raw T1w names a row of its own (derivative-only datasets), except a
session-less one of a subject with sessions.

With ``--bids-database-dir``, the raw layout's pybids database is the folder itself
(as with fMRIPrep's option) and each fMRIPrep-family derivative gets
``derivatives/<folder>-<hash of its path>`` inside it. An existing database is loaded
without reindexing. Beside each, ``bids_qc_signature.json`` records the indexed folder
tree (:func:`bids_qc.bids_layout.tree_signature`); when the dataset has changed since,
the job warns and indexes in memory without touching the shared database: delete the
folder and run one job to index again. FreeSurfer/FastSurfer folders are not indexed
and are always read afresh.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import exitcodes
from .bids_derivatives import Bundle, find_derivatives
from .bids_layout import passes_filters, raw_images, t1w_filters
from .bids_names import (
    IDENTITY,
    Row,
    bids_name,
    equal_entity,
    normalise_labels,
    read_json,
    sidecar_fields,
)
from .errors import DatasetError
from .inputs import QCInput
from .settings import Settings

LOGGER = logging.getLogger("bids_qc.bids")
#: Segmentation candidates in ``--seg-source auto`` order: key -> (source, kind).
SEG_PRECEDENCE = {
    "freesurfer": ("freesurfer", "aseg"),
    "fastsurfer": ("fastsurfer", "aseg"),
    "fmriprep": ("fmriprep", "aseg"),
    "fmriprep_tissue": ("fmriprep", "tissue"),
}
_MAX_LISTED = 20


def check_dataset(bids_dir: Path, skip_validation: bool) -> None:
    """Stop early when BIDS_DIR cannot be a BIDS dataset.

    Parameters
    ----------
    bids_dir : Path
        The dataset root.
    skip_validation : bool
        Only require the folder (``--skip-bids-validation``).

    Raises
    ------
    DatasetError
        Exit code 16 (``INVALID_BIDS``): the folder is missing or is a file, or
        ``dataset_description.json`` is missing or not a JSON object.
    """
    bids_dir = Path(bids_dir)
    code = exitcodes.INVALID_BIDS
    if not bids_dir.exists():
        raise DatasetError(f"BIDS_DIR {bids_dir} does not exist. Give the path of the "
                           "dataset's root folder (the one holding "
                           "dataset_description.json).", code)
    if not bids_dir.is_dir():
        raise DatasetError(f"BIDS_DIR {bids_dir} is a file, not a folder. Give the "
                           "dataset's root folder.", code)
    if skip_validation:
        return
    path = bids_dir / "dataset_description.json"
    skip = "or pass --skip-bids-validation"
    if path.is_symlink() and not path.exists():
        raise DatasetError(f"{path} is a dangling symlink (git-annex content not fetched). "
                           f"Run `datalad get {path}`, {skip}.", code)
    if not path.is_file():
        raise DatasetError(f"{path} is missing, so BIDS_DIR is not a BIDS dataset root. Point "
                           "BIDS_DIR at the root, add the file (with at least \"Name\" and "
                           f"\"BIDSVersion\"), {skip}.", code)
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"{path} is not valid JSON ({err}). Fix the file, {skip}.",
                           code) from err
    if not isinstance(description, dict):
        raise DatasetError(f"{path} does not hold a JSON object. Fix the file, {skip}.", code)


def collect_inputs(settings: Settings) -> list[QCInput]:
    """One :class:`QCInput` per selected T1w image, sorted by ``bids_name``.

    Parameters
    ----------
    settings : Settings
        Uses ``bids_dir``, ``participant_label``, ``session_label``, ``bids_filters``,
        ``derivatives``, ``seg_source`` and ``bids_database_dir``.

    Raises
    ------
    DatasetError
        16 when BIDS_DIR is not a folder; 66 when the dataset holds no T1w image (raw
        or derivative); 18 when the labels or filters select none (the message lists
        the labels that exist); 64 for a bad ``--bids-filter-file`` or a missing
        ``--derivatives`` folder.
    """
    bids_dir = Path(settings.bids_dir).expanduser().absolute()
    check_dataset(bids_dir, skip_validation=True)
    database = settings.bids_database_dir
    database = None if database is None else Path(database).expanduser().absolute()
    filters = t1w_filters(settings.bids_filters)

    # BIDS_DIR may itself be an fMRIPrep output: then it has no raw images to index.
    description = read_json(bids_dir / "dataset_description.json")
    if description is not None and not isinstance(description, dict):
        raise DatasetError(f"{bids_dir / 'dataset_description.json'} is JSON but not an "
                           "object, which pybids cannot read even with "
                           "--skip-bids-validation. Fix the file or remove it.",
                           exitcodes.INVALID_BIDS)
    root_is_derivative = (description or {}).get("DatasetType") == "derivative"
    # With --participant-label, pybids is asked for those subjects only (a job of an array
    # need not build 30,000 file objects to find its own); the whole listing is read only to
    # word an error (labels that select nothing).
    subjects = normalise_labels(settings.participant_label, "sub")
    try:
        return _collect(settings, bids_dir, database, filters, root_is_derivative, subjects)
    except DatasetError as err:
        if not subjects or err.exit_code not in (exitcodes.NOTHING_SELECTED,
                                                 exitcodes.NO_INPUT):
            raise
    return _collect(settings, bids_dir, database, filters, root_is_derivative, ())


def _collect(settings: Settings, bids_dir: Path, database: Path | None,
             filters: dict[str, Any], root_is_derivative: bool,
             subjects: tuple[str, ...]) -> list[QCInput]:
    """:func:`collect_inputs` with pybids asked for ``subjects`` only (all when empty)."""
    raw, selected = ([], set()) if root_is_derivative else raw_images(bids_dir, database,
                                                                       filters, subjects)
    bundles = find_derivatives(bids_dir, settings.derivatives, database, root_is_derivative,
                                subjects)
    rows = _rows(raw, bundles)
    if not rows:
        raise DatasetError(
            f"No T1w image in {bids_dir}: no sub-*/[ses-*/]anat/*_T1w.nii[.gz] and no "
            "fMRIPrep, FreeSurfer or FastSurfer derivative holding one. Check that BIDS_DIR "
            "is the dataset root (and --derivatives, if given).", exitcodes.NO_INPUT)
    chosen = _select(rows, settings, filters, selected)

    by_subject: dict[str, list[Bundle]] = defaultdict(list)
    for bundle in bundles:
        by_subject[bundle.entities["subject"]].append(bundle)
    specific = _session_specific(bundles)
    listings: dict[str, list[str]] = {}
    out = []
    for row in chosen:
        picks: dict[str, Bundle] = {}  # per source, the most specific (then first) match
        for bundle in by_subject.get(row.entities["subject"], []):
            best = picks.get(bundle.source)
            if _pairs(bundle, row.entities, specific) and (
                    best is None or len(bundle.entities) > len(best.entities)):
                picks[bundle.source] = bundle
        qc_input = _assemble(row, picks, settings.seg_source)
        if row.t1w is not None:
            qc_input = replace(qc_input, acquisition=sidecar_fields(row.t1w, bids_dir,
                                                                     listings))
        out.append(qc_input)
    return sorted(out, key=lambda r: r.bids_name)


def _session_specific(bundles: list[Bundle]) -> set[tuple[str, str]]:
    """(source, subject) pairs for which the source has session-specific outputs."""
    return {(b.source, b.entities["subject"]) for b in bundles if "session" in b.entities}


def _pairs(bundle: Bundle, entities: Mapping[str, str], specific: set[tuple[str, str]]) -> bool:
    """Whether a derivative bundle pairs with a row (see the module's pairing rules)."""
    for name, value in bundle.entities.items():
        if name not in entities or not equal_entity(name, value, entities[name]):
            return False
    return not ("session" in entities and "session" not in bundle.entities
                and (bundle.source, bundle.entities["subject"]) in specific)


def _rows(raw: list[Row], bundles: list[Bundle]) -> list[Row]:
    """Raw rows plus a row for each derivative that pairs with no row."""
    rows = {row.name: row for row in raw}
    by_subject: dict[str, list[Row]] = defaultdict(list)
    for row in raw:
        by_subject[row.entities["subject"]].append(row)
    specific = _session_specific(bundles)
    # Most specific first, so that a less specific derivative joins their rows.
    anchors = sorted((b for b in bundles if b.is_anchor),
                     key=lambda b: (-len(b.entities), b.order))
    for bundle in anchors:
        subject_rows = by_subject[bundle.entities["subject"]]
        if any(_pairs(bundle, row.entities, specific) for row in subject_rows):
            continue
        if "session" not in bundle.entities and any("session" in r.entities
                                                    for r in subject_rows):
            LOGGER.info("%s derivative of sub-%s has no session while the subject has "
                        "sessions (a longitudinal base?): not used.", bundle.source,
                        bundle.entities["subject"])
            continue
        row = Row(dict(bundle.entities))
        rows[row.name] = row
        subject_rows.append(row)
    return list(rows.values())


def _select(rows: list[Row], settings: Settings, filters: dict[str, Any],
            selected: set[str]) -> list[Row]:
    """The rows the labels and the filter file select; DatasetError 18 if none."""
    subjects = normalise_labels(settings.participant_label, "sub")
    sessions = normalise_labels(settings.session_label, "ses")
    labelled = [r for r in rows
                if (not subjects or r.entities["subject"] in subjects)
                and (not sessions or r.entities.get("session") in sessions)]
    if not labelled:
        asked = " ".join(filter(None, [
            subjects and "--participant-label " + " ".join(subjects),
            sessions and "--session-label " + " ".join(sessions)]))
        raise DatasetError(f"{asked} selected no T1w image. Subjects with a T1w image: "
                           f"{_listing(rows, 'subject')}; sessions: "
                           f"{_listing(rows, 'session')}. Give labels from these lists "
                           "(with or without sub-/ses-).", exitcodes.NOTHING_SELECTED)
    missing = [s for s in subjects if s not in {r.entities["subject"] for r in rows}]
    if missing:
        LOGGER.warning("--participant-label: no T1w image for %s.", ", ".join(missing))
    if not filters:
        return labelled
    chosen = [r for r in labelled if (str(r.t1w) in selected if r.t1w is not None
                                      else passes_filters(r.entities, filters))]
    if not chosen:
        values = "; ".join(f"{name}: {_listing(labelled, name)}"
                           for name in filters if name in IDENTITY)
        given = json.dumps(settings.bids_filters, default=str)
        raise DatasetError(f"--bids-filter-file ({given}) "
                           f"selected none of the {len(labelled)} T1w images the labels "
                           f"select. Values there: {values or 'see the file names'}.",
                           exitcodes.NOTHING_SELECTED)
    return chosen


def _listing(rows: list[Row], name: str) -> str:
    values = sorted({r.entities[name] for r in rows if name in r.entities})
    if not values:
        return "none"
    more = f" ... ({len(values)} in all)" if len(values) > _MAX_LISTED else ""
    return ", ".join(values[:_MAX_LISTED]) + more


def _assemble(row: Row, picks: dict[str, Bundle], seg_choice: str) -> QCInput:
    """Apply the segmentation and registration precedence to one row's derivatives."""
    fp, fs, fast = picks.get("fmriprep"), picks.get("freesurfer"), picks.get("fastsurfer")
    sources = {"t1w": "raw"} if row.t1w is not None else {}
    fields: dict[str, Any] = {}

    owners = {key: b for b in (fs, fast, fp) if b is not None for key in b.seg}
    candidates = {key: str(owners[key].seg[key]) for key in SEG_PRECEDENCE if key in owners}
    order = [k for k, (src, _) in SEG_PRECEDENCE.items() if seg_choice in ("auto", src)]
    seg_key = next((k for k in order if k in owners), None)
    if seg_key is not None:
        owner = owners[seg_key]
        source, kind = SEG_PRECEDENCE[seg_key]
        fields.update(seg=owner.seg[seg_key], seg_kind=kind, seg_source=source)
        reference = owner.t1w_preproc if owner is fp else owner.seg_reference
        sources["seg"] = source
        if reference is not None:
            fields["seg_reference"] = reference
            sources["seg_reference"] = source

    # Registration: fMRIPrep's template-space T1w, else FreeSurfer/FastSurfer and
    # talairach.xfm, else an fMRIPrep transform of the native image.
    preproc_owner = None
    if fp is not None and fp.templates:
        _, space, path = min(fp.templates, key=lambda t: (t[0], str(t[2])))
        fields.update(template_t1w=path, template_space=space, reg_source="fmriprep")
        sources["template_t1w"] = "fmriprep"
        xfm = fp.xfm(space)
    else:
        fs_like = next((b for b in (fs, fast) if b is not None and b.t1w_preproc and b.xfms),
                       None)
        if fs_like is not None:
            preproc_owner, xfm = fs_like, fs_like.xfm()
        elif fp is not None and (row.t1w is not None or fp.t1w_preproc) and fp.xfms:
            xfm = fp.xfm()
        else:
            xfm = None
        if xfm is not None:
            fields.update(template_space=xfm[0],
                          reg_source=fs_like.source if fs_like else "fmriprep")
    if xfm is not None:
        fields.update(xfm=xfm[2], xfm_kind=xfm[1])
        sources["xfm"] = fields["reg_source"]

    # The preprocessed T1w follows a FreeSurfer-side registration (its xfm maps that
    # volume); otherwise fMRIPrep's, then FreeSurfer's, then FastSurfer's.
    if preproc_owner is None:
        preproc_owner = next((b for b in (fp, fs, fast) if b is not None and b.t1w_preproc),
                             None)
    if preproc_owner is not None:
        fields["t1w_preproc"] = preproc_owner.t1w_preproc
        sources["t1w_preproc"] = preproc_owner.source
    if fp is not None and fp.brain_mask is not None:
        fields["brain_mask"] = fp.brain_mask
        sources["brain_mask"] = "fmriprep"
    # eTIV (the volumes' scale at group level): FreeSurfer's, else FastSurfer's stats.
    stats_owner = next((b for b in (fs, fast) if b is not None and b.aseg_stats), None)
    if stats_owner is not None:
        fields["aseg_stats"] = stats_owner.aseg_stats
        sources["aseg_stats"] = stats_owner.source
    return QCInput(bids_name=row.name, entities=dict(row.entities), t1w=row.t1w,
                   sources=sources, candidates=candidates, **fields)


__all__ = ["IDENTITY", "bids_name", "check_dataset", "collect_inputs", "normalise_labels"]
